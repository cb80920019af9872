"""Real servers on real sockets: each implementation runs as its own `stackbench serve`
subprocess on a free loopback port, started once per test session."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from loadtest.orchestrator.postgres import PostgresCluster
from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import IMPLS
from servers.native import NATIVE_SERVERS, binary

# Tests that pin processes to CPUs and measure (Locust runs, wrk, benchmarks, Prometheus) carry
# `pytestmark = pytest.mark.xdist_group("measuring")`: they run one after another on one xdist
# worker, so no two of them share the machine; the other worker takes the suites that hold each
# server to the contract, which wait far more than they compute (pyproject: `-n 2 --dist
# loadgroup`).
#
# What must have the machine to itself (test_run.py's runs: whether Locust was the limit is
# judged by its CPU share) holds an exclusive lock while it runs; every other test holds a shared
# one, so the other worker pauses between tests meanwhile (each hold is one run, well inside the
# 180 s a test may take, waiting included).
_LOCK = Path(tempfile.gettempdir()) / (
    f"stackbench-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}.lock"
)


@contextmanager
def _locked(mode: int) -> Iterator[None]:
    with _LOCK.open("a") as lock:
        fcntl.flock(lock, mode)
        yield


@pytest.fixture(scope="session")
def alone() -> Callable[[], AbstractContextManager[None]]:
    """For module fixtures that measure: `with alone(): ...`."""
    return lambda: _locked(fcntl.LOCK_EX)


@pytest.fixture
def machine_alone() -> Iterator[None]:
    with _locked(fcntl.LOCK_EX):
        yield


@pytest.fixture(autouse=True)
def _sharing_the_machine(request: pytest.FixtureRequest) -> Iterator[None]:
    if "machine_alone" in request.fixturenames:
        yield  # the test holds the exclusive lock
        return
    with _locked(fcntl.LOCK_SH):
        yield


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


# -- the database routes: one throwaway PostgreSQL per test session (per xdist worker), and the
# servers pointed at it. Separate from `servers`, which the other suites use without a database.

DB_POOL = 4  # small, so that the tests can fill it
# The servers that serve the database routes so far (the native servers' drivers are to come).
DB_IMPLS = tuple(impl for impl in IMPLS if impl not in NATIVE_SERVERS)


@pytest.fixture(scope="session")
def database() -> Iterator[PostgresCluster]:
    # Every server's pool, twice (a test restarts servers), and room for the tests' own.
    with PostgresCluster(max_connections=len(IMPLS) * DB_POOL * 2 + 30) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def db_servers(database: PostgresCluster) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    try:
        for impl in DB_IMPLS:
            if impl in NATIVE_SERVERS:
                binary(impl)
            started[impl] = ServerProcess(
                impl, extra_args=("--database", database.url, "--db-pool", str(DB_POOL))
            )
        yield started
    finally:
        for server in started.values():
            server.__exit__(None, None, None)
