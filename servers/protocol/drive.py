"""The loop that carries out a ConnectionCore's operations, once for runtimes that block
(gevent, threads) and once for runtimes that await (trio, asyncio): an adapter passes in only
how it receives, sends and waits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from servers.protocol.h11_connection import RECEIVE, SEND_EOF, ConnectionCore, Wait, Watched

__all__ = ["drive", "drive_async"]

Work = object  # Sleep | Fanout | Blocking | Pause, as Wait carries it


def drive(
    core: ConnectionCore,
    receive: Callable[[], bytes],
    send: Callable[[bytes], object],
    wait: Callable[[Work], Watched],
    send_eof: Callable[[], object],
    ends: tuple[type[BaseException], ...],
) -> None:
    """Serve the connection until it closes. An exception in `ends` (a broken socket, a
    timeout thrown in) ends it quietly; a request cut short is recorded as the client's."""
    steps = core.run()
    result: object = None
    # Identity and type tests, most frequent first, rather than `match`: this loop runs for
    # every operation of every request.
    try:
        while True:
            operation = steps.send(result)
            if type(operation) is bytes:
                send(operation)
                result = None
            elif operation is RECEIVE:
                result = receive()
            elif operation is SEND_EOF:
                send_eof()
                result = None
            else:
                assert type(operation) is Wait
                result = wait(operation.work)
    except StopIteration:
        return
    except ends:
        pass
    finally:
        steps.close()


async def drive_async(
    core: ConnectionCore,
    receive: Callable[[], Awaitable[bytes]],
    send: Callable[[bytes], Awaitable[object]],
    wait: Callable[[Work], Awaitable[Watched]],
    send_eof: Callable[[], Awaitable[object]],
    ends: tuple[type[BaseException], ...],
) -> None:
    """`drive` for runtimes that await (the same loop: a generator cannot be shared between a
    function and a coroutine any other way)."""
    steps = core.run()
    result: object = None
    try:
        while True:
            operation = steps.send(result)
            if type(operation) is bytes:
                await send(operation)
                result = None
            elif operation is RECEIVE:
                result = await receive()
            elif operation is SEND_EOF:
                await send_eof()
                result = None
            else:
                assert type(operation) is Wait
                result = await wait(operation.work)
    except StopIteration:
        return
    except ends:
        pass
    finally:
        steps.close()
