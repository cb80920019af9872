"""One colour per server, the same in the report's charts and on the Grafana dashboards: the
stack tier in full colours, the runtime tier (one h11 core on each runtime) in the lighter shade
of its runtime's colour (trio is in both tiers), the native tier in darker ones."""

from __future__ import annotations

__all__ = ["COLOURS", "OTHER_COLOUR"]

COLOURS = {
    "gevent": "#2ca02c",
    "trio": "#9467bd",
    "aiohttp": "#1f77b4",
    "gevent-h11": "#98df8a",
    "asyncio-h11": "#aec7e8",
    "threads-h11": "#ff9896",
    # The native archetypes: Go in a dark shade of gevent's green (its model), Rust in brown.
    "go-nethttp": "#1b5e20",
    "rust-hyper": "#8c564b",
    # Runtimes, where a chart shows runtimes rather than servers (stackbench tasks).
    "asyncio": "#1f77b4",
    "uvloop": "#17becf",
    "thread": "#d62728",
    "go": "#1b5e20",
    "tokio": "#8c564b",
}
OTHER_COLOUR = "#7f7f7f"
