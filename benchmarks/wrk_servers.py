"""Throughput ceiling of each server under wrk, and what its telemetry costs.

Each server runs pinned to one CPU and wrk (a C load generator, so the client is not the limit)
to another. Every server is measured with telemetry on and with `--no-metrics`, in interleaved
rounds so that drift on a shared machine hits all of them alike; figures are medians over rounds.

    python benchmarks/wrk_servers.py                      # ~2.5 minutes on 2 cores
    python benchmarks/wrk_servers.py --duration 5 --rounds 1 --json out.json

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

from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import IMPLS

NAGLE_SUSPECT_RPS = 2000  # ~40 ms per response per connection looks like this

# Defaults of the command line, shared with the scripts that reuse `measure` (wrk_vs_cpu.py).
DURATION_S = 10.0
WARMUP_S = 2.0
CONNECTIONS = 64
SERVER_CPUS = frozenset({0})
CLIENT_CPUS = frozenset({1})


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
    extra = () if metrics else ("--no-metrics",)
    with ServerProcess(impl, extra_args=extra, cpus=args.server_cpus) as server:
        if args.warmup:
            run_wrk(server.url + "/", args.warmup, args.connections, args.client_cpus)
        return run_wrk(server.url + "/", args.duration, args.connections, args.client_cpus)


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
    parser.add_argument("--servers", default=",".join(IMPLS))
    parser.add_argument(
        "--duration", type=float, default=DURATION_S, help="seconds per measurement"
    )
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--server-cpus", type=_cpus, default=set(SERVER_CPUS))
    parser.add_argument("--client-cpus", type=_cpus, default=set(CLIENT_CPUS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    impls = args.servers.split(",")
    if unknown := set(impls) - set(IMPLS):
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    check_machine(parser, args)

    runs: dict[tuple[str, bool], list[WrkResult]] = {}
    for round_no in range(1, args.rounds + 1):
        for impl in impls:
            for metrics in (True, False):
                result = measure(impl, metrics, args)
                runs.setdefault((impl, metrics), []).append(result)
                state = "on " if metrics else "off"
                print(
                    f"round {round_no} {impl:<8} metrics {state} "
                    f"{result.requests_per_s:>9.0f} req/s  p99 {result.p99_ms:6.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )

    def median(impl: str, metrics: bool, field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs[(impl, metrics)])

    reference = median("aiohttp", True, "requests_per_s") if "aiohttp" in impls else None
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration:g}s GET /, server on CPU "
        f"{sorted(args.server_cpus)}, wrk on CPU {sorted(args.client_cpus)}, "
        f"median of {args.rounds} round(s)\n"
    )
    print(
        f"{'server':<8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'vs aiohttp':>10} "
        f"{'req/s off':>10} {'telemetry cost':>14} errors"
    )
    summary = {}
    for impl in impls:
        rps_on = median(impl, True, "requests_per_s")
        rps_off = median(impl, False, "requests_per_s")
        cost = 1 - rps_on / rps_off
        errors = sum(r.errors for key in ((impl, True), (impl, False)) for r in runs[key])
        ratio = f"{rps_on / reference:.2f}x" if reference else "-"
        note = "  <- Nagle stall? (TCP_NODELAY)" if rps_on < NAGLE_SUSPECT_RPS else ""
        print(
            f"{impl:<8} {rps_on:>9.0f} {median(impl, True, 'p50_ms'):>7.2f} "
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
                "metrics_on": [asdict(r) for r in runs[(impl, True)]],
                "metrics_off": [asdict(r) for r in runs[(impl, False)]],
            },
        }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
