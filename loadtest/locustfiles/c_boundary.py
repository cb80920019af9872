"""Locust file for the `c_boundary` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/c_boundary.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class CBoundaryUser(StackbenchUser):
    scenario_name = "c_boundary"


CBoundaryShape = step_shape(CBoundaryUser)  # None unless STACKBENCH_SHAPE=steps
