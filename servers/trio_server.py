"""The trio server: trio for concurrency, h11 (sans-IO) for HTTP/1.1, one task per connection.

The stackless, explicit model: every point where a handler may wait is an `await`, and
structured concurrency (nurseries, cancel scopes) guarantees that no task outlives the request
that started it. A synchronous library must go to a thread (`trio.to_thread`) or it stalls every
connection. Not hypercorn: its trio worker costs several times more CPU per request than this
loop, so a hypercorn row would measure hypercorn, not trio.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable

import h11
import trio

from servers import contract
from servers.contract import (
    Blocking,
    Echo,
    Fanout,
    Metrics,
    Reply,
    Response,
    Sleep,
    Stream,
    legacy_blocking_call,
)
from servers.lifecycle import (
    ServeOptions,
    announce,
    bind,
    overloaded_response,
    reason,
    response_headers,
    stream_headers,
)
from servers.telemetry import (
    CLIENT_CLOSED_STATUS,
    LAG_INTERVAL_S,
    ServerInfo,
    Telemetry,
    lag_after,
    make_telemetry,
)

IMPL = "trio"
RECEIVE_BYTES = 64 * 1024
SHED_LINGER_S = 0.5  # how long a shed connection may take to read its 503
REAP_INTERVAL_S = 0.25  # timeouts are enforced to within this


class ClientGone(Exception):
    """The client closed its connection while its request was being handled."""


class TrioServer:
    def __init__(self, telemetry: Telemetry, options: ServeOptions) -> None:
        self.telemetry = telemetry
        self.options = options
        telemetry.limit_connections(options.max_connections)
        self.open_connections = 0
        self.draining = False
        self.connections: set[_Connection] = set()
        self.offload_limiter = trio.CapacityLimiter(contract.OFFLOAD_THREADS)
        telemetry.count_tasks_with(lambda: trio.lowlevel.current_statistics().tasks_living)
        telemetry.count_connections_with(lambda: self.open_connections)

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        # trio's SocketStream already sets TCP_NODELAY.
        if self.open_connections >= self.options.max_connections:
            self.telemetry.connection_rejected()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(overloaded_response(IMPL))
                # Half-close, then read what the client sent: closing with unread input would
                # send a reset that can destroy the 503 before the client reads it.
                await stream.send_eof()
                with trio.move_on_after(SHED_LINGER_S):
                    while await stream.receive_some(RECEIVE_BYTES):
                        pass
            await trio.aclose_forcefully(stream)
            return
        connection = _Connection(self, stream)
        self.connections.add(connection)
        self.open_connections += 1
        try:
            await connection.run()
        finally:
            self.open_connections -= 1
            self.connections.discard(connection)
            await trio.aclose_forcefully(stream)

    async def reap_slow_connections(self) -> None:
        """Close connections idle, or sending their request head, for longer than allowed."""
        limits = {"idle": self.options.idle_timeout, "head": self.options.header_timeout}
        while True:
            await trio.sleep(REAP_INTERVAL_S)
            now = time.monotonic()
            for connection in self.connections:
                waiting_for = connection.waiting_for
                if waiting_for and now - connection.waiting_since > limits[waiting_for]:
                    connection.timed_out.cancel()

    def drain(self) -> None:
        self.draining = True
        for connection in self.connections:
            if connection.waiting_for == "idle":
                # Its task is parked in receive_some: end-of-file wakes it and it closes. (A flag
                # per connection costs less per request than a cancel scope per request.)
                with contextlib.suppress(OSError):
                    connection.stream.socket.shutdown(socket.SHUT_RD)


class _Connection:
    """One client connection: h11 turns bytes into events, this turns events into responses."""

    def __init__(self, server: TrioServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.telemetry = server.telemetry
        self.stream = stream
        self.http = h11.Connection(h11.SERVER)
        # What the connection waits for ("idle": a next request, "head": the rest of one),
        # and since when (time.monotonic(), trio's clock too).
        self.waiting_for: str | None = None
        self.waiting_since = 0.0
        self.timed_out = trio.CancelScope()

    async def run(self) -> None:
        # A connection the reaper finds idle or slow past its timeout is cancelled, so closed.
        with self.timed_out:
            await self._serve_requests()

    async def _serve_requests(self) -> None:
        try:
            while not self.server.draining:
                request = await self._next_request()
                if request is None:
                    return
                await self._handle(request)
                if self.http.our_state is not h11.DONE or self.http.their_state is not h11.DONE:
                    return  # Connection: close, an unread body, or a client that left
                self.http.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._send_error(exc.error_status_hint, str(exc) or "malformed HTTP request")
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
            await self._send_error(500, "internal error")

    async def _next_request(self) -> h11.Request | None:
        """Wait for the next request; None when the client, a timeout or a drain ends the
        connection."""
        event = self.http.next_event()  # a pipelined request may already be buffered
        if event is h11.NEED_DATA:
            # Timestamps only: the server's reaper task enforces the timeouts (a cancel scope,
            # or a moving deadline, per wait cost trio a fifth of its plaintext throughput).
            self.waiting_for, self.waiting_since = "idle", time.monotonic()
            data = await self.stream.receive_some(RECEIVE_BYTES)
            self.http.receive_data(data)
            # The head has begun: all of it must arrive within the header timeout.
            self.waiting_for, self.waiting_since = "head", time.monotonic()
            event = await self._next_event()
            self.waiting_for = None  # handling the request has no such limit
        return event if isinstance(event, h11.Request) else None

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.http.receive_data(await self.stream.receive_some(RECEIVE_BYTES))

    async def _handle(self, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        head = method == "HEAD"
        route, plan = contract.plan(method, request.target.decode("latin-1"))
        started = self.telemetry.request_started()
        status = CLIENT_CLOSED_STATUS
        try:
            match plan:
                case Echo():
                    response = await self._echo(request)
                case _:
                    await self._discard_body()
                    response = await self._execute(plan, head)
            if response is not None:
                await self._send(response, head)
                status = response.status
            else:
                status = 200  # streamed
        finally:
            self.telemetry.request_finished(route, method, status, started)

    async def _execute(self, plan: contract.Plan, head: bool) -> Response | None:
        match plan:
            case Reply(response=response):
                return response
            case Metrics():
                return self.telemetry.exposition()
            case Sleep(ms=ms):
                await self._cancelled_if_client_leaves(lambda: trio.sleep(ms / 1000))
                return plan.response()
            case Fanout():
                await self._cancelled_if_client_leaves(lambda: _fanout(plan))
                return plan.response()
            case Blocking(ms=ms, offload=True):
                await trio.to_thread.run_sync(
                    legacy_blocking_call, ms, limiter=self.server.offload_limiter
                )
                return plan.response()
            case Blocking(ms=ms, offload=False):
                legacy_blocking_call(ms)  # inline: every other task on this thread waits
                return plan.response()
            case Stream():
                await self._stream(plan, head)
                return None
        raise AssertionError(f"unhandled plan {plan!r}")  # pragma: no cover

    async def _stream(self, plan: Stream, head: bool) -> None:
        await self._send_event(
            h11.Response(status_code=200, headers=stream_headers(IMPL), reason=reason(200))
        )
        if head:
            await self._send_event(h11.EndOfMessage())
            return

        async def chunks() -> None:
            for index in range(plan.chunks):
                if index:
                    await trio.sleep(plan.ms / 1000)
                await self._send_event(h11.Data(data=plan.chunk(index)))

        await self._cancelled_if_client_leaves(chunks)
        await self._send_event(h11.EndOfMessage())

    async def _echo(self, request: h11.Request) -> Response:
        headers = dict(request.headers)
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > contract.MAX_BODY_BYTES:
            return Echo.too_large()  # refuse before reading a byte of it
        body = await self._read_body(contract.MAX_BODY_BYTES)
        if body is None:
            return Echo.too_large()
        content_type = headers.get(b"content-type")
        return Echo.response(body, content_type.decode("latin-1") if content_type else None)

    async def _discard_body(self) -> None:
        await self._read_body(contract.MAX_BODY_BYTES, keep=False)

    async def _read_body(self, limit: int, keep: bool = True) -> bytes | None:
        """The request body, or None once it exceeds `limit` (the rest is left unread and the
        connection will close)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
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

    async def _cancelled_if_client_leaves(self, work: Callable[[], Awaitable[object]]) -> None:
        """Run `work` while a sibling task watches the socket; if the client closes it, cancel
        the work (and every child task it started) and raise ClientGone."""
        client_gone = False

        async def watch(cancel_scope: trio.CancelScope) -> None:
            nonlocal client_gone
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except trio.BrokenResourceError:
                data = b""
            self.http.receive_data(data)  # a pipelined request is kept for the next cycle
            if not data:
                client_gone = True
                cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            await work()
            nursery.cancel_scope.cancel()
        if client_gone:
            raise ClientGone

    async def _send(self, response: Response, head: bool) -> None:
        wire = self.http.send(
            h11.Response(
                status_code=response.status,
                headers=response_headers(IMPL, response),
                reason=reason(response.status),
            )
        )
        if not head:
            wire += self.http.send(h11.Data(data=response.body))
        wire += self.http.send(h11.EndOfMessage())
        await self.stream.send_all(wire)  # one write: head and body leave together

    async def _send_event(self, event: h11.Event) -> None:
        await self.stream.send_all(self.http.send(event))

    async def _send_error(self, status: int, message: str) -> None:
        # h11 lets a server answer from IDLE too: an error before a whole request arrived.
        if self.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # part of a response already went out: all we can do is close
        response = contract.error(status, message[:200])
        closing = Response(
            response.status, response.body, response.content_type, (("Connection", "close"),)
        )
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError
        ):
            await self._send(closing, head=False)


async def _fanout(plan: Fanout) -> None:
    # The nursery is the structure: it returns when every child has, and if one fails or the
    # enclosing scope is cancelled (the client left), all the others are cancelled too.
    async with trio.open_nursery() as children:
        for _ in range(plan.children):
            children.start_soon(trio.sleep, plan.ms / 1000)


async def _monitor_lag(telemetry: Telemetry) -> None:
    while True:
        armed = time.perf_counter()
        await trio.sleep(LAG_INTERVAL_S)
        telemetry.observe_lag(lag_after(armed))


async def _serve(sock: socket.socket, options: ServeOptions) -> None:
    telemetry = make_telemetry(
        ServerInfo(IMPL, "trio", trio.__version__, f"h11 {h11.__version__}"), options.metrics
    )
    server = TrioServer(telemetry, options)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as background:
            background.start_soon(server.reap_slow_connections)
            if telemetry.enabled:
                background.start_soon(_monitor_lag, telemetry)
            with trio.CancelScope() as drain_scope:
                async with trio.open_nursery() as connections:
                    accepting = trio.CancelScope()

                    async def accept() -> None:
                        with accepting:
                            await trio.serve_listeners(
                                server.handle_connection, [listener], handler_nursery=connections
                            )

                    connections.start_soon(accept)
                    announce(IMPL, sock)
                    async for _ in signals:
                        break
                    # Drain: stop accepting, close idle connections, give the rest a deadline.
                    accepting.cancel()
                    await listener.aclose()
                    server.drain()
                    drain_scope.deadline = trio.current_time() + options.drain_timeout
            background.cancel_scope.cancel()


def serve(options: ServeOptions) -> None:
    trio.run(_serve, bind(options), options)
