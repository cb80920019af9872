"""The headline figures: what each is called, its unit, which way is better (or that it is an
input or a fit's quality, never ranked), and how it is read off one scenario run. The scenario
table (loadtest/driver/scenarios.py) names the figures each scenario yields; everything that
shows or compares figures (results, report, compare) reads their meaning from here.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from loadtest.driver.scenarios import (
    BLOCKING_MS,
    C_INLINE,
    INLINE,
    OFFLOADED,
    SCENARIOS,
    UPSTREAM_CALLS,
    UPSTREAM_MS,
)
from loadtest.records import Figure, Interval, ScenarioRun, ServerHeadline, Step
from loadtest.reporting import intervals

__all__ = [
    "CPU",
    "FIGURES",
    "MAX_CPU_ERROR",
    "MEMORY_DISAGREEMENT",
    "FigureSpec",
    "Reading",
    "common_quiet_level",
    "headline",
    "quiet_step",
    "served",
]

Better = Literal["lower", "higher"] | None
# When the two memory methods differ by more than this, the report flags it.
MEMORY_DISAGREEMENT = 0.15
# A step too short for /proc's tick to measure its CPU to this fraction does not count.
MAX_CPU_ERROR = 0.25


@dataclass(frozen=True)
class Reading:
    value: float | None
    driver_bound: bool = False
    error: float | None = None
    at_rps: float | None = None
    saturated: bool = False
    ci: Interval | None = None  # 95 %, from within the run (intervals.py)


@dataclass(frozen=True)
class FigureSpec:
    name: str
    label: str
    unit: str
    scale: float  # stored value x scale = the value in `unit`
    better: Better  # None: an input or a fit's quality, shown but never ranked
    model: str  # which pass of the scenario yields it: closed, open or held
    read: Callable[[ScenarioRun], Reading]


def _precise(step: Step) -> bool:
    return bool(
        step.cpu_us_per_request
        and step.cpu_us_error is not None
        and step.cpu_us_error <= MAX_CPU_ERROR * step.cpu_us_per_request
    )


def common_quiet_level(runs: list[ScenarioRun]) -> float | None:
    """The highest load level at which every one of `runs` (every server and repeat of one
    scenario) was quiet: neither the server nor the driver saturated, CPU measured to
    MAX_CPU_ERROR. CPU per request depends on the load (at more concurrency one wake-up serves
    more requests), so servers are compared at one level."""
    quiet = [
        {s.users for s in r.steps if _precise(s) and not s.driver_bound and not s.server_saturated}
        for r in runs
    ]
    common = set.intersection(*quiet) if quiet else set()
    return max(common, default=None)


def quiet_step(run: ScenarioRun, level: float | None = None) -> Step | None:
    """The step at `level` if given; else the busiest quiet step of this run alone; failing
    that, the busiest where only the driver was saturated, then the least busy where the
    server was (the figure is then flagged: the server's CPU per request still holds, at a
    rate the driver chose, or with requests queued)."""
    if level is not None:
        return next((s for s in run.steps if s.users == level), None)
    precise = [s for s in run.steps if _precise(s)]
    unsaturated = [s for s in precise if not s.server_saturated]
    quiet = [s for s in unsaturated if not s.driver_bound] or unsaturated
    if quiet:
        return max(quiet, key=lambda s: s.completed)
    return min(precise, key=lambda s: s.server_cpu, default=None)


def _ceiling(run: ScenarioRun) -> Reading:
    top = max(run.steps, key=lambda s: s.achieved_rps)
    # A ceiling only if one side was the limit there: the report marks it a lower bound else.
    return Reading(top.achieved_rps, driver_bound=top.driver_bound,
                   saturated=top.server_saturated, ci=top.achieved_rps_ci)  # fmt: skip


def _fit_slope(run: ScenarioRun) -> Reading:
    fit = run.memory_fit
    return Reading(fit.slope, ci=fit.slope_ci) if fit else Reading(None)


def _fit_r2(run: ScenarioRun) -> Reading:
    return Reading(run.memory_fit.r2 if run.memory_fit else None)


def _lag(run: ScenarioRun) -> Reading:
    """The scheduler lag's p99 at the busiest step that has it: exact (/lag) with its interval;
    else the bucket bound of the server's Prometheus histogram, with no interval."""
    exact = [s for s in run.steps if s.lag_p99_ms is not None]
    if exact:
        step = max(exact, key=lambda s: s.lag_p99_ms or 0.0)
        return Reading(step.lag_p99_ms, ci=step.lag_p99_ci)
    bounds = [s.lag_p99_at_most_ms for s in run.steps if s.lag_p99_at_most_ms is not None]
    return Reading(max(bounds, default=None))


def _route_p99(route: str, step: Callable[[ScenarioRun], Step | None]) -> Callable:
    def read(run: ScenarioRun) -> Reading:
        chosen = step(run)
        if chosen is None or route not in chosen.routes:
            return Reading(None)
        figures = chosen.routes[route]
        return Reading(figures.p99_ms, chosen.driver_bound, ci=figures.p99_ci)

    return read


def _top(run: ScenarioRun) -> Step | None:
    return run.steps[-1] if run.steps else None


def _route_p50(route: str) -> Callable[[ScenarioRun], Reading]:
    def read(run: ScenarioRun) -> Reading:
        top = _top(run)
        figures = top.routes.get(route) if top else None
        return Reading(figures.p50_ms, ci=figures.p50_ci) if figures else Reading(None)

    return read


def _offload_overhead(run: ScenarioRun) -> Reading:
    # The lightest level: what the hop to a thread and back costs, not queueing; the mean of
    # an HdrHistogram is exact to its 0.1 %, i.e. 0.02 ms on a 20 ms call.
    light = run.steps[0].routes.get(OFFLOADED) if run.steps else None
    if light is None:
        return Reading(None)
    ci = (light.mean_ci[0] - BLOCKING_MS, light.mean_ci[1] - BLOCKING_MS) if light.mean_ci else None
    return Reading(light.mean_ms - BLOCKING_MS, error=light.mean_ms * 1e-3, ci=ci)


# The rate sweep's figures. Its steps are the rate driver's: ns CPU accounting, latency from
# each request's intended send (corrected for coordinated omission).
SUSTAINED = 0.99  # achieved / offered at or above which an offered rate counts as served


def _capacity_step(run: ScenarioRun) -> Step | None:
    return max(run.steps, key=lambda s: s.achieved_rps, default=None)


def _capacity(run: ScenarioRun) -> Reading:
    top = _capacity_step(run)
    if top is None:
        return Reading(None)
    return Reading(top.achieved_rps, driver_bound=top.driver_bound, ci=top.achieved_rps_ci)


def _saturation_cpu(run: ScenarioRun) -> Reading:
    top = _capacity_step(run)
    if top is None or not _precise(top):
        return Reading(None)
    # Saturated on purpose: this is the cost where one wake-up serves many requests.
    return Reading(top.cpu_us_per_request, driver_bound=top.driver_bound,
                   error=top.cpu_us_error, at_rps=top.achieved_rps, ci=top.cpu_us_ci)  # fmt: skip


def _common_cpu(run: ScenarioRun) -> Reading:
    common = [s for s in run.steps if s.common and s.offered_rps]
    top = max(common, key=lambda s: s.offered_rps or 0.0, default=None)
    if top is None or not _precise(top):
        return Reading(None)
    return Reading(top.cpu_us_per_request, driver_bound=top.driver_bound,
                   error=top.cpu_us_error, at_rps=top.offered_rps,
                   saturated=top.server_saturated, ci=top.cpu_us_ci)  # fmt: skip


def _p99_at(fraction: float) -> Callable[[ScenarioRun], Reading]:
    def read(run: ScenarioRun) -> Reading:
        step = next((s for s in run.steps if s.capacity_fraction == fraction), None)
        if step is None or step.p99_ms is None:
            return Reading(None)
        return Reading(step.p99_ms, driver_bound=step.driver_bound, at_rps=step.offered_rps,
                       ci=step.p99_ci)  # fmt: skip

    return read


def served(step: Step) -> bool:
    """The offered rate was served in full: achieved/offered at least SUSTAINED."""
    return bool(step.offered_rps) and step.achieved_rps >= SUSTAINED * (step.offered_rps or 0)


def _sustainable(run: ScenarioRun) -> Reading:
    """The highest offered rate served in full with its corrected p99 within the SLO."""
    slo = run.slo_ms
    good = [
        s for s in run.steps
        if served(s) and s.p99_ms is not None and slo is not None and s.p99_ms <= slo
    ]  # fmt: skip
    best = max(good, key=lambda s: s.offered_rps or 0.0, default=None)
    if best is None:
        return Reading(None)
    return Reading(best.offered_rps, driver_bound=best.driver_bound)


def _upstream_connections(run: ScenarioRun) -> Reading:
    return Reading(
        float(run.upstream_connections) if run.upstream_connections is not None else None
    )


def _fixed(attribute: str) -> Callable[[ScenarioRun], Reading]:
    interval = {"p50_ms": "p50_ci", "p99_ms": "p99_ci", "p999_ms": "p999_ci"}.get(attribute)

    def read(run: ScenarioRun) -> Reading:
        top = _top(run)
        if top is None:
            return Reading(None)
        ci = getattr(top, interval) if interval else None
        return Reading(getattr(top, attribute), top.driver_bound, ci=ci)

    return read


FIGURES: dict[str, FigureSpec] = {
    spec.name: spec
    for spec in (
        FigureSpec("ceiling_rps", "plaintext ceiling", "req/s", 1, "higher", "closed", _ceiling),
        FigureSpec(
            "capacity_rps", "capacity (closed loop, the rate driver)", "req/s", 1, "higher",
            "closed", _capacity,
        ),
        FigureSpec(
            "saturation_cpu_us", "CPU per request at capacity", "µs", 1, "lower", "closed",
            _saturation_cpu,
        ),
        FigureSpec(
            "common_cpu_us", "CPU per request at the highest common rate", "µs", 1, "lower",
            "open", _common_cpu,
        ),
        FigureSpec(
            "p99_at_50_ms", "p99 at 50 % of capacity (from the intended send)", "ms", 1,
            "lower", "open", _p99_at(0.5),
        ),
        FigureSpec(
            "p99_at_90_ms", "p99 at 90 % of capacity (from the intended send)", "ms", 1,
            "lower", "open", _p99_at(0.9),
        ),
        FigureSpec(
            "sustainable_rps", "sustainable throughput (served in full, p99 within the SLO)",
            "req/s", 1, "higher", "open", _sustainable,
        ),
        FigureSpec(
            "bytes_per_request", "memory per in-flight request, under Locust", "KiB",
            1 / 1024, "lower", "closed", _fit_slope,
        ),
        FigureSpec(
            "bytes_per_request_r2", "r² of that fit", "", 1, None, "closed", _fit_r2,
        ),
        FigureSpec(
            "held_bytes_per_request", "memory per in-flight request, raw held connections",
            "KiB", 1 / 1024, "lower", "held", _fit_slope,
        ),
        FigureSpec(
            "held_bytes_per_request_r2", "r² of that fit", "", 1, None, "held", _fit_r2,
        ),
        FigureSpec(
            "starvation_lag_p99_ms", "scheduler lag p99 under CPU load", "ms", 1,
            "lower", "closed", _lag,
        ),
        FigureSpec(
            "starvation_probe_p99_ms", "/json p99 beside CPU-bound requests", "ms", 1,
            "lower", "closed", _route_p99("/json", _top),
        ),
        FigureSpec(
            "fixed_load_rps", "fixed arrival rate", "req/s", 1, None, "open",
            _fixed("intended_rps"),
        ),
        FigureSpec(
            "fixed_load_p50_ms", "p50 at the fixed rate", "ms", 1, "lower", "open",
            _fixed("p50_ms"),
        ),
        FigureSpec(
            "fixed_load_p99_ms", "p99 at the fixed rate", "ms", 1, "lower", "open",
            _fixed("p99_ms"),
        ),
        FigureSpec(
            "fixed_load_p999_ms", "p99.9 at the fixed rate", "ms", 1, "lower", "open",
            _fixed("p999_ms"),
        ),
        FigureSpec(
            "fixed_load_p99_uncorrected_ms", "p99 a closed-loop tool would report", "ms", 1,
            None, "open", _fixed("p99_uncorrected_ms"),
        ),
        FigureSpec(
            "coloring_probe_p99_ms", "/json p99 beside blocking calls", "ms", 1, "lower",
            "closed", _route_p99("/json", _top),
        ),
        FigureSpec(
            "inline_p50_ms", f"p50 of an inline {BLOCKING_MS} ms blocking call", "ms", 1,
            "lower", "closed", _route_p50(INLINE),
        ),
        FigureSpec(
            "c_boundary_probe_p99_ms", "/json p99 beside blocking calls in C", "ms", 1,
            "lower", "closed", _route_p99("/json", _top),
        ),
        FigureSpec(
            "c_inline_p50_ms", f"p50 of an inline {BLOCKING_MS} ms blocking call in C", "ms",
            1, "lower", "closed", _route_p50(C_INLINE),
        ),
        FigureSpec(
            "upstream_p50_ms", f"/upstream p50 ({UPSTREAM_CALLS} calls of {UPSTREAM_MS} ms)",
            "ms", 1, "lower", "closed", _route_p50("/upstream"),
        ),
        FigureSpec(
            "upstream_p99_ms", "/upstream p99", "ms", 1, "lower", "closed",
            _route_p99("/upstream", _top),
        ),
        FigureSpec(
            "upstream_bytes_per_request", "memory per in-flight /upstream request", "KiB",
            1 / 1024, "lower", "closed", _fit_slope,
        ),
        FigureSpec(
            "upstream_bytes_per_request_r2", "r² of that fit", "", 1, None, "closed", _fit_r2,
        ),
        FigureSpec(
            "upstream_connections", "connections the upstream saw opened (pool reuse)", "",
            1, "lower", "closed", _upstream_connections,
        ),
        FigureSpec(
            "offload_overhead_ms", f"offload overhead (mean, on a {BLOCKING_MS} ms call)", "ms",
            1, "lower", "closed", _offload_overhead,
        ),
    )
}  # fmt: skip

CPU = FigureSpec(
    "cpu_us_per_request", "server CPU per request", "µs", 1, "lower", "closed",
    lambda run: _cpu(run),
)  # fmt: skip


def _cpu(run: ScenarioRun, level: float | None = None) -> Reading:
    step = quiet_step(run, level)
    if step is None:
        return Reading(None)
    return Reading(
        step.cpu_us_per_request, driver_bound=step.driver_bound, error=step.cpu_us_error,
        at_rps=step.achieved_rps, saturated=step.server_saturated, ci=step.cpu_us_ci,
    )  # fmt: skip


def _calibrated(reading: Reading, name: str) -> Reading:
    """The reading with its interval widened to what this figure's kind varies between runs
    (intervals.CALIBRATION)."""
    if reading.value is None or reading.ci is None:
        return reading
    return dataclasses.replace(reading, ci=intervals.calibrated(reading.value, reading.ci, name))


def _figure(readings: list[Reading]) -> Figure | None:
    present = [r for r in readings if r.value is not None]
    if not present:
        return None
    values = [r.value for r in present if r.value is not None]
    errors = [r.error for r in present if r.error is not None]
    rates = [r.at_rps for r in present if r.at_rps is not None]
    cis = [r.ci for r in present]
    known = [ci for ci in cis if ci is not None]
    return Figure(
        median=statistics.median(values),
        min=min(values),
        max=max(values),
        n=len(values),
        values=values,
        error=max(errors) if errors else None,
        intervals=cis if known else None,
        # The envelope of every value's interval: with repeats, what all of them allow.
        low=min(ci[0] for ci in known) if len(known) == len(cis) and known else None,
        high=max(ci[1] for ci in known) if len(known) == len(cis) and known else None,
        driver_bound=any(r.driver_bound for r in present),
        saturated=any(r.saturated for r in present),
        at_rps=statistics.median(rates) if rates else None,
    )


def headline(runs: list[ScenarioRun]) -> dict[str, ServerHeadline]:
    """Per server: CPU per request per scenario (every server at the same load level where
    one exists) and each scenario's own figures, as medians over the repeats with their
    spread."""
    cpu: dict[str, dict[str, list[Reading]]] = defaultdict(lambda: defaultdict(list))
    named: dict[str, dict[str, list[Reading]]] = defaultdict(lambda: defaultdict(list))
    closed: dict[str, list[ScenarioRun]] = defaultdict(list)
    for run in runs:
        if (
            run.key.model == "closed"
            and run.steps
            and SCENARIOS[run.key.scenario].driver == "locust"
        ):
            closed[run.key.scenario].append(run)
    levels = {scenario: common_quiet_level(group) for scenario, group in closed.items()}
    for run in runs:
        key = run.key
        if not run.steps and run.memory_fit is None:
            continue
        locust = SCENARIOS[key.scenario].driver == "locust"
        if key.model == "closed" and run.steps and locust:
            cpu[key.server][key.scenario].append(
                _calibrated(_cpu(run, levels[key.scenario]), "cpu")
            )
        for name in SCENARIOS[key.scenario].figures:
            spec = FIGURES[name]
            if spec.model == key.model:
                named[key.server][name].append(_calibrated(spec.read(run), name))
    result = {}
    for server in sorted(set(cpu) | set(named)):
        result[server] = ServerHeadline(
            cpu_us_per_request={s: f for s, r in cpu[server].items() if (f := _figure(r))},
            figures={n: f for n, r in named[server].items() if (f := _figure(r))},
        )
    return result
