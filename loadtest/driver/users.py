"""Locust users for the stackbench scenarios: a closed model (Locust's FastHttpUser, each user
sending back to back) and an open model of our own (arrivals on a fixed schedule).

Locust only caps throughput (`constant_throughput`): when the server stalls, its users wait,
send less, and the stall disappears from the latency figures (coordinated omission). The open
model starts every request at its scheduled time whether or not earlier ones have returned,
measures latency from that intended start, and counts arrivals it could not send.

Each Locust file defines one user class per scenario (`class PlaintextUser(StackbenchUser)`),
so `locust -f` takes one file, a comma list or the folder, and `--list` and the web UI's class
picker name them. Configuration comes from the environment (STACKBENCH_*, listed in
loadtest/driver/settings.py), so the same files serve the web UI, headless runs, master/worker
setups and `stackbench run`. The hooks below are registered once per process, however many
files are loaded.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar, NoReturn

import gevent
import gevent.event
import gevent.pool
import gevent.queue
from flask import jsonify, request
from geventhttpclient import HTTPClient
from locust import FastHttpUser, LoadTestShape, User, constant, events, task
from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING, WorkerRunner

from loadtest.driver import client_metrics, settings
from loadtest.driver.levels import cap_levels, step_levels
from loadtest.driver.scenarios import Request, Scenario, get_scenario
from loadtest.driver.settings import ConfigError
from loadtest.driver.targets import Target, chosen_targets, default_host
from servers.contract import IMPL_HEADER

__all__ = ["ClosedModelUser", "OpenModelUser", "StackbenchUser", "StepShape", "step_shape"]

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0


def usage_error(message: str) -> NoReturn:
    """One line, exit 2: how every refused setting ends a Locust process."""
    print(f"stackbench: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


try:
    CONFIG = settings.read()
except ConfigError as exc:
    usage_error(str(exc))


def _impl_of(url: str) -> str | None:
    """The name the server at `url` gives itself (its X-Stackbench-Impl header)."""
    client = HTTPClient.from_url(
        url, concurrency=1, connection_timeout=PROBE_TIMEOUT_S, network_timeout=PROBE_TIMEOUT_S
    )
    try:
        response = client.get("/healthz")
        response.read()
        impl = response.get(IMPL_HEADER)
        return impl if isinstance(impl, str) else None
    finally:
        client.close()


class _Targets:
    """The servers of the current test, handed to users in turn (each server gets the same
    share of the load), each named as the server names itself: one server, one name, whatever
    address it was reached at."""

    def __init__(self) -> None:
        self.targets: list[Target] = []
        self._turn = itertools.count()
        self._names: dict[str, gevent.event.AsyncResult] = {}

    def choose(self, host: str | None) -> None:
        """The servers a test started with `host` loads; ConfigError if none or refused."""
        self.targets = chosen_targets(host, CONFIG.targets, CONFIG.allow_remote)
        self._turn = itertools.count()
        self._names = {}

    def next(self, environment: Environment) -> Target:
        if not self.targets:  # a user spawned outside a test start (a library caller)
            self.choose(environment.host)
        return self.targets[next(self._turn) % len(self.targets)]

    def name(self, target: Target) -> str:
        """Asked of the server once per test; users that ask meanwhile wait for the answer."""
        answer = self._names.get(target.url)
        if answer is None:
            answer = self._names[target.url] = gevent.event.AsyncResult()
            answer.set(self._ask(target))
        return answer.get()

    def _ask(self, target: Target) -> str:
        try:
            impl = _impl_of(target.url)
        except Exception as exc:  # down or not HTTP: the load itself will show the errors
            logger.warning("%s did not answer (%s): its rows are named %s",
                           target.url, exc, target.given_name)  # fmt: skip
            return target.given_name
        if impl is None:
            logger.warning("%s sends no %s header: its rows are named %s",
                           target.url, IMPL_HEADER, target.given_name)  # fmt: skip
            return target.given_name
        taken = {a.value for url, a in self._names.items() if url != target.url and a.ready()}
        if impl in taken:
            logger.warning("%s is %s like another target: its rows are named %s",
                           target.url, impl, target.given_name)  # fmt: skip
            return target.given_name
        return impl


TARGETS = _Targets()
# Locust's user count for the step shape's cap: -u at start, the web UI's field at each start.
_requested_users: int | None = None


def _pick(requests: tuple[Request, ...]) -> Request:
    return random.choices(requests, weights=[r.weight for r in requests])[0]


def _headers(request: Request) -> dict[str, str]:
    return {"Content-Type": request.content_type} if request.content_type else {}


class _ScenarioUser:
    """What both models share: a subclass names its scenario, which is looked up in the
    scenario table; the Host that Locust's web UI starts with."""

    scenario_name: ClassVar[str] = ""
    scenario: ClassVar[Scenario]
    host = default_host(CONFIG.targets)
    target: Target
    server_name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("scenario_name"):
            try:
                cls.scenario = get_scenario(cls.scenario_name)
            except ValueError as exc:
                usage_error(str(exc))

    def _meet_server(self) -> None:
        self.server_name = TARGETS.name(self.target)
        client_metrics.touch_target(self.server_name, self.scenario.name)


class ClosedModelUser(_ScenarioUser, FastHttpUser):
    """N users, each sending its next request as soon as the last one returned."""

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        self.target = TARGETS.next(environment)
        self.host = self.target.url
        self.server_name = self.target.given_name
        super().__init__(environment)

    def context(self) -> dict:
        return {"target": self.server_name, "scenario": self.scenario.name}

    def on_start(self) -> None:
        self._meet_server()
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
            name=f"{self.server_name} {request.route}",
            context={"route": request.route},
        )


class OpenModelUser(_ScenarioUser, User):
    """One arrival stream of STACKBENCH_RATE requests per second at one target."""

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.target = TARGETS.next(environment)
        self.server_name = self.target.given_name
        self.rate = CONFIG.rate
        self.max_in_flight = CONFIG.max_in_flight
        # Like wrk2: a fixed set of connections. An arrival that finds them all busy waits in
        # the driver, and that wait is part of its latency (it was due to start earlier).
        self.connections: gevent.queue.Queue = gevent.queue.Queue()
        for _ in range(CONFIG.connections):
            self.connections.put(
                HTTPClient.from_url(
                    self.target.url, concurrency=1, connection_timeout=10, network_timeout=120
                )
            )

    def on_start(self) -> None:
        self._meet_server()

    @task
    def arrive_on_schedule(self) -> None:
        in_flight = gevent.pool.Pool(self.max_in_flight)
        intended = client_metrics.INTENDED.labels(self.server_name, self.scenario.name)
        dropped = client_metrics.DROPPED.labels(self.server_name, self.scenario.name)
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
            name=f"{self.server_name} {request.route}",
            response_time=(done - due) * 1000,  # from the intended start
            response_length=length,
            response=None,
            exception=exception,
            context={
                "target": self.server_name,
                "scenario": self.scenario.name,
                "route": request.route,
                "service_ms": (done - sent) * 1000,
            },
            start_time=time.time() - (done - due),
            url=self.target.url + request.target,
        )

    def on_stop(self) -> None:
        while not self.connections.empty():
            self.connections.get().close()


# What a Locust file's user class derives from: the model STACKBENCH_MODEL names.
StackbenchUser: type[ClosedModelUser] | type[OpenModelUser] = (
    ClosedModelUser if CONFIG.model == "closed" else OpenModelUser
)


class StepShape(LoadTestShape):
    """Steps through the scenario's levels (users, or arrival streams in the open model), up
    to Locust's user count when one is given (-u, or the web UI's field)."""

    abstract = True
    use_common_options = True  # the user count caps the levels; the web UI shows its field
    levels: ClassVar[tuple[int, ...]] = ()
    step_seconds: ClassVar[float] = 10.0
    _running: tuple[int, ...] = ()

    def reset_time(self) -> None:
        super().reset_time()
        self._running, note = cap_levels(self.levels, _requested_users)
        if note:
            logger.warning("stackbench: %s", note)

    def tick(self) -> tuple[int, float] | None:
        levels = self._running or self.levels
        step = int(self.get_run_time() // self.step_seconds)
        if step >= len(levels):
            return None
        users = levels[step]
        return users, max(users, 1)  # reach each level within about a second


def step_shape(user: type[_ScenarioUser]) -> type[StepShape] | None:
    """The step shape through `user`'s scenario levels, if STACKBENCH_SHAPE=steps asks for it."""
    if not CONFIG.steps:
        return None
    name = user.__name__.removesuffix("User") + "Shape"
    return type(
        name,
        (StepShape,),
        {
            "levels": step_levels(user.scenario, CONFIG),
            "step_seconds": CONFIG.step_seconds,
            "__module__": user.__module__,
        },
    )


@events.init.add_listener
def _on_init(environment: Environment, **_: object) -> None:
    global _requested_users
    scenarios = {
        name: cls.scenario.name
        for name, cls in (environment.available_user_classes or {}).items()
        if issubclass(cls, _ScenarioUser)
    }
    options = environment.parsed_options
    _requested_users = getattr(options, "num_users", None)
    worker = isinstance(environment.runner, WorkerRunner)  # given its host with each start
    if not worker and options is not None and (options.headless or options.autostart):
        try:  # refused before anything starts
            TARGETS.choose(environment.host)
        except ConfigError as exc:
            usage_error(str(exc))
    try:
        client_metrics.install(environment, scenarios)
    except OSError as exc:
        print(f"stackbench: error: client metrics: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    if environment.web_ui is not None:
        _guard_swarm(environment)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: object) -> None:
    """Each test loads the host it was started with (a new one in the web UI included)."""
    try:
        TARGETS.choose(environment.host)
    except ConfigError as exc:  # only where no check ran before: a worker told by a master
        logger.error("stackbench: %s", exc)
        TARGETS.targets = []


def _guard_swarm(environment: Environment) -> None:
    """The web UI's start (POST /swarm) refuses a host it cannot load, with the reason shown
    in the UI, and stops any test running; otherwise Locust goes on as usual. Wrapped in the
    web UI's own authentication, so that a refusal needs the rights a start needs."""
    web_ui = environment.web_ui
    assert web_ui is not None
    endpoint = next(e for e in web_ui.app.view_functions if e.rpartition(".")[2] == "swarm")
    start = web_ui.app.view_functions[endpoint]

    @functools.wraps(start)
    def swarm(*args: object, **kwargs: object) -> Any:
        global _requested_users
        users = request.form.get("user_count", "")
        if users.isdigit():
            _requested_users = int(users)
        host = request.form.get("host", environment.host)
        try:
            chosen_targets(host, CONFIG.targets, CONFIG.allow_remote)
        except ConfigError as exc:
            runner = environment.runner
            if runner is not None and runner.state in (STATE_SPAWNING, STATE_RUNNING):
                runner.stop()
            logger.error("stackbench: refused to start: %s", exc)
            return jsonify({"success": False, "message": str(exc), "host": environment.host})
        return start(*args, **kwargs)

    guarded: Callable = web_ui.auth_required_if_enabled(swarm)
    web_ui.app.view_functions[endpoint] = guarded
