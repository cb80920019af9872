"""What every server's database side shares, free of I/O: the settings (`DatabaseConfig`: one
pool of at most `pool` connections per process, a request beyond them waits for one, one
deadline for a request's queries with the pool's wait included), the driver each world uses,
the SQL, and the answers to faults: 503 without a database, 502 when it refuses or breaks a
connection (no retries), 504 past the deadline."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from servers.contract import Response, error

__all__ = [
    "DEFAULT_DRIVERS",
    "DEFAULT_POOL",
    "DEFAULT_TIMEOUT_S",
    "DRIVERS",
    "DatabaseConfig",
    "DatabaseFault",
    "FaultLog",
    "application_name",
    "broken",
    "not_configured",
    "too_slow",
]

# The drivers a server can use (--db-driver), its default first.
DRIVERS: dict[str, tuple[str, ...]] = {
    "gevent": ("psycopg",),
    "gevent-h11": ("psycopg",),
    "threads-h11": ("psycopg",),
    "trio": ("to_thread",),
    "aiohttp": ("asyncpg",),
    "asyncio-h11": ("asyncpg",),
    "go-nethttp": ("pgx",),
    "rust-hyper": ("tokio-postgres",),
}
DEFAULT_DRIVERS = {impl: drivers[0] for impl, drivers in DRIVERS.items()}
DEFAULT_POOL = 16
MAX_POOL = 1_000
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 5  # libpq counts whole seconds; within the request's deadline anyway

# The same statements on every server ($n placeholders; psycopg's %s in PSYCOPG).
SELECT_WORLD = "SELECT id, randomnumber FROM world WHERE id = $1"
SELECT_FORTUNES = "SELECT id, message FROM fortune"
# The batch update locks its rows in id order first, in the same transaction: the UPDATE's own
# locks follow its plan (a hash join locks in the heap's order, which updates reshuffle; a
# nested loop in the list's), and two servers planning it differently deadlocked (a 502).
LOCK_WORLDS = "SELECT 1 FROM world WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE"
UPDATE_WORLDS = (
    "UPDATE world SET randomnumber = v.r FROM unnest($1::int[], $2::int[]) AS v(id, r) "
    "WHERE world.id = v.id"
)
SLEEP = "SELECT pg_sleep($1::float8)"


def psycopg_sql(statement: str) -> str:
    """A statement with psycopg's placeholders (%s) for $1, $2."""
    return statement.replace("$1", "%s").replace("$2", "%s")


def application_name(impl: str) -> str:
    """What the server's connections call themselves (pg_stat_activity.application_name):
    how a test counts one server's connections."""
    return f"stackbench-{impl}"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str  # postgresql://user@host:port/database
    pool: int = DEFAULT_POOL
    timeout: float = DEFAULT_TIMEOUT_S
    driver: str = ""

    @classmethod
    def parse(
        cls,
        url: str,
        impl: str,
        pool: int = DEFAULT_POOL,
        timeout: float = DEFAULT_TIMEOUT_S,
        driver: str | None = None,
    ) -> DatabaseConfig:
        """Checked settings; ValueError with a one-line reason otherwise."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ValueError(f"--database {url!r}: {exc}") from None
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError(
                f"--database must be a postgresql://user@host:port/db URL, not {url!r}"
            )
        if not 1 <= pool <= MAX_POOL:
            raise ValueError(f"--db-pool must be 1..{MAX_POOL}")
        if not 0 < timeout <= MAX_TIMEOUT_S:  # also refuses nan
            raise ValueError(f"--db-timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")
        choices = DRIVERS.get(impl, ())
        chosen = driver or (choices[0] if choices else "")
        if chosen not in choices:
            raise ValueError(f"--db-driver for {impl} is one of {', '.join(choices)}")
        return cls(url, pool, timeout, chosen)

    @property
    def where(self) -> str:
        """host:port/database, without credentials, for messages."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.hostname}{port}{parts.path}"


def not_configured() -> Response:
    return error(503, "no database configured: start the server with --database URL")


def broken(config: DatabaseConfig, why: str) -> Response:
    return error(502, f"database {config.where} failed: {why[:200]}")


def too_slow(config: DatabaseConfig) -> Response:
    return error(504, f"database {config.where} did not answer within {config.timeout:g} s")


class DatabaseFault(Exception):
    """The request is answered with `response` (a 502 or 504)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class FaultLog:
    """One line on stderr when the database starts failing (at start too), and none for each
    request after it, nor a traceback: a database that is down is routine for a benchmark."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self.failing = False

    def note(self, response: Response) -> Response:
        if response.status == 502:
            if not self.failing:
                self.failing = True
                message = response.body.decode(errors="replace")
                print(f"stackbench {self.impl}: {message}", file=sys.stderr, flush=True)
        elif response.status < 500:
            self.failing = False
        return response


def reason(exc: BaseException) -> str:
    """Why, in one line: the first line of the driver's message."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
