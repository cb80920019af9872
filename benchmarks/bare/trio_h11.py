"""Bare h11 on trio: a task per connection, a plain receive_some / next_event / send_all loop.

The reference for stackbench's `trio` server. trio's SocketStream sets TCP_NODELAY.

    python benchmarks/bare/trio_h11.py --port 8080
"""

from __future__ import annotations

import signal

import h11
import trio
from _bare import RECEIVE_BYTES, announce, listen, port_from_argv
from _h11 import keep_alive, respond

NAME = "trio_h11"


async def handle(stream: trio.SocketStream) -> None:
    http = h11.Connection(h11.SERVER)
    try:
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await stream.receive_some(RECEIVE_BYTES))
            elif type(event) is h11.Request:
                await stream.send_all(respond(http, event.target))
            elif keep_alive(http, event) is False:
                return
    except (h11.ProtocolError, trio.BrokenResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def serve(port: int) -> None:
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(listen(port)))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
            announce(NAME, listener.socket)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(serve, port_from_argv(NAME))
