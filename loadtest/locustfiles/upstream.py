"""Locust file for the `upstream` scenario (requests, levels: loadtest/driver/scenarios.py).

    locust -f loadtest/locustfiles/upstream.py --host http://127.0.0.1:8081

The server must have been started with `--upstream URL` (else every request is a 503).
Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class UpstreamUser(StackbenchUser):
    scenario_name = "upstream"


UpstreamShape = step_shape(UpstreamUser)  # None unless STACKBENCH_SHAPE=steps
