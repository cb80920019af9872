"""/metrics on every server: parsed by prometheus_client's own parser, the same families with
the same types everywhere, bounded labels."""

from __future__ import annotations

import os
import socket
import time

import psutil
from httpclient import get, metrics, sample_value, wait_until

from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import IMPLS, NATIVE_TIER, OTHER_ROUTE, ROUTE_METHODS, RUNTIMES

CONTRACT_FAMILIES = {
    "http_server_request_duration_seconds": "histogram",
    "http_server_active_requests": "gauge",
    "http_server_open_connections": "gauge",
    "stackbench_tasks": "gauge",
    "stackbench_scheduler_lag_seconds": "histogram",
    "stackbench_server_info": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
}
# The garbage collector's families are the runtime's own: Python's gc module, or Go's; Rust
# has no collector (a native server says python_version="" in stackbench_server_info).
GC_FAMILIES = {"go": {"go_gc_duration_seconds": "summary"}, "tokio": {}}
PYTHON_GC_FAMILIES = {"python_gc_objects_collected": "counter"}


def test_every_contract_family_with_its_type(server: ServerProcess) -> None:
    get(server.port, "/json")
    families = metrics(server.port)
    types = {name: family.type for name, family in families.items()}
    expected = CONTRACT_FAMILIES | GC_FAMILIES.get(RUNTIMES[server.impl], PYTHON_GC_FAMILIES)
    missing = {n: t for n, t in expected.items() if types.get(n) != t}
    assert not missing, f"missing or mistyped: {missing}"
    info = families["stackbench_server_info"].samples[0]
    assert info.value == 1
    assert info.labels["impl"] == server.impl
    assert set(info.labels) >= {"runtime", "runtime_version", "http_stack", "python_version"}
    assert (info.labels["python_version"] == "") == (server.impl in NATIVE_TIER)
    assert sample_value(families, "process_resident_memory_bytes") > 1_000_000
    assert sample_value(families, "stackbench_tasks") >= 1
    assert sample_value(families, "stackbench_scheduler_lag_seconds_count") > 0


def test_same_families_on_every_server(servers: dict[str, ServerProcess]) -> None:
    shapes = {}
    for impl in IMPLS:
        get(servers[impl].port, "/")
        shapes[impl] = {(name, f.type) for name, f in metrics(servers[impl].port).items()}
    assert shapes["gevent"] == shapes["trio"] == shapes["aiohttp"]


def test_route_label_is_a_template(server: ServerProcess) -> None:
    for target in ["/sleep?ms=1", "/sleep?ms=2", "/no/such/path/42", "/x?y=z"]:
        get(server.port, target)
    families = metrics(server.port)
    routes = {
        sample.labels["route"]
        for sample in families["http_server_request_duration_seconds"].samples
    }
    assert OTHER_ROUTE in routes and "/sleep" in routes
    assert routes <= set(ROUTE_METHODS) | {OTHER_ROUTE}


def test_latency_histogram_covers_the_longest_route(server: ServerProcess) -> None:
    get(server.port, "/json")
    bounds = {
        sample.labels["le"]
        for sample in metrics(server.port)["http_server_request_duration_seconds"].samples
        if sample.name.endswith("_bucket")
    }
    assert {"0.1", "0.5", "1.0", "60.0", "+Inf"} <= bounds


def test_a_cpu_request_is_timed_with_its_work(server: ServerProcess) -> None:
    """/cpu's hashing happens while the request is planned: the recorded duration must hold
    it (it did not, on every server, while the clock started after the plan)."""
    name = "http_server_request_duration_seconds_sum"
    before = sample_value(server.port, name, route="/cpu")
    started = time.perf_counter()
    assert get(server.port, "/cpu?n=200000").status == 200
    elapsed = time.perf_counter() - started
    recorded = sample_value(server.port, name, route="/cpu") - before
    assert recorded >= 0.5 * elapsed, (recorded, elapsed)


def test_process_cpu_seconds_is_precise(server: ServerProcess) -> None:
    """process_cpu_seconds_total is the process's CPU time, not whole seconds of it (rust-hyper's
    prometheus crate counted whole seconds: after a minute of light work it still said 0)."""
    for _ in range(20):
        assert get(server.port, "/cpu?n=200000").status == 200
    process = psutil.Process(server.pid)

    def cpu_seconds() -> float:
        times = process.cpu_times()
        return times.user + times.system

    # The process runs while it is read (the scrape is CPU too): bound the metric by reads
    # on either side of it, to /proc's resolution, not by a tolerance. psutil's user and
    # system times are each whole clock ticks, rounded down; a metric may be finer (the
    # rust-hyper's is), so it may pass the later read by up to a tick for each.
    before = cpu_seconds()
    reported = sample_value(server.port, "process_cpu_seconds_total")
    after = cpu_seconds()
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert before - 1e-9 <= reported <= after + 2 * tick + 1e-9, (before, reported, after)


def test_requests_are_counted_by_route_method_status(server: ServerProcess) -> None:
    def count(status: str) -> float:
        return sample_value(
            server.port,
            "http_server_request_duration_seconds_count",
            route="/sleep",
            method="GET",
            status=status,
        )

    ok, bad = count("200"), count("400")
    get(server.port, "/sleep?ms=1")
    get(server.port, "/sleep?ms=oops")
    assert (count("200"), count("400")) == (ok + 1, bad + 1)


def test_open_connections_counts_idle_keep_alive_clients(server: ServerProcess) -> None:
    baseline = sample_value(server.port, "http_server_open_connections")
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    try:
        assert wait_until(
            lambda: sample_value(server.port, "http_server_open_connections") >= baseline + 5,
            timeout=10,
        )
    finally:
        for sock in held:
            sock.close()
    assert wait_until(
        lambda: sample_value(server.port, "http_server_open_connections") <= baseline, timeout=10
    )
