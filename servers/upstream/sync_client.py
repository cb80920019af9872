"""urllib3, the synchronous client: gevent and gevent-h11 call it monkey-patched (each wait
yields to the hub), threads-h11 calls it from one OS thread per call.

One `HTTPConnectionPool` per process: at most `pool` keep-alive connections, a call beyond
them blocks until one is free (`block=True`), no retries (a benchmark must not hide a fault
by repeating the call). Greenlets are cancelled by killing them; threads cannot be, so a
request on threads-h11 collects its calls' connections in a `CallGroup` and shuts their sockets
to end the blocked reads (urllib3 has no way to cancel a call; this is that way).
"""

from __future__ import annotations

import contextlib
import socket
import threading

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.exceptions import EmptyPoolError, HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from servers.upstream import UpstreamConfig, UpstreamFault, reason, too_slow, unreachable

__all__ = ["CallGroup", "SyncUpstream", "label"]

_current = threading.local()  # the CallGroup of the call this thread is making


def label() -> str:
    return f"urllib3 {urllib3.__version__}"


class CallGroup:
    """The connections one request's calls are using, so that its thread can abort them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[_TrackedConnection] = []
        self.aborted = False

    def join(self, connection: _TrackedConnection) -> None:
        with self._lock:
            if self.aborted:
                raise urllib3.exceptions.ProtocolError("call aborted")
            self._connections.append(connection)
            connection.group = self

    def leave(self, connection: _TrackedConnection) -> None:
        """The call is done with `connection` (it goes back to the pool, where another
        request's call may take it): aborting this group must no longer touch it."""
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
            connection.group = None

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            connections = list(self._connections)
            # Shut under the lock: a connection cannot leave (and be handed to another
            # request) half-way through.
            for connection in connections:
                connection.shut()

    def connected(self, connection: _TrackedConnection) -> None:
        """A connection of the group has just connected: shut it if the group is aborted
        (abort() may have run while its socket did not exist yet)."""
        with self._lock:
            if self.aborted:
                connection.shut()


class _TrackedConnection(HTTPConnection):
    group: CallGroup | None = None

    def request(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        group = getattr(_current, "group", None)
        if group is not None:
            group.join(self)
        super().request(*args, **kwargs)  # type: ignore[arg-type]

    def connect(self) -> None:
        super().connect()
        group = self.group
        if group is not None:
            group.connected(self)

    def shut(self) -> None:
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns: urllib3 raises


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedConnection

    def _put_conn(self, conn: HTTPConnection | None) -> None:
        group = getattr(conn, "group", None)
        if group is not None:
            group.leave(conn)  # type: ignore[arg-type]
        super()._put_conn(conn)


class SyncUpstream:
    """The process's pooled urllib3 client to the upstream."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        # Calls wait for a free connection here, not inside urllib3: a greenlet killed while
        # waiting in urllib3's pool queue puts a slot back that was never taken (the pool then
        # opens more connections than its size). A semaphore is safe to kill a waiter of.
        self._slots = threading.BoundedSemaphore(config.pool)
        self.pool = _Pool(
            config.host,
            config.port,
            maxsize=config.pool,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=config.timeout, read=config.timeout),
        )

    def call(self, path: str, group: CallGroup | None = None) -> int:
        """One GET; its status. Raises UpstreamFault."""
        if not self._slots.acquire(timeout=self.config.timeout):
            raise UpstreamFault(too_slow(self.config))  # no connection came free in time
        if group is not None and group.aborted:
            # Aborted while it waited: leave the pooled connections alone (taking one only to
            # refuse it would close a healthy connection).
            self._slots.release()
            raise UpstreamFault(unreachable(self.config, "call aborted"))
        _current.group = group
        try:
            answer = self.pool.request("GET", path, pool_timeout=self.config.timeout)
            return answer.status
        except EmptyPoolError:
            raise UpstreamFault(too_slow(self.config)) from None  # no connection came free
        except NewConnectionError as exc:  # before TimeoutError: it subclasses it
            raise UpstreamFault(unreachable(self.config, reason(exc))) from None
        except Urllib3Timeout:
            raise UpstreamFault(too_slow(self.config)) from None
        except (HTTPError, OSError) as exc:
            raise UpstreamFault(unreachable(self.config, reason(exc))) from None
        finally:
            _current.group = None
            self._slots.release()

    def close(self) -> None:
        self.pool.close()
