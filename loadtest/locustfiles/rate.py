"""Locust file for the `rate` scenario (requests: loadtest/driver/scenarios.py): the same requests
the rate driver sends in `stackbench run`'s rate sweep, for the web UI and the live view. Locust
itself is slower than the servers (~5k req/s a core here): what it reaches is its own limit, which
is why the run drives this scenario with the rate driver instead.

    locust -f loadtest/locustfiles/rate.py --host http://127.0.0.1:8081

Model, targets and shape come from STACKBENCH_* variables (the README lists them).
"""

from loadtest.driver.users import StackbenchUser, step_shape


class RateUser(StackbenchUser):
    scenario_name = "rate"


RateShape = step_shape(RateUser)  # None unless STACKBENCH_SHAPE=steps
