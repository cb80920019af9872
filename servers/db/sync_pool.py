"""psycopg 3, synchronous: gevent and gevent-h11 call it monkey-patched (psycopg sees gevent's
patching when it is imported after it, and waits on the hub), threads-h11 truly blocking on its
connection's thread, trio from `trio.to_thread` threads.

One pool per process of at most `pool` connections, opened when first needed and kept; a
request beyond them waits for one until the deadline. Not psycopg_pool: when the database
refuses connections, its getconn() waits out its whole timeout (its workers retry in the
background), so a refused database would answer 504 after 10 s, where the contract says 502 at
once. This pool is a semaphore (safe to kill a waiting greenlet of, as /upstream's) and a list
of idle connections; a request that fails, is cancelled or times out closes its connection
rather than give back one in an unknown state, and a closed one is replaced on demand.

A query in flight is cancelled on the server (libpq's cancel request, `cancel_safe`), whether
the greenlet making it is killed or another thread asks (`CancelHandle`: threads and trio's
threads cannot be interrupted): the backend stops at once rather than sleep on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

from servers.contract import Database, Response
from servers.db.config import (
    CONNECT_TIMEOUT_S,
    LOCK_WORLDS,
    SELECT_FORTUNES,
    SELECT_WORLD,
    SLEEP,
    UPDATE_WORLDS,
    DatabaseConfig,
    DatabaseFault,
    FaultLog,
    application_name,
    broken,
    psycopg_sql,
    reason,
    too_slow,
)

__all__ = ["CancelHandle", "SyncDatabase", "label"]

_SELECT_WORLD = psycopg_sql(SELECT_WORLD)
_UPDATE_WORLDS = psycopg_sql(UPDATE_WORLDS)
_LOCK_WORLDS = psycopg_sql(LOCK_WORLDS)
_SLEEP = psycopg_sql(SLEEP)


def label() -> str:
    return f"psycopg {psycopg.__version__}"


class CancelHandle:
    """Lets another thread stop one request's queries: cancel() answers the request with
    `response` and cancels the query in flight, or the next one before it starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: psycopg.Connection | None = None
        self.response: Response | None = None

    def using(self, connection: psycopg.Connection | None) -> None:
        with self._lock:
            self._connection = connection
            if connection is not None and self.response is not None:
                _cancel(connection)

    def cancel(self, response: Response) -> None:
        with self._lock:
            if self.response is None:
                self.response = response
            if self._connection is not None:
                _cancel(self._connection)


def _cancel(connection: psycopg.Connection) -> None:
    with contextlib.suppress(psycopg.Error, OSError):
        connection.cancel_safe(timeout=2.0)


class SyncDatabase:
    """The process's pool of psycopg connections and what the routes run through it."""

    def __init__(self, config: DatabaseConfig, impl: str) -> None:
        self.config = config
        self.faults = FaultLog(impl)
        self._slots = threading.BoundedSemaphore(config.pool)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection] = []
        self._connect_args = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": application_name(impl),
        }

    def run(self, plan: Database, handle: CancelHandle | None = None) -> Response:
        """Carry out the plan; its response, faults included (502, 504; the handle's)."""
        return self.faults.note(self._run(plan, handle))

    def _run(self, plan: Database, handle: CancelHandle | None) -> Response:
        deadline = time.monotonic() + self.config.timeout
        try:
            with self._connection(deadline, handle) as connection:
                return plan.response(_queries(connection, plan))
        except DatabaseFault as fault:
            return fault.response
        except pg_errors.QueryCanceled:
            if handle is not None and handle.response is not None:
                return handle.response  # the deadline or the client: the canceller says
            return broken(self.config, "query cancelled")
        except (psycopg.Error, OSError) as exc:
            if handle is not None and handle.response is not None:
                return handle.response
            return broken(self.config, reason(exc))

    @contextlib.contextmanager
    def _connection(
        self, deadline: float, handle: CancelHandle | None
    ) -> Iterator[psycopg.Connection]:
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise DatabaseFault(too_slow(self.config))  # no connection came free in time
        connection: psycopg.Connection | None = None
        try:
            if handle is not None and handle.response is not None:
                raise DatabaseFault(handle.response)  # cancelled while it waited
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None or connection.closed:
                connection = psycopg.connect(self.config.url, **self._connect_args)
            if handle is not None:
                handle.using(connection)
            yield connection
        except BaseException:
            # Failed, cancelled (a killed greenlet), or timed out mid-query: stop the query on
            # the server, and do not reuse a connection in an unknown state.
            if connection is not None:
                if connection.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                    _cancel(connection)
                connection.close()
                connection = None
            raise
        finally:
            if handle is not None:
                handle.using(None)
            if connection is not None:
                if connection.pgconn.transaction_status == pq.TransactionStatus.IDLE:
                    with self._lock:
                        self._idle.append(connection)
                else:
                    connection.close()
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(psycopg.Error, OSError):
                connection.close()


def _queries(connection: psycopg.Connection, plan: Database) -> list | None:
    """The plan's statements, one query per row read (TechEmpower's rule)."""
    match plan.query:
        case "world":
            return [connection.execute(_SELECT_WORLD, (row,)).fetchone() for row in plan.ids]
        case "fortunes":
            return connection.execute(SELECT_FORTUNES).fetchall()
        case "updates":
            for row in plan.ids:
                connection.execute(_SELECT_WORLD, (row,)).fetchone()
            ids, numbers = plan.batch()
            with connection.transaction():
                connection.execute(_LOCK_WORLDS, (ids,))
                connection.execute(_UPDATE_WORLDS, (ids, numbers))
            return None
        case "sleep":
            connection.execute(_SLEEP, (plan.ms / 1000,))
            return None
    raise AssertionError(f"unknown query {plan.query}")  # pragma: no cover
