"""Locust file for the `fanout` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/fanout.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class FanoutUser(StackbenchUser):
    scenario_name = "fanout"


FanoutShape = step_shape(FanoutUser)  # None unless STACKBENCH_SHAPE=steps
