"""Real servers on real sockets: each implementation runs as its own `stackbench serve`
subprocess on a free loopback port, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import IMPLS
from servers.native import NATIVE_SERVERS, binary

# Tests that pin processes to CPUs and measure (Locust runs, wrk, benchmarks, Prometheus) carry
# `pytestmark = pytest.mark.xdist_group("measuring")`: they run one after another on one xdist
# worker, so no two of them share the machine; the other worker takes the suites that hold each
# server to the contract, which wait far more than they compute (pyproject: `-n 2 --dist
# loadgroup`).


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    for impl in IMPLS:
        if impl in NATIVE_SERVERS:
            binary(impl)  # built (or found in the cache) before any start-up clock runs
    try:
        for impl in IMPLS:
            started[impl] = ServerProcess(impl)
        yield started
    finally:
        for server in started.values():
            server.__exit__(None, None, None)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server(servers: dict[str, ServerProcess], impl: str) -> ServerProcess:
    if servers[impl].process.poll() is not None:
        pytest.fail(f"{impl} server died: {servers[impl].stderr_tail()}")
    return servers[impl]
