"""The STACKBENCH_* environment variables: how `stackbench run` (or a person, or compose)
configures the Locust side. Named and read here only; the Locust side reads them through
`read()`, the orchestrator writes them through `as_environment()`.

    STACKBENCH_TARGETS             name=url,... (default: Locust's --host, named by host:port)
    STACKBENCH_ALLOW_REMOTE        1 to allow targets that are not loopback addresses
    STACKBENCH_MODEL               closed (default) | open
    STACKBENCH_RATE                open model: arrivals per second per user (default 50)
    STACKBENCH_MAX_IN_FLIGHT       open model: per user; arrivals beyond it are dropped (1000)
    STACKBENCH_CONNECTIONS         open model: connections per user (default 32); an arrival
                                   that finds all busy waits, and the wait counts in its latency
    STACKBENCH_SHAPE               steps: step through the load levels (default: none; users
                                   and spawn rate come from the command line or web UI)
    STACKBENCH_STEP_SECONDS        seconds per step with STACKBENCH_SHAPE=steps (default 10)
    STACKBENCH_LEVELS              users (open model: streams) per step, e.g. 8,32,128
                                   (default: the scenario's own levels)
    STACKBENCH_CLIENT_METRICS_PORT where the first Locust process serves /metrics and /latency
                                   (default 9646; taken, as by another process: the next free
                                   port, printed; 0: any free port)
    STACKBENCH_CLIENT_METRICS_HOST the address it binds (default 127.0.0.1; 0.0.0.0 where
                                   Prometheus scrapes from another host or container)

The README's table of these variables is checked against this module by the tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MODELS", "ConfigError", "DriverSettings", "as_environment", "read"]

TARGETS = "STACKBENCH_TARGETS"
ALLOW_REMOTE = "STACKBENCH_ALLOW_REMOTE"
MODEL = "STACKBENCH_MODEL"
RATE = "STACKBENCH_RATE"
MAX_IN_FLIGHT = "STACKBENCH_MAX_IN_FLIGHT"
CONNECTIONS = "STACKBENCH_CONNECTIONS"
SHAPE = "STACKBENCH_SHAPE"
STEP_SECONDS = "STACKBENCH_STEP_SECONDS"
LEVELS = "STACKBENCH_LEVELS"
CLIENT_METRICS_PORT = "STACKBENCH_CLIENT_METRICS_PORT"
CLIENT_METRICS_HOST = "STACKBENCH_CLIENT_METRICS_HOST"

MODELS = ("closed", "open")
DEFAULT_CLIENT_METRICS_PORT = 9646
DEFAULT_CLIENT_METRICS_HOST = "127.0.0.1"
# What each Locust process prints once its metrics endpoint listens; `stackbench run` and
# `stackbench live` read the port from it.
METRICS_ANNOUNCE = "stackbench client metrics ({role}) on http://{host}:{port}/metrics"
METRICS_ANNOUNCE_PATTERN = re.compile(
    r"stackbench client metrics \((\w+)\) on http://([^\s/]+):(\d+)/metrics"
)


class ConfigError(ValueError):
    """A variable is set to something the Locust side cannot use (one line for the user)."""


@dataclass(frozen=True)
class DriverSettings:
    targets: str = ""
    allow_remote: bool = False
    model: str = "closed"
    rate: float = 50.0
    max_in_flight: int = 1000
    connections: int = 32
    steps: bool = False
    step_seconds: float = 10.0
    levels: tuple[int, ...] = ()
    client_metrics_port: int = DEFAULT_CLIENT_METRICS_PORT
    client_metrics_host: str = DEFAULT_CLIENT_METRICS_HOST


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r}: expected a number from {low:g} to {high:g}")
    return value


def _levels(env: Mapping[str, str]) -> tuple[int, ...]:
    raw = env.get(LEVELS, "")
    try:
        levels = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        levels = (0,)
    if any(level < 1 for level in levels):
        raise ConfigError(f"{LEVELS}={raw!r}: expected users per step, e.g. 8,32,128")
    return levels


def read(env: Mapping[str, str] | None = None) -> DriverSettings:
    """The settings in `env` (default: this process's environment), or ConfigError."""
    env = os.environ if env is None else env
    model = env.get(MODEL, "closed")
    if model not in MODELS:
        raise ConfigError(f"{MODEL}={model!r}: expected closed or open")
    shape = env.get(SHAPE, "")
    if shape not in ("", "steps"):
        raise ConfigError(f"{SHAPE}={shape!r}: expected steps or nothing")
    return DriverSettings(
        targets=env.get(TARGETS, ""),
        allow_remote=env.get(ALLOW_REMOTE) == "1",
        model=model,
        rate=_number(env, RATE, 50, 0.1, 100_000),
        max_in_flight=int(_number(env, MAX_IN_FLIGHT, 1000, 1, 100_000)),
        connections=int(_number(env, CONNECTIONS, 32, 1, 10_000)),
        steps=shape == "steps",
        step_seconds=_number(env, STEP_SECONDS, 10, 1, 3600),
        levels=_levels(env),
        client_metrics_port=int(
            _number(env, CLIENT_METRICS_PORT, DEFAULT_CLIENT_METRICS_PORT, 0, 65535)
        ),
        client_metrics_host=env.get(CLIENT_METRICS_HOST) or DEFAULT_CLIENT_METRICS_HOST,
    )


def as_environment(settings: DriverSettings) -> dict[str, str]:
    """The variables that give a Locust process `settings` (the inverse of `read`)."""
    env = {
        TARGETS: settings.targets,
        MODEL: settings.model,
        RATE: f"{settings.rate:g}",
        MAX_IN_FLIGHT: str(settings.max_in_flight),
        CONNECTIONS: str(settings.connections),
        STEP_SECONDS: f"{settings.step_seconds:g}",
        CLIENT_METRICS_PORT: str(settings.client_metrics_port),
        CLIENT_METRICS_HOST: settings.client_metrics_host,
    }
    if settings.allow_remote:
        env[ALLOW_REMOTE] = "1"
    if settings.steps:
        env[SHAPE] = "steps"
    if settings.levels:
        env[LEVELS] = ",".join(map(str, settings.levels))
    return env
