"""results.json: built from samples.jsonl alone, so a finished, interrupted or crashed run
gives the same kind of file, saying what it measured and what it lost."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from loadtest.driver.scenarios import SCENARIOS
from loadtest.records import (
    Event,
    HeldProbe,
    IdleProbe,
    Lost,
    RecordError,
    Results,
    RunHeader,
    RunKey,
    Sample,
    ScenarioRun,
    read_samples,
    utc_iso,
)
from loadtest.reporting import analysis, figures

__all__ = ["ResultsError", "build", "load", "write"]


class ResultsError(Exception):
    """The directory or file holds no readable run (one line for the user)."""


def _order(key: RunKey) -> tuple:
    return key.repeat, key.server, key.scenario, key.model


def build(out: Path) -> Results:
    path = out / "samples.jsonl"
    if not path.is_file():
        raise ResultsError(f"{out} has no samples.jsonl (is it a stackbench run directory?)")
    try:
        records, broken_lines = read_samples(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None
    headers = [r for r in records if isinstance(r, RunHeader)]
    if len(headers) != 1:
        what = "no readable run header" if not headers else f"{len(headers)} run headers"
        raise ResultsError(f"{path} has {what}: not one stackbench run")
    header = headers[0]
    samples: dict[RunKey, list[Sample]] = defaultdict(list)
    events: dict[RunKey, list[Event]] = defaultdict(list)
    held: dict[RunKey, HeldProbe] = {}
    idle: dict[tuple[str, int], list[float]] = defaultdict(list)
    idle_ns: dict[tuple[str, int], list[float]] = defaultdict(list)
    idle_seconds: dict[tuple[str, int], float] = {}
    run_events: list[Event] = []
    for record in records:
        if isinstance(record, Sample):
            samples[record.key].append(record)
        elif isinstance(record, Event):
            (events[record.key] if record.key else run_events).append(record)
        elif isinstance(record, HeldProbe):
            held[record.key] = record
        elif isinstance(record, IdleProbe) and record.seconds > 0:
            idle[(record.server, record.repeat)].append(record.cpu_seconds / record.seconds)
            if record.cpu_ns_seconds is not None:
                idle_ns[(record.server, record.repeat)].append(
                    record.cpu_ns_seconds / record.seconds
                )
            idle_seconds[(record.server, record.repeat)] = record.seconds
    # As many cores as the driver could use: one per Locust process, at most one per CPU.
    driver_cores = min(len(header.pinning.driver_cpus), header.pinning.locust_processes)
    tick = header.environment.clock_tick_s
    runs = []
    for key in sorted(set(samples) | set(events) | set(held), key=_order):
        idle_cpu = statistics.fmean(idle.get((key.server, key.repeat), [0.0]))
        # The idle rate is itself off by up to two ticks over its probe.
        probe = idle_seconds.get((key.server, key.repeat))
        idle_error = 2 * tick / probe if probe else 0.0
        # With the CPU clock the probe's own reading is exact; what is left is when it is read.
        ns_rates = idle_ns.get((key.server, key.repeat))
        ns_idle = (
            (statistics.fmean(ns_rates), 2 * analysis.COUNTER_SKEW_S / probe)
            if ns_rates and probe
            else None
        )
        started = [e for e in events[key] if e.event == "started"]
        finished = [e for e in events[key] if e.event == "finished"]
        failed = [e for e in events[key] if e.event == "failed"]
        if key in held:
            probe = held[key]
            status = "failed" if probe.error else "ok"
            error = probe.error
            run = ScenarioRun(
                key=key, status=status, error=error, samples=len(probe.points), steps=[],
                driver_bound=False, memory_fit=analysis.held_fit(probe.points, probe.samples),
            )  # fmt: skip
            runs.append(run)
            continue
        levels = started[0].levels if started else None
        spec = header.scenarios.get(
            key.scenario if key.model != "open" else f"{key.scenario} (open)"
        )
        settle = spec.settle_seconds if spec else 0.0
        planned = started[0].steps if started else None
        # The rate driver is one process: one core, however many Locust would use.
        rate_driven = key.scenario in SCENARIOS and SCENARIOS[key.scenario].driver == "rate"
        run_steps = analysis.steps(
            samples[key], 1 if rate_driven else driver_cores, levels, idle_cpu, tick, settle,
            idle_error, ns_idle, planned,
        )  # fmt: skip
        runs.append(
            ScenarioRun(
                key=key,
                status="failed" if failed else "ok" if finished else "interrupted",
                error=failed[0].error if failed else None,
                samples=len(samples[key]),
                steps=run_steps,
                driver_bound=any(s.driver_bound for s in run_steps),
                memory_fit=analysis.memory_fit(run_steps)
                if key.scenario in SCENARIOS
                and SCENARIOS[key.scenario].fits_memory
                and key.model == "closed"
                else None,
                upstream_connections=finished[-1].upstream_connections if finished else None,
                recorded_requests=analysis.recorded_requests(samples[key]),
                slo_ms=spec.slo_ms if spec and key.model == "open" else None,
                lag_series=analysis.lag_series(samples[key])
                if key.scenario == "starvation"
                else None,
                level_starts=analysis.level_starts(samples[key], levels)
                if key.scenario == "starvation"
                else None,
            )
        )
    done = {r.key for r in runs if r.status == "ok"}
    interrupted = any(e.event == "interrupted" for e in run_events)
    finished_at = next((e.t for e in run_events if e.event == "finished"), None)
    idle_by_server: dict[str, list[float]] = defaultdict(list)
    for (server, _), values in idle.items():
        idle_by_server[server].extend(values)
    return Results(
        started=header.started,
        finished=utc_iso(finished_at) if finished_at is not None else None,
        profile=header.profile,
        tiers=header.tiers,
        scenarios=header.scenarios,
        environment=header.environment,
        versions=header.versions,
        pinning=header.pinning,
        provenance=header.provenance,
        idle_cpu={s: statistics.median(v) for s, v in sorted(idle_by_server.items())},
        complete=not interrupted and set(header.planned) <= done,
        interrupted=interrupted,
        lost=Lost(
            unreadable_sample_lines=broken_lines,
            not_measured=[k for k in header.planned if k not in done],
            failures=[
                {
                    "server": r.key.server,
                    "scenario": r.key.scenario,
                    "model": r.key.model,
                    "error": r.error or "",
                }
                for r in runs
                if r.status == "failed"
            ],
        ),
        headline=figures.headline([r for r in runs if r.steps or r.memory_fit]),
        runs=runs,
    )


def write(out: Path, results: Results) -> Path:
    path = out / "results.json"
    path.write_text(results.to_json(), encoding="utf-8")
    return path


def load(path: Path) -> Results:
    """A results.json, or the results of a run directory (rebuilt from its samples)."""
    if path.is_dir():
        candidate = path / "results.json"
        if not candidate.is_file():
            return build(path)
        path = candidate
    try:
        return Results.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except RecordError as exc:
        raise ResultsError(f"{path}: {exc}") from None
