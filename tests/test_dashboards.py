"""The Grafana dashboards: structure, and every query evaluated by a real Prometheus scraping
the real servers and a real Locust run. A panel that cannot show data fails here."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hdrh.histogram import HdrHistogram
from httpclient import histogram_quantile

from loadtest import histograms
from loadtest.orchestrator.serverproc import ServerProcess
from loadtest.reporting.colours import COLOURS
from servers.contract import IMPLS, TIERS
from servers.telemetry import LATENCY_BUCKETS

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards" / "grafana" / "dashboards"
PROVISIONING = ROOT / "dashboards" / "grafana" / "provisioning"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
SERVERS = IMPLS  # both tiers
RATE_INTERVAL = "10s"  # what Grafana makes of $__rate_interval at a 1 s scrape interval
RANGE = "5m"  # $__range: the dashboard's time range
REQUESTS = "http_server_request_duration_seconds"
HELD_PER_SERVER = 20  # requests held in flight on each server, for the memory panel


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _as_grafana_sends_it(dashboard: dict, expr: str) -> str:
    """The query with every variable set to "All" (its allValue), as Grafana would send it."""
    for variable in dashboard["templating"]["list"]:
        if "allValue" in variable:
            expr = expr.replace(f"${variable['name']}", variable["allValue"])
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)


def _panel_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, query, legend) for every query of every panel."""
    return [
        (path.name, panel["title"], _as_grafana_sends_it(dashboard, target["expr"]),
         target.get("legendFormat", ""))
        for path in DASHBOARDS
        for dashboard in [_load(path)]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]  # fmt: skip


def test_dashboards_are_generated_from_code() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "dashboards" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in DASHBOARDS} == {"server-comparison.json", "load-generator.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = _load(path)
    assert dashboard["uid"] and dashboard["title"] and dashboard["description"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # The datasource is a variable (the dashboards import into any Grafana), provisioned's first.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == uid
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["description"], f"{panel['title']} has no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            if "rate(" in target["expr"]:
                assert "$__rate_interval" in target["expr"], panel["title"]
        colours = {
            o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"]
            for o in panel["fieldConfig"]["overrides"]
        }
        assert colours == {f"^{impl}( .*)?$": COLOURS[impl] for impl in IMPLS}, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


def test_server_dashboard_names_both_tiers() -> None:
    dashboard = _load(DASHBOARD_DIR / "server-comparison.json")
    assert "stack tier" in dashboard["description"]
    assert "runtime tier" in dashboard["description"]
    tier = next(v for v in dashboard["templating"]["list"] if v["name"] == "tier")
    options = dict(option.split(" : ") for option in tier["query"].split(","))
    assert options == {f"{t} tier": "|".join(members) for t, members in TIERS.items()}
    repeated = [p for p in dashboard["panels"] if p.get("repeat") == "route"]
    assert repeated and all("$route" in p["title"] for p in repeated)


def test_dashboard_uids_are_distinct_and_provisioned() -> None:
    uids = [_load(path)["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "stackbench.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert f"./dashboards/grafana/dashboards:{path}:ro" in mounts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _derived_prometheus_config(
    server_ports: dict[str, int], client_port: int, prometheus_port: int
) -> dict:
    """The project's own scrape config with loopback addresses in place of compose services."""
    config = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "servers":
            # Each DNS name becomes a static target carrying the name DNS would have given it,
            # so the config's own relabelling makes the `impl` label.
            (sd,) = job.pop("dns_sd_configs")
            job["static_configs"] = [
                {"targets": [f"127.0.0.1:{server_ports[n]}"], "labels": {"__meta_dns_name": n}}
                for n in sd["names"]
            ]
        elif name == "locust":
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{client_port}"]}]
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
        else:
            continue  # cadvisor needs Docker
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


def _hold(server: ServerProcess) -> socket.socket:
    """A connection whose request stays in flight for the rest of the module."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: test\r\n\r\n")
    return sock


class Prometheus:
    def __init__(self, port: int, client_url: str, load_started: float) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.client_url = client_url  # the Locust process's /metrics and /latency
        self.load_started = load_started  # time.monotonic() when Locust was started

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]


@pytest.fixture(scope="module")
def prometheus(
    servers: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    assert shutil.which("prometheus"), "prometheus (Debian package) is installed by make test"
    workdir = tmp_path_factory.mktemp("prometheus")
    client_port, prometheus_port = _free_port(), _free_port()
    targets = ",".join(f"{impl}={servers[impl].url}" for impl in SERVERS)
    locust = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f", str(ROOT / "loadtest/locustfiles/mixed.py"),
            "--headless", "-u", "12", "-r", "12", "-t", "120s", "--only-summary",
        ],
        env={**os.environ, "STACKBENCH_TARGETS": targets,
             "STACKBENCH_CLIENT_METRICS_PORT": str(client_port)},
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    load_started = time.monotonic()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(_derived_prometheus_config(
            {impl: servers[impl].port for impl in SERVERS}, client_port, prometheus_port
        ))
    )  # fmt: skip
    server = subprocess.Popen(
        [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = Prometheus(prometheus_port, f"http://127.0.0.1:{client_port}", load_started)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                targets_up = client.query("up == 1")
                load = client.query(
                    "sum(rate(stackbench_client_request_duration_seconds_count[10s]))"
                )
                if len(targets_up) == len(SERVERS) + 2 and load and float(load[0]["value"][1]):
                    break
            except OSError:
                pass
            time.sleep(1)
        time.sleep(2)  # scrapes before the held requests: the memory panel's baseline
        held = [_hold(servers[impl]) for impl in SERVERS for _ in range(HELD_PER_SERVER)]
        time.sleep(4)  # a few more scrapes, so every rate() window holds several samples
        yield client
    finally:
        for sock in held:
            sock.close()
        for process in (locust, server):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def test_every_scrape_target_is_up(prometheus: Prometheus) -> None:
    up = {(r["metric"]["job"], r["metric"].get("impl", "")) for r in prometheus.query("up == 1")}
    assert up == {
        *(("servers", impl) for impl in SERVERS), ("locust", ""), ("prometheus", ""),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("dashboard", "title", "query", "legend"),
    _panel_queries(),
    ids=[f"{d}:{t}:{legend}" for d, t, _, legend in _panel_queries()],
)
def test_every_panel_query_returns_data(
    prometheus: Prometheus, dashboard: str, title: str, query: str, legend: str
) -> None:
    assert "$" not in query, f"unsubstituted variable in {query}"
    result = prometheus.query(query)
    assert result, f"{dashboard} / {title}: no data for {query}"
    # Rust has no garbage collector: the GC panel has a line for every other server.
    expected = set(SERVERS) - ({"rust-hyper"} if "gc_" in query else set())
    for label in re.findall(r"\{\{(impl|target)\}\}", legend):
        values = {series["metric"].get(label) for series in result}
        assert values == expected, f"{title}: {label} values {values}"


# Go's collector lets its heap grow to twice the live data before collecting, and keeps what it
# freed for a while: after the load the earlier panels needed, its RSS above the quiet baseline
# holds that headroom as well as the 20 held requests (the run measures those with fresh servers).
GC_HEAP_HEADROOM = frozenset({"go-nethttp"})


def test_memory_per_in_flight_request_is_what_a_held_request_costs(prometheus: Prometheus) -> None:
    """The panel subtracts the quiet baseline: with 20 requests held on each server it reads
    kilobytes per request (the run measures 10-40 KiB), not the whole RSS over 20."""
    dashboard = _load(DASHBOARD_DIR / "server-comparison.json")
    panel = next(p for p in dashboard["panels"] if p["title"] == "Memory per in-flight request")
    result = prometheus.query(_as_grafana_sends_it(dashboard, panel["targets"][0]["expr"]))
    per_request = {r["metric"]["impl"]: float(r["value"][1]) for r in result}
    rss = {r["metric"]["impl"]: float(r["value"][1])
           for r in prometheus.query('process_resident_memory_bytes{job="servers"}')}  # fmt: skip
    assert set(per_request) == set(SERVERS)
    for impl, value in per_request.items():
        # 0 where the server met the load with memory it had freed before (RSS did not grow)
        assert 0 <= value < 256 * 1024, f"{impl}: {value / 1024:.1f} KiB per request"
        if impl in GC_HEAP_HEADROOM:
            continue
        assert value < rss[impl] / HELD_PER_SERVER / 4, impl  # far below RSS / in flight


# What a percentile read from the buckets may be off by, for the contract's routes.
P99_TOLERANCE = 0.10
# Server and client are compared at this quantile where it rests on at least this many
# requests (its rank then holds 10 of them).
CROSS_CHECK_Q = 0.9
MIN_REQUESTS_FOR_P90 = 100
CLIENT = "stackbench_client_request_duration_seconds"


def _exact_per_route(url: str) -> dict[str, HdrHistogram]:
    """Every request Locust has timed so far, per route, all servers together (0.1 %)."""
    with urllib.request.urlopen(f"{url}/latency?ack=0", timeout=10) as answer:
        intervals = json.load(answer)["intervals"]
    exact: dict[str, list[str]] = {}
    for interval in intervals:
        for routes in interval["histograms"].values():
            for route, encoded in routes.items():
                exact.setdefault(route, []).append(encoded["latency"])
    return {route: histograms.merge(encoded) for route, encoded in exact.items()}


def _exact_quantile(q: float, histogram: HdrHistogram) -> tuple[float, float]:
    """The q-quantile in seconds, as the two values it lies between: the requests ranked
    floor(q n) and ceil(q n) (they differ when the tail is sparse: which of them "the" p99 is
    depends on the definition, HdrHistogram's and Prometheus' differ)."""
    rank = q * histogram.get_total_count()
    wanted = [max(1, math.floor(rank)), max(1, math.ceil(rank))]
    found, seen = [], 0
    for item in histogram.get_recorded_iterator():
        seen += item.count_at_value_iterated_to
        while wanted and seen >= wanted[0]:
            found.append(item.value_iterated_to / 1e6)
            wanted.pop(0)
    return found[0], found[1]


def _through_buckets(histogram: HdrHistogram) -> dict[float, float]:
    """The histogram's requests counted into LATENCY_BUCKETS: {le in seconds: cumulative}."""
    counts = dict.fromkeys((*LATENCY_BUCKETS, math.inf), 0.0)
    for item in histogram.get_recorded_iterator():
        seconds = item.value_iterated_to / 1e6
        for le in counts:
            if seconds <= le:
                counts[le] += item.count_at_value_iterated_to
    return counts


def test_histogram_quantile_is_prometheus_s(prometheus: Prometheus) -> None:
    """The function the next test uses gives what Prometheus gives, on the same buckets."""
    expr = f'sum by (le) ({CLIENT}_bucket{{route="/json"}})'
    buckets = {float(r["metric"]["le"]): float(r["value"][1]) for r in prometheus.query(expr)}
    (answer,) = prometheus.query(f"histogram_quantile(0.99, {expr})")
    assert histogram_quantile(0.99, buckets) == pytest.approx(float(answer["value"][1]))


def test_dashboard_p99_agrees_with_the_exact_p99_per_route(prometheus: Prometheus) -> None:
    """The p99 a dashboard interpolates from histogram buckets, against the exact p99 of what
    the buckets counted, for every route of the contract the mixed scenario sends.

    Locust's exact HdrHistograms (0.1 %) of every request so far, counted into the bucket
    bounds and read as Prometheus reads buckets, must give a p99 within 10 % of the exact
    one: that is the buckets' own error, on real latencies. Then, through Prometheus: the
    server's histogram times each request from its arrival to its last byte, a part of what
    the client timed, so its p90 cannot be above the client's beyond both readings' error (the
    old 50-100 ms bucket read /sleep?ms=50 as ~97 ms against the client's ~57)."""
    window = f"{round(time.monotonic() - prometheus.load_started)}s"
    lines, failures = [], []
    exact = _exact_per_route(prometheus.client_url)
    for route, histogram in sorted(exact.items()):
        low, high = _exact_quantile(0.99, histogram)
        from_buckets = histogram_quantile(0.99, _through_buckets(histogram))
        lines.append(f"{route:10} n={histogram.get_total_count():5} exact p99 "
                     f"{low * 1e3:.2f}-{high * 1e3:.2f} ms, from buckets "
                     f"{from_buckets * 1e3:.2f} ms")  # fmt: skip
        if not low * (1 - P99_TOLERANCE) <= from_buckets <= high * (1 + P99_TOLERANCE):
            failures.append(f"buckets {route}")
    # Server against client at p90: over this short test a route has a few hundred requests
    # per server, and a p99 of those is their top two or three, which swing by 25 %.
    server = prometheus.query(
        f"histogram_quantile({CROSS_CHECK_Q}, sum by (impl, route, le) "
        f'(increase({REQUESTS}_bucket{{route!="other"}}[{window}])))'
    )
    client = prometheus.query(
        f"histogram_quantile({CROSS_CHECK_Q}, sum by (target, route, le) "
        f"(increase({CLIENT}_bucket[{window}])))"
    )
    client_p99 = {(r["metric"]["target"], r["metric"]["route"]): float(r["value"][1])
                  for r in client}  # fmt: skip
    counted = {
        (r["metric"]["target"], r["metric"]["route"]): float(r["value"][1])
        for r in prometheus.query(f"sum by (target, route) (increase({CLIENT}_count[{window}]))")
    }
    compared = 0
    for series in server:
        impl, route = series["metric"]["impl"], series["metric"]["route"]
        if (impl, route) not in client_p99:
            continue  # the held requests' /sleep has none finished on some servers
        if counted.get((impl, route), 0) < MIN_REQUESTS_FOR_P90:
            continue
        compared += 1
        value, seen = float(series["value"][1]), client_p99[impl, route]
        lines.append(f"{impl:12} {route:10} server p90 {value * 1e3:7.2f} ms, "
                     f"client p90 {seen * 1e3:7.2f} ms")  # fmt: skip
        if value > seen * (1 + P99_TOLERANCE) ** 2:  # each read off by up to the tolerance
            failures.append(f"server above client {impl} {route}")
    print("\n".join(lines))
    assert set(exact) >= {"/", "/json", "/sleep", "/fanout", "/blocking", "/echo", "/stream"}
    assert compared, "no route had enough requests to compare the two p90s"
    assert not failures, "\n".join([*failures, *lines])
