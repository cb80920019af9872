"""Bare h11 on asyncio: a Protocol, h11 fed from data_received, responses written to the
transport. No task and no stream per connection: the cheapest way asyncio serves a connection
(stackbench's `asyncio-h11` runs a task on streams, for cancellation and waiting).

The reference for stackbench's `asyncio-h11` server. asyncio sets TCP_NODELAY on every TCP
transport.

    python benchmarks/bare/asyncio_h11.py --port 8080
"""

from __future__ import annotations

import asyncio
import signal

import h11
from _bare import announce, listen, port_from_argv
from _h11 import keep_alive, respond

NAME = "asyncio_h11"


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.http = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        http = self.http
        http.receive_data(data)
        try:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    return
                if type(event) is h11.Request:
                    self.transport.write(respond(http, event.target))
                elif keep_alive(http, event) is False:
                    break
        except h11.ProtocolError:
            pass
        self.transport.close()  # flushes what is written first


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = listen(port)
    server = await loop.create_server(Http, sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    announce(NAME, sock)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(port_from_argv(NAME)))
