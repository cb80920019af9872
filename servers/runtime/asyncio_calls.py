"""What both asyncio servers (aiohttp and asyncio-h11) do the same asyncio way: call the
upstream, structured by a TaskGroup."""

from __future__ import annotations

import asyncio
from typing import Protocol

from servers.contract import Database, Response, Upstream
from servers.db import config as db_config
from servers.upstream import UpstreamConfig, first_fault, not_configured, too_slow

__all__ = ["AsyncUpstream", "call_database", "call_upstream", "db_driver", "open_database"]


class AsyncUpstream(Protocol):
    config: UpstreamConfig

    async def call(self, path: str) -> int: ...


async def call_upstream(client: AsyncUpstream | None, plan: Upstream) -> Response:
    """`plan.calls` tasks in a TaskGroup, each one call through the server's client: if one
    fails, or this task is cancelled because the client left, every other call is cancelled
    with it; past the deadline (the pool's wait included), 504."""
    if client is None:
        return not_configured()
    statuses = [0] * plan.calls

    async def call(index: int) -> None:
        statuses[index] = await client.call(plan.path)

    try:
        async with asyncio.timeout(client.config.timeout):
            async with asyncio.TaskGroup() as calls:
                for index in range(plan.calls):
                    calls.create_task(call(index))
    except TimeoutError:
        return too_slow(client.config)
    except BaseExceptionGroup as group:
        fault = first_fault(group)
        if fault is None:
            raise
        return fault.response
    return plan.response(statuses)


async def open_database(options, impl: str):  # -> AsyncpgDatabase | None
    """The process's asyncpg pool, if the server has a database (made in the running loop)."""
    if options.database is None:
        return None
    from servers.db.asyncpg_pool import AsyncpgDatabase

    database = AsyncpgDatabase(options.database, impl)
    await database.start()
    return database


def db_driver(options) -> str:
    if options.database is None:
        return ""
    from servers.db import asyncpg_pool

    return asyncpg_pool.label()


async def call_database(database, plan: Database) -> Response:
    """The plan's queries through asyncpg; cancelling this task (the client left) cancels the
    query (asyncpg sends PostgreSQL a cancel request)."""
    if database is None:
        return db_config.not_configured()
    return await database.run(plan)
