"""The database routes on a real PostgreSQL (the session's throwaway cluster) through each
server's own driver: the same bytes everywhere, TechEmpower's parameter rule, /updates writing
what it answers, and the faults (503 without a database, 502 when it refuses, 504 past the
deadline, 499 when the client leaves, the query cancelled and the pool back within a second)."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import DB_IMPLS, DB_POOL
from httpclient import get, sample_value, wait_until

from loadtest.orchestrator.postgres import PostgresCluster
from loadtest.orchestrator.serverproc import ServerProcess
from servers.db.config import application_name
from servers.db.rows import ADDED_FORTUNE

SAME_BYTES = (
    "/db?id=1",
    "/db?id=10000",
    "/queries?queries=20&seed=42",
    "/queries?queries=foo&seed=3",
    "/queries?queries=501&seed=5",
    "/fortunes",
    "/dbsleep?ms=0",
)


@pytest.fixture(params=DB_IMPLS)
def db_impl(request: pytest.FixtureRequest) -> str:
    return request.param


def _activity(cluster: PostgresCluster, impl: str) -> tuple[int, int]:
    """The server's connections to the database: (running pg_sleep, all)."""
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'active' AND position('pg_sleep' in query) > 0),"
            " count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name(impl),),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_same_bytes_on_every_server(
    db_servers: dict[str, ServerProcess], database: PostgresCluster
) -> None:
    with psycopg.connect(database.url) as conn:
        numbers = dict(conn.execute("SELECT id, randomnumber FROM world").fetchall())
    for target in SAME_BYTES:
        answers = {impl: get(server.port, target) for impl, server in db_servers.items()}
        first = answers[DB_IMPLS[0]]
        assert first.status == 200, (target, first.body)
        for impl, reply in answers.items():
            assert (reply.status, reply.body) == (200, first.body), (impl, target, reply.body)
            assert reply.header("Content-Type") == first.header("Content-Type"), (impl, target)
        if target.startswith("/db?"):
            row = json.loads(first.body)
            assert row == {"id": row["id"], "randomNumber": numbers[row["id"]]}
            assert first.header("Content-Type") == "application/json"
        elif target.startswith("/queries"):
            rows = json.loads(first.body)
            assert all(row["randomNumber"] == numbers[row["id"]] for row in rows)
    fortunes = get(db_servers[DB_IMPLS[0]].port, "/fortunes")
    assert fortunes.header("Content-Type") == "text/html; charset=utf-8"
    page = fortunes.body.decode()
    assert "<td>11</td><td>&lt;script&gt;alert(&quot;This should not be displayed" in page
    assert "<td>12</td><td>フレームワークのベンチマーク</td>" in page
    assert f"<td>0</td><td>{ADDED_FORTUNE[1]}</td>" in page
    assert page.count("<tr>") == 14  # the head row, 12 fortunes, the one added


def test_queries_clamp_as_techempower_says(db_servers: dict[str, ServerProcess]) -> None:
    """?queries= is never a 400: missing, not an integer or below 1 is 1, above 500 is 500."""
    for server in db_servers.values():
        for raw, count in (("", 1), ("queries=", 1), ("queries=foo", 1), ("queries=0", 1),
                           ("queries=-3", 1), ("queries=7", 7), ("queries=501", 500),
                           ("queries=99999999999999", 500)):  # fmt: skip
            for route in ("/queries", "/updates"):
                reply = get(server.port, f"{route}?{raw}")
                assert reply.status == 200, (server.impl, route, raw, reply.body)
                rows = json.loads(reply.body)
                assert len(rows) == count, (server.impl, route, raw)
                assert all(set(row) == {"id", "randomNumber"} for row in rows)
                assert all(1 <= row["id"] <= 10_000 for row in rows)
        for target in ("/db?id=0", "/db?id=10001", "/db?id=x", "/dbsleep", "/dbsleep?ms=10001"):
            assert get(server.port, target).status == 400, (server.impl, target)


def test_updates_write_what_they_answer(
    db_servers: dict[str, ServerProcess], database: PostgresCluster
) -> None:
    for seed, server in enumerate(db_servers.values(), start=1000):
        reply = get(server.port, f"/updates?queries=20&seed={seed}")
        assert reply.status == 200, (server.impl, reply.body)
        rows = json.loads(reply.body)
        assert len(rows) == 20
        with psycopg.connect(database.url) as conn:
            held = dict(
                conn.execute(
                    "SELECT id, randomnumber FROM world WHERE id = ANY(%s)",
                    ([row["id"] for row in rows],),
                ).fetchall()
            )
        assert {row["id"]: row["randomNumber"] for row in rows} == held, server.impl


def test_concurrent_updates_do_not_deadlock(db_servers: dict[str, ServerProcess]) -> None:
    """Overlapping batches on every server at once: sorted ids, so no deadlock (a deadlock
    would be a 502 from PostgreSQL's detector)."""
    targets = [
        (server.port, f"/updates?queries=50&seed={index % 3}")
        for index in range(8)
        for server in db_servers.values()
    ]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda target: get(*target).status, targets))
    assert statuses == [200] * len(targets)


def test_without_a_database_the_routes_answer_503() -> None:
    for impl in DB_IMPLS:
        with ServerProcess(impl) as server:
            for target in ("/db", "/queries", "/fortunes", "/updates", "/dbsleep?ms=1"):
                reply = get(server.port, target)
                assert reply.status == 503, (impl, target)
                assert b"--database" in reply.body


def _left(port: int) -> float:
    """/dbsleep requests recorded as the client's (499)."""
    return sample_value(
        port, "http_server_request_duration_seconds_count", route="/dbsleep", status="499"
    )


def test_a_client_that_leaves_cancels_the_query(
    db_servers: dict[str, ServerProcess], database: PostgresCluster
) -> None:
    """A client gone mid-query: recorded as 499, the query stopped on the server and the
    server's connections back within its pool within a second."""
    for impl, server in db_servers.items():
        before = _left(server.port)
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /dbsleep?ms=8000 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda impl=impl: _activity(database, impl)[0] == 1, 5), impl
        sock.close()
        left = time.monotonic()
        assert wait_until(lambda impl=impl: _activity(database, impl)[0] == 0, 1.0), impl
        assert time.monotonic() - left < 1.0
        assert _activity(database, impl)[1] <= DB_POOL
        assert wait_until(lambda port=server.port, then=before: _left(port) == then + 1, 2), impl
        assert get(server.port, "/db?id=5").status == 200  # the pool serves on


def test_the_pool_never_grows_past_its_size(
    db_servers: dict[str, ServerProcess], database: PostgresCluster
) -> None:
    """Three times the pool's worth of /dbsleep at once: they wait for connections (so the
    last ones finish after three sleeps) and the server never holds more than the pool."""
    for impl, server in db_servers.items():
        most = 0
        with concurrent.futures.ThreadPoolExecutor(3 * DB_POOL) as pool:
            started = time.perf_counter()
            replies = [pool.submit(get, server.port, "/dbsleep?ms=400") for _ in range(3 * DB_POOL)]
            while not all(reply.done() for reply in replies):
                most = max(most, _activity(database, impl)[1])
                time.sleep(0.05)
            took = time.perf_counter() - started
        assert [reply.result().status for reply in replies] == [200] * (3 * DB_POOL), impl
        assert most <= DB_POOL, (impl, most)
        assert took >= 3 * 0.4, (impl, took)


@pytest.fixture(scope="module")
def short_deadline(database: PostgresCluster) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    try:
        for impl in DB_IMPLS:
            started[impl] = ServerProcess(
                impl,
                extra_args=("--database", database.url, "--db-pool", "2", "--db-timeout", "0.5"),
            )
        yield started
    finally:
        for server in started.values():
            server.__exit__(None, None, None)


def test_past_the_deadline_504_and_the_query_cancelled(
    short_deadline: dict[str, ServerProcess], database: PostgresCluster
) -> None:
    for impl, server in short_deadline.items():
        started = time.perf_counter()
        reply = get(server.port, "/dbsleep?ms=3000")
        took = time.perf_counter() - started
        assert reply.status == 504, (impl, reply.body)
        assert 0.45 <= took < 1.5, (impl, took)
        assert wait_until(lambda impl=impl: _activity(database, impl)[0] == 0, 1.0), impl
        assert get(server.port, "/dbsleep?ms=10").status == 200, impl


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_database_down_at_start_answers_502(db_impl: str) -> None:
    """The server starts anyway, answers 502 at once (no retries), logs one line, no
    traceback."""
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/stackbench"
    with ServerProcess(db_impl, extra_args=("--database", url)) as server:
        for target in ("/db", "/fortunes", "/dbsleep?ms=1", "/db"):
            started = time.perf_counter()
            reply = get(server.port, target)
            assert reply.status == 502, (target, reply.body)
            assert time.perf_counter() - started < 1.0
            assert b"failed" in reply.body
        assert get(server.port, "/json").status == 200
        log = server.stderr_path.read_text()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) == 1 and "database" in lines[0], log


def test_a_database_killed_mid_run_is_502_or_504_and_recovered_from() -> None:
    """SIGKILL the postmaster under the servers (a cluster of this test's own): requests fail
    502 (or 504 at the deadline), never hang or 500; once it is back, they succeed again
    without a restart (broken connections are replaced)."""
    with PostgresCluster(max_connections=60) as cluster:
        servers = [
            ServerProcess(
                impl,
                extra_args=("--database", cluster.url, "--db-pool", "2", "--db-timeout", "2"),
            )
            for impl in DB_IMPLS
        ]
        try:
            for server in servers:
                assert get(server.port, "/db?id=3").status == 200, server.impl
            cluster.kill()
            for server in servers:
                started = time.perf_counter()
                reply = get(server.port, "/db?id=3")
                assert reply.status in (502, 504), (server.impl, reply.status, reply.body)
                assert time.perf_counter() - started < 3.0
                assert get(server.port, "/json").status == 200
            cluster.restart()
            for server in servers:
                assert wait_until(
                    lambda port=server.port: get(port, "/db?id=3").status == 200, 5
                ), server.impl
                log = server.stderr_path.read_text()
                assert "Traceback" not in log, (server.impl, log)
        finally:
            for server in servers:
                server.__exit__(None, None, None)
