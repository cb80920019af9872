"""The rate sweep's capacity and CPU per request at saturation, checked against wrk.

In each interleaved round: one `stackbench run --profile smoke --scenarios rate` for all the
servers (its capacity: the rate driver closed-loop at 64 connections; its CPU per request there,
from the server's CPU clock), then wrk -t1 -c64 against a fresh process of each server, the
server's CPU read from /proc (utime + stime) around it. Both ratios should be 1 within 10 %:
two load generators, two CPU accountings, one server. With `--bare`, the native servers are
also driven by the rate driver (closed loop, 64 connections) beside their bare references
(net/http or hyper alone: `--bare`), with the driver's own CPU share, so a ratio read where the
driver was the limit shows as such.

    python benchmarks/rate_vs_wrk.py                                # the stack tier, ~3 min
    python benchmarks/rate_vs_wrk.py --servers all --bare --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from launch import SERVERS_HELP, Launched, Variant, parse_servers
from wrk_servers import CLIENT_CPUS, SERVER_CPUS, run_wrk

from loadtest import rate
from loadtest.orchestrator.sampling import cpu_ns_seconds

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 64
RUN_TIMEOUT_S = 900
NATIVES = ("go-nethttp", "rust-hyper")


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "values": values}  # fmt: skip


def _cell(figure: dict | None, fmt: str, suffix: str = "") -> str:
    if figure is None:
        return "-"
    low, mid, high = (format(figure[k], fmt) for k in ("min", "median", "max"))
    return f"{mid}{suffix} ({low}-{high})"


def stackbench_capacities(impls: list[str], out: Path) -> dict[str, dict]:
    """Capacity and CPU µs per request at it, per server, from one real run."""
    command = [
        sys.executable, "-m", "loadtest.cli", "run", "--profile", "smoke", "--scenarios",
        "rate", "--servers", ",".join(impls), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        sys.exit(f"stackbench run failed: {done.stderr.strip().splitlines()[-1:]}")
    results = json.loads((out / "results.json").read_text())
    found = {}
    for impl in impls:
        figures = results["headline"].get(impl, {}).get("figures", {})
        capacity, cpu = figures.get("capacity_rps"), figures.get("saturation_cpu_us")
        found[impl] = {
            "capacity": capacity["median"] if capacity else None,
            "driver_bound": bool(capacity and capacity["driver_bound"]),
            "cpu_us": cpu["median"] if cpu else None,
        }
    return found


def wrk_figures(impl: str, args: argparse.Namespace) -> tuple[float, float]:
    """wrk's req/s at 64 connections and the server's CPU µs per request from /proc meanwhile."""
    with Launched(Variant(impl), cpus=args.server_cpus) as server:
        run_wrk(server.url + "/", 1.0, CONNECTIONS, args.client_cpus)  # warm-up
        process = psutil.Process(server.pid)
        before = sum(process.cpu_times()[:2])
        result = run_wrk(server.url + "/", args.duration, CONNECTIONS, args.client_cpus)
        used = sum(process.cpu_times()[:2]) - before
    requests = result.requests_per_s * args.duration
    return result.requests_per_s, used / requests * 1e6


def driver_capacity(variant: Variant, args: argparse.Namespace) -> tuple[float, float, float]:
    """The rate driver closed-loop against a fresh process: req/s (ramp left out), the server's
    CPU µs per request (its CPU clock), and the driver's share of its own core."""
    driver = rate.binary()
    with Launched(variant, cpus=args.server_cpus) as server:
        before = cpu_ns_seconds(server.pid) or 0.0
        started = time.monotonic()
        done = subprocess.run(
            [str(driver), "--port", str(server.port), "--request", "/\tGET\t/\t1",
             "--connections", str(CONNECTIONS), "--duration", f"{args.duration:g}"],
            capture_output=True, text=True, check=True, timeout=args.duration + 60,
            preexec_fn=lambda: os.sched_setaffinity(0, args.client_cpus),
        )  # fmt: skip
        elapsed = time.monotonic() - started
        used = (cpu_ns_seconds(server.pid) or 0.0) - before
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    intervals = [line for line in lines if line["type"] == "interval"]
    first, last = intervals[0], intervals[-1]
    achieved = (last["completed"] - first["completed"]) / (last["elapsed"] - first["elapsed"])
    end = lines[-1]
    share = (end["cpu_user_s"] + end["cpu_system_s"]) / elapsed
    return achieved, used / end["completed"] * 1e6, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="stack", help=SERVERS_HELP)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--bare", action="store_true", help="the natives beside their bare refs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        impls = parse_servers(args.servers)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    args.server_cpus, args.client_cpus = set(SERVER_CPUS), set(CLIENT_CPUS)
    if not args.server_cpus | args.client_cpus <= os.sched_getaffinity(0):
        parser.error("needs CPUs 0 and 1 (server on one, the load generator on the other)")
    rounds: dict[str, list[dict]] = {impl: [] for impl in impls}
    bare: dict[str, list[dict]] = {impl: [] for impl in impls if impl in NATIVES}
    with tempfile.TemporaryDirectory(prefix="rate_vs_wrk-") as scratch:
        for number in range(1, args.rounds + 1):
            run = stackbench_capacities(impls, Path(scratch) / f"round-{number}")
            for impl in impls:
                wrk_rps, wrk_cpu = wrk_figures(impl, args)
                row = {**run[impl], "wrk_rps": wrk_rps, "wrk_cpu_us": wrk_cpu}
                rounds[impl].append(row)
                print(f"round {number} {impl:<12} capacity {row['capacity'] or 0:>9,.0f} "
                      f"wrk {wrk_rps:>9,.0f} req/s; CPU µs {row['cpu_us'] or 0:.1f} (ns) "
                      f"vs {wrk_cpu:.1f} (/proc, wrk)", file=sys.stderr, flush=True)  # fmt: skip
            for impl in bare if args.bare else ():
                ours = driver_capacity(Variant(impl), args)
                reference = driver_capacity(Variant(impl, "bare"), args)
                bare[impl].append({"server": ours, "bare": reference})
    summary: dict[str, dict] = {}
    print(f"\nGET /, server on CPU {sorted(args.server_cpus)}, load on CPU "
          f"{sorted(args.client_cpus)}, {CONNECTIONS} connections, {args.duration:g} s each; "
          f"median (min-max) of {args.rounds} interleaved round(s)\n")  # fmt: skip
    print(
        f"{'server':<12} {'capacity (run) req/s':>26} {'wrk req/s':>26} {'capacity / wrk':>20} "
        f"{'CPU µs at capacity (ns)':>24} {'CPU µs under wrk (/proc)':>24} {'ratio':>18}"
    )
    for impl, rows in rounds.items():
        figures = {
            "capacity": spread([r["capacity"] for r in rows if r["capacity"]]),
            "wrk_rps": spread([r["wrk_rps"] for r in rows]),
            "capacity_over_wrk": spread(
                [r["capacity"] / r["wrk_rps"] for r in rows if r["capacity"]]
            ),
            "cpu_us": spread([r["cpu_us"] for r in rows if r["cpu_us"]]),
            "wrk_cpu_us": spread([r["wrk_cpu_us"] for r in rows]),
            "cpu_over_wrk": spread([r["cpu_us"] / r["wrk_cpu_us"] for r in rows if r["cpu_us"]]),
            "driver_bound": any(r["driver_bound"] for r in rows),
        }
        summary[impl] = figures
        flag = "  <- driver-bound" if figures["driver_bound"] else ""
        print(f"{impl:<12} {_cell(figures['capacity'], ',.0f'):>26} "
              f"{_cell(figures['wrk_rps'], ',.0f'):>26} "
              f"{_cell(figures['capacity_over_wrk'], '.2f', 'x'):>20} "
              f"{_cell(figures['cpu_us'], '.1f'):>24} {_cell(figures['wrk_cpu_us'], '.1f'):>24} "
              f"{_cell(figures['cpu_over_wrk'], '.2f', 'x'):>18}{flag}")  # fmt: skip
    if bare and args.bare:
        print(f"\nthe natives beside their bare references, both driven by the rate driver "
              f"(closed loop, {CONNECTIONS} connections)\n")  # fmt: skip
        print(f"{'server':<12} {'req/s':>24} {'bare req/s':>24} {'vs bare':>18} "
              f"{'driver CPU share':>22}")  # fmt: skip
        for impl, rows in bare.items():
            ratio = spread([r["server"][0] / r["bare"][0] for r in rows])
            share = spread([max(r["server"][2], r["bare"][2]) for r in rows])
            summary[impl]["vs_bare"] = ratio
            summary[impl]["bare_driver_share"] = share
            print(f"{impl:<12} {_cell(spread([r['server'][0] for r in rows]), ',.0f'):>24} "
                  f"{_cell(spread([r['bare'][0] for r in rows]), ',.0f'):>24} "
                  f"{_cell(ratio, '.2f', 'x'):>18} {_cell(share, '.0%'):>22}")  # fmt: skip
    print(
        "\nratios taken inside each round (the two sides back to back), then median (min-max);"
        "\na driver CPU share near 100 % means the driver, not the server, set that figure."
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
