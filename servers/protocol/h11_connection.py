"""One HTTP/1.1 connection, free of I/O: h11 turns bytes into events, this turns events into
responses, and asks its runtime for the rest.

The runtime tier (trio, gevent-h11, asyncio-h11, threads-h11) serves every connection with this
one state machine, so those servers differ only in how they wait, read, write, spawn and
cancel. `ConnectionCore.run()` is a generator that yields what it needs done:

    RECEIVE     read some bytes (b"" at end of file); send back what was read
    bytes       write them
    SEND_EOF    half-close: the server will write nothing more (reads go on)
    Wait(work)  carry out a plan's waiting (sleep, fan out, call the upstream, call a blocking
                library, pause a stream) while watching the socket; send back a `Watched`
                (for an Upstream, with the response in `outcome`)

(Plain bytes and two constants rather than an object per operation: a `GET /` asks for two
operations, and on this interpreter making and matching an object costs as much as a tenth of
what the bare h11 loop spends on the whole request.)

and each runtime drives it with its own I/O (`await` in trio and asyncio, plain calls in gevent
and threads). While it waits to read, `waiting_for` and `waiting_since` say for what and since
when, so that the server's sweeping task can apply `policy.expired` to it.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass

import h11

from servers import contract
from servers.contract import (
    Blocking,
    Database,
    Echo,
    Fanout,
    Lag,
    Metrics,
    Reply,
    Response,
    Sleep,
    Stream,
    Upstream,
)
from servers.lifecycle import (
    log_refusal,
    reason,
    response_headers,
    stream_headers,
    wire_response,
)
from servers.protocol import framing
from servers.protocol.framing import Rejection
from servers.protocol.policy import Waiting
from servers.telemetry import CLIENT_CLOSED_STATUS, Telemetry

__all__ = [
    "RECEIVE",
    "SEND_EOF",
    "ConnectionCore",
    "Pause",
    "Receive",
    "SendEOF",
    "Wait",
    "Watched",
]


class Receive:
    """Read what the client sent next (b"" when it closed its side). Its one instance is
    RECEIVE."""

    __slots__ = ()


class SendEOF:
    """Shut the connection's writing side: the client reads end-of-file after the response.
    Its one instance is SEND_EOF."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Pause:
    """The gap between two chunks of a streamed response."""

    ms: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Carry out `work`, watching the socket meanwhile (except for a blocking call, which no
    runtime can interrupt): if the client leaves, cancel the work and report it gone."""

    work: Sleep | Fanout | Upstream | Blocking | Pause


@dataclass(frozen=True, slots=True)
class Watched:
    """How a Wait ended: whether the client left, and any bytes it sent meanwhile (a
    pipelined request, kept for the next cycle)."""

    client_gone: bool = False
    received: bytes = b""
    outcome: Response | None = None  # what an Upstream's calls came to


NOT_GONE = Watched()
RECEIVE = Receive()
SEND_EOF = SendEOF()
Operation = Receive | bytes | SendEOF | Wait


# Per process (every connection of a server sees the same load generator's heads).
ACCEPTED_HEADS = framing.AcceptedHeads()


class _ResponseEvents:
    """h11 `Response` events by response head, made again when the Date changes (once a
    second). h11 validates every header of every event it is given; the heads a server sends
    are few (the constant routes, the errors), and validating the same five headers again for
    each `GET /` cost ~45k instructions, a tenth of the whole request."""

    LIMIT = 256  # distinct heads kept per second (Content-Length varies with /echo's body)

    def __init__(self) -> None:
        self.second = -1
        self.events: dict[tuple[object, ...], h11.Response] = {}

    def event(self, impl: str, response: Response) -> h11.Response:
        events = self.events  # one dict throughout, though threads-h11 may swap it meanwhile
        # Forward only, so that a thread that read the clock just before another moved the
        # cache on does not move it back; a clock stepped back by more than that resets it.
        if (now := int(time.time())) > self.second or now < self.second - 1:
            events = {}
            self.second, self.events = now, events
        key = (
            impl,
            response.status,
            response.content_type,
            len(response.body),
            response.headers,
            response.close_connection,
        )
        event = events.get(key)
        if event is None:
            event = h11.Response(
                status_code=response.status,
                # As bytes: h11 encodes str values as ASCII, and /echo gives back a client's
                # Content-Type byte for byte (obs-text included: it answered 500 on those).
                headers=[
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in response_headers(impl, response)
                ],
                reason=reason(response.status),
            )
            if len(events) < self.LIMIT:
                events[key] = event
        return event


_RESPONSE_EVENTS = _ResponseEvents()


def _address(peer: Callable[[], str | None] | None) -> str | None:
    try:
        return peer() if peer is not None else None
    except OSError:  # the client has gone already
        return None


def _connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=framing.MAX_HEAD_BYTES)


class ClientGone(Exception):
    """The client closed its connection while its request was being handled."""


class ConnectionCore:
    def __init__(
        self,
        impl: str,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.monotonic,
        peer: Callable[[], str | None] | None = None,
    ) -> None:
        self.impl = impl
        self.telemetry = telemetry
        self.clock = clock
        self.peer = peer  # the client's address (asked only for a refusal's log line)
        self.http = _connection()
        # The request's chunked body, followed by the framing policy (h11 is lenient about
        # chunk lines on purpose): fed every byte before h11 is.
        self.chunks: framing.ChunkedBody | None = None
        self.waiting_for: Waiting = None
        self.waiting_since = 0.0
        # Set by a draining server: finish the request in hand, then close.
        self.closing = False
        self.peer_closed = False  # the client has closed its side
        self.head_request = False  # the request in hand is a HEAD

    def run(self) -> Generator[Operation, object, None]:
        try:
            while not self.closing:
                request = yield from self._next_request()
                if request is None:
                    return
                yield from self._handle(request)
                if self.http.our_state is not h11.DONE or self.http.their_state is not h11.DONE:
                    # Connection: close, an unread body, or a client that left.
                    yield from self._linger()
                    return
                self.http.start_next_cycle()
        except Rejection as rejection:
            yield from self._refuse(rejection)
        except ClientGone:
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
            yield from self._send_error(500, "internal error")
            yield from self._linger()
        finally:
            self.waiting_for = None

    # -- reading -------------------------------------------------------------------------

    def _receive(self, waiting: Waiting) -> Generator[Operation, object, bytes]:
        if self.waiting_for != waiting:
            self.waiting_for, self.waiting_since = waiting, self.clock()
        data = yield RECEIVE
        assert isinstance(data, bytes)
        if not data:
            self.peer_closed = True
        if self.chunks is not None:
            self.chunks.feed(data)
        self.http.receive_data(data)
        return data

    def _next_request(self) -> Generator[Operation, object, h11.Request | None]:
        """The next request's head, checked against the framing policy (raises Rejection);
        None when the client or a drain ends the connection."""
        # The head's raw bytes, for the byte-level checks h11 does not make: what h11 holds
        # already (a pipelined request), then what arrives until h11 has a whole head.
        self.head_request = False
        self.chunks = None
        waiting: Waiting = "idle"
        while True:
            raw = self.http.trailing_data[0]
            more: list[bytes] = []  # a head in several reads (rare: kept apart, joined once)
            try:
                event = self.http.next_event()
                if event is h11.NEED_DATA:
                    raw += yield from self._receive(waiting)
                    # The head has begun: all of it must arrive within the header timeout.
                    while (event := self.http.next_event()) is h11.NEED_DATA:
                        more.append((yield from self._receive("head")))
                break
            except h11.RemoteProtocolError as exc:
                received = raw + b"".join(more)
                if received[:2] == b"\r\n":
                    # Empty lines before a request line, which h11 refuses and RFC 9112
                    # section 2.2 has a server ignore: h11 again on what follows them.
                    self._restart(received[framing.empty_lines(received) :])
                    waiting = "head"
                    continue
                self.head_request = received.startswith(b"HEAD ")
                # h11's verdict, unless the policy's own reading of the bytes says otherwise
                # (so that every server answers a given request with the same status).
                raise framing.verdict_on_raw(received) or Rejection(
                    exc.error_status_hint, str(exc) or "malformed request"
                ) from None
        self.waiting_for = None  # handling the request has no such limit
        if not isinstance(event, h11.Request):
            return None
        self.head_request = event.method == b"HEAD"  # a refusal then has no body either
        if more:
            raw += b"".join(more)
        if len(raw) <= framing.MAX_REMEMBERED_HEAD_BYTES and raw in ACCEPTED_HEADS:
            return event  # the same bytes, so the same head, were accepted before
        rejection = framing.check_unfolded_head(
            event.method,
            event.target,
            event.http_version,
            event.headers.raw_items(),
            raw,
            lambda: raw[: len(raw) - len(self.http.trailing_data[0])],
        )
        if rejection is not None:
            raise rejection
        if any(name == b"transfer-encoding" for name, _ in event.headers):
            # (The policy has accepted its Transfer-Encoding: chunked.) Its lines so far are
            # what h11 holds past the head; a chunked head is not remembered, so that every
            # one gets here.
            self.chunks = framing.ChunkedBody()
            self.chunks.feed(self.http.trailing_data[0])
            return event
        ACCEPTED_HEADS.remember(raw, len(raw))  # the head and what came with it
        return event

    def _restart(self, data: bytes) -> None:
        """A new h11 connection, given `data` (between requests, h11 keeps nothing else)."""
        closed = self.http.trailing_data[1]
        self.http = _connection()
        self.http.receive_data(data)
        if closed:
            self.http.receive_data(b"")

    def _next_event(self, waiting: Waiting) -> Generator[Operation, object, h11.Event]:
        while True:
            if self.chunks is not None and self.chunks.broken is not None:
                # h11 would read on; its own error for a broken body takes the same path.
                raise h11.RemoteProtocolError(self.chunks.broken.message)
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            yield from self._receive(waiting)

    def _read_body(
        self, limit: int, keep: bool = True, first: h11.Event | type[h11.NEED_DATA] | None = None
    ) -> Generator[Operation, object, bytes | None]:
        """The request body, or None once it exceeds `limit` (the rest is left unread and the
        connection closes after the response). `first`: an event already taken from h11."""
        if self.http.they_are_waiting_for_100_continue:
            yield self.http.send(h11.InformationalResponse(status_code=100, headers=[]))
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                if first is None or first is h11.NEED_DATA:
                    event = yield from self._next_event("body")
                else:
                    event = first
                first = None
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        return None
                    if keep:
                        chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                elif isinstance(event, h11.ConnectionClosed):
                    raise ClientGone
        finally:
            self.waiting_for = None

    # -- handling ------------------------------------------------------------------------

    def _handle(self, request: h11.Request) -> Generator[Operation, object, None]:
        method = request.method.decode("ascii", "replace")
        head = method == "HEAD"
        # Timed from before the plan: planning /cpu is its work (the hashing).
        started = self.telemetry.request_started()
        route, plan = contract.plan(method, request.target.decode("latin-1"))
        status = CLIENT_CLOSED_STATUS  # stays so if the client leaves first
        try:
            try:
                if type(plan) is Echo:
                    response = yield from self._echo(request)
                else:
                    # Inline, not in a generator: most requests have no body and a fixed
                    # reply, and a generator per step costs ~2k instructions.
                    if self.http.they_are_waiting_for_100_continue:
                        pass  # never asked for: the connection closes after the response
                    elif self.chunks is not None:  # its lines checked as h11 reads them
                        yield from self._read_body(contract.MAX_BODY_BYTES, keep=False)
                    elif type(event := self.http.next_event()) is not h11.EndOfMessage:
                        yield from self._read_body(contract.MAX_BODY_BYTES, keep=False, first=event)
                    if type(plan) is Reply:
                        response = plan.response
                    else:
                        response = yield from self._execute(plan, head)
            except h11.RemoteProtocolError:
                if self.peer_closed:
                    raise ClientGone from None  # it left mid-body
                response = Echo.incomplete()  # the body's chunked framing is broken
            if response is None:
                status = 200  # streamed
            else:
                yield self._wire(response, head)
                status = response.status
        finally:
            self.telemetry.request_finished(route, method, status, started)

    def _execute(
        self, plan: contract.Plan, head: bool
    ) -> Generator[Operation, object, Response | None]:
        match plan:
            case Reply(response=response):
                return response
            case Metrics():
                return self.telemetry.exposition()
            case Lag():
                return self.telemetry.lag()
            case Sleep() | Fanout() | Blocking():
                yield from self._wait(plan)
                return plan.response()
            case Upstream() | Database():
                watched = yield from self._wait(plan)
                assert watched.outcome is not None, "the runtime made no response for the plan"
                return watched.outcome
            case Stream():
                yield from self._stream(plan, head)
                return None
        raise AssertionError(f"unhandled plan {plan!r}")  # pragma: no cover

    def _wait(
        self, work: Sleep | Fanout | Upstream | Blocking | Pause
    ) -> Generator[Operation, object, Watched]:
        watched = yield Wait(work)
        assert isinstance(watched, Watched)
        if watched.received:
            self.http.receive_data(watched.received)  # kept for the next cycle
        if watched.client_gone:
            raise ClientGone
        return watched

    def _stream(self, plan: Stream, head: bool) -> Generator[Operation, object, None]:
        yield (
            self.http.send(
                h11.Response(status_code=200, headers=stream_headers(self.impl), reason=reason(200))
            )
        )
        if not head:
            for index in range(plan.chunks):
                if index:
                    yield from self._wait(Pause(plan.ms))
                yield self.http.send(h11.Data(data=plan.chunk(index)))
        yield self.http.send(h11.EndOfMessage())

    def _echo(self, request: h11.Request) -> Generator[Operation, object, Response]:
        headers = dict(request.headers)
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > contract.MAX_BODY_BYTES:
            return Echo.too_large()  # refuse before reading a byte of it
        body = yield from self._read_body(contract.MAX_BODY_BYTES)
        if body is None:
            return Echo.too_large()
        content_type = headers.get(b"content-type")
        return Echo.response(body, content_type.decode("latin-1") if content_type else None)

    # -- writing -------------------------------------------------------------------------

    def _wire(self, response: Response, head: bool) -> bytes:
        """The whole response in one buffer: head and body leave in one write."""
        wire = self.http.send(_RESPONSE_EVENTS.event(self.impl, response))
        if not head and response.body:
            wire += self.http.send(h11.Data(data=response.body))
        return wire + self.http.send(h11.EndOfMessage())

    def _refuse(self, rejection: Rejection) -> Generator[Operation, object, None]:
        """Answer a request the framing policy refuses, count it, log it in one line, close."""
        started = self.telemetry.request_started()
        log_refusal(self.impl, rejection, _address(self.peer))
        status = CLIENT_CLOSED_STATUS
        try:
            if (yield from self._send_response(rejection.response())):
                status = rejection.status
        finally:
            self.telemetry.request_finished(contract.OTHER_ROUTE, "other", status, started)
        yield from self._linger()

    def _send_error(self, status: int, message: str) -> Generator[Operation, object, None]:
        response = contract.error(status, message[:200], (("Connection", "close"),))
        yield from self._send_response(response)

    def _send_response(self, response: Response) -> Generator[Operation, object, bool]:
        """Send a response outside the request cycle; False if there is no way to."""
        # h11 lets a server answer from IDLE too: an error before a whole request arrived.
        if self.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False  # part of a response already went out: all that is left is to close
        if self.head_request and self.http.their_state is h11.ERROR:
            # h11 refused the head, so does not know that a HEAD's answer has no body.
            yield wire_response(self.impl, response, head_request=True)
            return True
        try:
            wire = self._wire(response, head=self.head_request)
        except h11.LocalProtocolError:
            return False
        yield wire
        return True

    def _linger(self) -> Generator[Operation, object, None]:
        """Close from our side without a reset: half-close, then read and drop what the client
        still sends (an unread body) until it closes, for at most the linger time (the
        server's sweep enforces it). Closing with unread input would send a reset that can
        destroy the response before the client reads it."""
        yield SEND_EOF
        self.waiting_for, self.waiting_since = "linger", self.clock()
        while (yield RECEIVE):
            pass
