"""The HTTP contract every stackbench server serves, free of any I/O.

A server hands :func:`plan` the request method and raw target and gets back a *plan*: either a
finished :class:`Response`, or a description of the waiting the request asks for (sleep, fan out,
call a blocking library, stream, read a body). How a server carries a plan out is the one thing
that differs between gevent, trio and aiohttp, and that difference is what stackbench measures.
Everything else (routes, limits, bodies, errors, the ``/cpu`` digest) lives here, so the bytes a
client sees are identical whichever server answers.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import time
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl

from servers.db import rows as db_rows

# The stack tier: each runtime with the HTTP stack people deploy on it (aiohttp parses in C).
STACK_TIER = ("gevent", "trio", "aiohttp")
# The runtime tier: one h11-based HTTP core (servers/protocol/) on each runtime, so that the
# runtimes differ and nothing else. trio is in both: its idiomatic stack is trio + h11.
RUNTIME_TIER = ("gevent-h11", "asyncio-h11", "trio", "threads-h11")
# The native tier: the archetypes of the two models outside Python, Go's goroutines (stackful,
# implicit yields) and Rust's futures on tokio (stackless, explicit `.await`), built from
# servers/native/ and measured the same way.
NATIVE_TIER: tuple[str, ...] = ("go-nethttp", "rust-hyper")
TIERS = {"stack": STACK_TIER, "runtime": RUNTIME_TIER, "native": NATIVE_TIER}
IMPLS = tuple(dict.fromkeys(STACK_TIER + RUNTIME_TIER + NATIVE_TIER))  # every server, each once
# The runtime under each server: explicit-await loops (trio, asyncio) stall on a blocking call
# made inline; gevent (monkey-patched) and threads do not.
RUNTIMES = {
    "gevent": "gevent", "trio": "trio", "aiohttp": "asyncio",
    "gevent-h11": "gevent", "asyncio-h11": "asyncio", "threads-h11": "threads",
    "go-nethttp": "go", "rust-hyper": "tokio",
}  # fmt: skip

MAX_SLEEP_MS = 60_000
MAX_FANOUT_CHILDREN = 1_000
MAX_UPSTREAM_CALLS = 100
MAX_CPU_ROUNDS = 1_000_000
MAX_BLOCKING_MS = 10_000
MAX_STREAM_CHUNKS = 1_000
MAX_BODY_BYTES = 1024 * 1024
MAX_QUERY_FIELDS = 50
MAX_DB_SLEEP_MS = 10_000
# Threads available to offloaded blocking calls: the same on aiohttp (executor) and trio
# (to_thread limiter) so that `/blocking?offload=1` compares the runtimes, not two pool sizes.
OFFLOAD_THREADS = 40

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
IMPL_HEADER = "X-Stackbench-Impl"

# Route templates, the only values the `route` metric label takes besides OTHER_ROUTE.
ROUTE_METHODS: dict[str, tuple[str, ...]] = {
    "/": ("GET", "HEAD"),
    "/json": ("GET", "HEAD"),
    "/sleep": ("GET", "HEAD"),
    "/fanout": ("GET", "HEAD"),
    "/cpu": ("GET", "HEAD"),
    "/blocking": ("GET", "HEAD"),
    "/echo": ("POST",),
    "/stream": ("GET", "HEAD"),
    "/healthz": ("GET", "HEAD"),
    "/metrics": ("GET", "HEAD"),
    "/lag": ("GET", "HEAD"),
    "/upstream": ("GET", "HEAD"),
    # TechEmpower's database test types, and a database-side sleep (servers/db/).
    "/db": ("GET", "HEAD"),
    "/queries": ("GET", "HEAD"),
    "/fortunes": ("GET", "HEAD"),
    "/updates": ("GET", "HEAD"),
    "/dbsleep": ("GET", "HEAD"),
}
OTHER_ROUTE = "other"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    # The request body may be unread or broken: the connection cannot carry another request.
    close_connection: bool = False


def json_response(
    obj: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), JSON, headers)


def error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response({"error": message}, status, headers)


class BadRequest(ValueError):
    """A parameter is missing, malformed or out of range (HTTP 400)."""


# -- plans: what a request asks a server to do before it can answer --------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Nothing to wait for: send this response."""

    response: Response


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `ms` without blocking anything else."""

    ms: int

    def response(self) -> Response:
        return json_response({"slept_ms": self.ms})


@dataclass(frozen=True, slots=True)
class Fanout:
    """Run `children` child tasks that each wait `ms`, concurrently and structured: if the client
    goes away or one child fails, every child is cancelled."""

    children: int
    ms: int

    def response(self) -> Response:
        return json_response({"children": self.children, "slept_ms": self.ms})


@dataclass(frozen=True, slots=True)
class Upstream:
    """Make `calls` concurrent `GET {upstream}/sleep?ms={ms}` through the server's pooled HTTP
    client, and answer once all have returned; structured as Fanout is (if the client goes
    away, every call still running is cancelled). The faults are servers.upstream's."""

    calls: int
    ms: int

    @property
    def path(self) -> str:
        return f"/sleep?ms={self.ms}"

    def response(self, statuses: list[int]) -> Response:
        return json_response({"calls": self.calls, "status": statuses})


@dataclass(frozen=True, slots=True)
class Database:
    """Work for the database, through the server's pooled driver (servers/db/), answered once
    it is done; if the client goes away, the query is cancelled (or its connection given back).

    `query` is one of DB_QUERIES: "world" reads `ids` one query each and answers the one row
    (/db) or, `many`, the list (/queries); "fortunes" reads the Fortune table; "updates" reads
    `ids` one query each, then writes `numbers` in one batch (update_batch: each id once,
    sorted); "sleep" runs pg_sleep(ms / 1000.0)."""

    query: str
    ids: tuple[int, ...] = ()
    numbers: tuple[int, ...] = ()
    many: bool = False
    ms: int = 0

    def batch(self) -> tuple[list[int], list[int]]:
        return db_rows.update_batch(self.ids, self.numbers)

    def response(self, rows: list[tuple[int, int]] | list[tuple[int, str]] | None) -> Response:
        """The answer from what the queries returned: the World rows read (in `ids` order), the
        Fortune rows, or nothing (sleep)."""
        match self.query:
            case "world" if self.many:
                return Response(200, db_rows.worlds(rows or ()), JSON)  # type: ignore[arg-type]
            case "world":
                row, number = rows[0]  # type: ignore[index]
                return Response(200, db_rows.world(row, number), JSON)  # type: ignore[arg-type]
            case "updates":
                return Response(200, db_rows.worlds(zip(self.ids, self.numbers, strict=True)), JSON)
            case "fortunes":
                body = db_rows.fortunes_page(rows or ())  # type: ignore[arg-type]
                return Response(200, body, db_rows.FORTUNES_CONTENT_TYPE)
        return json_response({"db_slept_ms": self.ms})


DB_QUERIES = ("world", "fortunes", "updates", "sleep")


@dataclass(frozen=True, slots=True)
class Blocking:
    """Call :func:`legacy_blocking_call` (`ms`, `kind`). With `offload`, the async servers push
    it to a thread; without, they call it inline and stall their event loop. `kind` "c" blocks
    inside C, where gevent's monkey patching cannot see: gevent then stalls too, unless it
    offloads to its hub's thread pool (the C boundary, Python's analogue of cgo)."""

    ms: int
    offload: bool
    kind: str = "python"

    @property
    def yields_under_gevent(self) -> bool:
        """Whether gevent can call it inline without stalling its hub."""
        return self.kind == "python"

    def response(self) -> Response:
        return json_response({"blocked_ms": self.ms, "offload": self.offload, "kind": self.kind})


@dataclass(frozen=True, slots=True)
class Stream:
    """A chunked response: `chunks` chunks, `ms` apart."""

    chunks: int
    ms: int

    def chunk(self, index: int) -> bytes:
        return b"chunk %d\n" % index


@dataclass(frozen=True, slots=True)
class Echo:
    """Read the request body (at most MAX_BODY_BYTES) and send it back."""

    @staticmethod
    def response(body: bytes, content_type: str | None) -> Response:
        return Response(200, body, content_type or "application/octet-stream")

    @staticmethod
    def too_large() -> Response:
        return replace(
            error(413, f"body larger than {MAX_BODY_BYTES} bytes"), close_connection=True
        )

    @staticmethod
    def timed_out() -> Response:
        """The body did not arrive within the body timeout (nginx's client_body_timeout)."""
        return replace(error(408, "request body too slow"), close_connection=True)

    @staticmethod
    def incomplete() -> Response:
        """The body ended before its announced length, or its chunked framing is broken."""
        return replace(error(400, "request body incomplete or malformed"), close_connection=True)


@dataclass(frozen=True, slots=True)
class Metrics:
    """Answer with the server's Prometheus exposition."""


@dataclass(frozen=True, slots=True)
class Lag:
    """Answer with every scheduler-lag tick since the server started, exactly (servers/lag.py)."""


Plan = Reply | Sleep | Fanout | Upstream | Database | Blocking | Stream | Echo | Metrics | Lag


# -- the synchronous "libraries" the routes call ----------------------------------------------


BLOCKING_KINDS = ("python", "c")
_C_SLICE_US = 100_000  # usleep may refuse a second or more: C waits in slices of this


def legacy_blocking_call(ms: int, kind: str = "python") -> None:
    """Stands in for a synchronous library (a DB driver, an SDK): it blocks its thread for `ms`.

    kind "python": it looks up `time.sleep` at call time, so under gevent's monkey patching it
    yields to the hub instead of blocking, exactly as a real pure-Python library would.
    kind "c": it waits in libc's usleep through ctypes, as a C extension or driver would:
    monkey patching cannot reach it, so gevent's hub blocks with it. (ctypes releases the GIL,
    so other OS threads run meanwhile.)"""
    if kind == "python":
        time.sleep(ms / 1000)
        return
    usleep = _libc().usleep
    left = ms * 1000
    while left > 0:
        usleep(min(left, _C_SLICE_US))
        left -= _C_SLICE_US


@functools.cache
def _libc() -> ctypes.CDLL:
    # The interpreter's own symbols include libc's (Linux): no library search, which would
    # start a subprocess (ctypes.util.find_library), not something to do in a server's thread.
    return ctypes.CDLL(None)


def cpu_digest(rounds: int) -> str:
    """`rounds` chained sha256 hashes: pure CPU work with no chance to yield."""
    digest = b"stackbench"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


# -- routing ----------------------------------------------------------------------------------


def route_label(path: str) -> str:
    """The `route` metric label for a request path: its template, or `other` if it has none."""
    return path if path in ROUTE_METHODS else OTHER_ROUTE


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


# Routes that take no parameters answer the same every time: planned once (per request, the
# query parsing and response building they skip cost ~2 µs, a visible share of `GET /`).
_CONSTANT = {
    "/": Reply(Response(200, b"Hello, World!", TEXT)),
    "/json": Reply(json_response({"message": "Hello, World!"})),
    "/healthz": Reply(Response(200, b"ok", TEXT)),
}


def plan(method: str, target: str) -> tuple[str, Plan]:
    """Route one request: returns its `route` label and its plan. Never raises."""
    if target[:1] != "/":
        target = origin_form(target)
    path, _, query = target.partition("?")
    constant = _CONSTANT.get(path)
    if constant is not None and method in ("GET", "HEAD"):
        return path, constant
    route = route_label(path)
    if route == OTHER_ROUTE:
        return route, Reply(error(404, f"no route {path[:200]}"))
    allowed = ROUTE_METHODS[route]
    if method not in allowed:
        return route, Reply(
            error(405, f"method {method[:20]} not allowed", (("Allow", ", ".join(allowed)),))
        )
    try:
        return route, _plan_route(route, _Params(query))
    except BadRequest as exc:
        return route, Reply(error(400, str(exc)))


def _plan_route(route: str, params: _Params) -> Plan:
    match route:
        case "/" | "/json" | "/healthz":
            return _CONSTANT[route]
        case "/sleep":
            return Sleep(params.int("ms", 0, MAX_SLEEP_MS))
        case "/fanout":
            return Fanout(
                params.int("n", 1, MAX_FANOUT_CHILDREN), params.int("ms", 0, MAX_SLEEP_MS)
            )
        case "/upstream":
            return Upstream(
                params.int("n", 1, MAX_UPSTREAM_CALLS), params.int("ms", 0, MAX_SLEEP_MS)
            )
        case "/db" | "/queries" | "/fortunes" | "/updates" | "/dbsleep":
            return _plan_database(route, params)
        case "/cpu":
            rounds = params.int("n", 0, MAX_CPU_ROUNDS)
            return Reply(json_response({"rounds": rounds, "digest": cpu_digest(rounds)}))
        case "/blocking":
            return Blocking(
                params.int("ms", 0, MAX_BLOCKING_MS),
                bool(params.int("offload", 0, 1, default=1)),
                params.choice("kind", BLOCKING_KINDS),
            )
        case "/stream":
            return Stream(
                params.int("chunks", 1, MAX_STREAM_CHUNKS), params.int("ms", 0, MAX_SLEEP_MS)
            )
        case "/echo":
            return Echo()
        case "/metrics":
            return Metrics()
        case "/lag":
            return Lag()
    raise AssertionError(f"route {route} has no plan")  # pragma: no cover


def _plan_database(route: str, params: _Params) -> Database:
    """The database routes' parameters. /queries and /updates take TechEmpower's ?queries=
    rule (clamped, never 400); ?id= (/db) and ?seed= (/queries, /updates) fix the rows read, so
    that every server answers the same bytes."""
    match route:
        case "/db":
            if params.has("id"):
                row = params.int("id", 1, db_rows.WORLD_ROWS)
            else:
                row = db_rows.random_ids(1, None)[0]
            return Database("world", (row,))
        case "/fortunes":
            return Database("fortunes")
        case "/dbsleep":
            return Database("sleep", ms=params.int("ms", 0, MAX_DB_SLEEP_MS))
    count = db_rows.queries_count(params.raw("queries"))
    seed = params.int("seed", 0, 999_999_999) if params.has("seed") else None
    ids = db_rows.random_ids(count, seed)
    if route == "/queries":
        return Database("world", ids, many=True)
    return Database("updates", ids, db_rows.update_numbers(ids, seed), many=True)


def origin_form(target: str) -> str:
    """An absolute-form target (`http://host/json?x`, which RFC 9112 section 3.2.2 says a
    server MUST accept) as the origin-form path and query it names; other forms unchanged."""
    scheme, separator, rest = target.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        return target
    slash = rest.find("/")
    query = rest.find("?")
    if slash < 0 or 0 <= query < slash:
        return "/" + rest[query:] if query >= 0 else "/"
    return rest[slash:]


class _Params:
    """Query parameters; the first occurrence of a name wins."""

    def __init__(self, query: str) -> None:
        self._values: dict[str, str] = {}
        try:
            pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError as exc:
            raise BadRequest(f"more than {MAX_QUERY_FIELDS} query parameters") from exc
        for name, value in pairs:
            self._values.setdefault(name, value)

    def has(self, name: str) -> bool:
        return name in self._values

    def raw(self, name: str) -> str | None:
        return self._values.get(name)

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """One of `choices`; the first is the default."""
        raw = self._values.get(name, choices[0])
        if raw not in choices:
            raise BadRequest(f"{name} must be one of {', '.join(choices)}")
        return raw

    def int(self, name: str, low: int, high: int, default: int | None = None) -> int:
        raw = self._values.get(name)
        if raw is None:
            if default is None:
                raise BadRequest(f"missing parameter {name} (integer {low}..{high})")
            return default
        # Digits only, and few of them: int() would accept " 1", "+1", "1_0" and huge numbers.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
            raise BadRequest(f"{name} must be an integer {low}..{high}")
        value = int(raw)
        if not low <= value <= high:
            raise BadRequest(f"{name} must be an integer {low}..{high}")
        return value
