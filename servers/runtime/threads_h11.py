"""OS threads on the shared h11 core: stdlib sockets, a thread per connection.

The preemptive baseline that gevent imitates: every connection has a real stack (the kernel's
and the interpreter's), blocking calls block only their own thread, and the GIL lets one thread
run Python at a time. No pool: a connection gets a thread for as long as it is open, up to
`--max-connections` (each thread reserves its stack's address space, 8 MiB by default, but only
the pages it touches count in RSS).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import socket
import threading
import time

import h11

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
from servers.lifecycle import ServeOptions, announce, bind, overloaded_response, set_nodelay
from servers.protocol import policy
from servers.protocol.drive import drive
from servers.protocol.h11_connection import NOT_GONE, ConnectionCore, Pause, Watched
from servers.telemetry import LAG_INTERVAL_S, ServerInfo, Telemetry, lag_after, make_telemetry
from servers.upstream import UpstreamFault, not_configured, sync_client, too_slow
from servers.upstream.sync_client import CallGroup, SyncUpstream

IMPL = "threads-h11"
RECEIVE_BYTES = 64 * 1024
ACCEPT_POLL_S = 0.25  # how often the accepting thread looks for a stop signal
ABORT_GRACE_S = 0.5  # how long aborted upstream calls get to end before the answer goes out


class ThreadsH11Server:
    def __init__(self, telemetry: Telemetry, options: ServeOptions) -> None:
        self.telemetry = telemetry
        self.options = options
        self.draining = False
        self.lock = threading.Lock()  # guards `connections` (threads preempt each other)
        self.upstream = SyncUpstream(options.upstream) if options.upstream else None
        self.database = None
        if options.database is not None:
            from servers.db.sync_pool import SyncDatabase

            self.database = SyncDatabase(options.database, IMPL)
        self.connections: dict[ConnectionCore, socket.socket] = {}
        telemetry.limit_connections(options.max_connections)
        telemetry.count_tasks_with(threading.active_count)
        telemetry.count_connections_with(lambda: len(self.connections))

    def accept(self, listener: socket.socket) -> None:
        sock, _ = listener.accept()
        sock.setblocking(True)
        set_nodelay(sock)
        self.telemetry.connection_accepted()
        with self.lock:
            shed = policy.should_shed(len(self.connections), self.options)
        target = self._shed if shed else self._serve_connection
        threading.Thread(target=target, args=(sock,), daemon=True).start()

    def _shed(self, sock: socket.socket) -> None:
        self.telemetry.connection_rejected()
        with sock, contextlib.suppress(OSError):
            sock.sendall(overloaded_response(IMPL))
            # Half-close, then read what the client sent: closing with unread input would send
            # a reset that can destroy the 503 before the client reads it.
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(policy.SHED_LINGER_S)
            while sock.recv(RECEIVE_BYTES):
                pass

    def _serve_connection(self, sock: socket.socket) -> None:
        core = ConnectionCore(IMPL, self.telemetry, peer=lambda: sock.getpeername()[0])
        core.closing = self.draining
        with self.lock:
            self.connections[core] = sock
        try:
            self._drive(core, sock)
        finally:
            with self.lock:
                del self.connections[core]
            sock.close()

    def _drive(self, core: ConnectionCore, sock: socket.socket) -> None:
        drive(
            core,
            receive=functools.partial(sock.recv, RECEIVE_BYTES),
            send=sock.sendall,
            wait=lambda work: self._wait(work, sock),
            send_eof=lambda: sock.shutdown(socket.SHUT_WR),
            ends=(OSError,),
        )

    def _wait(
        self, work: Sleep | Fanout | Upstream | Database | Blocking | Pause, sock: socket.socket
    ) -> Watched:
        match work:
            case Sleep(ms=ms) | Pause(ms=ms):
                return _watching(sock, ms / 1000)
            case Fanout():
                return _fanout(work, sock)
            case Upstream():
                if self.upstream is None:
                    return Watched(outcome=not_configured())
                return _call_upstream(self.upstream, work, sock)
            case Database():
                if self.database is None:
                    return Watched(outcome=db_config.not_configured())
                return _call_database(self.database, work, sock)
            case Blocking(ms=ms, kind=kind):
                legacy_blocking_call(ms, kind)  # offloaded or not: this thread is the offload
        return NOT_GONE

    def reap_slow_connections(self, stop: threading.Event) -> None:
        while not stop.wait(policy.REAP_INTERVAL_S):
            now = time.monotonic()
            with self.lock:
                expired = [
                    sock
                    for core, sock in self.connections.items()
                    if policy.expired(core.waiting_for, core.waiting_since, now, self.options)
                ]
            for sock in expired:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # its blocked recv returns: it closes

    def drain(self) -> None:
        self.draining = True
        with self.lock:
            connections = list(self.connections.items())
        for core, sock in connections:
            core.closing = True
            if core.waiting_for == "idle":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)  # wakes its recv with end-of-file


def _watching(
    sock: socket.socket, seconds: float, cancel: threading.Event | None = None
) -> Watched:
    """Wait `seconds` while watching the socket (a thread cannot be interrupted, so it polls
    its own socket; poll, not select, which refuses descriptors past 1023): returns early if
    the client closes it."""
    deadline = time.monotonic() + seconds
    watch = select.poll()
    watch.register(sock, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if watch.poll(left * 1000):
            if not (data := _read_or_eof(sock)):
                return Watched(client_gone=True)
            # A pipelined request: keep it, and stop watching (as the other servers do).
            _sleep_until(deadline, cancel)
            return Watched(received=data)
    return NOT_GONE


def _sleep_until(deadline: float, cancel: threading.Event | None) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        (cancel or threading.Event()).wait(left)


def _fanout(plan: Fanout, sock: socket.socket) -> Watched:
    """A thread per child, each waiting on one event; structured: this thread waits for all of
    them, and if the client leaves it sets the event, so all of them return at once."""
    cancel = threading.Event()
    children = [
        threading.Thread(target=cancel.wait, args=(plan.ms / 1000,), daemon=True)
        for _ in range(plan.children)
    ]
    for child in children:
        child.start()
    try:
        watched = _watching(sock, plan.ms / 1000, cancel)
    finally:
        if any(child.is_alive() for child in children):
            cancel.set()  # the client left (or this thread failed): stop every child
        for child in children:
            child.join()
    return watched


def _call_upstream(client: SyncUpstream, plan: Upstream, sock: socket.socket) -> Watched:
    """A thread per call, each a blocking urllib3 call; structured like _fanout: this thread
    waits for all of them (or the deadline) while watching its socket, and if the client
    leaves, a call fails or the deadline passes, it aborts the rest (shuts their sockets: a
    thread cannot be cancelled) and gives them a moment to end. A call still connecting
    cannot be aborted: it is left to end on its own (within the connect timeout), unwaited."""
    group = CallGroup()
    statuses = [0] * plan.calls
    first_fault: list[Response] = []  # the fault that answers the request, if any
    lock = threading.Lock()
    # Written when the last call ends or one fails; closed by whoever is last to use it (the
    # waiting thread may leave before a call it could not abort has ended).
    done = os.eventfd(0, os.EFD_CLOEXEC)
    users = [plan.calls + 1]  # the calls, and this thread
    waiting = [True]

    def release() -> None:
        with lock:
            users[0] -= 1
            last = users[0] == 0
        if last:
            os.close(done)

    def call(index: int) -> None:
        try:
            statuses[index] = client.call(plan.path, group)
        except UpstreamFault as fault:
            with lock:
                first_fault.append(fault.response)
                if waiting[0]:
                    os.eventfd_write(done, 1)  # one failure answers the request
        finally:
            with lock:
                ended = users[0] == 2  # only this call and the waiting thread left
                if ended and waiting[0]:
                    os.eventfd_write(done, 1)
            release()

    deadline = time.monotonic() + client.config.timeout
    calls = []
    try:
        for index in range(plan.calls):
            thread = threading.Thread(target=call, args=(index,), daemon=True)
            thread.start()
            calls.append(thread)
        watched = _watching_until(sock, deadline, done)
    finally:
        with lock:
            waiting[0] = False
            running = users[0] > 1
        if running:
            group.abort()  # the client left, a call failed, or the deadline passed
            grace = time.monotonic() + ABORT_GRACE_S
            for thread in calls:
                thread.join(max(0.0, grace - time.monotonic()))
        with lock:
            users[0] -= plan.calls - len(calls)  # calls that never started
        release()
    if watched is None:
        return Watched(outcome=too_slow(client.config))
    if watched.client_gone:
        return watched
    outcome = first_fault[0] if first_fault else plan.response(statuses)
    return Watched(received=watched.received, outcome=outcome)


def _call_database(database, plan: Database, sock: socket.socket) -> Watched:
    """The plan's queries on this thread, truly blocking, while a watcher thread polls the
    socket: if the client leaves or the deadline passes, it cancels the query in flight
    (libpq's cancel request: a blocked thread cannot be interrupted otherwise)."""
    from servers.db.sync_pool import CancelHandle

    handle = CancelHandle()
    done = os.eventfd(0, os.EFD_CLOEXEC)
    seen: list[Watched | None] = []
    deadline = time.monotonic() + database.config.timeout

    def watch() -> None:
        watched = _watching_until(sock, deadline, done)
        seen.append(watched)
        if watched is None:
            handle.cancel(db_config.too_slow(database.config))
        elif watched.client_gone:
            handle.cancel(db_config.too_slow(database.config))  # nobody reads it: 499

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = database.run(plan, handle)
    finally:
        os.eventfd_write(done, 1)
        watcher.join()
        os.close(done)
    watched = seen[0] if seen else None
    if watched is not None and watched.client_gone:
        return watched
    return Watched(received=watched.received if watched else b"", outcome=outcome)


def _read_or_eof(sock: socket.socket) -> bytes:
    """What the client sent next; b"" once it has closed (or reset) its side."""
    try:
        return sock.recv(RECEIVE_BYTES)
    except OSError:
        return b""


def _watching_until(sock: socket.socket, deadline: float, done: int) -> Watched | None:
    """Wait until `done` (an eventfd) is written, watching the socket meanwhile: a Watched
    (client_gone if it closed), or None if the deadline passed first."""
    watch = select.poll()
    watch.register(sock, select.POLLIN)
    watch.register(done, select.POLLIN)
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        for fd, _ in watch.poll(left * 1000):
            if fd == done:
                return Watched(received=received)
            if not (data := _read_or_eof(sock)):
                return Watched(client_gone=True)
            # A pipelined request: keep it, and stop watching (as the other servers do).
            received += data
            watch.unregister(sock)
    return None


def _monitor_lag(telemetry: Telemetry, stop: threading.Event) -> None:
    while True:
        armed = time.perf_counter()
        if stop.wait(LAG_INTERVAL_S):
            return
        telemetry.observe_lag(lag_after(armed))


def serve(options: ServeOptions) -> None:
    telemetry = make_telemetry(
        ServerInfo(
            IMPL,
            "threads",
            "python " + _python(),
            f"h11 {h11.__version__}",
            sync_client.label(),
            _db_driver(options),
        ),
        options.metrics,
        threads=True,
    )
    server = ThreadsH11Server(telemetry, options)
    listener = bind(options)
    listener.settimeout(ACCEPT_POLL_S)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    background = [threading.Thread(target=server.reap_slow_connections, args=(stop,), daemon=True)]
    if telemetry.enabled:
        background.append(
            threading.Thread(target=_monitor_lag, args=(telemetry, stop), daemon=True)
        )
    for thread in background:
        thread.daemon = True  # the process ends when serving does
        thread.start()
    announce(IMPL, listener)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError, BlockingIOError, InterruptedError):
            server.accept(listener)
    # Drain: stop accepting, close idle connections, give the rest a deadline.
    listener.close()
    server.drain()
    deadline = time.monotonic() + options.drain_timeout
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.upstream is not None:
        server.upstream.close()
    if server.database is not None:
        server.database.close()


def _db_driver(options: ServeOptions) -> str:
    if options.database is None:
        return ""
    from servers.db import sync_pool

    return sync_pool.label()


def _python() -> str:
    import platform

    return platform.python_version()
