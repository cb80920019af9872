"""The runtime tier's shared HTTP core, driven without I/O: bytes in, operations out.

Every runtime-tier server (trio, gevent-h11, asyncio-h11, threads-h11) is this state machine
plus its runtime's reads, writes and waits; what it decides is tested here, fast, and the same
behaviour over real sockets in test_conformance and test_http_framing.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from email.utils import formatdate

import pytest

from servers.contract import IMPL_HEADER, Sleep
from servers.protocol.h11_connection import (
    RECEIVE,
    SEND_EOF,
    ConnectionCore,
    Wait,
    Watched,
)
from servers.telemetry import DisabledTelemetry, ServerInfo

IMPL = "core-test"


class RecordingTelemetry(DisabledTelemetry):
    """The telemetry calls a core makes, kept for the test to read."""

    def __init__(self) -> None:
        super().__init__(ServerInfo(IMPL, "none", "0", "h11"))
        self.finished: list[tuple[str, str, int]] = []

    def request_finished(self, route: str, method: str, status: int, started: float) -> None:
        self.finished.append((route, method, status))


class Peer:
    """The client's side of one core: feeds it bytes, collects what it writes."""

    def __init__(self) -> None:
        self.telemetry = RecordingTelemetry()
        self.core = ConnectionCore(IMPL, self.telemetry)
        self.steps: Generator[object, object, None] = self.core.run()
        self.written = b""
        self.ended = False
        self.half_closed = False
        self.pending = self._advance(None)

    def _advance(self, value: object) -> object:
        """Run the core until it asks to read or to wait; collect writes on the way."""
        try:
            operation = self.steps.send(value)
            while type(operation) is bytes or operation is SEND_EOF:
                if operation is SEND_EOF:
                    self.half_closed = True
                else:
                    self.written += operation
                operation = self.steps.send(None)
        except StopIteration:
            self.ended = True
            return None
        return operation

    def send(self, data: bytes) -> bytes:
        """Give the core `data` as one read; return what it wrote in answer."""
        assert self.pending is RECEIVE, f"the core is not reading: {self.pending!r}"
        before = len(self.written)
        self.pending = self._advance(data)
        return self.written[before:]

    def resume(self, watched: Watched) -> bytes:
        assert type(self.pending) is Wait
        before = len(self.written)
        self.pending = self._advance(watched)
        return self.written[before:]


def parse(wire: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Responses in `wire`, each as (status line, headers by lower-case name, body)."""
    responses = []
    while wire:
        head, _, rest = wire.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        responses.append((status, headers, rest[:length]))
        wire = rest[length:]
    return responses


def get(target: str = "/", extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def test_a_get_is_answered_with_the_contract_head_and_the_connection_stays_open() -> None:
    peer = Peer()
    [(status, headers, body)] = parse(peer.send(get()))
    assert status == "HTTP/1.1 200 OK"
    assert body == b"Hello, World!"
    assert set(headers) == {"content-type", "content-length", "date", "server", "x-stackbench-impl"}
    assert headers["content-length"] == "13"
    assert headers[IMPL_HEADER.lower()] == IMPL
    assert peer.pending is RECEIVE and not peer.half_closed
    assert peer.telemetry.finished == [("/", "GET", 200)]


def test_pipelined_requests_are_answered_in_order_from_one_read() -> None:
    peer = Peer()
    answers = parse(peer.send(get("/") + get("/json") + get("/nowhere")))
    assert [status for status, _, _ in answers] == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
    ]
    assert answers[1][2] == b'{"message":"Hello, World!"}'
    assert answers[1][1]["content-type"] == "application/json"


def test_each_response_head_fits_its_own_response_though_heads_are_reused() -> None:
    """Heads are kept per second by (status, type, length, headers): two echoes of the same
    length with different types, and of different lengths, each get their own."""
    peer = Peer()
    for content_type, body in (("text/a", b"abc"), ("text/b", b"xyz"), ("text/a", b"abcdef")):
        extra = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        [(status, headers, echoed)] = parse(peer.send(get("/echo", extra, "POST") + body))
        assert status == "HTTP/1.1 200 OK"
        assert (headers["content-type"], headers["content-length"], echoed) == (
            content_type,
            str(len(body)),
            body,
        )


def test_the_date_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = Peer()
    for now in (1_000_000_000.0, 1_000_000_001.5):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        [(_, headers, _)] = parse(peer.send(get()))
        assert headers["date"] == formatdate(int(now), usegmt=True)


def test_head_has_the_get_head_and_no_body() -> None:
    peer = Peer()
    wire = peer.send(get(method="HEAD"))
    assert wire.endswith(b"\r\n\r\n") and b"Hello" not in wire
    assert b"Content-Length: 13\r\n" in wire


def test_connection_close_half_closes_then_reads_until_the_client_closes() -> None:
    peer = Peer()
    [(_, headers, _)] = parse(peer.send(get(extra="Connection: close\r\n")))
    assert headers["connection"] == "close"
    assert peer.half_closed and peer.pending is RECEIVE  # lingering
    assert peer.core.waiting_for == "linger"
    peer.send(b"anything the client still sends is dropped")
    assert peer.send(b"") == b"" and peer.ended


def test_a_refused_head_is_answered_once_and_what_follows_it_is_not_served() -> None:
    peer = Peer()
    smuggled = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get("/smuggled")
    )
    [(status, headers, body)] = parse(peer.send(smuggled))
    assert status.startswith("HTTP/1.1 400 ")
    assert headers["connection"] == "close" and b'"error"' in body
    assert peer.half_closed
    assert peer.telemetry.finished == [("other", "other", 400)]


def test_a_wait_is_handed_to_the_runtime_and_a_client_that_leaves_counts_as_499() -> None:
    peer = Peer()
    assert peer.send(get("/sleep?ms=5")) == b""
    assert peer.pending == Wait(Sleep(5))
    assert peer.resume(Watched(client_gone=True)) == b""
    assert peer.ended
    assert peer.telemetry.finished == [("/sleep", "GET", 499)]


def test_a_request_pipelined_during_a_wait_is_served_after_it() -> None:
    peer = Peer()
    peer.send(get("/sleep?ms=5"))
    answers = parse(peer.resume(Watched(received=get("/healthz"))))
    assert [body for _, _, body in answers] == [b'{"slept_ms":5}', b"ok"]
    assert peer.pending is RECEIVE


def test_a_head_in_pieces_is_one_request() -> None:
    peer = Peer()
    request = get("/json")
    for byte in request[:-1]:
        assert peer.send(bytes([byte])) == b""
    assert peer.core.waiting_for == "head"  # the header timeout runs from the first byte
    [(status, _, _)] = parse(peer.send(request[-1:]))
    assert status == "HTTP/1.1 200 OK"
    assert peer.core.waiting_for == "idle"
