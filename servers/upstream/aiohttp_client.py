"""aiohttp.ClientSession, the client of the aiohttp world: the aiohttp server calls it.

One session per process: a connector of at most `pool` connections, kept alive; a call beyond
them waits for one (inside the session's total timeout), no retries. Cancelling the task that
makes a call closes its connection.
"""

from __future__ import annotations

import aiohttp

from servers.upstream import (
    KEEPALIVE_S,
    UpstreamConfig,
    UpstreamFault,
    reason,
    too_slow,
    unreachable,
)

__all__ = ["AiohttpUpstream", "label"]


def label() -> str:
    return f"aiohttp {aiohttp.__version__}"


class AiohttpUpstream:
    """The process's pooled aiohttp client to the upstream. Make it inside the running loop."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.session = aiohttp.ClientSession(
            base_url=config.url,
            connector=aiohttp.TCPConnector(
                limit=config.pool, limit_per_host=config.pool, keepalive_timeout=KEEPALIVE_S
            ),
            timeout=aiohttp.ClientTimeout(total=config.timeout),
            auto_decompress=False,
            trust_env=False,  # no proxy from the environment between a server and its upstream
        )
        # aiohttp sends an idempotent request again when the server closed the connection
        # before answering; the other clients do not, and a benchmark must not hide a fault.
        # No public switch: the attribute aiohttp's own test utilities set.
        self.session._retry_connection = False

    async def call(self, path: str) -> int:
        """One GET; its status. Raises UpstreamFault."""
        try:
            async with self.session.get(path) as answer:
                await answer.read()
                return answer.status
        except TimeoutError:  # aiohttp's own timeouts subclass it; the pool's wait included
            raise UpstreamFault(too_slow(self.config)) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamFault(unreachable(self.config, reason(exc))) from None
        except aiohttp.ClientError as exc:
            raise UpstreamFault(unreachable(self.config, reason(exc))) from None

    async def aclose(self) -> None:
        await self.session.close()
