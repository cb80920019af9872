"""Prometheus metrics of the load generator itself (`stackbench_client_*`), exported by every
Locust process on its own port.

Locust's web stats keep a 10-second window; this is a real histogram fed by every request event,
labelled by server (`target`: its impl, as the server names itself), scenario, route and
outcome, beside the figures that tell whether the driver, not the server, was the limit: users,
intended vs achieved requests, dropped arrivals and the driver's own CPU. The same port serves
`/latency?ack=N`: every request's latency in exact HdrHistograms (latency_log.py), which
`stackbench run` reads for its percentiles. Imported only inside Locust processes.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qs

import gevent
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

PORTS_TO_TRY = 64  # Locust processes on one host take the next free port after the first's
# How long a process that is being read waits at exit for its last requests to be read: six of
# `stackbench run`'s reads (twice a second), so one slow read does not lose them.
HAND_OVER_S = 3.0

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
    "Open model: arrivals the schedule called for, sent or not. Compare its rate with the "
    "request rate to see the driver or the server fall behind. The closed model has no "
    "schedule (each user sends when its last request returns), so it stays 0 there.",
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

    def __init__(self, role: str) -> None:
        self.role = role

    def collect(self) -> Iterator[Metric]:
        times = os.times()
        family = CounterMetricFamily(
            "stackbench_client_cpu_seconds",
            "CPU time (user + system) used by this load-generator process.",
            labels=("role",),
        )
        family.add_metric([self.role], times.user + times.system)
        yield family


_installed = False


def install(environment: Environment, scenarios: Mapping[str, str]) -> None:
    """Export this process's metrics, once however many Locust files were loaded (they share
    prometheus_client's one registry). `scenarios` maps user class names to scenario names.
    Called from the `init` event."""
    global _installed
    if _installed:
        return
    _installed = True
    runner = environment.runner
    role = "local"
    if isinstance(runner, MasterRunner):
        role = "master"
    elif isinstance(runner, WorkerRunner):
        role = "worker"
    REGISTRY.register(_DriverCpu(role))
    for class_name, scenario in scenarios.items():
        if runner is not None:
            USERS.labels(scenario, role).set_function(
                lambda name=class_name: runner.user_classes_count.get(name, 0)
            )
        INTENDED_RATE.labels(scenario).set(0)
    config = settings.read()
    wanted = config.client_metrics_port
    port = _serve(config.client_metrics_host, wanted)
    line = settings.METRICS_ANNOUNCE.format(role=role, host=config.client_metrics_host, port=port)
    if wanted and port != wanted:
        line += f" (port {wanted} was taken)"
    print(line, flush=True)


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


def _serve(host: str, base_port: int) -> int:
    """Listen on `base_port`, or the next free one (0: any); the port taken."""
    for port in range(base_port, base_port + (PORTS_TO_TRY if base_port else 1)):
        server = WSGIServer((host, port), _app, log=None, error_log=None)
        try:
            server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return server.server_port
    raise OSError(f"no free port for client metrics in {base_port}..{port}")


@events.quitting.add_listener
def _hand_over_last_latencies(**_: object) -> None:
    """Exit only once the reader (`stackbench run`) has acknowledged every request recorded
    here: the requests since its last read would otherwise leave with the process. A process
    nobody reads (a Locust started by hand) exits at once; a reader gone quiet costs at most
    HAND_OVER_S. The metrics server keeps answering meanwhile (same hub)."""
    deadline = time.monotonic() + HAND_OVER_S
    while RECORDER.read and RECORDER.unacknowledged() and time.monotonic() < deadline:
        gevent.sleep(0.05)


def touch_target(target: str, scenario: str) -> None:
    """Create a target's counters at zero, so dashboards show 0 rather than no data."""
    INTENDED.labels(target, scenario)
    DROPPED.labels(target, scenario)


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
    scenario = context.get("scenario", "unknown")
    route = context.get("route", name)
    outcome = "error" if exception else "ok"
    REQUEST_DURATION.labels(target, scenario, route, outcome).observe(response_time / 1000)
    service_ms = context.get("service_ms")
    SERVICE_DURATION.labels(target, scenario, route).observe(
        (response_time if service_ms is None else service_ms) / 1000
    )
    RECORDER.record(target, route, response_time, service_ms)
