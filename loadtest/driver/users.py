"""Locust users for the stackbench scenarios: a closed model (Locust's FastHttpUser, each user
sending back to back) and an open model of our own (arrivals on a fixed schedule).

Locust only caps throughput (`constant_throughput`): when the server stalls, its users wait,
send less, and the stall disappears from the latency figures (coordinated omission). The open
model starts every request at its scheduled time whether or not earlier ones have returned,
measures latency from that intended start, and counts arrivals it could not send.

Configuration comes from the environment, so the same Locust file serves the web UI, headless
runs, master/worker setups and `stackbench run`:

    STACKBENCH_TARGETS        name=url,... (default: Locust's --host, named by its host:port)
    STACKBENCH_ALLOW_REMOTE   1 to allow targets that are not loopback addresses
    STACKBENCH_MODEL          closed (default) | open
    STACKBENCH_RATE           open model: arrivals per second per user (default 50)
    STACKBENCH_MAX_IN_FLIGHT  open model: per user; arrivals beyond it are dropped (default 1000)
    STACKBENCH_CONNECTIONS    open model: connections per user (default 32); an arrival that
                              finds all busy waits, and the wait counts in its latency
    STACKBENCH_SHAPE          steps: step through the scenario's load levels (default: none,
                              users and spawn rate come from the command line or web UI)
    STACKBENCH_STEP_SECONDS   seconds per step with STACKBENCH_SHAPE=steps (default 10)
    STACKBENCH_LEVELS         users (open model: streams) per step, e.g. 8,32,128 (default:
                              the scenario's own levels)
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import gevent
import gevent.pool
import gevent.queue
from geventhttpclient import HTTPClient
from locust import FastHttpUser, LoadTestShape, User, constant, events, task
from locust.env import Environment

from loadtest.driver import client_metrics
from loadtest.driver.scenarios import Request, Scenario, get_scenario

MODELS = ("closed", "open")


@dataclass(frozen=True)
class Target:
    name: str
    url: str


class ConfigError(ValueError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: not resolved here, so it is not assumed to be local


def parse_targets(spec: str, allow_remote: bool = False) -> list[Target]:
    """`gevent=http://h:1,trio=http://h:2` (or bare URLs, named by host:port). Load goes to
    loopback addresses only unless `allow_remote` (STACKBENCH_ALLOW_REMOTE=1) says otherwise."""
    targets = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, url = item.rpartition("=") if "=" in item else ("", "", item)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"target {item!r} is not name=http://host:port")
        if not allow_remote and not is_loopback(parts.hostname or ""):
            raise ConfigError(
                f"target {url} is not a loopback address; to load another host on purpose, "
                "set STACKBENCH_ALLOW_REMOTE=1"
            )
        targets.append(Target(name or parts.netloc, url.rstrip("/")))
    if not targets:
        raise ConfigError("no targets: set STACKBENCH_TARGETS or pass --host")
    return targets


def _env_number(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r}: expected a number from {low:g} to {high:g}")
    return value


class _Targets:
    """Hands users their target in turn, so each server gets the same share of the load."""

    def __init__(self) -> None:
        self._turn = itertools.count()
        self.targets: list[Target] = []

    def configure(self, spec: str) -> None:
        allow_remote = os.environ.get("STACKBENCH_ALLOW_REMOTE") == "1"
        self.targets = parse_targets(spec, allow_remote)
        for target in self.targets:
            client_metrics.touch_target(target.name)

    def next(self, environment: Environment) -> Target:
        if not self.targets:
            # Configured here, not only at `init`: a forked worker may be told to spawn users
            # before its init listeners have run, and the host may only arrive with the start.
            self.configure(os.environ.get("STACKBENCH_TARGETS") or environment.host or "")
        return self.targets[next(self._turn) % len(self.targets)]


TARGETS = _Targets()


def _pick(requests: tuple[Request, ...]) -> Request:
    return random.choices(requests, weights=[r.weight for r in requests])[0]


def _headers(request: Request) -> dict[str, str]:
    return {"Content-Type": request.content_type} if request.content_type else {}


class ClosedModelUser(FastHttpUser):
    """N users, each sending its next request as soon as the last one returned."""

    abstract = True
    scenario: Scenario
    wait_time = constant(0)
    host = "http://configured-per-user"  # replaced per instance by the user's target

    def __init__(self, environment: Environment) -> None:
        self.target = TARGETS.next(environment)
        self.host = self.target.url
        super().__init__(environment)

    def context(self) -> dict:
        return {"target": self.target.name}

    @task
    def send(self) -> None:
        request = _pick(self.scenario.requests)
        self.client.request(
            request.method,
            request.target,
            data=request.body,
            headers=_headers(request),
            name=f"{self.target.name} {request.route}",
            context={"route": request.route},
        )


class OpenModelUser(User):
    """One arrival stream of STACKBENCH_RATE requests per second at one target."""

    abstract = True
    scenario: Scenario
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.target = TARGETS.next(environment)
        self.rate = _env_number("STACKBENCH_RATE", 50, 0.1, 100_000)
        self.max_in_flight = int(_env_number("STACKBENCH_MAX_IN_FLIGHT", 1000, 1, 100_000))
        connections = int(_env_number("STACKBENCH_CONNECTIONS", 32, 1, 10_000))
        # Like wrk2: a fixed set of connections. An arrival that finds them all busy waits in
        # the driver, and that wait is part of its latency (it was due to start earlier).
        self.connections: gevent.queue.Queue = gevent.queue.Queue()
        for _ in range(connections):
            self.connections.put(
                HTTPClient.from_url(
                    self.target.url, concurrency=1, connection_timeout=10, network_timeout=120
                )
            )

    @task
    def arrive_on_schedule(self) -> None:
        in_flight = gevent.pool.Pool(self.max_in_flight)
        intended = client_metrics.INTENDED.labels(self.target.name, self.scenario.name)
        dropped = client_metrics.DROPPED.labels(self.target.name, self.scenario.name)
        rate_gauge = client_metrics.INTENDED_RATE.labels(self.scenario.name)
        rate_gauge.inc(self.rate)
        started = time.perf_counter()
        try:
            for arrival in itertools.count():
                due = started + arrival / self.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)
                intended.inc()
                if in_flight.full():
                    dropped.inc()  # counted, never silently skipped
                    continue
                in_flight.spawn(self._send, _pick(self.scenario.requests), due)
        finally:
            rate_gauge.dec(self.rate)
            in_flight.kill(block=False)

    def _send(self, request: Request, due: float) -> None:
        http = self.connections.get()
        sent = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = http.request(
                request.method, request.target, body=request.body, headers=_headers(request)
            )
            length = len(response.read())
            if response.status_code >= 400:
                exception = RuntimeError(f"HTTP {response.status_code}")
        except Exception as exc:  # a refused or reset connection is a result, not a crash
            exception = exc
        finally:
            self.connections.put(http)
        done = time.perf_counter()
        self.environment.events.request.fire(
            request_type=request.method,
            name=f"{self.target.name} {request.route}",
            response_time=(done - due) * 1000,  # from the intended start
            response_length=length,
            response=None,
            exception=exception,
            context={
                "target": self.target.name,
                "route": request.route,
                "service_ms": (done - sent) * 1000,
                "open_model": True,
            },
            start_time=time.time() - (done - due),
            url=self.target.url + request.target,
        )

    def on_stop(self) -> None:
        while not self.connections.empty():
            self.connections.get().close()


class StepShape(LoadTestShape):
    """Steps through the scenario's levels (users, or arrival streams in the open model)."""

    abstract = True
    levels: tuple[int, ...] = ()
    step_seconds = 10.0

    def tick(self) -> tuple[int, float] | None:
        step = int(self.get_run_time() // self.step_seconds)
        if step >= len(self.levels):
            return None
        users = self.levels[step]
        return users, max(users, 1)  # reach each level within about a second


def _env_levels() -> tuple[int, ...]:
    raw = os.environ.get("STACKBENCH_LEVELS", "")
    try:
        levels = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        levels = (0,)
    if any(level < 1 for level in levels):
        raise ConfigError(f"STACKBENCH_LEVELS={raw!r}: expected users per step, e.g. 8,32,128")
    return levels


def scenario_classes(name: str) -> tuple[type[User], type[LoadTestShape] | None]:
    """The user class (and step shape, if asked for) that a Locust file for `name` exposes."""
    try:
        scenario = get_scenario(name)
        model = os.environ.get("STACKBENCH_MODEL", "closed")
        if model not in MODELS:
            raise ConfigError(f"STACKBENCH_MODEL={model!r}: expected closed or open")
        shape_name = os.environ.get("STACKBENCH_SHAPE", "")
        if shape_name not in ("", "steps"):
            raise ConfigError(f"STACKBENCH_SHAPE={shape_name!r}: expected steps or nothing")
        step_seconds = _env_number("STACKBENCH_STEP_SECONDS", 10, 1, 3600)
        _env_levels()
    except (ConfigError, ValueError) as exc:
        print(f"stackbench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    client_metrics.name_scenario(scenario.name)

    @events.init.add_listener
    def _setup(environment: Environment, **_: object) -> None:
        client_metrics.install(environment)
        spec = os.environ.get("STACKBENCH_TARGETS")
        if spec:
            try:
                TARGETS.configure(spec)
            except ConfigError as exc:
                print(f"stackbench: error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None

    base = ClosedModelUser if model == "closed" else OpenModelUser
    user = type(f"{name}_{model}", (base,), {"scenario": scenario, "__module__": __name__})
    shape = None
    if shape_name == "steps":
        # In the open model each user is one arrival stream: the scenario's rate steps
        # become stream counts at STACKBENCH_RATE each.
        levels = _env_levels() or scenario.user_steps
        if model == "open" and not _env_levels():
            rate = _env_number("STACKBENCH_RATE", 50, 0.1, 100_000)
            levels = tuple(max(1, round(r / rate)) for r in scenario.rate_steps)
        shape = type(
            f"{name}_steps",
            (StepShape,),
            {"levels": levels, "step_seconds": step_seconds, "__module__": __name__},
        )
    return user, shape
