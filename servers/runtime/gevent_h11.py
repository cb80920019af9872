"""gevent on the shared h11 core: monkey-patched raw sockets, a greenlet per connection.

The stackful, implicit model with the HTTP parser held equal to trio's: blocking-looking code,
every socket call and `time.sleep` a hidden yield to gevent's hub. Beside the `gevent` server
(gevent.pywsgi, the stack tier) it tells what comes from gevent and what from pywsgi.
"""

from gevent import monkey

monkey.patch_all()  # before anything else imports socket, time or threading

import contextlib  # noqa: E402
import functools  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import h11  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

from servers.contract import Blocking, Database, Fanout, Response, Sleep, Upstream  # noqa: E402
from servers.lifecycle import (  # noqa: E402
    ServeOptions,
    announce,
    bind,
    overloaded_response,
    set_nodelay,
)
from servers.protocol import policy  # noqa: E402
from servers.protocol.drive import drive  # noqa: E402
from servers.protocol.h11_connection import NOT_GONE, ConnectionCore, Pause, Watched  # noqa: E402
from servers.runtime.gevent_calls import (  # noqa: E402
    answer_and_close,
    call_blocking,
    call_database,
    call_upstream,
    db_driver,
    monitor_lag,
    open_database,
    size_thread_pool,
)
from servers.telemetry import (  # noqa: E402
    ServerInfo,
    Telemetry,
    make_telemetry,
)
from servers.upstream import sync_client  # noqa: E402
from servers.upstream.sync_client import SyncUpstream  # noqa: E402

IMPL = "gevent-h11"
RECEIVE_BYTES = 64 * 1024


class _ClientLeft(Exception):
    """Thrown into a request's greenlet by its watcher when the client closes the socket."""


class _TimedOut(Exception):
    """Thrown into a connection's greenlet by the reaper."""


class GeventH11Server:
    def __init__(self, telemetry: Telemetry, options: ServeOptions) -> None:
        self.telemetry = telemetry
        self.options = options
        self.upstream = SyncUpstream(options.upstream) if options.upstream else None
        self.database = open_database(options, IMPL)
        self.draining = False
        self.connections: dict[ConnectionCore, tuple[socket.socket, gevent.Greenlet]] = {}
        # Greenlets besides connection handlers (fan-out children, watchers): counted as tasks.
        self.spawned = gevent.pool.Group()
        telemetry.limit_connections(options.max_connections)
        telemetry.count_tasks_with(lambda: len(self.connections) + len(self.spawned))
        telemetry.count_connections_with(lambda: len(self.connections))

    def handle(self, sock: socket.socket, _address: object) -> None:
        set_nodelay(sock)
        self.telemetry.connection_accepted()
        if policy.should_shed(len(self.connections), self.options):
            self._shed(sock)
            return
        core = ConnectionCore(IMPL, self.telemetry, peer=lambda: sock.getpeername()[0])
        core.closing = self.draining
        self.connections[core] = (sock, gevent.getcurrent())
        try:
            self._drive(core, sock)
        finally:
            del self.connections[core]

    def _shed(self, sock: socket.socket) -> None:
        self.telemetry.connection_rejected()
        answer_and_close(sock, overloaded_response(IMPL), policy.SHED_LINGER_S)

    def _drive(self, core: ConnectionCore, sock: socket.socket) -> None:
        drive(
            core,
            receive=functools.partial(sock.recv, RECEIVE_BYTES),
            send=sock.sendall,
            wait=lambda work: self._wait(work, sock),
            send_eof=lambda: sock.shutdown(socket.SHUT_WR),
            ends=(OSError, _TimedOut, _ClientLeft),  # _ClientLeft: a watcher's late throw
        )

    def _wait(
        self, work: Sleep | Fanout | Upstream | Database | Blocking | Pause, sock: socket.socket
    ) -> Watched:
        match work:
            case Sleep(ms=ms) | Pause(ms=ms):
                return self._watching(sock, lambda: gevent.sleep(ms / 1000))
            case Fanout():
                return self._watching(sock, lambda: self._fanout(work))
            case Upstream():
                return self._watching(
                    sock, lambda: call_upstream(self.upstream, work, self.spawned)
                )
            case Database():
                return self._watching(sock, lambda: call_database(self.database, work))
            case Blocking():
                call_blocking(work)
        return NOT_GONE

    def _fanout(self, plan: Fanout) -> None:
        children = gevent.pool.Group()
        try:
            for _ in range(plan.children):
                self.spawned.add(children.spawn(gevent.sleep, plan.ms / 1000))
            children.join(raise_error=True)
        finally:
            children.kill(block=True)  # a child failed or the client left: cancel the rest

    def _watching(self, sock: socket.socket, work: Callable[[], Response | None]) -> Watched:
        """Run `work` while a watcher greenlet reads the socket; if the client closes it, the
        watcher throws _ClientLeft into this greenlet, which cancels the work. What `work`
        returns is the Watched's outcome."""
        request = gevent.getcurrent()
        seen: list[bytes] = []
        finished = False

        def watch() -> None:
            try:
                data = sock.recv(RECEIVE_BYTES)
            except OSError:
                data = b""
            seen.append(data)
            if not data and not finished:
                request.kill(_ClientLeft, block=False)

        watcher = self.spawned.spawn(watch)
        try:
            outcome = work()
        except _ClientLeft:
            return Watched(client_gone=True)
        finally:
            finished = True
            watcher.kill(block=True)
            # Its GreenletExit's traceback holds frames that hold this one: cut the cycle, or
            # every request leaves garbage only a full collection frees.
            with contextlib.suppress(AttributeError, TypeError):
                watcher._exc_info[1].__traceback__ = None
        if not seen:
            return NOT_GONE if outcome is None else Watched(outcome=outcome)
        return Watched(client_gone=not seen[0], received=seen[0], outcome=outcome)

    def reap_slow_connections(self) -> None:
        while True:
            gevent.sleep(policy.REAP_INTERVAL_S)
            now = time.monotonic()
            for core, (_, greenlet) in list(self.connections.items()):
                if policy.expired(core.waiting_for, core.waiting_since, now, self.options):
                    greenlet.kill(_TimedOut, block=False)

    def drain(self) -> None:
        self.draining = True
        for core, (sock, _) in list(self.connections.items()):
            core.closing = True
            if core.waiting_for == "idle":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)  # wakes its recv with end-of-file


def serve(options: ServeOptions) -> None:
    size_thread_pool()
    telemetry = make_telemetry(
        ServerInfo(
            IMPL,
            "gevent",
            gevent.__version__,
            f"h11 {h11.__version__}",
            sync_client.label(),
            db_driver(options),
        ),
        options.metrics,
    )
    server = GeventH11Server(telemetry, options)
    listener = StreamServer(bind(options), server.handle, spawn=gevent.pool.Pool())
    listener.start()
    background = [gevent.spawn(server.reap_slow_connections)]
    if telemetry.enabled:
        background.append(gevent.spawn(monitor_lag, telemetry))
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    announce(IMPL, listener.socket)
    stop.wait()
    # Drain: stop accepting, close idle connections, give the rest a deadline.
    listener.close()
    server.drain()
    listener.pool.join(timeout=options.drain_timeout)
    listener.pool.kill(block=True, timeout=1)
    gevent.killall(background)
    if server.upstream is not None:
        server.upstream.close()
    if server.database is not None:
        server.database.close()
