"""What the bare reference servers share, none of it on the request path: the command line,
the listening socket, the line a supervisor waits for, and the Date header.

Each bare server is the best case of its stack for `GET /`: the least code that still serves
HTTP/1.1 correctly (keep-alive, Content-Length, Date, TCP_NODELAY), with nothing stackbench adds
(routing table, telemetry, timeouts, connection cap, drain). benchmarks/wrk_servers.py --bare
and benchmarks/instructions.py compare each stackbench server with its reference.
"""

from __future__ import annotations

import argparse
import socket
import time
from email.utils import formatdate

HOST = "127.0.0.1"
BODY = b"Hello, World!"
CONTENT_TYPE = "text/plain"
RECEIVE_BYTES = 64 * 1024
LISTEN_BACKLOG = 2048

_date: tuple[int, bytes] = (0, b"")


def port_from_argv(name: str) -> int:
    parser = argparse.ArgumentParser(description=f"bare {name} hello-world server")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    return parser.parse_args().port


def listen(port: int) -> socket.socket:
    """Bound before any runtime starts, so that `--port 0` works and the announce line can
    name the real port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(LISTEN_BACKLOG)
    return sock


def announce(name: str, sock: socket.socket) -> None:
    print(f"bare {name} listening on http://{HOST}:{sock.getsockname()[1]}", flush=True)


def set_nodelay(sock: socket.socket) -> None:
    # Each response leaves in one write, but a delayed ACK would still stall a second one.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def http_date() -> bytes:
    """The Date header value (RFC 9110 requires it; h11 does not add it), formatted once a
    second as any fast server does."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]
