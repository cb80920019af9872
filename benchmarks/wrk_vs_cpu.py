"""Cross-check of `stackbench run`'s driver-independent figure against wrk's measured ceiling.

`stackbench run` records, per server and scenario, the server's CPU time per completed request
(from /proc, idle load subtracted, at the busiest load step where neither the server nor the
Locust driver was saturated) and the capacity it implies: 1e6 / µs = requests per second per
core. This script measures, for each server in interleaved rounds, that implied capacity for
`plaintext` (a `--profile smoke` run) and the server's saturated throughput under wrk, pinned as
in wrk_servers.py (server on CPU 0, wrk on CPU 1, telemetry on), and prints their ratio.

    python benchmarks/wrk_vs_cpu.py                        # ~4 minutes on 2 cores
    python benchmarks/wrk_vs_cpu.py --rounds 1 --duration 3 --servers aiohttp --json out.json

The ratio (wrk ceiling / implied capacity) is not expected to be 1, and is usually above it.
At saturation an event loop finds many ready sockets per wakeup, so the per-wakeup overhead
(the poll syscall, the loop's bookkeeping, switching in and out of the process) is shared by
many requests; a closed-loop Locust at a few users leaves the server idle between requests, so
each wakeup serves about one request and pays that overhead alone. And wrk's requests are
smaller than Locust's (fewer headers to parse). The implied capacity is therefore a
conservative, linear extrapolation from light load. The ratio is a figure inside one run: both
sides are measured here, on this machine, in the same round; compare servers by it, and do not
carry a ratio to another machine's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from wrk_servers import (
    CLIENT_CPUS,
    CONNECTIONS,
    DURATION_S,
    NAGLE_SUSPECT_RPS,
    SERVER_CPUS,
    WARMUP_S,
    WrkResult,
    check_machine,
    measure,
)

from servers.contract import IMPLS

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = "plaintext"
DEFAULT_SERVERS = ("gevent", "trio", "aiohttp")
RUN_TIMEOUT_S = 600


class RunFailed(RuntimeError):
    """`stackbench run` failed or wrote no usable figure (one message for the user)."""


@dataclass
class CpuFigures:
    """What one `stackbench run --profile smoke --scenarios plaintext` said about one server."""

    capacity_rps_per_core: float | None  # None: the run found no unsaturated step
    cpu_us_per_request: float | None
    cpu_us_error: float | None  # /proc tick resolution, per request
    at_rps: float | None
    driver_bound: bool
    server_cpus: list[int]
    driver_cpus: list[int]
    missing: str | None = None  # why there is no figure, when there is none


def _why_missing(results: dict, impl: str) -> str:
    """What the run's plaintext steps said, when they gave no CPU figure."""
    for run in results.get("runs", []):
        if run["key"]["server"] == impl and run["key"]["scenario"] == SCENARIO:
            if run["status"] != "ok":
                return f"run {run['status']}: {run['error']}"
            steps = [
                f"{step['users']:g} users"
                + (" server saturated" if step["server_saturated"] else "")
                + (" driver-bound" if step["driver_bound"] else "")
                for step in run["steps"]
            ]
            return "no usable step: " + ", ".join(steps) if steps else "no steps"
    return f"no {SCENARIO} run in results.json"


def run_stackbench(impls: list[str], out: Path) -> dict[str, CpuFigures]:
    """One run for all servers, so that their CPU per request is read at one load level."""
    command = [
        sys.executable, "-m", "loadtest.cli", "run", "--profile", "smoke",
        "--scenarios", SCENARIO, "--servers", ",".join(impls), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RunFailed(f"{' '.join(command[1:])} exited with {done.returncode}:\n{tail}")
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise RunFailed(f"{out / 'results.json'}: {exc!r}") from None
    return {impl: _figures(results, impl, out) for impl in impls}


def _figures(results: dict, impl: str, out: Path) -> CpuFigures:
    try:
        headline = results["headline"][impl]
        capacity = headline["capacity_rps_per_core"].get(SCENARIO)
        cpu = headline["cpu_us_per_request"].get(SCENARIO)
        pinning = results["pinning"]
        missing = None if capacity and cpu else _why_missing(results, impl)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunFailed(f"{out / 'results.json'}: no {impl} headline ({exc!r})") from None
    return CpuFigures(
        capacity_rps_per_core=capacity["median"] if capacity else None,
        cpu_us_per_request=cpu["median"] if cpu else None,
        cpu_us_error=cpu.get("error") if cpu else None,
        at_rps=cpu.get("at_rps") if cpu else None,
        driver_bound=bool((capacity or {}).get("driver_bound") or (cpu or {}).get("driver_bound")),
        server_cpus=pinning["server_cpus"],
        driver_cpus=pinning["driver_cpus"],
        missing=missing,
    )


@dataclass
class Round:
    wrk: WrkResult
    cpu: CpuFigures

    @property
    def ratio(self) -> float | None:
        capacity = self.cpu.capacity_rps_per_core
        return self.wrk.requests_per_s / capacity if capacity else None


def spread(values: list[float | None]) -> dict[str, float] | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {
        "median": statistics.median(known),
        "min": min(known),
        "max": max(known),
        "n": len(known),
        "values": known,
    }


def summarise(rounds: list[Round]) -> dict:
    cpu_errors = [r.cpu.cpu_us_error for r in rounds if r.cpu.cpu_us_error is not None]
    return {
        "wrk_requests_per_s": spread([r.wrk.requests_per_s for r in rounds]),
        "capacity_rps_per_core": spread([r.cpu.capacity_rps_per_core for r in rounds]),
        "cpu_us_per_request": spread([r.cpu.cpu_us_per_request for r in rounds]),
        "cpu_us_error": statistics.median(cpu_errors) if cpu_errors else None,
        "at_rps": spread([r.cpu.at_rps for r in rounds]),
        "ratio": spread([r.ratio for r in rounds]),
        "driver_bound": any(r.cpu.driver_bound for r in rounds),
        "wrk_errors": sum(r.wrk.errors for r in rounds),
        "rounds": [{"wrk": asdict(r.wrk), "cpu": asdict(r.cpu), "ratio": r.ratio} for r in rounds],
    }


def _range(figure: dict[str, float] | None, fmt: str, suffix: str = "") -> str:
    if figure is None:
        return "-"
    low, mid, high = (format(figure[k], fmt) for k in ("min", "median", "max"))
    return f"{mid}{suffix} ({low}-{high})"


def print_table(summary: dict[str, dict], args: argparse.Namespace) -> None:
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration:g}s GET /, server on CPU "
        f"{sorted(args.server_cpus)}, wrk on CPU {sorted(args.client_cpus)}; implied capacity "
        f"from `stackbench run --profile smoke --scenarios {SCENARIO}`; "
        f"median (min-max) of {args.rounds} interleaved round(s)\n"
    )
    print(
        f"{'server':<8} {'wrk ceiling req/s':>24} {'capacity req/s/core':>24} "
        f"{'CPU µs/req (±tick)':>27} {'at req/s':>8} {'wrk / capacity':>20}"
    )
    notes = []
    for impl, row in summary.items():
        error = f" ±{row['cpu_us_error']:.1f}" if row["cpu_us_error"] is not None else ""
        at = f"{row['at_rps']['median']:,.0f}" if row["at_rps"] else "-"
        flags = []
        measured = row["ratio"]["n"] if row["ratio"] else 0
        if measured < len(row["rounds"]):
            flags.append(f"CPU figure in {measured} of {len(row['rounds'])} rounds")
        if row["driver_bound"]:
            flags.append("driver-bound")
        if row["wrk_errors"]:
            flags.append(f"{row['wrk_errors']} wrk errors")
        if row["wrk_requests_per_s"]["median"] < NAGLE_SUSPECT_RPS:
            flags.append("Nagle stall? (TCP_NODELAY)")
        print(
            f"{impl:<8} {_range(row['wrk_requests_per_s'], ',.0f'):>24} "
            f"{_range(row['capacity_rps_per_core'], ',.0f'):>24} "
            f"{_range(row['cpu_us_per_request'], '.1f', error):>27} {at:>8} "
            f"{_range(row['ratio'], '.2f', 'x'):>20}"
            + (f"  <- {', '.join(flags)}" if flags else "")
        )
        pinned = {
            (tuple(r["cpu"]["server_cpus"]), tuple(r["cpu"]["driver_cpus"])) for r in row["rounds"]
        }
        for server_cpus, driver_cpus in sorted(pinned):
            if set(server_cpus) != args.server_cpus or set(driver_cpus) != args.client_cpus:
                notes.append(
                    f"{impl}: stackbench pinned the server to CPU {list(server_cpus)} and "
                    f"Locust to {list(driver_cpus)}, not as wrk's part was pinned"
                )
    print(
        "\nwrk / capacity: wrk's saturated req/s over the req/s per core that `stackbench run`\n"
        "implies from server CPU per request below saturation (median of the rounds' ratios).\n"
        "The figure is a ratio inside one run: both sides measured here, in the same rounds.\n"
        "Expect it above 1 (an event loop's wakeups amortise over many requests at saturation;\n"
        "wrk's requests are smaller than Locust's); compare it between servers, not with\n"
        "another machine's figures."
    )
    for note in notes:
        print(f"note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--duration", type=float, default=DURATION_S, help="seconds per wrk measurement"
    )
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds of wrk before it")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="wrk's connections")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.server_cpus, args.client_cpus = set(SERVER_CPUS), set(CLIENT_CPUS)
    impls = args.servers.split(",")
    if unknown := set(impls) - set(IMPLS):
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    check_machine(parser, args)

    rounds: dict[str, list[Round]] = {impl: [] for impl in impls}
    with tempfile.TemporaryDirectory(prefix="wrk_vs_cpu-") as scratch:
        for round_no in range(1, args.rounds + 1):
            try:
                cpus = run_stackbench(impls, Path(scratch) / f"round-{round_no}")
            except (RunFailed, subprocess.TimeoutExpired) as exc:
                sys.exit(f"round {round_no}: stackbench run failed: {exc}")
            for impl in impls:
                cpu = cpus[impl]
                wrk = measure(impl, True, args)
                result = Round(wrk, cpu)
                rounds[impl].append(result)
                implied = (
                    f"capacity {cpu.capacity_rps_per_core:>9.0f} req/s/core  "
                    f"ratio {result.ratio:5.2f}x"
                    if result.ratio
                    else f"no CPU figure ({cpu.missing})"
                )
                print(
                    f"round {round_no} {impl:<8} wrk {wrk.requests_per_s:>9.0f} req/s  {implied}",
                    file=sys.stderr,
                    flush=True,
                )

    summary = {impl: summarise(rounds[impl]) for impl in impls}
    print_table(summary, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
