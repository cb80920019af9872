"""asyncpg, the driver of the asyncio world: aiohttp and asyncio-h11 call it.

Its own pool with its default settings, as users get it, but two: `max_size` is --db-pool and
`min_size` 0 (asyncpg's 10 would connect at start, and a database down at start must leave the
server up, answering 502). So on every release asyncpg runs its reset query (`RESET ALL`,
`UNLISTEN *`, `CLOSE ALL`, `pg_advisory_unlock_all()`... what the server supports) before the
connection is free again: part of what the asyncio servers cost here (README, "/db"). A task
cancelled mid-query (the client left, the deadline passed) has asyncpg send PostgreSQL a
cancel request and the connection is given back once the server has stopped.
"""

from __future__ import annotations

import asyncio

import asyncpg

from servers.contract import Database, Response
from servers.db.config import (
    CONNECT_TIMEOUT_S,
    LOCK_WORLDS,
    SELECT_FORTUNES,
    SELECT_WORLD,
    SLEEP,
    UPDATE_WORLDS,
    DatabaseConfig,
    FaultLog,
    application_name,
    broken,
    reason,
    too_slow,
)

__all__ = ["AsyncpgDatabase", "label"]


def label() -> str:
    return f"asyncpg {asyncpg.__version__}"


class AsyncpgDatabase:
    """The process's asyncpg pool. Make it, then `await start()`, inside the running loop."""

    def __init__(self, config: DatabaseConfig, impl: str) -> None:
        self.config = config
        self.faults = FaultLog(impl)
        self.impl = impl
        self.pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        # min_size 0: nothing connects here, so a database that is down does not stop the server.
        self.pool = await asyncpg.create_pool(
            self.config.url,
            min_size=0,
            max_size=self.config.pool,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": application_name(self.impl)},
        )

    async def run(self, plan: Database) -> Response:
        """Carry out the plan within the deadline (the pool's wait included); its response,
        faults included."""
        return self.faults.note(await self._run(plan))

    async def _run(self, plan: Database) -> Response:
        assert self.pool is not None
        try:
            async with asyncio.timeout(self.config.timeout):
                async with self.pool.acquire() as connection:
                    return plan.response(await _queries(connection, plan))
        except TimeoutError:
            return too_slow(self.config)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            return broken(self.config, reason(exc))

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()


async def _queries(connection: asyncpg.Connection, plan: Database) -> list | None:
    match plan.query:
        case "world":
            return [tuple(await connection.fetchrow(SELECT_WORLD, row)) for row in plan.ids]
        case "fortunes":
            return [tuple(record) for record in await connection.fetch(SELECT_FORTUNES)]
        case "updates":
            for row in plan.ids:
                await connection.fetchrow(SELECT_WORLD, row)
            ids, numbers = plan.batch()
            async with connection.transaction():
                await connection.execute(LOCK_WORLDS, ids)
                await connection.execute(UPDATE_WORLDS, ids, numbers)
            return None
        case "sleep":
            await connection.execute(SLEEP, plan.ms / 1000)
            return None
    raise AssertionError(f"unknown query {plan.query}")  # pragma: no cover
