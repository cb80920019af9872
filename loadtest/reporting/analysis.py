"""From samples to figures: per-step rates and percentiles, the driver audit, the memory fit.

Everything here is computed from samples.jsonl alone, so `stackbench report DIR` rebuilds the
same results from a finished, interrupted or crashed run.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from itertools import groupby, pairwise
from typing import Any

from loadtest.driver.scenarios import BLOCKING_MS, INLINE, OFFLOADED

# The load generator is the bottleneck when it uses this much of the CPU it was given.
DRIVER_BUSY_FRACTION = 0.85


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts {le: count}."""
    bounds = sorted((float(le), count) for le, count in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bucket: its bound is all we know
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def sum_routes(per_route: dict[str, dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for buckets in per_route.values():
        for le, count in buckets.items():
            total[le] += count
    return dict(total)


def _count(buckets: dict[str, float]) -> float:
    return buckets.get("+Inf", 0.0)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def step_figures(window: list[dict], driver_cores: int) -> dict[str, Any] | None:
    """Figures for one load level from its samples (first and last bound the deltas)."""
    usable = [s for s in window if s.get("client") and s.get("server")]
    if len(usable) < 2:
        return None
    first, last = usable[0], usable[-1]
    seconds = last["t"] - first["t"]
    if seconds <= 0:
        return None
    c0, c1 = first["client"], last["client"]
    per_route = {
        route: delta(buckets, c0["latency"].get(route, {}))
        for route, buckets in c1["latency"].items()
    }
    latency = sum_routes(per_route)
    service = sum_routes({r: delta(b, c0["service"].get(r, {})) for r, b in c1["service"].items()})
    completed = _count(latency)
    achieved = completed / seconds
    mean_latency = (c1["latency_sum"] - c0["latency_sum"]) / completed if completed else None
    s0, s1 = first["server"], last["server"]
    driver_cpu = None
    if first.get("driver_cpu_seconds") is not None and last.get("driver_cpu_seconds") is not None:
        driver_cpu = (last["driver_cpu_seconds"] - first["driver_cpu_seconds"]) / seconds
    users = c1["users"]
    little = achieved * mean_latency if mean_latency is not None else None
    return {
        "users": users,
        "seconds": seconds,
        "completed": completed,
        "achieved_rps": achieved,
        "intended_rps": (c1["intended"] - c0["intended"]) / seconds,
        "dropped": c1["dropped"] - c0["dropped"],
        "errors": c1["errors"] - c0["errors"],
        "p50_ms": _ms(quantile(0.5, latency)),
        "p99_ms": _ms(quantile(0.99, latency)),
        "p99_uncorrected_ms": _ms(quantile(0.99, service)),
        "mean_ms": _ms(mean_latency),
        "routes": {
            route: {
                "p50_ms": _ms(quantile(0.5, buckets)),
                "p99_ms": _ms(quantile(0.99, buckets)),
                "mean_ms": _ms(
                    (
                        c1.get("latency_sums", {}).get(route, 0.0)
                        - c0.get("latency_sums", {}).get(route, 0.0)
                    )
                    / _count(buckets)
                ),
                "count": _count(buckets),
            }
            for route, buckets in per_route.items()
            if _count(buckets)
        },
        "server_p99_ms": _ms(quantile(0.99, delta(s1["requests"], s0["requests"]))),
        "lag_p99_ms": _ms(quantile(0.99, delta(s1["lag"], s0["lag"]))),
        "server_cpu": (s1["cpu_seconds"] - s0["cpu_seconds"]) / seconds,
        "driver_cpu": driver_cpu,
        "rss_bytes": _median([s.get("server_rss_bytes") for s in usable]),
        "active_requests": _median([s["server"]["active_requests"] for s in usable]),
        "tasks": _median([s["server"]["tasks"] for s in usable]),
        # Little's law: requests in flight = throughput x latency. In the closed model that
        # should match the users; far below means requests waited in the driver, not the server.
        "littles_in_flight": little,
        "driver_bound": driver_cpu is not None
        and driver_cpu >= DRIVER_BUSY_FRACTION * driver_cores,
    }


def steps(
    samples: list[dict], driver_cores: int, levels: list[int] | None = None
) -> list[dict[str, Any]]:
    """Split one scenario run's samples by load level (the users gauge), dropping the first
    sample of each level (the ramp) and any user count that is not a planned level (Locust
    stopping its users at the end passes through several), and compute each level's figures."""
    ordered = [s for s in samples if s.get("client")]
    result = []
    for users, group in groupby(ordered, key=lambda s: s["client"]["users"]):
        window = list(group)[1:]
        if window and users > 0 and (levels is None or users in levels):
            figures = step_figures(window, driver_cores)
            if figures:
                result.append(figures)
    return result


def lag_series(samples: list[dict]) -> list[tuple[float, float]]:
    """(seconds since the first sample, scheduler-lag p99 in ms between two samples)."""
    usable = [s for s in samples if s.get("server")]
    series = []
    for before, after in pairwise(usable):
        p99 = quantile(0.99, delta(after["server"]["lag"], before["server"]["lag"]))
        if p99 is not None:
            series.append((after["t"] - usable[0]["t"], p99 * 1000))
    return series


def linear_fit(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least squares y = slope * x + intercept, with r^2."""
    if len(points) < 2:
        return None
    xs, ys = zip(*points, strict=True)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in points)
    return {
        "slope": slope,
        "intercept": intercept,
        "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
        "points": len(points),
    }


def memory_fit(run_steps: list[dict]) -> dict[str, float] | None:
    """Bytes per in-flight request: RSS against requests in flight across io_hold's levels."""
    points = [
        (s["active_requests"], s["rss_bytes"])
        for s in run_steps
        if s["active_requests"] and s["rss_bytes"]
    ]
    return linear_fit(points)


def headline(runs: list[dict]) -> dict[str, Any]:
    """One row per server of the figures a reader wants first (medians over repeats, with the
    spread)."""
    by_server: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        figures = by_server[run["server"]]
        run_steps = run["steps"]
        if not run_steps:
            continue
        key = (run["scenario"], run["model"])
        if key == ("plaintext", "closed"):
            top = max(run_steps, key=lambda s: s["achieved_rps"])
            figures["ceiling_rps"].append(top["achieved_rps"])
            figures["ceiling_driver_bound"].append(top["driver_bound"])
        elif key == ("io_hold", "closed") and run.get("fit"):
            figures["bytes_per_request"].append(run["fit"]["slope"])
            figures["bytes_per_request_r2"].append(run["fit"]["r2"])
        elif key == ("starvation", "closed"):
            figures["starvation_lag_p99_ms"].append(
                max((s["lag_p99_ms"] or 0.0) for s in run_steps)
            )
        elif key == ("offload", "closed"):
            # The lightest level: what the hop to a thread and back costs, not queueing.
            # The mean, exact from the histogram's sum: a thread hop is far below the width
            # of the bucket around a 20 ms call.
            light = run_steps[0]["routes"]
            if OFFLOADED in light:
                figures["offload_overhead_ms"].append(light[OFFLOADED]["mean_ms"] - BLOCKING_MS)
        elif key == ("coloring", "closed"):
            top = run_steps[-1]["routes"]
            if "/json" in top:
                figures["coloring_probe_p99_ms"].append(top["/json"]["p99_ms"])
            if INLINE in top:
                figures["inline_p50_ms"].append(top[INLINE]["p50_ms"])
        elif key == ("starvation", "open"):
            step = run_steps[-1]
            figures["fixed_load_rps"].append(step["intended_rps"])
            figures["fixed_load_p50_ms"].append(step["p50_ms"])
            figures["fixed_load_p99_ms"].append(step["p99_ms"])
            figures["fixed_load_p99_uncorrected_ms"].append(step["p99_uncorrected_ms"])
            figures["fixed_load_driver_bound"].append(step["driver_bound"])
    return {server: _summarise(figures) for server, figures in by_server.items()}


def _summarise(figures: dict[str, list]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, values in figures.items():
        if name.endswith("driver_bound"):
            summary[name] = any(values)
            continue
        present = [v for v in values if v is not None]
        if present:
            summary[name] = {
                "median": statistics.median(present),
                "min": min(present),
                "max": max(present),
                "n": len(present),
            }
    return summary


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Lines saying which headline figures moved between two results files, and how much."""
    lower_is_better = ("_ms", "bytes_per_request")
    lines = []
    for server in sorted(set(before) | set(after)):
        for name in sorted(set(before.get(server, {})) | set(after.get(server, {}))):
            a, b = before.get(server, {}).get(name), after.get(server, {}).get(name)
            if not isinstance(a, dict) or not isinstance(b, dict) or not a["median"]:
                continue
            change = (b["median"] - a["median"]) / abs(a["median"])
            # Within both runs' spread it is not a difference.
            overlap = a["min"] <= b["max"] and b["min"] <= a["max"] and (a["n"] > 1 or b["n"] > 1)
            better = change < 0 if name.endswith(lower_is_better) else change > 0
            verdict = (
                "noise" if overlap or abs(change) < 0.05 else ("better" if better else "worse")
            )
            lines.append(
                f"{server:<8} {name:<32} {a['median']:>12.4g} -> {b['median']:>12.4g} "
                f"({change:+.1%}) {verdict}"
            )
    return lines
