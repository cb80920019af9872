"""What every server decides the same way about its connections, free of I/O: when one has
waited too long, when to shed one, how long a shed one may linger.

Servers enforce timeouts with one sweeping task (greenlet, thread) each rather than a timer per
wait: per-request timers cost gevent and trio 15-20 % of their plaintext throughput here. The
connection records what it waits for and since when; the sweep asks `expired`.
"""

from __future__ import annotations

from typing import Literal

from servers.lifecycle import ServeOptions

__all__ = [
    "BODY_TIMEOUT_CAP_S",
    "REAP_INTERVAL_S",
    "REFUSED_BODY_LINGER_S",
    "SHED_LINGER_S",
    "Waiting",
    "expired",
    "limit",
    "should_shed",
]

# What a connection waits for: "idle" (a next request), "head" (the rest of a request line and
# headers), "body" (the rest of a request body), "linger" (the client's last bytes after the
# server's final response), or None (the server is handling a request).
Waiting = Literal["idle", "head", "body", "linger"] | None

REAP_INTERVAL_S = 0.25  # timeouts are enforced to within this
SHED_LINGER_S = 0.5  # how long a shed connection may take to read its 503
# After refusing a body (too large, too slow), how long a server may read on so that the client
# sees the answer before the close (a close with unread input sends a reset).
REFUSED_BODY_LINGER_S = 0.5
# A body, once begun, must be in within the header timeout, and never more than this: a client
# that trickles a body a byte at a time holds its connection no longer (nginx's
# client_body_timeout, but counted from the body's start, so a trickle cannot reset it).
BODY_TIMEOUT_CAP_S = 60.0


def limit(waiting: Waiting, options: ServeOptions) -> float | None:
    """How long a connection may wait for `waiting`, in seconds (None: no limit)."""
    match waiting:
        case "idle":
            return options.idle_timeout
        case "head":
            return options.header_timeout
        case "body":
            return min(options.header_timeout, BODY_TIMEOUT_CAP_S)
        case "linger":
            return REFUSED_BODY_LINGER_S
    return None


def expired(waiting: Waiting, since: float, now: float, options: ServeOptions) -> bool:
    """Whether a connection that has waited for `waiting` since `since` must be closed."""
    allowed = limit(waiting, options)
    return allowed is not None and now - since > allowed


def should_shed(open_connections: int, options: ServeOptions) -> bool:
    """Whether a new connection is one too many: it gets a canned 503 and is closed."""
    return open_connections >= options.max_connections
