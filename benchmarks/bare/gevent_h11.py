"""Bare h11 on gevent: a monkey-patched StreamServer, a greenlet per connection, a plain blocking
recv / next_event / sendall loop.

The reference for stackbench's `gevent-h11` server.

    python benchmarks/bare/gevent_h11.py --port 8080
"""

from gevent import monkey

monkey.patch_all()

# ruff: noqa: E402  (the imports below must see the patched socket)
import signal
import socket

import gevent
import gevent.event
from _bare import announce, listen, port_from_argv, set_nodelay
from _h11 import serve_connection
from gevent.server import StreamServer

NAME = "gevent_h11"


def handle(sock: socket.socket, _address: object) -> None:
    set_nodelay(sock)
    serve_connection(sock)


def main() -> None:
    listener = listen(port_from_argv(NAME))
    server = StreamServer(listener, handle)
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    server.start()
    announce(NAME, listener)
    stop.wait()
    server.stop(timeout=1)


if __name__ == "__main__":
    main()
