"""Locust users for the stackbench scenarios: a closed model (Locust's FastHttpUser, each user
sending back to back) and an open model of our own (arrivals on a fixed schedule).

Locust only caps throughput (`constant_throughput`): when the server stalls, its users wait,
send less, and the stall disappears from the latency figures (coordinated omission). The open
model starts every request at its scheduled time whether or not earlier ones have returned,
measures latency from that intended start, and counts arrivals it could not send.

Configuration comes from the environment (STACKBENCH_*, listed in loadtest/driver/settings.py),
so the same Locust file serves the web UI, headless runs, master/worker setups and
`stackbench run`.
"""

from __future__ import annotations

import ipaddress
import itertools
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

from loadtest.driver import client_metrics, settings
from loadtest.driver.scenarios import Request, Scenario, get_scenario
from loadtest.driver.settings import ConfigError


@dataclass(frozen=True)
class Target:
    name: str
    url: str


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


class _Targets:
    """Hands users their target in turn, so each server gets the same share of the load."""

    def __init__(self) -> None:
        self._turn = itertools.count()
        self.targets: list[Target] = []

    def configure(self, spec: str) -> None:
        self.targets = parse_targets(spec, settings.read().allow_remote)
        for target in self.targets:
            client_metrics.touch_target(target.name)

    def next(self, environment: Environment) -> Target:
        if not self.targets:
            # Configured here, not only at `init`: a forked worker may be told to spawn users
            # before its init listeners have run, and the host may only arrive with the start.
            self.configure(settings.read().targets or environment.host or "")
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

    def on_start(self) -> None:
        if self.scenario.stagger_seconds:
            gevent.sleep(random.uniform(0, self.scenario.stagger_seconds))

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
        config = settings.read()
        self.rate = config.rate
        self.max_in_flight = config.max_in_flight
        connections = config.connections
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


def scenario_classes(name: str) -> tuple[type[User], type[LoadTestShape] | None]:
    """The user class (and step shape, if asked for) that a Locust file for `name` exposes."""
    try:
        scenario = get_scenario(name)
        config = settings.read()
    except ValueError as exc:  # ConfigError included
        print(f"stackbench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    client_metrics.name_scenario(scenario.name)

    @events.init.add_listener
    def _setup(environment: Environment, **_: object) -> None:
        client_metrics.install(environment)
        if config.targets:
            try:
                TARGETS.configure(config.targets)
            except ConfigError as exc:
                print(f"stackbench: error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None

    base = ClosedModelUser if config.model == "closed" else OpenModelUser
    user = type(f"{name}_{config.model}", (base,), {"scenario": scenario, "__module__": __name__})
    shape = None
    if config.steps:
        # In the open model each user is one arrival stream: the scenario's rate steps
        # become stream counts at STACKBENCH_RATE each.
        levels = config.levels or scenario.user_steps
        if config.model == "open" and not config.levels:
            levels = tuple(max(1, round(r / config.rate)) for r in scenario.rate_steps)
        shape = type(
            f"{name}_steps",
            (StepShape,),
            {"levels": levels, "step_seconds": config.step_seconds, "__module__": __name__},
        )
    return user, shape
