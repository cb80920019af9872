"""The rate driver: `stackbench-rate` (stackbench_rate.c beside this file), an HTTP/1.1 load
generator in C that is as fast as wrk, closed-loop or open-loop at a fixed offered rate with
latency corrected for coordinated omission. This module is its Python edge, free of
processes: the command line for a step, and the lines it prints turned into records.

The binary is built like the native servers (servers/native: cached by a hash of the source,
prebuilt in the Docker image); `binary()` finds or builds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loadtest.driver.scenarios import Request, Scenario
from loadtest.records import ClientSnapshot, RouteHistograms

__all__ = [
    "ERROR_KINDS",
    "DriverLine",
    "RateStep",
    "binary",
    "command",
    "parse_line",
    "request_specs",
]

ERROR_KINDS = ("connect", "reset", "timeout", "status", "parse")


@dataclass(frozen=True)
class RateStep:
    """One step of the driver: `connections` keep-alive connections for `seconds`, closed loop
    (`rate` None) or open loop at `rate` requests per second."""

    connections: int
    seconds: float
    rate: float | None = None
    poisson: bool = False
    common: bool = False  # a rate offered to every server of the run
    capacity_fraction: float | None = None  # else: this fraction of the server's capacity

    @property
    def level(self) -> float:
        return self.rate if self.rate is not None else float(self.connections)


@dataclass(frozen=True)
class DriverLine:
    """One line of the driver's output: cumulative counts since the step began, the latencies
    of the requests completed since the previous line, and (on the last) its own CPU."""

    final: bool
    elapsed: float
    client: ClientSnapshot
    latency: dict[str, RouteHistograms]
    cpu_seconds: float | None


def binary() -> Path:
    """The driver's binary (built on first use; raises servers.native.NativeBuildError)."""
    from servers.native import RATE_DRIVER
    from servers.native import binary as native_binary

    return native_binary(RATE_DRIVER)


def _spec(request: Request) -> str:
    fields = [request.route, request.method, request.target, str(request.weight)]
    if request.body is not None:
        fields += [request.content_type or "application/octet-stream", request.body.hex()]
    if any("\t" in field for field in fields):
        raise ValueError(f"a tab in request {request.target!r}")
    return "\t".join(fields)


def request_specs(scenario: Scenario) -> list[str]:
    """The driver's --request arguments for what the scenario table says the scenario sends."""
    return [_spec(request) for request in scenario.requests]


def command(
    driver: Path,
    host: str,
    port: int,
    step: RateStep,
    scenario: Scenario,
    interval_s: float,
    seed: int = 1,
) -> list[str]:
    argv = [
        str(driver), "--host", host, "--port", str(port),
        "--connections", str(step.connections), "--duration", f"{step.seconds:g}",
        "--interval", f"{interval_s:g}", "--seed", str(seed),
    ]  # fmt: skip
    if step.rate is not None:
        argv += ["--rate", f"{step.rate:g}"]
        if step.poisson:
            argv.append("--poisson")
    for spec in request_specs(scenario):
        argv += ["--request", spec]
    return argv


def parse_line(text: str, connections: int) -> DriverLine:
    """One JSON line of the driver; ValueError if it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("type") not in ("interval", "end"):
        raise ValueError(f"not a driver line: {text[:80]!r}")
    errors = {kind: float(data["errors"][kind]) for kind in ERROR_KINDS}
    cpu = None
    if data["type"] == "end":
        cpu = float(data["cpu_user_s"]) + float(data["cpu_system_s"])
    return DriverLine(
        final=data["type"] == "end",
        elapsed=float(data["elapsed"]),
        client=ClientSnapshot(
            users=float(connections),
            intended=float(data["intended"]),
            dropped=float(data["dropped"]),
            errors=sum(errors.values()),
            completed=float(data["completed"]),
            error_kinds=errors,
        ),
        latency={
            route: RouteHistograms(latency=item["latency"], service=item["service"])
            for route, item in data["routes"].items()
        },
        cpu_seconds=cpu,
    )
