"""Locust file for the `offload` scenario (requests and load levels: loadtest/scenarios.py).

    locust -f loadtest/locustfiles/offload.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables: see loadtest/users.py.
"""

from loadtest.users import scenario_classes

ScenarioUser, ScenarioShape = scenario_classes("offload")
