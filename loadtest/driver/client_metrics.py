"""Prometheus metrics of the load generator itself (`stackbench_client_*`), exported by every
Locust process on its own port.

Locust's web stats keep a 10-second window; this is a real histogram fed by every request event,
labelled by target server, scenario, route and outcome, beside the figures that tell whether the
driver, not the server, was the limit: users, intended vs achieved requests, dropped arrivals and
the driver's own CPU. The same port serves `/latency?ack=N`: every request's latency in exact
HdrHistograms (latency_log.py), which `stackbench run` reads for its percentiles. Imported only
inside Locust processes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import parse_qs

from gevent.pywsgi import WSGIServer
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from loadtest.driver import settings
from loadtest.driver.latency_log import RECORDER
from servers.telemetry import LATENCY_BUCKETS  # the servers' bounds: panels read alike

PORTS_TO_TRY = 64  # forked workers on one host take the next free port after the master's

REQUEST_DURATION = Histogram(
    "stackbench_client_request_duration_seconds",
    "Request latency seen by the load generator. In the open model it runs from the request's "
    "intended start, so a stalled server cannot hide behind a slowed-down client.",
    ("target", "scenario", "route", "outcome"),
    buckets=LATENCY_BUCKETS,
)
SERVICE_DURATION = Histogram(
    "stackbench_client_service_duration_seconds",
    "Request latency from the moment it was actually sent (uncorrected for coordinated "
    "omission); equal to the request duration in the closed model.",
    ("target", "scenario", "route"),
    buckets=LATENCY_BUCKETS,
)
INTENDED = Counter(
    "stackbench_client_intended_requests",
    "Requests the scenario meant to send: scheduled arrivals in the open model, attempts in "
    "the closed model. Compare its rate with the request rate to see the driver fall behind.",
    ("target", "scenario"),
)
DROPPED = Counter(
    "stackbench_client_dropped_arrivals",
    "Open-model arrivals that could not be sent because the in-flight limit was reached.",
    ("target", "scenario"),
)
USERS = Gauge(
    "stackbench_client_users",
    "Locust users running in this process (the master reports the total).",
    ("scenario", "role"),
)
INTENDED_RATE = Gauge(
    "stackbench_client_intended_rate",
    "Open model: arrivals per second this process is scheduling; 0 in the closed model.",
    ("scenario",),
)


class _DriverCpu(Collector):
    """CPU seconds of this Locust process, under the client namespace so that the load
    generator dashboard can show the driver's saturation beside its request rate."""

    def collect(self) -> Iterator[Metric]:
        times = os.times()
        family = CounterMetricFamily(
            "stackbench_client_cpu_seconds",
            "CPU time (user + system) used by this load-generator process.",
            labels=("role",),
        )
        family.add_metric([_role], times.user + times.system)
        yield family


_role = "local"
_scenario = "unknown"


def name_scenario(scenario: str) -> None:
    """The `scenario` label; set when the Locust file loads, before any request can fire."""
    global _scenario
    _scenario = scenario


def install(environment: Environment) -> None:
    """Export this process's metrics; called from a Locust file's `init` event."""
    global _role
    scenario = _scenario
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        _role = "master"
    elif isinstance(runner, WorkerRunner):
        _role = "worker"
    REGISTRY.register(_DriverCpu())
    if runner is not None:
        USERS.labels(scenario, _role).set_function(lambda: runner.user_count)
    INTENDED_RATE.labels(scenario).set(0)
    port = _serve(settings.read().client_metrics_port)
    print(f"stackbench client metrics ({_role}) on :{port}/metrics", flush=True)


def _app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """/metrics for Prometheus; /latency?ack=N for the orchestrator's exact percentiles."""
    if environ.get("PATH_INFO") == "/latency":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        acknowledged = query.get("ack", ["0"])[0]
        if not acknowledged.isdigit():
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"ack must be a whole number\n"]
        body = RECORDER.as_json(int(acknowledged))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    return _metrics_app(environ, start_response)


_metrics_app = make_wsgi_app()


def _serve(base_port: int) -> int:
    for port in range(base_port, base_port + PORTS_TO_TRY):
        server = WSGIServer(("0.0.0.0", port), _app, log=None, error_log=None)
        try:
            server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return server.server_port
    raise OSError(f"no free port for client metrics in {base_port}..{port}")


def touch_target(target: str) -> None:
    """Create a target's counters at zero, so dashboards show 0 rather than no data."""
    INTENDED.labels(target, _scenario)
    DROPPED.labels(target, _scenario)


@events.request.add_listener
def _on_request(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    context: dict | None = None,
    **_: object,
) -> None:
    context = context or {}
    target = context.get("target", "unknown")
    route = context.get("route", name)
    outcome = "error" if exception else "ok"
    REQUEST_DURATION.labels(target, _scenario, route, outcome).observe(response_time / 1000)
    service_ms = context.get("service_ms")
    SERVICE_DURATION.labels(target, _scenario, route).observe(
        (response_time if service_ms is None else service_ms) / 1000
    )
    RECORDER.record(target, route, response_time, service_ms)
    if not context.get("open_model"):
        INTENDED.labels(target, _scenario).inc()
