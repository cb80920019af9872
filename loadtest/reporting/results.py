"""results.json: built from samples.jsonl alone, so a finished, interrupted or crashed run
gives the same kind of file, saying what it measured and what it lost."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from loadtest.orchestrator.sampling import read_samples
from loadtest.reporting import analysis

SCHEMA = "stackbench.results/1"


class ResultsError(Exception):
    """The directory holds no readable run."""


def run_key(record: dict) -> tuple[str, str, str, int]:
    return record["server_impl"], record["scenario"], record["model"], record["repeat"]


def build(out: Path) -> dict[str, Any]:
    path = out / "samples.jsonl"
    if not path.is_file():
        raise ResultsError(f"{out} has no samples.jsonl (is it a stackbench run directory?)")
    records, broken_lines = read_samples(path)
    header = next((r for r in records if r.get("type") == "run"), None)
    if header is None:
        raise ResultsError(f"{path} does not start with a run record")
    samples: dict[tuple, list[dict]] = defaultdict(list)
    events: dict[tuple, list[dict]] = defaultdict(list)
    run_events = []
    for record in records:
        kind = record.get("type")
        if kind == "sample":
            samples[run_key(record)].append(record)
        elif kind == "event":
            if "scenario" in record:
                events[run_key(record)].append(record)
            else:
                run_events.append(record)
    driver_cores = len(header["pinning"]["driver_cpus"])
    runs = []
    for key in sorted(set(samples) | set(events), key=lambda k: (k[3], k[0], k[1], k[2])):
        server, scenario, model, repeat = key
        started = [e for e in events[key] if e["event"] == "started"]
        levels = started[0]["levels"] if started else None
        run_steps = analysis.steps(samples[key], driver_cores, levels)
        finished = [e for e in events[key] if e["event"] == "finished"]
        failed = [e for e in events[key] if e["event"] == "failed"]
        status = "failed" if failed else "ok" if finished else "interrupted"
        run = {
            "server": server,
            "scenario": scenario,
            "model": model,
            "repeat": repeat,
            "status": status,
            "error": failed[0]["error"] if failed else None,
            "samples": len(samples[key]),
            "steps": run_steps,
            "driver_bound": any(s["driver_bound"] for s in run_steps),
        }
        if scenario == "io_hold" and model == "closed":
            run["fit"] = analysis.memory_fit(run_steps)
        if scenario == "starvation":
            run["lag_series"] = analysis.lag_series(samples[key])
        runs.append(run)
    done = {
        (r["server"], r["scenario"], r["model"], r["repeat"]) for r in runs if r["status"] == "ok"
    }
    planned = [tuple(p) for p in header["planned"]]
    interrupted = any(e["event"] == "interrupted" for e in run_events)
    return {
        "schema": SCHEMA,
        "started": header["started"],
        "finished": next((e["t"] for e in run_events if e["event"] == "finished"), None),
        "profile": header["profile"],
        "environment": header["environment"],
        "versions": header["versions"],
        "pinning": header["pinning"],
        "complete": not interrupted and set(planned) <= done,
        "interrupted": interrupted,
        "lost": {
            "unreadable_sample_lines": broken_lines,
            "not_measured": [list(p) for p in planned if p not in done],
            "failures": [
                {"server": r["server"], "scenario": r["scenario"], "error": r["error"]}
                for r in runs
                if r["status"] == "failed"
            ],
        },
        "headline": analysis.headline([r for r in runs if r["steps"]]),
        "runs": runs,
    }


def write(out: Path, results: dict[str, Any]) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def load(path: Path) -> dict[str, Any]:
    """A results.json, or the results of a run directory (rebuilt from its samples)."""
    if path.is_dir():
        candidate = path / "results.json"
        if candidate.is_file():
            path = candidate
        else:
            return build(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from exc
    if results.get("schema") != SCHEMA:
        raise ResultsError(f"{path} is not a {SCHEMA} file")
    return results
