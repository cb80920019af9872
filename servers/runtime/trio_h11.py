"""trio on the shared h11 core: a task per connection, in both tiers (trio's idiomatic stack is
trio + h11).

The stackless, explicit model: every point where a handler may wait is an `await`, and
structured concurrency (nurseries, cancel scopes) guarantees that no task outlives the request
that started it. A synchronous library must go to a thread (`trio.to_thread`) or it stalls every
connection. Not hypercorn: its trio worker costs several times more CPU per request than this
loop, so a hypercorn row would measure hypercorn, not trio.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import h11
import trio

from servers import contract
from servers.contract import (
    Blocking,
    Database,
    Fanout,
    Response,
    Sleep,
    Upstream,
    legacy_blocking_call,
)
from servers.db import config as db_config
from servers.lifecycle import ServeOptions, announce, bind, overloaded_response
from servers.protocol import policy
from servers.protocol.drive import drive_async
from servers.protocol.h11_connection import NOT_GONE, ConnectionCore, Pause, Watched
from servers.telemetry import LAG_INTERVAL_S, ServerInfo, Telemetry, lag_after, make_telemetry
from servers.upstream import first_fault, httpx_client, not_configured, too_slow
from servers.upstream.httpx_client import HttpxUpstream

IMPL = "trio"
RECEIVE_BYTES = 64 * 1024


class TrioServer:
    def __init__(
        self, telemetry: Telemetry, options: ServeOptions, upstream: HttpxUpstream | None = None
    ) -> None:
        self.telemetry = telemetry
        self.options = options
        self.upstream = upstream
        telemetry.limit_connections(options.max_connections)
        self.draining = False
        self.connections: dict[ConnectionCore, _Connection] = {}
        self.offload_limiter = trio.CapacityLimiter(contract.OFFLOAD_THREADS)
        self.database = None
        if options.database is not None:
            from servers.db.sync_pool import SyncDatabase

            self.database = SyncDatabase(options.database, IMPL)
            # The database's threads: as many as the pool has connections.
            self.database_limiter = trio.CapacityLimiter(options.database.pool)
        telemetry.count_tasks_with(lambda: trio.lowlevel.current_statistics().tasks_living)
        telemetry.count_connections_with(lambda: len(self.connections))

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        # trio's SocketStream already sets TCP_NODELAY.
        self.telemetry.connection_accepted()
        if policy.should_shed(len(self.connections), self.options):
            await self._shed(stream)
            return
        connection = _Connection(self, stream)
        self.connections[connection.core] = connection
        try:
            await connection.run()
        finally:
            del self.connections[connection.core]
            await trio.aclose_forcefully(stream)

    async def _shed(self, stream: trio.SocketStream) -> None:
        self.telemetry.connection_rejected()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(overloaded_response(IMPL))
            # Half-close, then read what the client sent: closing with unread input would send
            # a reset that can destroy the 503 before the client reads it.
            await stream.send_eof()
            with trio.move_on_after(policy.SHED_LINGER_S):
                while await stream.receive_some(RECEIVE_BYTES):
                    pass
        await trio.aclose_forcefully(stream)

    async def reap_slow_connections(self) -> None:
        """Close connections idle, or sending their request, for longer than allowed."""
        while True:
            await trio.sleep(policy.REAP_INTERVAL_S)
            now = time.monotonic()
            for core, connection in self.connections.items():
                if policy.expired(core.waiting_for, core.waiting_since, now, self.options):
                    connection.timed_out.cancel()

    def drain(self) -> None:
        self.draining = True
        for core, connection in self.connections.items():
            core.closing = True
            if core.waiting_for == "idle":
                # Its task is parked in receive_some: end-of-file wakes it and it closes. (A flag
                # per connection costs less per request than a cancel scope per request.)
                with contextlib.suppress(OSError):
                    connection.stream.socket.shutdown(socket.SHUT_RD)


class _Connection:
    """Drives one ConnectionCore with trio's I/O."""

    def __init__(self, server: TrioServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.core = ConnectionCore(
            IMPL, server.telemetry, peer=lambda: stream.socket.getpeername()[0]
        )
        self.core.closing = server.draining
        self.timed_out = trio.CancelScope()

    async def run(self) -> None:
        # A connection the reaper finds idle or slow past its timeout is cancelled, so closed.
        with self.timed_out:
            await drive_async(
                self.core,
                receive=functools.partial(self.stream.receive_some, RECEIVE_BYTES),
                send=self.stream.send_all,
                wait=self._wait,
                send_eof=self.stream.send_eof,
                ends=(trio.BrokenResourceError, trio.ClosedResourceError),
            )

    async def _wait(self, work: Sleep | Fanout | Upstream | Database | Blocking | Pause) -> Watched:
        match work:
            case Sleep(ms=ms) | Pause(ms=ms):
                return await self._watching(lambda: trio.sleep(ms / 1000))
            case Fanout():
                return await self._watching(lambda: _fanout(work))
            case Upstream():
                return await self._watching(lambda: _call_upstream(self.server.upstream, work))
            case Database():
                return await self._watching(lambda: _call_database(self.server, work))
            case Blocking(ms=ms, offload=True, kind=kind):
                limiter = self.server.offload_limiter
                await trio.to_thread.run_sync(legacy_blocking_call, ms, kind, limiter=limiter)
            case Blocking(ms=ms, offload=False, kind=kind):
                legacy_blocking_call(ms, kind)  # inline: every other task on this thread waits
        return NOT_GONE

    async def _watching(self, work: Callable[[], Awaitable[Response | None]]) -> Watched:
        """Run `work` while a sibling task watches the socket; if the client closes it, cancel
        the work (and every child task it started). What `work` returns is the outcome."""
        seen: list[bytes] = []

        async def watch(cancel_scope: trio.CancelScope) -> None:
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except trio.BrokenResourceError:
                data = b""
            seen.append(data)
            if not data:
                cancel_scope.cancel()

        outcome = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            outcome = await work()
            nursery.cancel_scope.cancel()
        if not seen:
            return NOT_GONE if outcome is None else Watched(outcome=outcome)
        return Watched(client_gone=not seen[0], received=seen[0], outcome=outcome)


async def _fanout(plan: Fanout) -> None:
    # The nursery is the structure: it returns when every child has, and if one fails or the
    # enclosing scope is cancelled (the client left), all the others are cancelled too.
    async with trio.open_nursery() as children:
        for _ in range(plan.children):
            children.start_soon(trio.sleep, plan.ms / 1000)


async def _call_upstream(client: HttpxUpstream | None, plan: Upstream) -> Response:
    """`plan.calls` tasks in a nursery, each an httpx call: if one fails, or the client
    leaves (the enclosing scope is cancelled), every other call is cancelled with it."""
    if client is None:
        return not_configured()
    statuses = [0] * plan.calls

    async def call(index: int) -> None:
        statuses[index] = await client.call(plan.path)

    with trio.move_on_after(client.config.timeout) as deadline:
        try:
            async with trio.open_nursery() as calls:
                for index in range(plan.calls):
                    calls.start_soon(call, index)
        except BaseExceptionGroup as group:
            fault = first_fault(group)
            if fault is None:
                raise
            return fault.response
    if deadline.cancelled_caught:
        return too_slow(client.config)
    return plan.response(statuses)


async def _call_database(server: TrioServer, plan: Database) -> Response:
    """The plan's queries, blocking psycopg calls on a thread (`trio.to_thread`, its limiter
    sized to the pool). A thread cannot be cancelled: when the client leaves or the deadline
    passes, the task stops waiting for it and has the query cancelled on the server, so the
    thread ends at once and gives its connection (and its limiter token) back."""
    database = server.database
    if database is None:
        return db_config.not_configured()
    from servers.db.sync_pool import CancelHandle

    handle = CancelHandle()
    gone = db_config.too_slow(database.config)  # what the handle answers; the client never reads it
    with trio.move_on_after(database.config.timeout) as deadline:
        try:
            return await trio.to_thread.run_sync(
                database.run, plan, handle, limiter=server.database_limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            # Not on this thread: the cancel request waits for the server's answer.
            trio.lowlevel.start_thread_soon(lambda: handle.cancel(gone), lambda _: None)
            raise
    assert deadline.cancelled_caught
    return db_config.too_slow(database.config)


async def _monitor_lag(telemetry: Telemetry) -> None:
    while True:
        armed = time.perf_counter()
        await trio.sleep(LAG_INTERVAL_S)
        telemetry.observe_lag(lag_after(armed))


async def _serve(sock: socket.socket, options: ServeOptions) -> None:
    telemetry = make_telemetry(
        ServerInfo(
            IMPL,
            "trio",
            trio.__version__,
            f"h11 {h11.__version__}",
            httpx_client.label(),
            _db_driver(options),
        ),
        options.metrics,
    )
    upstream = HttpxUpstream(options.upstream) if options.upstream else None
    server = TrioServer(telemetry, options, upstream)
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
    if upstream is not None:
        await upstream.aclose()
    if server.database is not None:
        server.database.close()


def _db_driver(options: ServeOptions) -> str:
    if options.database is None:
        return ""
    from servers.db import sync_pool

    return f"{sync_pool.label()} (trio.to_thread)"


def serve(options: ServeOptions) -> None:
    trio.run(_serve, bind(options), options)
