"""The h11 side of the four bare h11 servers: the response, and the blocking connection loop
that gevent (monkey-patched) and threads run as is. What differs between them is the runtime
around it, as in stackbench's runtime tier."""

from __future__ import annotations

import socket

import h11
from _bare import BODY, CONTENT_TYPE, RECEIVE_BYTES, http_date

TYPE = ("Content-Type", CONTENT_TYPE)
LENGTH = ("Content-Length", str(len(BODY)))
EMPTY = ("Content-Length", "0")


def respond(http: h11.Connection, target: bytes) -> bytes:
    """The whole response in one buffer, so that it leaves in one write."""
    if target != b"/":
        head = h11.Response(
            status_code=404, reason=b"Not Found", headers=[TYPE, EMPTY, ("Date", http_date())]
        )
        return http.send(head) + http.send(h11.EndOfMessage())
    head = h11.Response(
        status_code=200, reason=b"OK", headers=[TYPE, LENGTH, ("Date", http_date())]
    )
    return http.send(head) + http.send(h11.Data(data=BODY)) + http.send(h11.EndOfMessage())


def keep_alive(http: h11.Connection, event: object) -> bool | None:
    """After an event that is not NEED_DATA or a Request: True to go on reading, False to close,
    None for a body chunk (ignored)."""
    if type(event) is h11.EndOfMessage:
        if http.our_state is h11.DONE:  # not MUST_CLOSE: neither side asked to close
            http.start_next_cycle()
            return True
        return False
    return None if type(event) is h11.Data else False  # else ConnectionClosed


def serve_connection(sock: socket.socket) -> None:
    """One connection with blocking calls (cooperative ones under gevent's monkey patching)."""
    http = h11.Connection(h11.SERVER)
    with sock:
        try:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(sock.recv(RECEIVE_BYTES))
                elif type(event) is h11.Request:
                    sock.sendall(respond(http, event.target))
                elif keep_alive(http, event) is False:
                    return
        except (h11.ProtocolError, OSError):
            return
