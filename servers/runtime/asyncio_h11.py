"""asyncio (or uvloop) on the shared h11 core: asyncio streams, a task per connection.

The stackless model of the standard library with the HTTP parser held equal to trio's: beside
the `aiohttp` server (the stack tier, C parser) it tells what comes from asyncio and what from
aiohttp and llhttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import platform
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import h11

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
from servers.lifecycle import ServeOptions, announce, bind, overloaded_response, set_nodelay
from servers.protocol import policy
from servers.protocol.drive import drive_async
from servers.protocol.h11_connection import NOT_GONE, ConnectionCore, Pause, Watched
from servers.runtime.asyncio_calls import call_database, call_upstream, db_driver, open_database
from servers.telemetry import LAG_INTERVAL_S, ServerInfo, Telemetry, lag_after, make_telemetry
from servers.upstream import httpx_client
from servers.upstream.httpx_client import HttpxUpstream

IMPL = "asyncio-h11"
RECEIVE_BYTES = 64 * 1024
WRITE_BUFFER_HIGH = 64 * 1024  # past this, wait for the transport to drain


class AsyncioH11Server:
    def __init__(
        self, telemetry: Telemetry, options: ServeOptions, upstream: HttpxUpstream | None = None
    ) -> None:
        self.telemetry = telemetry
        self.options = options
        self.upstream = upstream
        self.database = None  # servers.db.asyncpg_pool.AsyncpgDatabase, made by _serve
        self.draining = False
        self.connections: dict[ConnectionCore, tuple[asyncio.StreamWriter, asyncio.Task]] = {}
        self.offload_pool = ThreadPoolExecutor(
            contract.OFFLOAD_THREADS, thread_name_prefix="offload"
        )
        telemetry.limit_connections(options.max_connections)
        # O(n) per scrape (see aiohttp_server.count_live_tasks).
        telemetry.count_tasks_with(lambda: len(asyncio.all_tasks()))
        telemetry.count_connections_with(lambda: len(self.connections))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        set_nodelay(writer.get_extra_info("socket"))
        self.telemetry.connection_accepted()
        try:
            if policy.should_shed(len(self.connections), self.options):
                await self._shed(reader, writer)
                return
            sock = writer.get_extra_info("socket")
            core = ConnectionCore(IMPL, self.telemetry, peer=lambda: sock.getpeername()[0])
            core.closing = self.draining
            task = asyncio.current_task()
            assert task is not None
            self.connections[core] = (writer, task)
            try:
                await _Connection(self, core, reader, writer).run()
            finally:
                del self.connections[core]
        finally:
            writer.close()

    async def _shed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.telemetry.connection_rejected()
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(overloaded_response(IMPL))
            # Half-close, then read what the client sent: closing with unread input would send
            # a reset that can destroy the 503 before the client reads it.
            writer.write_eof()
            async with asyncio.timeout(policy.SHED_LINGER_S):
                while await reader.read(RECEIVE_BYTES):
                    pass

    async def reap_slow_connections(self) -> None:
        while True:
            await asyncio.sleep(policy.REAP_INTERVAL_S)
            now = time.monotonic()
            for core, (_, task) in list(self.connections.items()):
                if policy.expired(core.waiting_for, core.waiting_since, now, self.options):
                    task.cancel()

    def drain(self) -> None:
        self.draining = True
        for core, (writer, _) in list(self.connections.items()):
            core.closing = True
            if core.waiting_for == "idle":
                with contextlib.suppress(OSError):
                    writer.get_extra_info("socket").shutdown(socket.SHUT_RD)


class _Connection:
    """Drives one ConnectionCore with asyncio's streams."""

    def __init__(
        self,
        server: AsyncioH11Server,
        core: ConnectionCore,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.core = core
        self.reader = reader
        self.writer = writer

    async def run(self) -> None:
        await drive_async(
            self.core,
            receive=functools.partial(self.reader.read, RECEIVE_BYTES),
            send=self._send,
            wait=self._wait,
            send_eof=self._send_eof,
            ends=(OSError, asyncio.CancelledError),  # cancelled: the reaper timed it out
        )
        with contextlib.suppress(OSError):
            await self.writer.drain()

    async def _send_eof(self) -> None:
        await self.writer.drain()
        self.writer.write_eof()

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            await self.writer.drain()

    async def _wait(self, work: Sleep | Fanout | Upstream | Database | Blocking | Pause) -> Watched:
        match work:
            case Sleep(ms=ms) | Pause(ms=ms):
                return await self._watching(lambda: asyncio.sleep(ms / 1000))
            case Fanout():
                return await self._watching(lambda: _fanout(work))
            case Upstream():
                return await self._watching(lambda: call_upstream(self.server.upstream, work))
            case Database():
                return await self._watching(lambda: call_database(self.server.database, work))
            case Blocking(ms=ms, offload=True, kind=kind):
                loop = asyncio.get_running_loop()
                pool = self.server.offload_pool
                await loop.run_in_executor(pool, legacy_blocking_call, ms, kind)
            case Blocking(ms=ms, offload=False, kind=kind):
                legacy_blocking_call(ms, kind)  # inline: the event loop and every connection wait
        return NOT_GONE

    async def _watching(self, work: Callable[[], Awaitable[Response | None]]) -> Watched:
        """Run `work` while a sibling task reads the socket; if the client closes it, cancel
        the work (and every child task it started)."""
        watcher = asyncio.ensure_future(self.reader.read(RECEIVE_BYTES))
        worker = asyncio.ensure_future(work())
        try:
            done, _ = await asyncio.wait({watcher, worker}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                data = b"" if watcher.exception() else watcher.result()
                if not data:
                    return Watched(client_gone=True)
                return Watched(received=data, outcome=await worker)
            outcome = await worker
            return NOT_GONE if outcome is None else Watched(outcome=outcome)
        finally:
            for task in (watcher, worker):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


async def _fanout(plan: Fanout) -> None:
    # Leaving the TaskGroup early (a child failed, or this task was cancelled because the
    # client left) cancels every child still running.
    async with asyncio.TaskGroup() as children:
        for _ in range(plan.children):
            children.create_task(asyncio.sleep(plan.ms / 1000))


async def _monitor_lag(telemetry: Telemetry) -> None:
    while True:
        armed = time.perf_counter()
        await asyncio.sleep(LAG_INTERVAL_S)
        telemetry.observe_lag(lag_after(armed))


async def _serve(sock: socket.socket, options: ServeOptions, runtime: str, version: str) -> None:
    telemetry = make_telemetry(
        ServerInfo(
            IMPL,
            runtime,
            version,
            f"h11 {h11.__version__}",
            httpx_client.label(),
            db_driver(options),
        ),
        options.metrics,
    )
    upstream = HttpxUpstream(options.upstream) if options.upstream else None
    server = AsyncioH11Server(telemetry, options, upstream)
    server.database = await open_database(options, IMPL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listener = await asyncio.start_server(server.handle, sock=sock, limit=RECEIVE_BYTES)
    background = [asyncio.create_task(server.reap_slow_connections())]
    if telemetry.enabled:
        background.append(asyncio.create_task(_monitor_lag(telemetry)))
    announce(IMPL, sock)
    await stop.wait()
    # Drain: stop accepting, close idle connections, give the rest a deadline.
    listener.close()
    server.drain()
    deadline = loop.time() + options.drain_timeout
    while server.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for _, task in list(server.connections.values()):
        task.cancel()
    for task in background:
        task.cancel()
    server.offload_pool.shutdown(wait=False, cancel_futures=True)
    if upstream is not None:
        await upstream.aclose()
    if server.database is not None:
        await server.database.close()


def serve(options: ServeOptions) -> None:
    sock = bind(options)
    if options.uvloop:
        import uvloop

        uvloop.run(_serve(sock, options, "uvloop", uvloop.__version__))
    else:
        asyncio.run(_serve(sock, options, "asyncio", platform.python_version()))
