"""One colour per server, the same in the report's charts and on the Grafana dashboards: the
stack tier in full colours, the runtime tier (one h11 core on each runtime) in the lighter shade
of its runtime's colour (trio is in both tiers)."""

from __future__ import annotations

__all__ = ["COLOURS", "OTHER_COLOUR"]

COLOURS = {
    "gevent": "#2ca02c",
    "trio": "#9467bd",
    "aiohttp": "#1f77b4",
    "gevent-h11": "#98df8a",
    "asyncio-h11": "#aec7e8",
    "threads-h11": "#ff9896",
    # Runtimes, where a chart shows runtimes rather than servers (stackbench tasks).
    "asyncio": "#1f77b4",
    "uvloop": "#17becf",
    "thread": "#d62728",
    "go": "#555555",
}
OTHER_COLOUR = "#7f7f7f"
