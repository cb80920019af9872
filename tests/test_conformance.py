"""The HTTP contract, checked on every server over real sockets: same routes, same bytes,
same errors, same HTTP/1.1 behaviour."""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import socket
import time

import pytest
from httpclient import Reply, get, raw_exchange, request, sample_value, timed_get, wait_until

from loadtest import histograms
from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import IMPL_HEADER, IMPLS, MAX_BODY_BYTES, OTHER_ROUTE, cpu_digest

JSON = "application/json"
OK_ROUTES = [
    ("/", b"Hello, World!", "text/plain"),
    ("/json", b'{"message":"Hello, World!"}', "application/json"),
    ("/sleep?ms=20", b'{"slept_ms":20}', "application/json"),
    ("/fanout?n=50&ms=20", b'{"children":50,"slept_ms":20}', "application/json"),
    ("/blocking?ms=10&offload=1", b'{"blocked_ms":10,"offload":true,"kind":"python"}', JSON),
    ("/blocking?ms=10&offload=0", b'{"blocked_ms":10,"offload":false,"kind":"python"}', JSON),
    ("/blocking?ms=10&offload=1&kind=c", b'{"blocked_ms":10,"offload":true,"kind":"c"}', JSON),
    ("/blocking?ms=10&offload=0&kind=c", b'{"blocked_ms":10,"offload":false,"kind":"c"}', JSON),
    ("/stream?chunks=3&ms=5", b"chunk 0\nchunk 1\nchunk 2\n", "text/plain"),
    ("/healthz", b"ok", "text/plain"),
]


@pytest.mark.parametrize(("target", "body", "content_type"), OK_ROUTES)
def test_routes_answer_the_contract(
    server: ServerProcess, target: str, body: bytes, content_type: str
) -> None:
    reply = get(server.port, target)
    assert reply.status == 200
    assert reply.body == body
    assert reply.header("Content-Type").startswith(content_type)
    assert reply.header(IMPL_HEADER) == server.impl


def test_cpu_digest(server: ServerProcess) -> None:
    reply = get(server.port, "/cpu?n=1000")
    assert json.loads(reply.body) == {"rounds": 1000, "digest": cpu_digest(1000)}


def test_stream_is_chunked(server: ServerProcess) -> None:
    reply = get(server.port, "/stream?chunks=4&ms=1")
    assert reply.header("Transfer-Encoding") == "chunked"
    assert reply.body.count(b"\n") == 4


def test_echo_returns_body_and_content_type(server: ServerProcess) -> None:
    payload = bytes(range(256)) * 1000
    reply = request(
        server.port, "POST", "/echo", payload, {"Content-Type": "application/x-stackbench"}
    )
    assert (reply.status, reply.body) == (200, payload)
    assert reply.header("Content-Type") == "application/x-stackbench"


@pytest.mark.parametrize(
    ("field", "echoed"),
    [
        (b"Content-Type: \r\n", b"application/octet-stream"),  # empty: as if absent
        (b"Content-Type: text/\xc3\xa9\r\n", b"text/\xc3\xa9"),  # bytes as they came
    ],
    ids=["empty", "non-ascii"],
)
def test_echo_content_type_edge_cases(server: ServerProcess, field: bytes, echoed: bytes) -> None:
    wire = b"POST /echo HTTP/1.1\r\nHost: t\r\n%sContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    answer = raw_exchange(server.port, wire % field)
    head = answer.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 "), answer[:200]
    types = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:")]
    assert [line.split(b":", 1)[1].strip() for line in types] == [echoed], head


def test_a_long_path_is_clipped_in_the_404_message(server: ServerProcess) -> None:
    """contract.py clips the path to 200 characters, not the whole message."""
    path = "/" + "p" * 299
    reply = get(server.port, path)
    assert reply.status == 404
    assert json.loads(reply.body) == {"error": f"no route {path[:200]}"}


def test_echo_accepts_exactly_the_limit(server: ServerProcess) -> None:
    payload = b"x" * MAX_BODY_BYTES
    reply = request(server.port, "POST", "/echo", payload)
    assert reply.status == 200 and len(reply.body) == MAX_BODY_BYTES


def test_echo_reads_a_chunked_request_body(server: ServerProcess) -> None:
    wire = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/x-chunks\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    )
    response = raw_exchange(server.port, wire)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/x-chunks" in head.lower()
    assert body == b"hello, world"


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/no/such/route", 404),
        ("GET", "/json/", 404),
        ("POST", "/json", 405),
        ("POST", "/lag", 405),
        ("DELETE", "/", 405),
        ("GET", "/echo", 405),
        ("GET", "/sleep?ms=60001", 400),
        ("GET", "/sleep?ms=abc", 400),
        ("GET", "/sleep", 400),
        ("GET", "/fanout?n=1001&ms=1", 400),
        ("GET", "/cpu?n=1000001", 400),
        ("GET", "/blocking?ms=10001", 400),
        ("GET", "/blocking?ms=1&kind=rust", 400),
        ("GET", "/stream?chunks=1001&ms=1", 400),
    ],
)
def test_client_mistakes_get_json_errors(
    server: ServerProcess, method: str, target: str, status: int
) -> None:
    reply = request(server.port, method, target)
    assert reply.status == status
    assert reply.header("Content-Type") == "application/json"
    assert json.loads(reply.body)["error"]
    assert reply.header(IMPL_HEADER) == server.impl
    if status == 405:
        assert reply.header("Allow") in ("GET, HEAD", "POST")


def test_options_asterisk_is_an_unknown_route(server: ServerProcess) -> None:
    """`OPTIONS *` (the asterisk-form, RFC 9112 section 3.2.4) names no route: the contract's
    404, with its headers, recorded as any request. (net/http answers it on its own, 200 with
    an empty body, unless its server is kept from it.)"""

    def recorded() -> float:
        return sample_value(
            server.port,
            "http_server_request_duration_seconds_count",
            route=OTHER_ROUTE,
            method="OPTIONS",
            status="404",
        )

    before = recorded()
    reply = request(server.port, "OPTIONS", "*")
    assert (reply.status, reply.body) == (404, b'{"error":"no route *"}')
    assert reply.header("Content-Type") == JSON
    assert reply.header(IMPL_HEADER) == server.impl
    assert recorded() == before + 1


def test_lag_answers_every_tick_since_start(server: ServerProcess) -> None:
    """GET /lag: every scheduler-lag tick so far, HdrHistogram-encoded; two readings a moment
    apart subtract to the ticks between them (the monitor ticks 100 times a second). HEAD
    answers the head alone, and the route is recorded as any other."""

    def recorded() -> float:
        return sample_value(
            server.port, "http_server_request_duration_seconds_count", route="/lag", status="200"
        )

    before = recorded()
    reply = get(server.port, "/lag")
    assert reply.status == 200
    assert reply.header("Content-Type") == JSON
    assert reply.header(IMPL_HEADER) == server.impl
    first = json.loads(reply.body)
    assert list(first) == ["unit", "interval_ms", "count", "histogram"]
    assert (first["unit"], first["interval_ms"]) == ("us", 10)
    earlier = histograms.decode(first["histogram"])
    assert earlier.get_total_count() == first["count"] > 0
    assert earlier.get_max_value() < 60 * 1_000_000  # microseconds: no tick a minute late
    deadline = time.monotonic() + 10
    while (second := json.loads(get(server.port, "/lag").body))["count"] <= first["count"]:
        assert time.monotonic() < deadline, "the lag monitor stopped ticking"
        time.sleep(0.02)
    between = histograms.subtract(histograms.decode(second["histogram"]), earlier)
    assert between.get_total_count() == second["count"] - first["count"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", "/lag")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"")
    assert response.headers["Content-Type"] == JSON
    conn.close()
    assert wait_until(lambda: recorded() >= before + 3, timeout=5)  # two GETs and the HEAD


def test_body_over_limit_is_413_by_content_length(server: ServerProcess) -> None:
    # Announce 2 MiB, send none of it: the server must refuse on the header alone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (2 * MAX_BODY_BYTES)
        )
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413")
    assert get(server.port, "/healthz").status == 200


def test_chunked_body_over_limit_is_413(server: ServerProcess) -> None:
    chunk = b"x" * 65536
    wire = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire += (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * (MAX_BODY_BYTES // len(chunk) + 2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # the server may stop reading once it has seen enough
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(wire)
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413")
    assert get(server.port, "/healthz").status == 200


@pytest.mark.parametrize("target", ["/", "/json", "/sleep?ms=5", "/nope"])
def test_head_has_headers_but_no_body(server: ServerProcess, target: str) -> None:
    full = get(server.port, target)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", target)
    response = conn.getresponse()
    assert response.status == full.status
    assert response.read() == b""
    assert response.headers["Content-Length"] == str(len(full.body))
    # the connection is still in step: a following request gets its own answer
    conn.request("GET", "/json")
    assert conn.getresponse().read() == b'{"message":"Hello, World!"}'
    conn.close()


def test_keep_alive_reuses_one_connection(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    ports = set()
    for target in ["/", "/json", "/sleep?ms=1", "/stream?chunks=2&ms=1", "/nope", "/"]:
        conn.request("GET", target)
        conn.getresponse().read()
        ports.add(conn.sock.getsockname()[1])
    conn.close()
    assert len(ports) == 1


def test_two_pipelined_requests_on_one_connection(server: ServerProcess) -> None:
    wire = (
        b"GET /sleep?ms=30 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    response = raw_exchange(server.port, wire)
    assert response.count(b"HTTP/1.1 200") == 2
    first = response.index(b'{"slept_ms":30}')
    second = response.index(b'{"message":"Hello, World!"}')
    assert first < second  # answered in order


def test_responses_are_not_held_back_by_nagle(server: ServerProcess) -> None:
    """Ten keep-alive requests take less than one 200 ms sleep; with Nagle plus delayed ACK
    each would stall ~40 ms."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    conn.getresponse().read()
    started = time.perf_counter()
    for _ in range(10):
        conn.request("GET", "/")
        conn.getresponse().read()
    ten_requests = time.perf_counter() - started
    conn.close()
    one_sleep, _ = timed_get(server.port, "/sleep?ms=200")
    assert ten_requests < one_sleep


IDENTICAL_TARGETS = [
    ("GET", "/"),
    ("GET", "/json"),
    ("GET", "/sleep?ms=3"),
    ("GET", "/fanout?n=3&ms=2"),
    ("GET", "/cpu?n=12345"),
    ("GET", "/blocking?ms=2&offload=0"),
    ("GET", "/stream?chunks=5&ms=1"),
    ("GET", "/healthz"),
    ("GET", "/missing"),
    ("GET", "/sleep?ms=-5"),
    ("GET", "/fanout?n=0&ms=1"),
    ("PUT", "/json"),
    ("GET", "/echo"),
    ("POST", "/lag"),
    ("OPTIONS", "*"),
]


def _comparable(reply: Reply, impl: str) -> tuple:
    """Status, every header (name and value, the Date's value and the impl's name aside) and
    body: what must be the same whichever server answered."""
    headers = sorted(
        (name.lower(), "<date>" if name.lower() == "date" else value.replace(impl, "<impl>"))
        for name, value in reply.headers.items()
    )
    return reply.status, tuple(headers), reply.body


def test_answers_are_identical_across_servers(servers: dict[str, ServerProcess]) -> None:
    for method, target in IDENTICAL_TARGETS:
        answers = {
            impl: _comparable(request(servers[impl].port, method, target), impl) for impl in IMPLS
        }
        assert len(set(answers.values())) == 1, f"{method} {target}: {answers}"


def test_every_response_says_when_and_who(server: ServerProcess) -> None:
    for method, target in IDENTICAL_TARGETS:
        reply = request(server.port, method, target)
        assert email.utils.parsedate_to_datetime(reply.header("Date")), (method, target)
        assert reply.header("Server") == "stackbench"
        assert reply.header(IMPL_HEADER) == server.impl
