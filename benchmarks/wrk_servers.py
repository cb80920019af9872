"""Throughput ceiling of each server under wrk, and what its telemetry costs.

Each server runs pinned to one CPU and wrk (a C load generator, so the client is not the limit)
to another. Every server is measured with telemetry on and with `--no-metrics`, in interleaved
rounds so that drift on a shared machine hits all of them alike; figures are medians over rounds.
With `--bare`, each round also measures the server's bare reference (benchmarks/bare/: the same
runtime and HTTP stack with nothing stackbench adds), right after the server, and the figures
are medians with their min-max over (by default) 5 rounds.

    python benchmarks/wrk_servers.py                      # the stack tier, ~2.5 minutes on 2 cores
    python benchmarks/wrk_servers.py --duration 5 --rounds 1 --json out.json
    python benchmarks/wrk_servers.py --bare --servers all        # ~18 minutes

Wall-clock rounds on a shared 2-core machine swing by tens of percent: for a figure repeatable to
a fraction of a percent, count instructions instead (benchmarks/instructions.py).

A gevent figure near 1.4k req/s means the Nagle stall is back (TCP_NODELAY lost): every response
then waits ~40 ms for a delayed ACK.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from launch import BARE, KINDS, SERVERS_HELP, Kind, Launched, Variant, parse_servers

NAGLE_SUSPECT_RPS = 2000  # ~40 ms per response per connection looks like this

# Defaults of the command line.
DURATION_S = 10.0
WARMUP_S = 2.0
CONNECTIONS = 64
SERVER_CPUS = frozenset({0})
CLIENT_CPUS = frozenset({1})
ROUNDS = 2
ROUNDS_WITH_BARE = 5  # three variants a server: a median of 5 still has a range worth reading


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNIT_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx[1]) if non_2xx else 0
    return WrkResult(float(rps[1]), _ms(p50[1]), _ms(p99[1]), errors)


def run_wrk(url: str, seconds: float, connections: int, cpus: set[int]) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    return parse_wrk(done.stdout)


def measure(impl: str, metrics: bool, args: argparse.Namespace) -> WrkResult:
    return measure_variant(Variant(impl, "server" if metrics else "no-metrics"), args)


def measure_variant(variant: Variant, args: argparse.Namespace) -> WrkResult:
    """A fresh process of `variant`, pinned to `args.server_cpus`, under wrk."""
    with Launched(variant, cpus=args.server_cpus) as server:
        if args.warmup:
            run_wrk(server.url + "/", args.warmup, args.connections, args.client_cpus)
        return run_wrk(server.url + "/", args.duration, args.connections, args.client_cpus)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def print_bare_table(
    impls: list[str], runs: dict[Variant, list[WrkResult]], rounds: int
) -> dict[str, dict]:
    """Per server: req/s of the three variants, and the ratios, each taken inside a round (the
    three ran back to back, so drift between rounds cancels) and then as median (min-max)."""
    print(
        f"\nbeside the bare references: req/s median (min-max) of {rounds} round(s); "
        "vs bare and telemetry cost per round, then median (min-max)\n"
    )
    print(
        f"{'server':<11} {'req/s':>24} {'req/s --no-metrics':>24} {'bare reference':<14} "
        f"{'req/s bare':>24} {'vs bare':>18} {'telemetry cost':>24}"
    )
    figures = {}
    for impl in impls:
        rps = {kind: [r.requests_per_s for r in runs[Variant(impl, kind)]] for kind in KINDS}
        vs_bare = [on / bare for on, bare in zip(rps["server"], rps["bare"], strict=True)]
        cost = [1 - on / off for on, off in zip(rps["server"], rps["no-metrics"], strict=True)]
        ratio = spread(vs_bare)
        share = spread(cost)
        ratio_cell = f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"
        share_cell = f"{share['median']:.1%} ({share['min']:.1%} to {share['max']:.1%})"
        note = "  <- Nagle stall? (TCP_NODELAY)" if min(rps["bare"]) < NAGLE_SUSPECT_RPS else ""
        if bare_errors := sum(r.errors for r in runs[Variant(impl, "bare")]):
            note += f"  bare errors: {bare_errors}"
        print(
            f"{impl:<11} {_cell(rps['server']):>24} {_cell(rps['no-metrics']):>24} "
            f"{BARE[impl]:<14} {_cell(rps['bare']):>24} {ratio_cell:>18} {share_cell:>24}{note}"
        )
        figures[impl] = {
            "bare": {
                "name": BARE[impl],
                **spread(rps["bare"]),
                "errors": bare_errors,
                "runs": [asdict(r) for r in runs[Variant(impl, "bare")]],
            },
            "vs_bare": ratio,
            "telemetry_cost_per_round": share,
            "requests_per_s_spread": spread(rps["server"]),
            "requests_per_s_no_metrics_spread": spread(rps["no-metrics"]),
        }
    return figures


def _cpus(text: str) -> set[int]:
    return {int(cpu) for cpu in text.split(",")}


def check_machine(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through `parser.error` unless wrk is installed and the CPUs to pin to exist."""
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk; or run `make bench`)")
    if not (args.server_cpus | args.client_cpus) <= os.sched_getaffinity(0):
        parser.error(f"this machine has CPUs {sorted(os.sched_getaffinity(0))} only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        default="stack",
        help=SERVERS_HELP + " (default: stack)",
    )
    parser.add_argument(
        "--duration", type=float, default=DURATION_S, help="seconds per measurement"
    )
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds before measuring")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds (default {ROUNDS}, {ROUNDS_WITH_BARE} with --bare)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="also measure each server's bare reference (benchmarks/bare/) in every round",
    )
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--server-cpus", type=_cpus, default=set(SERVER_CPUS))
    parser.add_argument("--client-cpus", type=_cpus, default=set(CLIENT_CPUS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        impls = parse_servers(args.servers)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds is None:
        args.rounds = ROUNDS_WITH_BARE if args.bare else ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    check_machine(parser, args)

    kinds: tuple[Kind, ...] = KINDS if args.bare else ("server", "no-metrics")
    runs: dict[Variant, list[WrkResult]] = {}
    for round_no in range(1, args.rounds + 1):
        for impl in impls:
            for kind in kinds:
                variant = Variant(impl, kind)
                result = measure_variant(variant, args)
                runs.setdefault(variant, []).append(result)
                state = {"server": "metrics on ", "no-metrics": "metrics off"}.get(
                    kind, f"bare {BARE[impl]}"
                )
                print(
                    f"round {round_no} {impl:<11} {state:<17} "
                    f"{result.requests_per_s:>9.0f} req/s  p99 {result.p99_ms:6.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )

    def median(impl: str, metrics: bool, field: str) -> float:
        variant = Variant(impl, "server" if metrics else "no-metrics")
        return statistics.median(getattr(r, field) for r in runs[variant])

    reference = median("aiohttp", True, "requests_per_s") if "aiohttp" in impls else None
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration:g}s GET /, server on CPU "
        f"{sorted(args.server_cpus)}, wrk on CPU {sorted(args.client_cpus)}, "
        f"median of {args.rounds} round(s)\n"
    )
    print(
        f"{'server':<11} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'vs aiohttp':>10} "
        f"{'req/s off':>10} {'telemetry cost':>14} errors"
    )
    summary = {}
    for impl in impls:
        rps_on = median(impl, True, "requests_per_s")
        rps_off = median(impl, False, "requests_per_s")
        cost = 1 - rps_on / rps_off
        errors = sum(r.errors for kind in kinds[:2] for r in runs[Variant(impl, kind)])
        ratio = f"{rps_on / reference:.2f}x" if reference else "-"
        note = "  <- Nagle stall? (TCP_NODELAY)" if rps_on < NAGLE_SUSPECT_RPS else ""
        print(
            f"{impl:<11} {rps_on:>9.0f} {median(impl, True, 'p50_ms'):>7.2f} "
            f"{median(impl, True, 'p99_ms'):>7.2f} {ratio:>10} {rps_off:>10.0f} "
            f"{cost:>13.1%} {errors}{note}"
        )
        summary[impl] = {
            "requests_per_s": rps_on,
            "p50_ms": median(impl, True, "p50_ms"),
            "p99_ms": median(impl, True, "p99_ms"),
            "requests_per_s_no_metrics": rps_off,
            "telemetry_cost": cost,
            "errors": errors,
            "runs": {
                "metrics_on": [asdict(r) for r in runs[Variant(impl, "server")]],
                "metrics_off": [asdict(r) for r in runs[Variant(impl, "no-metrics")]],
            },
        }
    if args.bare:
        for impl, figures in print_bare_table(impls, runs, args.rounds).items():
            summary[impl].update(figures)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
