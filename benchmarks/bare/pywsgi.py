"""Bare gevent.pywsgi: a one-route WSGI app, monkey-patched, a greenlet per connection.

The reference for stackbench's `gevent` server. pywsgi adds Date itself and sends the head and
the body in two writes, as it does for stackbench.

    python benchmarks/bare/pywsgi.py --port 8080
"""

from gevent import monkey

monkey.patch_all()

# ruff: noqa: E402  (the imports below must see the patched socket)
import signal
from collections.abc import Callable, Iterable

import gevent
import gevent.event
from _bare import BODY, CONTENT_TYPE, announce, listen, port_from_argv, set_nodelay
from gevent import pywsgi

NAME = "pywsgi"
OK = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(BODY)))]
NOT_FOUND = [("Content-Type", CONTENT_TYPE), ("Content-Length", "0")]


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/":
        start_response("200 OK", OK)
        return [BODY]
    start_response("404 Not Found", NOT_FOUND)
    return []


class Handler(pywsgi.WSGIHandler):
    def handle(self) -> None:
        set_nodelay(self.socket)  # pywsgi writes head and body apart: Nagle would stall 40 ms
        super().handle()


def main() -> None:
    listener = listen(port_from_argv(NAME))
    server = pywsgi.WSGIServer(listener, app, handler_class=Handler, log=None)
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    server.start()
    announce(NAME, listener)
    stop.wait()
    server.stop(timeout=1)


if __name__ == "__main__":
    main()
