"""Locust file for the `starvation` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/starvation.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class StarvationUser(StackbenchUser):
    scenario_name = "starvation"


StarvationShape = step_shape(StarvationUser)  # None unless STACKBENCH_SHAPE=steps
