"""What both gevent servers (gevent.pywsgi and gevent-h11) do the same gevent way: call a
blocking library, call the upstream, watch the hub's lag, answer and close without a reset.
Imported only in a process that gevent has monkey-patched."""

from __future__ import annotations

import contextlib
import socket
import time

import gevent
import gevent.pool

from servers import contract
from servers.contract import Blocking, Database, Response, Upstream, legacy_blocking_call
from servers.db import config as db_config
from servers.lifecycle import ServeOptions
from servers.telemetry import LAG_INTERVAL_S, Telemetry, lag_after
from servers.upstream import UpstreamFault, not_configured, too_slow
from servers.upstream.sync_client import SyncUpstream

__all__ = [
    "answer_and_close",
    "call_blocking",
    "call_database",
    "call_upstream",
    "db_driver",
    "monitor_lag",
    "open_database",
    "size_thread_pool",
]


def answer_and_close(sock: socket.socket, response: bytes, linger_s: float) -> bool:
    """Send a last response, half-close, then read what the client still sends for at most
    `linger_s`: closing with unread input would send a reset that can destroy the response
    before the client reads it. Whether the response went out; the caller closes the socket."""
    sent = False
    with contextlib.suppress(OSError, gevent.Timeout):
        sock.sendall(response)
        sent = True
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(linger_s):
            while sock.recv(65536):
                pass
    return sent


def size_thread_pool() -> None:
    """The hub's thread pool as large as the async servers' offload pools, so that offloading
    compares the runtimes, not two pool sizes."""
    gevent.get_hub().threadpool.maxsize = contract.OFFLOAD_THREADS


def call_blocking(plan: Blocking) -> None:
    """Python code is called directly whether asked to offload or not (monkey patching made
    its waits cooperative); C code would block the hub's thread, so offloading it goes to the
    hub's thread pool, and calling it inline stalls every greenlet."""
    if plan.offload and not plan.yields_under_gevent:
        gevent.get_hub().threadpool.apply(legacy_blocking_call, (plan.ms, plan.kind))
    else:
        legacy_blocking_call(plan.ms, plan.kind)


def call_upstream(
    client: SyncUpstream | None, plan: Upstream, spawned: gevent.pool.Group
) -> Response:
    """`plan.calls` greenlets, each a plain blocking urllib3 call that monkey patching makes
    cooperative; structured: if one fails, or this greenlet is killed because the client left,
    every call still running is killed (urllib3 then drops its connection). A failed call
    returns its fault rather than raising it: a greenlet that dies of an exception has the hub
    print its traceback, and a refused upstream is routine."""
    if client is None:
        return not_configured()

    def call() -> int | UpstreamFault:
        try:
            return client.call(plan.path)
        except UpstreamFault as fault:
            return fault

    calls = gevent.pool.Group()
    try:
        with gevent.Timeout(client.config.timeout, False):
            started = [calls.spawn(call) for _ in range(plan.calls)]
            for greenlet in started:
                spawned.add(greenlet)
            for finished in gevent.iwait(started):
                if not finished.successful():
                    raise finished.exception  # not a fault of the upstream: a bug, a 500
                if isinstance(finished.value, UpstreamFault):
                    return finished.value.response
            return plan.response([greenlet.value for greenlet in started])
        return too_slow(client.config)
    finally:
        calls.kill(block=True)


def open_database(options: ServeOptions, impl: str):  # -> SyncDatabase | None
    """The process's database pool, if the server has a database. psycopg is imported here,
    after gevent's patching, so that it waits on the hub."""
    if options.database is None:
        return None
    from servers.db.sync_pool import SyncDatabase

    return SyncDatabase(options.database, impl)


def db_driver(options: ServeOptions) -> str:
    """stackbench_server_info's db_driver: the driver and its version, if there is a database."""
    if options.database is None:
        return ""
    from servers.db import sync_pool

    return sync_pool.label()


def call_database(database, plan: Database) -> Response:  # database: SyncDatabase | None
    """The plan's queries, plain blocking psycopg calls made cooperative (psycopg waits on
    the hub); past the deadline the greenlet is interrupted, which cancels the query. If the
    client leaves, the caller kills this greenlet, with the same effect."""
    if database is None:
        return db_config.not_configured()
    with gevent.Timeout(database.config.timeout, False):
        return database.run(plan)
    return db_config.too_slow(database.config)


def monitor_lag(telemetry: Telemetry) -> None:
    """How late a 10 ms timer fires in the hub: what a greenlet that does not yield costs
    the others."""
    while True:
        armed = time.perf_counter()
        gevent.sleep(LAG_INTERVAL_S)
        telemetry.observe_lag(lag_after(armed))
