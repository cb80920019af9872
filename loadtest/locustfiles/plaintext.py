"""Locust file for the `plaintext` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/plaintext.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class PlaintextUser(StackbenchUser):
    scenario_name = "plaintext"


PlaintextShape = step_shape(PlaintextUser)  # None unless STACKBENCH_SHAPE=steps
