"""Locust file for the `io_hold` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/io_hold.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class IoHoldUser(StackbenchUser):
    scenario_name = "io_hold"


IoHoldShape = step_shape(IoHoldUser)  # None unless STACKBENCH_SHAPE=steps
