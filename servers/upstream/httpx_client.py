"""httpx.AsyncClient, the async client of the h11 world (it speaks HTTP/1.1 through h11, as
the runtime tier's servers do): trio and asyncio-h11 call it, and httpcore picks its trio or
asyncio backend from the running loop.

One client per process: at most `pool` connections, all kept alive; a call beyond them waits
for one (httpx's pool timeout), no retries. Cancelling the task that makes a call closes its
connection.
"""

from __future__ import annotations

import httpx

from servers.upstream import (
    KEEPALIVE_S,
    UpstreamConfig,
    UpstreamFault,
    reason,
    too_slow,
    unreachable,
)

__all__ = ["HttpxUpstream", "label"]


def label() -> str:
    return f"httpx {httpx.__version__}"


class HttpxUpstream:
    """The process's pooled httpx client to the upstream. Make it inside the running loop."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.client = httpx.AsyncClient(
            base_url=config.url,
            limits=httpx.Limits(
                max_connections=config.pool,
                max_keepalive_connections=config.pool,
                keepalive_expiry=KEEPALIVE_S,
            ),
            timeout=httpx.Timeout(config.timeout),
            trust_env=False,  # no proxy from the environment between a server and its upstream
        )

    async def call(self, path: str) -> int:
        """One GET; its status. Raises UpstreamFault."""
        try:
            answer = await self.client.get(path)
        except httpx.TimeoutException:  # the pool's wait included
            raise UpstreamFault(too_slow(self.config)) from None
        except httpx.ConnectError as exc:
            raise UpstreamFault(unreachable(self.config, reason(exc))) from None
        except httpx.HTTPError as exc:
            raise UpstreamFault(unreachable(self.config, reason(exc))) from None
        return answer.status_code

    async def aclose(self) -> None:
        await self.client.aclose()
