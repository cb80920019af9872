"""Locust file for the `echo` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/echo.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class EchoUser(StackbenchUser):
    scenario_name = "echo"


EchoShape = step_shape(EchoUser)  # None unless STACKBENCH_SHAPE=steps
