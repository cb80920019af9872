"""Locust file for the `mixed` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/mixed.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class MixedUser(StackbenchUser):
    scenario_name = "mixed"


MixedShape = step_shape(MixedUser)  # None unless STACKBENCH_SHAPE=steps
