"""Locust file for the `offload` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/offload.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class OffloadUser(StackbenchUser):
    scenario_name = "offload"


OffloadShape = step_shape(OffloadUser)  # None unless STACKBENCH_SHAPE=steps
