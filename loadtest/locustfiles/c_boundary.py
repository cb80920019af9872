"""Locust file for the `c_boundary` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/c_boundary.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables: see loadtest/driver/users.py.
"""

from loadtest.driver.users import scenario_classes

ScenarioUser, ScenarioShape = scenario_classes("c_boundary")
