"""What every server does the same way around its event loop: options, the listening socket,
the response head, the start-up line a supervisor waits for."""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from servers.contract import IMPL_HEADER, JSON, TEXT, Response, error
from servers.db.config import DatabaseConfig
from servers.protocol.framing import Rejection
from servers.upstream import UpstreamConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DRAIN_TIMEOUT_S = 10.0
# A connection that sends nothing for this long (before its first request, or between
# requests) is closed.
DEFAULT_IDLE_TIMEOUT_S = 60.0
# Once a request has begun to arrive, its line and headers must all be in within this long:
# a client trickling headers a byte at a time (slowloris) is cut off.
DEFAULT_HEADER_TIMEOUT_S = 10.0
# Past this many open connections a new one gets a 503 and is closed at once.
DEFAULT_MAX_CONNECTIONS = 10_000
LISTEN_BACKLOG = 2048


@dataclass(frozen=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    metrics: bool = True
    # On SIGTERM/SIGINT: stop accepting, close idle connections, give in-flight requests this
    # long to finish, then exit 0.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    uvloop: bool = False  # aiohttp only
    # aiohttp only: keep running a handler whose client has gone (aiohttp's own default), to
    # measure what cancelling saves. gevent and trio always cancel.
    cancel_on_disconnect: bool = True
    # What GET /upstream calls (None: it answers 503).
    upstream: UpstreamConfig | None = None
    # What the database routes query (None: they answer 503).
    database: DatabaseConfig | None = None


class ServeError(Exception):
    """A problem the user can fix (port in use, bad address): printed as one line, exit 2."""


def bind(options: ServeOptions) -> socket.socket:
    """The listening socket. Bound here, before any runtime starts, so all three servers report
    a busy port the same way and accept `--port 0`."""
    try:
        infos = socket.getaddrinfo(
            options.host, options.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve host {options.host!r}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {options.port} on {options.host} is already in use; "
                "stop what holds it or pick another with --port"
            ) from exc
        raise ServeError(f"cannot listen on {options.host}:{options.port}: {exc.strerror}") from exc
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def announce(impl: str, sock: socket.socket) -> None:
    """Print the line supervisors (tests, `stackbench run`) wait for: the server is accepting."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"stackbench {impl} listening on http://{shown}:{port}", flush=True)


def log_refusal(impl: str, rejection: Rejection, peer: str | None = None) -> None:
    """One line on stderr for a request the framing policy refused (never a traceback: a
    client's mistake is routine)."""
    source = f" from {peer}" if peer else ""
    print(
        f"stackbench {impl}: refused {rejection.status}{source}: {rejection.message}",
        file=sys.stderr,
        flush=True,
    )


def set_nodelay(sock: socket.socket) -> None:
    """Send each response as soon as it is written. Without it, a server that writes headers and
    body in two sends (gevent.pywsgi does) stalls ~40 ms per response on Nagle + delayed ACK."""
    with contextlib.suppress(OSError):  # not TCP (a Unix socket), or already closed
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@functools.cache
def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


SERVER_HEADER = ("Server", "stackbench")
_date_cache: tuple[int, str] = (0, "")


def http_date() -> tuple[str, str]:
    """The Date header (RFC 9110 §6.6.1: an origin server with a clock MUST send it), made
    once a second: formatting it per response would cost more than some whole responses."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return ("Date", _date_cache[1])


def response_headers(impl: str, response: Response) -> list[tuple[str, str]]:
    """The head of a complete (non-streamed) response, the same on every server: Content-Type,
    Content-Length, Date, Server, X-Stackbench-Impl (and the response's own)."""
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        http_date(),
        SERVER_HEADER,
        (IMPL_HEADER, impl),
        *response.headers,
    ]
    if response.close_connection:
        headers.append(("Connection", "close"))
    return headers


def wire_response(impl: str, response: Response, head_request: bool = False) -> bytes:
    """A whole response as bytes, for the paths that write to the socket themselves
    (refusals that happen before, or instead of, a server's HTTP stack); without its body
    for a HEAD request."""
    head = "".join(f"{name}: {value}\r\n" for name, value in response_headers(impl, response))
    status = f"HTTP/1.1 {response.status} {reason(response.status)}\r\n"
    wire = (status + head + "\r\n").encode("latin-1")
    return wire if head_request else wire + response.body


def overloaded_response(impl: str) -> bytes:
    """The whole HTTP response a connection over the cap gets before it is closed, written
    straight to the socket: no parsing, no task, as cheap as shedding can be."""
    body = error(503, "too many connections; try again later").body
    return (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON}\r\n"
        f"Content-Length: {len(body)}\r\n{IMPL_HEADER}: {impl}\r\nConnection: close\r\n"
        "Retry-After: 1\r\n\r\n"
    ).encode() + body


def stream_headers(impl: str) -> list[tuple[str, str]]:
    return [("Content-Type", TEXT), http_date(), SERVER_HEADER, (IMPL_HEADER, impl)]
