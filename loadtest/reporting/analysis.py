"""From samples to figures: each load level's rate, exact percentiles, CPU per request and the
driver audit; the memory fits. I/O-free: everything comes from samples.jsonl's records, so
`stackbench report DIR` rebuilds the same results from a finished, interrupted or crashed run.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from itertools import groupby, pairwise

from loadtest import histograms
from loadtest.records import (
    HeldPoint,
    LinearFit,
    PlannedStep,
    RouteFigures,
    RouteHistograms,
    Sample,
    Step,
)
from loadtest.reporting import intervals

__all__ = [
    "BUSY_FRACTION",
    "bucket_bound",
    "cpu_step",
    "held_fit",
    "lag_series",
    "level_starts",
    "linear_fit",
    "memory_fit",
    "step_figures",
    "steps",
]

# A process using this much of the CPU it was given is the bottleneck: the load generator
# (the step is then "driver-bound") or the server ("saturated").
BUSY_FRACTION = 0.85
PERCENTILES = (50.0, 99.0, 99.9, 100.0)
# With nanosecond CPU accounting, what bounds a step's CPU figure is when the two readings are
# taken: the requests counted and the CPU clock read are at most this far apart in a sample.
COUNTER_SKEW_S = 0.005


def bucket_bound(q: float, buckets: dict[str, float]) -> float | None:
    """The upper bound of the Prometheus bucket that holds quantile q: all that cumulative
    buckets say about it (interpolating inside the bucket would invent digits). None when
    nothing was counted; +inf when it lies beyond the last finite bucket."""
    bounds = sorted((float(le), count) for le, count in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    return next(upper for upper, count in bounds if count >= rank)


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ms_or_none(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else value * 1000


def _merged(intervals: list[dict[str, RouteHistograms]], kind: str) -> dict[str, object]:
    per_route: dict[str, list[str]] = defaultdict(list)
    for interval in intervals:
        for route, item in interval.items():
            encoded = getattr(item, kind)
            if encoded is not None:
                per_route[route].append(encoded)
    return {route: histograms.merge(items) for route, items in per_route.items()}


def recorded_requests(samples: list[Sample]) -> dict[str, int]:
    """Every request in a scenario run's exact histograms, per route: ramps, the levels and
    the end included (each Locust process's intervals are read exactly once)."""
    merged = _merged([s.latency for s in samples if s.latency], "latency")
    return {route: h.get_total_count() for route, h in merged.items()}


def _route_figures(histogram, batches: list = ()) -> RouteFigures:
    """A route's percentiles, with the 95 % intervals of p50, p99 and the mean from its
    histogram and the per-second `batches` of it (intervals.py)."""
    values = histograms.percentiles_ms(histogram, PERCENTILES)
    return RouteFigures(
        count=histogram.get_total_count(),
        p50_ms=values[50.0],
        p99_ms=values[99.0],
        p999_ms=values[99.9],
        max_ms=values[100.0],
        mean_ms=histogram.get_mean_value() / 1000,
        p50_ci=intervals.quantile_ci(histogram, 0.5, batches),
        p99_ci=intervals.quantile_ci(histogram, 0.99, batches),
        mean_ci=intervals.mean_ci(histogram, batches),
    )


def _overall(per_route: dict[str, object]):
    """Every route's requests in one histogram."""
    return histograms.merge(histograms.encode(h) for h in per_route.values() if h.get_total_count())


def _batches(window: list[Sample], usable: list[Sample]) -> list[tuple[Sample, Sample, list]]:
    """The step cut into consecutive batches of intervals.BATCH_SAMPLES samples (a second):
    each batch's bounding samples and the latency intervals inside it."""
    bounds = usable[:: intervals.BATCH_SAMPLES]
    return [
        (start, end, [s.latency for s in window if start.t < s.t <= end.t and s.latency])
        for start, end in pairwise(bounds)
    ]


def _cpu_of(sample: Sample, source: str) -> float | None:
    return sample.server_cpu_ns_seconds if source == "ns" else sample.server_cpu_seconds


def cpu_step(
    cpu_seconds: float,
    seconds: float,
    completed: float,
    idle_cpu: float,
    cpu_tick_s: float,
    idle_error: float = 0.0,
) -> tuple[float | None, float | None]:
    """Server CPU per completed request in µs, the idle load (timers, the run's own scrapes)
    subtracted, and its error: /proc's tick resolution (two readings, a tick each) and the
    idle rate's own error (`idle_error`, cores) over the step."""
    if completed <= 0:
        return None, None
    busy = max(0.0, cpu_seconds - idle_cpu * seconds)
    error = 2 * cpu_tick_s + idle_error * seconds
    return busy / completed * 1e6, error / completed * 1e6


def cpu_step_ns(
    cpu_seconds: float, seconds: float, completed: float, idle_cpu: float, idle_error: float
) -> tuple[float | None, float | None]:
    """cpu_step for nanosecond accounting: the error is no tick but the skew between the two
    readings of each bound (COUNTER_SKEW_S at the step's CPU share, twice) and the idle
    rate's."""
    if completed <= 0 or seconds <= 0:
        return None, None
    busy = max(0.0, cpu_seconds - idle_cpu * seconds)
    error = 2 * COUNTER_SKEW_S * (cpu_seconds / seconds) + idle_error * seconds
    return busy / completed * 1e6, error / completed * 1e6


def step_figures(
    window: list[Sample],
    driver_cores: int,
    idle_cpu: float = 0.0,
    cpu_tick_s: float = 0.01,
    idle_error: float = 0.0,
    idle_ns: tuple[float, float] | None = None,
) -> Step | None:
    """Figures for one load level from its samples: the first and last usable ones bound the
    counters' deltas; the latency intervals between them hold every request that completed."""
    usable = [s for s in window if s.client and s.server]
    if len(usable) < 2:
        return None
    first, last = usable[0], usable[-1]
    seconds = last.t - first.t
    if seconds <= 0:
        return None
    c0, c1 = first.client, last.client
    s0, s1 = first.server, last.server
    assert c0 and c1 and s0 and s1  # for the type checker: filtered above
    parts = [s.latency for s in window if first.t < s.t <= last.t and s.latency]
    latency = _merged(parts, "latency")
    service = _merged(parts, "service") or latency
    batches = _batches(window, usable)
    batch_latency = [_merged(parts, "latency") for _, _, parts in batches]
    routes = {
        route: _route_figures(h, [b[route] for b in batch_latency if route in b])
        for route, h in latency.items()
        if h.get_total_count()
    }
    everything = _overall(latency)
    batch_overall = [_overall(b) for b in batch_latency]
    overall = _route_figures(everything, batch_overall) if everything.get_total_count() else None
    uncorrected = histograms.merge(
        histograms.encode(h) for h in service.values() if h.get_total_count()
    )
    service_values = histograms.percentiles_ms(uncorrected, PERCENTILES)
    completed = c1.completed - c0.completed
    achieved = completed / seconds
    cpu_used = None
    if first.server_cpu_seconds is not None and last.server_cpu_seconds is not None:
        cpu_used = last.server_cpu_seconds - first.server_cpu_seconds
    cpu_us, cpu_error = (None, None)
    if cpu_used is not None:
        cpu_us, cpu_error = cpu_step(cpu_used, seconds, completed, idle_cpu, cpu_tick_s, idle_error)
    ticks_us, ticks_error, source = cpu_us, cpu_error, "ticks"
    ns0, ns1 = first.server_cpu_ns_seconds, last.server_cpu_ns_seconds
    if ns0 is not None and ns1 is not None and idle_ns is not None:
        cpu_used = ns1 - ns0
        cpu_us, cpu_error = cpu_step_ns(cpu_used, seconds, completed, *idle_ns)
        idle_cpu, source = idle_ns[0], "ns"
    driver_cpu = None
    if first.driver_cpu_seconds is not None and last.driver_cpu_seconds is not None:
        driver_cpu = (last.driver_cpu_seconds - first.driver_cpu_seconds) / seconds
    gross_server_cpu = (cpu_used or 0.0) / seconds
    mean_ms = overall.mean_ms if overall else None
    # Per second: CPU per request and the rate, for their batch-means intervals.
    per_second_cpu, per_second_rate = [], []
    for start, end, _ in batches:
        span = end.t - start.t
        done = end.client.completed - start.client.completed  # type: ignore[union-attr]
        used0, used1 = _cpu_of(start, source), _cpu_of(end, source)
        if span > 0:
            per_second_rate.append(done / span)
        if span > 0 and done > 0 and used0 is not None and used1 is not None:
            per_second_cpu.append(max(0.0, used1 - used0 - idle_cpu * span) / done * 1e6)
    cpu_half = intervals.batch_half_width(per_second_cpu)
    rate_half = intervals.batch_half_width(per_second_rate)
    lag = _exact_lag([s for s in window if first.t < s.t <= last.t])
    lag_p99 = lag_ci = None
    if lag is not None and lag.get_total_count():
        lag_p99 = lag.get_value_at_percentile(99) / 1000
        lag_batches = [_exact_lag([s for s in window if a.t < s.t <= b.t]) for a, b, _ in batches]
        lag_ci = intervals.quantile_ci(lag, 0.99, [b for b in lag_batches if b is not None])
    cpu_ci = None
    if cpu_us is not None:
        cpu_ci = intervals.around(cpu_us, (cpu_error or 0.0) + (cpu_half or 0.0))
    return Step(
        users=c1.users,
        seconds=seconds,
        completed=round(completed),
        achieved_rps=achieved,
        # Only the open model counts intended requests (its schedule); 0 throughout: closed.
        intended_rps=(c1.intended - c0.intended) / seconds if c1.intended else None,
        dropped=c1.dropped - c0.dropped,
        errors=c1.errors - c0.errors,
        p50_ms=overall.p50_ms if overall else None,
        p99_ms=overall.p99_ms if overall else None,
        p999_ms=overall.p999_ms if overall else None,
        max_ms=overall.max_ms if overall else None,
        mean_ms=mean_ms,
        p99_uncorrected_ms=service_values.get(99.0),
        p50_uncorrected_ms=service_values.get(50.0) if c1.error_kinds is not None else None,
        p999_uncorrected_ms=service_values.get(99.9) if c1.error_kinds is not None else None,
        max_uncorrected_ms=service_values.get(100.0) if c1.error_kinds is not None else None,
        connections=round(c1.users) if c1.error_kinds is not None else None,
        error_kinds={k: v - (c0.error_kinds or {}).get(k, 0.0) for k, v in c1.error_kinds.items()}
        if c1.error_kinds is not None
        else None,
        routes=routes,
        lag_p99_at_most_ms=_ms_or_none(bucket_bound(0.99, _delta(s1.lag, s0.lag))),
        lag_p99_ms=lag_p99,
        lag_p99_ci=lag_ci,
        p50_ci=overall.p50_ci if overall else None,
        p99_ci=overall.p99_ci if overall else None,
        p999_ci=intervals.quantile_ci(everything, 0.999, batch_overall) if overall else None,
        cpu_us_ci=cpu_ci,
        achieved_rps_ci=intervals.around(achieved, rate_half) if rate_half is not None else None,
        server_cpu=max(0.0, gross_server_cpu - idle_cpu),
        cpu_us_per_request=cpu_us,
        cpu_us_error=cpu_error,
        cpu_source=source,
        cpu_us_ticks=ticks_us if source == "ns" else None,
        cpu_us_ticks_error=ticks_error if source == "ns" else None,
        driver_cpu=driver_cpu,
        rss_bytes=_median(s.server_rss_bytes for s in usable),
        active_requests=_median(s.server.active_requests for s in usable if s.server),
        tasks=_median(s.server.tasks for s in usable if s.server),
        # Little's law: requests in flight = throughput x latency. In the closed model that
        # should match the users; far below means requests waited in the driver, not the server.
        littles_in_flight=achieved * mean_ms / 1000 if mean_ms is not None else None,
        driver_bound=driver_cpu is not None and driver_cpu >= BUSY_FRACTION * driver_cores,
        server_saturated=gross_server_cpu >= BUSY_FRACTION,
    )


def steps(
    samples: list[Sample],
    driver_cores: int,
    levels: list[int] | None = None,
    idle_cpu: float = 0.0,
    cpu_tick_s: float = 0.01,
    settle_seconds: float = 0.0,
    idle_error: float = 0.0,
    idle_ns: tuple[float, float] | None = None,
    planned: list[PlannedStep] | None = None,
) -> list[Step]:
    """Split one scenario run's samples by load level (the users gauge; or the driver's step,
    where it runs each level as a step of its own), dropping the first sample of each level
    (the ramp), or all within `settle_seconds` of it, and any user count that is not a planned
    level (Locust stopping its users at the end passes through several), and compute each
    level's figures."""
    ordered = [s for s in samples if s.client]
    by_step = any(s.step is not None for s in ordered)

    def level_of(sample: Sample) -> float:
        if by_step:
            return sample.step if sample.step is not None else -1
        return sample.client.users if sample.client else 0

    result = []
    for level_key, group in groupby(ordered, key=level_of):
        level = list(group)
        users = level[0].client.users if level[0].client else 0
        window = [s for s in level[1:] if s.t >= level[0].t + settle_seconds]
        wanted = by_step or levels is None or users in levels
        if window and users > 0 and level_key >= 0 and wanted:
            # The latency intervals of samples whose client scrape failed still count.
            span = [s for s in samples if window[0].t <= s.t <= window[-1].t]
            figures = step_figures(span, driver_cores, idle_cpu, cpu_tick_s, idle_error, idle_ns)
            if figures and by_step and planned and int(level_key) < len(planned):
                plan = planned[int(level_key)]
                figures = figures.model_copy(update={
                    "offered_rps": plan.rate, "common": plan.common,
                    "capacity_fraction": plan.capacity_fraction,
                })  # fmt: skip
            if figures:
                result.append(figures)
    return result


def level_starts(samples: list[Sample], levels: list[int] | None) -> list[tuple[float, float]]:
    """(seconds since the first sample, users) where each planned load level began, on
    lag_series' clock, to mark the steps on it."""
    usable = [s for s in samples if s.server]
    if not usable:
        return []
    origin = usable[0].t
    starts = []
    ordered = [s for s in samples if s.client]
    for users, group in groupby(ordered, key=lambda s: s.client.users if s.client else 0):
        first = next(group)
        if users > 0 and (levels is None or users in levels):
            starts.append((max(first.t - origin, 0.0), float(users)))
    return starts


def _exact_lag(samples: list[Sample]):
    """Every lag tick the samples carry (the server's /lag), in one histogram; None if none
    was read."""
    encoded = [s.lag for s in samples if s.lag is not None]
    return histograms.merge(encoded) if encoded else None


def lag_series(samples: list[Sample]) -> list[tuple[float, float]]:
    """(seconds since the first sample, the scheduler lag's p99 in ms over each second): exact
    (every tick, from /lag); for a server without it, the upper bound of the bucket of its
    Prometheus histogram that holds the p99, between two samples."""
    usable = [s for s in samples if s.server]
    if any(s.lag is not None for s in samples) and usable:
        origin = usable[0].t
        series = []
        ordered = [s for s in samples if s.lag is not None]
        for start in range(0, len(ordered) - 1, intervals.BATCH_SAMPLES):
            batch = ordered[start : start + intervals.BATCH_SAMPLES]
            merged = _exact_lag(batch)
            if merged is not None and merged.get_total_count():
                p99 = merged.get_value_at_percentile(99) / 1000
                series.append((max(0.0, batch[-1].t - origin), p99))
        return series
    series = []
    for before, after in pairwise(usable):
        assert before.server and after.server
        bound = _ms_or_none(bucket_bound(0.99, _delta(after.server.lag, before.server.lag)))
        if bound is not None:
            series.append((after.t - usable[0].t, bound))
    return series


def linear_fit(points: list[tuple[float, float]]) -> LinearFit | None:
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
    return LinearFit(
        slope=slope, intercept=intercept, r2=1 - ss_res / ss_tot if ss_tot else 1.0,
        points=len(points), slope_ci=intervals.slope_ci(points),
    )  # fmt: skip


def memory_fit(run_steps: list[Step]) -> LinearFit | None:
    """Bytes per in-flight request under Locust: RSS against requests in flight across
    io_hold's levels."""
    return linear_fit([
        (s.active_requests, s.rss_bytes) for s in run_steps if s.active_requests and s.rss_bytes
    ])  # fmt: skip


def held_fit(points: list[HeldPoint], samples: list[HeldPoint] | None = None) -> LinearFit | None:
    """Bytes per in-flight request with raw held connections and no Locust traffic: the fit of
    each level's median reading; its interval from every reading of every level (with three
    levels the medians alone leave one degree of freedom)."""
    fit = linear_fit([(p.in_flight, p.rss_bytes) for p in points])
    if fit is None or not samples:
        return fit
    every = [(p.in_flight, p.rss_bytes) for p in samples]
    return fit.model_copy(update={"slope_ci": intervals.slope_ci(every)})
