"""Bare aiohttp.web: an Application with one route, on asyncio.

The reference for stackbench's `aiohttp` server (which runs aiohttp's low-level server with
its own routing). aiohttp adds Date and Server itself; asyncio sets TCP_NODELAY on every TCP
transport.

    python benchmarks/bare/aiohttp_web.py --port 8080
"""

from __future__ import annotations

import asyncio
import signal

from _bare import BODY, CONTENT_TYPE, announce, listen, port_from_argv
from aiohttp import web

NAME = "aiohttp_web"


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type=CONTENT_TYPE)


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = listen(port)
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    announce(NAME, sock)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(port_from_argv(NAME)))
