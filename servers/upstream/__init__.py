"""`GET /upstream`: real I/O through each ecosystem's own HTTP client.

Every server answers `/upstream?n=K&ms=N` by making K concurrent `GET {upstream}/sleep?ms=N`
calls through the pooled client its world uses: synchronous urllib3, made cooperative by
monkey patching, on gevent and gevent-h11 (and, truly blocking, one OS thread per call on
threads-h11); `aiohttp.ClientSession` on aiohttp; `httpx.AsyncClient` on trio and asyncio-h11.
What is the same everywhere lives here, free of I/O: the settings (`UpstreamConfig`: one pool
of `pool` keep-alive connections per process, requests waiting for a free one rather than
opening more, one deadline for a call, pool wait included), and the answers to faults: 503
without an upstream, 502 when it cannot be reached or answers garbage, 504 past the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from servers.contract import Response, error

__all__ = [
    "CLIENTS",
    "DEFAULT_POOL",
    "DEFAULT_TIMEOUT_S",
    "KEEPALIVE_S",
    "MAX_POOL",
    "MAX_TIMEOUT_S",
    "UpstreamConfig",
    "UpstreamFault",
    "first_fault",
    "not_configured",
    "reason",
    "too_slow",
    "unreachable",
]

# The client library each server's /upstream calls through (its stackbench_server_info
# http_client label says the same, with the version: tests/test_upstream.py checks).
CLIENTS = {
    "gevent": "urllib3",
    "gevent-h11": "urllib3",
    "threads-h11": "urllib3",
    "aiohttp": "aiohttp",
    "trio": "httpx",
    "asyncio-h11": "httpx",
    "go-nethttp": "net/http",
    "rust-hyper": "hyper",
}
DEFAULT_POOL = 100
MAX_POOL = 10_000
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 600.0
# How long the async clients keep an idle pooled connection (under the servers' 60 s idle
# timeout, so a client never reuses a connection the upstream is closing). urllib3 keeps them
# without limit but checks one is still open before reusing it.
KEEPALIVE_S = 30.0


@dataclass(frozen=True)
class UpstreamConfig:
    """Where the upstream is and how the server's client talks to it."""

    url: str  # http://host:port, no path
    pool: int = DEFAULT_POOL
    timeout: float = DEFAULT_TIMEOUT_S

    @classmethod
    def parse(
        cls, url: str, pool: int = DEFAULT_POOL, timeout: float = DEFAULT_TIMEOUT_S
    ) -> UpstreamConfig:
        """Checked settings; ValueError with a one-line reason otherwise."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ValueError(f"--upstream {url!r}: {exc}") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--upstream must be an http://host[:port] URL, not {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"--upstream takes a scheme, host and port only, not {url!r}")
        try:
            port = 80 if parts.port is None else parts.port
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise ValueError(f"--upstream has a bad port: {url!r}")
        if not 1 <= pool <= MAX_POOL:
            raise ValueError(f"--upstream-pool must be 1..{MAX_POOL}")
        if not 0 < timeout <= MAX_TIMEOUT_S:  # also refuses nan
            raise ValueError(f"--upstream-timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(f"http://{host}:{port}", pool, timeout)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


def not_configured() -> Response:
    return error(503, "no upstream configured: start the server with --upstream URL")


def unreachable(config: UpstreamConfig, why: str) -> Response:
    return error(502, f"upstream {config.url} unreachable: {why[:200]}")


def too_slow(config: UpstreamConfig) -> Response:
    return error(504, f"upstream {config.url} did not answer within {config.timeout:g} s")


class UpstreamFault(Exception):
    """A call failed; `response` is what the request is answered with."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def first_fault(group: BaseExceptionGroup) -> UpstreamFault | None:
    """The first UpstreamFault in an exception group (a nursery's or a TaskGroup's)."""
    matched, _ = group.split(UpstreamFault)
    while matched is not None:
        first = matched.exceptions[0]
        if isinstance(first, UpstreamFault):
            return first
        matched = first if isinstance(first, BaseExceptionGroup) else None
    return None


def reason(exc: BaseException) -> str:
    """Why a call could not be made, in a few words: "connection refused" wherever the refusal
    sits in the chain of causes (each library wraps it its own way: trio in a group inside an
    OSError, httpcore and urllib3 in their own errors)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return str(exc)[:200] or type(exc).__name__
