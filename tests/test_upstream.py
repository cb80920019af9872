"""`GET /upstream`: real calls through each server's own pooled HTTP client to a real upstream
(a stackbench aiohttp server, as `stackbench run` uses), with its faults answered.

Every server gets an upstream of its own, so that the upstream's counters (connections
accepted, requests in flight) are that server's client's alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
from httpclient import get, metrics, sample_value, wait_until

from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import IMPLS
from servers.upstream import CLIENTS

POOL = 4
TIMEOUT_S = 1.0
CALLS, CALL_MS = 4, 50
SEQUENTIAL = 200


class Pair:
    """A server whose --upstream is an upstream of its own."""

    def __init__(self, impl: str) -> None:
        self.scrapes = 0
        self.upstream = ServerProcess("aiohttp")
        self.server = ServerProcess(
            impl,
            extra_args=(
                "--upstream", f"http://127.0.0.1:{self.upstream.port}",
                "--upstream-pool", str(POOL),
                "--upstream-timeout", str(TIMEOUT_S),
            ),
        )  # fmt: skip

    def _upstream(self, name: str) -> float:
        self.scrapes += 1  # each scrape is a connection of the upstream's own
        return sample_value(self.upstream.port, name)

    def upstream_in_flight(self) -> float:
        """Requests the upstream is handling, besides the scrape that asks."""
        return self._upstream("http_server_active_requests") - 1

    def upstream_connections(self) -> float:
        """Connections the upstream has accepted, besides the test's own scrapes."""
        return self._upstream("http_server_connections_total") - self.scrapes

    def close(self) -> None:
        for process in (self.server, self.upstream):
            process.__exit__(None, None, None)


@pytest.fixture(scope="module")
def pairs() -> Iterator[dict[str, Pair]]:
    started: dict[str, Pair] = {}
    try:
        for impl in IMPLS:
            started[impl] = Pair(impl)
        yield started
    finally:
        for pair in started.values():
            pair.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once it is closed


def _answered(server: ServerProcess, status: str) -> float:
    """/upstream requests the server's request histogram holds with this status."""
    return sample_value(
        server.port,
        "http_server_request_duration_seconds_count",
        route="/upstream",
        status=status,
    )


def _sequential(pair: Pair) -> tuple[list[float], list[int]]:
    """SEQUENTIAL requests one after the other on one keep-alive connection."""
    import http.client

    seconds, statuses = [], []
    conn = http.client.HTTPConnection("127.0.0.1", pair.server.port, timeout=30)
    try:
        for _ in range(SEQUENTIAL):
            started = time.perf_counter()
            conn.request("GET", f"/upstream?n={CALLS}&ms={CALL_MS}")
            answer = conn.getresponse()
            body = json.loads(answer.read())
            seconds.append(time.perf_counter() - started)
            statuses.append(answer.status)
            assert body == {"calls": CALLS, "status": [200] * CALLS}, body
    finally:
        conn.close()
    return seconds, statuses


def test_calls_overlap_and_reuse_the_pool_on_every_server(pairs: dict[str, Pair]) -> None:
    """200 sequential /upstream?n=4&ms=50 on each server (the servers side by side, each with
    its own upstream): every request waits its 50 ms and no more than about one call's time
    (the four calls overlap: one after another they would take 200 ms), and the upstream
    never sees more connections than the pool holds."""
    before = {impl: pair.upstream_connections() for impl, pair in pairs.items()}
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as workers:
        runs = {impl: workers.submit(_sequential, pair) for impl, pair in pairs.items()}
        results = {impl: run.result() for impl, run in runs.items()}
    problems = []
    for impl, (seconds, statuses) in results.items():
        slow = sum(1 for s in seconds if s > 0.150)
        if set(statuses) != {200} or min(seconds) < CALL_MS / 1000:
            problems.append(f"{impl}: statuses {set(statuses)}, fastest {min(seconds):.3f} s")
        # The median says whether the calls overlap (2 at a time would take >= 100 ms); a
        # few slow requests (12 processes share 2 cores here) are scheduling, not the model.
        if statuses and (statistics.median(seconds) >= 0.100 or slow > SEQUENTIAL // 20):
            problems.append(
                f"{impl}: median {statistics.median(seconds) * 1000:.0f} ms, "
                f"{slow} of {SEQUENTIAL} over 150 ms"
            )
        opened = pairs[impl].upstream_connections() - before[impl]
        if opened > POOL:
            problems.append(f"{impl}: the upstream saw {opened:.0f} new connections (pool {POOL})")
        server = pairs[impl].server
        if not wait_until(lambda s=server: _answered(s, "200") >= SEQUENTIAL, timeout=5):
            problems.append(f"{impl}: {_answered(server, '200'):.0f} /upstream 200s recorded")
    assert not problems, problems


def test_a_client_that_leaves_leaves_no_upstream_call_running(
    pairs: dict[str, Pair], impl: str
) -> None:
    pair = pairs[impl]
    baseline = pair.upstream_in_flight()
    with socket.create_connection(("127.0.0.1", pair.server.port)) as client:
        client.sendall(b"GET /upstream?n=4&ms=30000 HTTP/1.1\r\nHost: test\r\n\r\n")
        assert wait_until(lambda: pair.upstream_in_flight() >= baseline + 4, timeout=10), (
            "the four calls never reached the upstream"
        )
    assert wait_until(lambda: pair.upstream_in_flight() <= baseline, timeout=1.0), (
        f"{impl}: {pair.upstream_in_flight() - baseline:.0f} upstream calls still running 1 s "
        "after the client left"
    )
    assert wait_until(lambda: _answered(pair.server, "499") >= 1, timeout=5)


def test_an_upstream_slower_than_the_timeout_is_a_504_and_its_calls_are_cancelled(
    pairs: dict[str, Pair], impl: str
) -> None:
    pair = pairs[impl]
    baseline = pair.upstream_in_flight()
    reply = get(pair.server.port, "/upstream?n=2&ms=20000")
    assert reply.status == 504, reply.body
    assert "did not answer within 1 s" in json.loads(reply.body)["error"]
    assert wait_until(lambda: pair.upstream_in_flight() <= baseline, timeout=1.0)


def test_an_exhausted_pool_makes_calls_wait_not_open_more_connections(
    pairs: dict[str, Pair], impl: str
) -> None:
    """Eight calls through a pool of four: two waves, the upstream sees at most four
    connections; twelve 400 ms calls (three waves) do not fit the 1 s deadline: 504."""
    pair = pairs[impl]
    before = pair.upstream_connections()
    started = time.perf_counter()
    reply = get(pair.server.port, "/upstream?n=8&ms=300")
    took = time.perf_counter() - started
    assert reply.status == 200 and json.loads(reply.body)["status"] == [200] * 8
    assert took >= 0.6, f"8 calls of 300 ms through {POOL} connections took {took:.3f} s"
    assert pair.upstream_connections() - before <= POOL
    assert get(pair.server.port, "/upstream?n=12&ms=400").status == 504


def test_clients_that_leave_while_waiting_for_the_pool_do_not_grow_it(
    pairs: dict[str, Pair], impl: str
) -> None:
    """One request takes the whole pool; another's calls wait for it and its client leaves;
    then a request wants twice the pool. The upstream never sees more than the pool's
    connections, and every call is answered (a waiter killed inside urllib3's own queue used
    to hand back a slot it never took, on gevent)."""
    pair = pairs[impl]
    before = pair.upstream_connections()
    holder = socket.create_connection(("127.0.0.1", pair.server.port))
    holder.sendall(f"GET /upstream?n={POOL}&ms=600 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert wait_until(lambda: pair.upstream_in_flight() >= POOL, timeout=5)
    with socket.create_connection(("127.0.0.1", pair.server.port)) as waiter:
        waiter.sendall(f"GET /upstream?n={POOL}&ms=10 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        time.sleep(0.1)  # its calls are queued for a connection; then it leaves
    with holder:
        holder.settimeout(10)
        assert holder.recv(65536).startswith(b"HTTP/1.1 200 ")
    reply = get(pair.server.port, f"/upstream?n={2 * POOL}&ms=50")
    assert reply.status == 200, reply.body
    assert pair.upstream_connections() - before <= POOL


def test_a_connection_back_in_the_pool_is_out_of_its_requests_reach() -> None:
    """threads-h11 aborts a request's calls by shutting their sockets; a connection one of
    them has put back in the pool (where another request may take it) must be out of reach."""
    from servers.upstream import UpstreamConfig
    from servers.upstream.sync_client import CallGroup, SyncUpstream

    client = SyncUpstream(UpstreamConfig.parse("http://127.0.0.1:9"))
    returned, kept = client.pool._get_conn(), client.pool._get_conn()  # as two calls take them
    pairs_ = [socket.socketpair() for _ in range(2)]
    returned.sock, kept.sock = pairs_[0][0], pairs_[1][0]
    group = CallGroup()
    for connection in (returned, kept):
        group.join(connection)
    client.pool._put_conn(returned)  # done with: back in the pool
    group.abort()
    assert returned.sock.send(b"x") == 1  # untouched
    with pytest.raises(OSError):
        kept.sock.send(b"x")  # shut: its blocked read would end
    for a, b in pairs_:
        a.close()
        b.close()


def test_no_client_sends_a_call_twice(impl: str) -> None:
    """An upstream that closes every connection without answering: 502, and each call
    reached it once (aiohttp's client resends an idempotent request unless told not to)."""
    received = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]

        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = listener.accept()
                    with connection:
                        if connection.recv(65536):
                            received.append(1)

        threading.Thread(target=accept, daemon=True).start()
        with ServerProcess(impl, extra_args=("--upstream", f"http://127.0.0.1:{port}")) as s:
            reply = get(s.port, "/upstream?n=1&ms=0")
    assert reply.status == 502, reply.body
    assert len(received) == 1, f"{impl} sent one call {len(received)} times"


def test_an_upstream_that_refuses_connections_is_a_502_within_a_second(impl: str) -> None:
    with ServerProcess(impl, extra_args=("--upstream", f"http://127.0.0.1:{_closed_port()}")) as s:
        started = time.perf_counter()
        reply = get(s.port, "/upstream?n=3&ms=10")
        took = time.perf_counter() - started
        assert reply.status == 502, reply.body
        assert "connection refused" in json.loads(reply.body)["error"]
        assert took < 1.0, f"{took:.2f} s to report a refused connection"
        # Recorded once the response is out: a moment after the client has it.
        assert wait_until(lambda: _answered(s, "502") == 1, timeout=5)
        # A refused upstream is routine: answered, not logged as a crash.
        assert "Traceback" not in s.stderr_path.read_text(errors="replace")


def test_without_an_upstream_the_route_says_so(server: ServerProcess) -> None:
    reply = get(server.port, "/upstream?n=1&ms=0")
    assert reply.status == 503
    assert "--upstream" in json.loads(reply.body)["error"]
    assert get(server.port, "/upstream?n=0&ms=0").status == 400
    assert get(server.port, "/upstream?n=1&ms=60001").status == 400


def test_server_info_names_the_http_client(server: ServerProcess, impl: str) -> None:
    info = metrics(server.port)["stackbench_server_info"].samples[0].labels
    library, _, version = info["http_client"].partition(" ")
    assert library == CLIENTS[impl] and version[:1].isdigit()
