"""The Prometheus metrics every stackbench server exports, defined once.

Each server process owns one :class:`Telemetry`. The server tells it when connections and
requests start and finish, feeds it scheduler-lag samples from a timer in its own runtime, and
gives it two callables to read the live task count and open connection count at scrape time
(each runtime counts these its own way, so the server supplies the counting).
"""

from __future__ import annotations

import bisect
import itertools
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from servers.contract import JSON, Response, error, method_label
from servers.lag import LagHistogram

# Request latency buckets, for the servers and the load generator alike (one set, so their
# panels read the same way): the R20 preferred numbers (ISO 3: twenty per decade, each about
# 12 % above the last) from 1 ms to 100 s, with 60 s (the longest /sleep the contract allows)
# and 120 s added. A percentile interpolated inside a bucket is then within about
# 10 % of the exact one (the test of the dashboards measures it on real traffic), where the
# 1-2.5-5 series it replaced put /sleep?ms=50 in a 50-100 ms bucket and read its p99 as ~97 ms.
# The thresholds the dashboards and report quote (0.1, 0.5, 1 s) are bounds.
R20 = (1.0, 1.12, 1.25, 1.4, 1.6, 1.8, 2.0, 2.24, 2.5, 2.8,
       3.15, 3.55, 4.0, 4.5, 5.0, 5.6, 6.3, 7.1, 8.0, 9.0)  # fmt: skip
LATENCY_BUCKETS = tuple(
    sorted(
        (0.0005, *(round(m * 10.0**e, 6) for e in range(-3, 2) for m in R20), 60.0, 100.0, 120.0)
    )
)
# How late a 10 ms timer fires: sub-millisecond when the runtime is healthy, seconds when a
# handler hogs the event loop. The R20 numbers of the latency buckets, twenty a decade (each
# 11-12.7 % above the last, but 1.6, 14 % above 1.4) from 0.1 ms to 90 s, and 100 s, so that a
# p99 read from them by histogram_quantile is within ~12 % of the exact one /lag answers
# (tests/test_lag.py); the 1-2.5-5 series they replace read a 35 ms stall as 25 to 50 ms.
LAG_BUCKETS = tuple(sorted({*(round(m * 10.0**e, 7) for e in range(-4, 2) for m in R20), 100.0}))
LAG_INTERVAL_S = 0.010

# A request whose client went away before the answer was sent (nginx's convention).
CLIENT_CLOSED_STATUS = 499

disable_created_metrics()  # `_created` series double the exposition and no dashboard uses them

_STATUS = {code: str(code) for code in range(100, 600)}  # label strings, made once


@dataclass(frozen=True)
class ServerInfo:
    impl: str  # gevent | trio | aiohttp
    runtime: str  # gevent | trio | asyncio | uvloop
    runtime_version: str
    http_stack: str  # e.g. "gevent.pywsgi 24.2.1", "h11 0.14.0", "aiohttp 3.9.5"
    http_client: str = ""  # what /upstream calls through, e.g. "urllib3 2.2.1", "httpx 0.28.1"
    db_driver: str = ""  # what the database routes query through, e.g. "psycopg 3.3.9"


def lag_after(started: float) -> float:
    """Scheduler lag of a LAG_INTERVAL_S timer that was armed at perf_counter() == started."""
    return max(0.0, time.perf_counter() - started - LAG_INTERVAL_S)


class LocalHistogram:
    """A labelled histogram for one thread, without locks.

    prometheus_client's Histogram takes a lock per child lookup and two per observation: about
    3.7 us per request with the active-requests gauge, 12-19 % of aiohttp's throughput on this
    project's machines. Every stackbench server but threads-h11 records from its single event-loop
    thread (gevent's greenlets share one thread too), so plain counters are safe and cost ~0.3 us;
    threads-h11 takes one lock per update (ThreadedTelemetry). Exposition still goes through
    prometheus_client's metric families."""

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = buckets
        # per label tuple: one count per bucket (not cumulative), +Inf last, then the sum
        self._series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0] * (len(self.bounds) + 1) + [0.0]
        series[bisect.bisect_left(self.bounds, value)] += 1  # `le` is inclusive
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        upper = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, series in list(self._series.items()):
            cumulative = itertools.accumulate(series[:-1])
            family.add_metric(list(labels), list(zip(upper, cumulative, strict=True)), series[-1])
        return family


class _RequestCollector(Collector):
    """Hands the registry the families Telemetry keeps in plain Python."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        yield self._telemetry._duration.family()
        yield GaugeMetricFamily(
            "http_server_active_requests",
            "Requests being handled right now.",
            value=self._telemetry.active_requests,
        )
        yield self._telemetry._lag.family()


class Telemetry:
    """The metric families of DESIGN.md's metrics contract, in a registry of the server's own.
    Call it from the server's event-loop thread only (see LocalHistogram)."""

    enabled = True

    def __init__(self, info: ServerInfo) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The default process and GC collectors, registered here so /metrics describes this process.
        for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
            self.registry.register(collector)
        self.active_requests = 0
        self._duration = LocalHistogram(
            "http_server_request_duration_seconds",
            "Time from a request's arrival to the last byte of its response.",
            ("route", "method", "status"),
            LATENCY_BUCKETS,
        )
        self._lag = LocalHistogram(
            "stackbench_scheduler_lag_seconds",
            f"How late a periodic {LAG_INTERVAL_S * 1000:g} ms timer fires in the runtime.",
            (),
            LAG_BUCKETS,
        )
        self._exact_lag = LagHistogram()  # every tick, for /lag
        self.registry.register(_RequestCollector(self))
        self._connections = Gauge(
            "http_server_open_connections",
            "Client connections open right now.",
            registry=self.registry,
        )
        self._connection_limit = Gauge(
            "http_server_connection_limit",
            "Open connections allowed; past it new ones get a 503 and are closed.",
            registry=self.registry,
        )
        self._accepted = Counter(
            "http_server_connections",
            "Client connections accepted since the server started (shed ones included).",
            registry=self.registry,
        )
        self._rejected = Counter(
            "http_server_rejected_connections",
            "Connections shed because the server was at its connection limit.",
            registry=self.registry,
        )
        self._tasks = Gauge(
            "stackbench_tasks",
            "Live tasks (trio, asyncio) or greenlets (gevent) in the server's runtime.",
            registry=self.registry,
        )
        Info(
            "stackbench_server",
            "Which implementation, runtime and HTTP stack this server is.",
            registry=self.registry,
        ).info(
            {
                "impl": info.impl,
                "runtime": info.runtime,
                "runtime_version": info.runtime_version,
                "http_stack": info.http_stack,
                "http_client": info.http_client,
                "db_driver": info.db_driver,
                "python_version": platform.python_version(),
            }
        )

    def count_tasks_with(self, count: Callable[[], float]) -> None:
        self._tasks.set_function(count)

    def count_connections_with(self, count: Callable[[], float]) -> None:
        self._connections.set_function(count)

    def limit_connections(self, limit: int) -> None:
        self._connection_limit.set(limit)
        self._rejected.inc(0)  # the series exists before the first rejection

    def connection_rejected(self) -> None:
        self._rejected.inc()

    def connection_accepted(self) -> None:
        self._accepted.inc()

    def request_started(self) -> float:
        self.active_requests += 1
        return time.perf_counter()

    def request_finished(self, route: str, method: str, status: int, started: float) -> None:
        self.active_requests -= 1
        self._duration.observe(
            (route, method_label(method), _STATUS.get(status) or str(status)),
            time.perf_counter() - started,
        )

    def observe_lag(self, seconds: float) -> None:
        self._lag.observe((), seconds)
        self._exact_lag.record(seconds)

    def exposition(self) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    def lag(self) -> Response:
        """`GET /lag`: every lag tick since start, HdrHistogram-encoded (servers/lag.py)."""
        return Response(200, self._exact_lag.body(round(LAG_INTERVAL_S * 1000)), JSON)


class ThreadedTelemetry(Telemetry):
    """Telemetry for a server whose requests run on many OS threads (threads-h11): the
    request counters and histogram are updated under a lock. Without one, two threads adding
    the same label set's first observation at once lose one, and how much of `x += 1` runs
    without a thread switch is up to the interpreter's version."""

    def __init__(self, info: ServerInfo) -> None:
        super().__init__(info)
        self._lock = threading.Lock()

    def request_started(self) -> float:
        with self._lock:
            self.active_requests += 1
        return time.perf_counter()

    def request_finished(self, route: str, method: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            self.active_requests -= 1
            self._duration.observe(
                (route, method_label(method), _STATUS.get(status) or str(status)), elapsed
            )

    # observe_lag takes no lock: one thread records lag, the lag monitor's, and a scrape or a
    # /lag reading copies what it reads in one call.


class DisabledTelemetry(Telemetry):
    """`--no-metrics`: the same calls, doing nothing, so the overhead of telemetry can be measured
    by switching it off."""

    enabled = False

    def __init__(self, info: ServerInfo) -> None:
        pass

    def count_tasks_with(self, count: Callable[[], float]) -> None:
        pass

    def count_connections_with(self, count: Callable[[], float]) -> None:
        pass

    def limit_connections(self, limit: int) -> None:
        pass

    def connection_rejected(self) -> None:
        pass

    def connection_accepted(self) -> None:
        pass

    def request_started(self) -> float:
        return 0.0

    def request_finished(self, route: str, method: str, status: int, started: float) -> None:
        pass

    def observe_lag(self, seconds: float) -> None:
        pass

    def exposition(self) -> Response:
        return error(404, "metrics are switched off (--no-metrics)")

    def lag(self) -> Response:
        return error(404, "metrics are switched off (--no-metrics)")


def make_telemetry(info: ServerInfo, enabled: bool, threads: bool = False) -> Telemetry:
    """The server's telemetry; `threads` for a server that handles requests on several OS
    threads."""
    if not enabled:
        return DisabledTelemetry(info)
    return ThreadedTelemetry(info) if threads else Telemetry(info)
