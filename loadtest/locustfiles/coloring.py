"""Locust file for the `coloring` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/coloring.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class ColoringUser(StackbenchUser):
    scenario_name = "coloring"


ColoringShape = step_shape(ColoringUser)  # None unless STACKBENCH_SHAPE=steps
