"""`stackbench run`: each server in turn on its own CPU, each scenario driven on the other CPU
by its driver (Locust, the rate driver, or the held-connection probe: drivers.py), everything
sampled to disk as it happens, then results.json and report.html. This module plans the steps
and sequences them; the drivers run them."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from loadtest import rate
from loadtest.driver.scenarios import SCENARIOS
from loadtest.orchestrator import held, locust_driver, rate_driver
from loadtest.orchestrator.drivers import Job
from loadtest.orchestrator.profiles import Profile
from loadtest.orchestrator.remote import RemoteServer, process_figures
from loadtest.orchestrator.sampling import (
    CPU_TICK_S,
    SAMPLE_INTERVAL_S,
    LagReader,
    SampleLog,
    cpu_ns_seconds,
    cpu_seconds,
    scrape,
)
from loadtest.orchestrator.serverproc import ServerProcess, ServerStartError
from loadtest.records import (
    Environment,
    Event,
    HeldProbe,
    IdleProbe,
    Pinning,
    PlannedStep,
    ProfileInfo,
    Provenance,
    RunHeader,
    RunKey,
    ScenarioSpec,
    spec_name,
    utc_iso,
)
from loadtest.reporting import report, results
from servers.contract import TIERS
from servers.native import NativeBuildError

FD_HEADROOM = 256
OPEN_MODEL_SCENARIO = "starvation"  # the open-model pass: where stalls hide from closed loops
HELD_SCENARIO = "io_hold"  # followed by memory per request measured without Locust
UPSTREAM_IMPL = "aiohttp"  # what `/upstream` calls in a run (on uvloop): the cheapest server
IDLE_SECONDS = 1.0  # how long each server's idle CPU (timers, our scrapes) is measured
RATE_SCENARIO = "rate"  # capacity first (for every server: the common rates need them all)
# The rate sweep's common rates: the 1-2-5 series, at most this fraction of the slowest
# server's capacity, so that every server is well below its knee there.
COMMON_RATE_CEILING = 0.5


class RunError(Exception):
    """The run cannot start as asked (printed as one line, exit 2)."""


@dataclass(frozen=True)
class Plan:
    servers: tuple[str, ...]
    scenarios: tuple[str, ...]
    profile: Profile
    repeat: int
    out: Path
    remote: tuple[tuple[str, str], ...] = ()  # --target NAME=URL: servers this run does not start
    # --locust-workers N: a Locust master and N worker processes (default: one worker per
    # driver CPU, or a lone Locust process where there is one)
    locust_workers: int | None = None
    slo_ms: float = 10.0  # --slo-ms: the rate sweep's sustainable throughput is read at it

    def scenario_runs(self) -> list[tuple[str, str]]:
        """(scenario, model) pairs, in order: each scenario closed (io_hold followed by its
        held-connection probe, the rate sweep's capacity by its open-loop steps), then the
        open-model pass."""
        runs = []
        for scenario in self.scenarios:
            runs.append((scenario, "closed"))
            if scenario == HELD_SCENARIO:
                runs.append((scenario, "held"))
            if scenario == RATE_SCENARIO:
                runs.append((scenario, "open"))
        if OPEN_MODEL_SCENARIO in self.scenarios:
            runs.append((OPEN_MODEL_SCENARIO, "open"))
        return runs

    def keys(self) -> list[RunKey]:
        return [
            RunKey(server=impl, scenario=scenario, model=model, repeat=repeat)
            for repeat in range(self.repeat)
            for impl in self.servers
            for scenario, model in self.scenario_runs()
        ]

    def levels(self, scenario: str, model: str) -> tuple[int, ...]:
        """Users per level (the rate driver: its connections, in every step)."""
        if model == "open" and scenario != RATE_SCENARIO:
            return (self.profile.open_streams,)
        return self.profile.levels_for(scenario)

    def seconds(self, scenario: str, model: str) -> float:
        if model == "held":
            return held.expected_seconds(self.levels(scenario, model))
        if scenario == RATE_SCENARIO and model == "open":
            steps = self.profile.rate_common + len(self.profile.rate_fractions)
            return steps * self.step_seconds(scenario)
        return len(self.levels(scenario, model)) * self.step_seconds(scenario)

    def capacity_steps(self) -> list[rate.RateStep]:
        return [
            rate.RateStep(connections=c, seconds=self.step_seconds(RATE_SCENARIO))
            for c in self.profile.levels_for(RATE_SCENARIO)
        ]

    def sweep_steps(self, capacity: float | None, slowest: float | None) -> list[rate.RateStep]:
        """The open-loop steps of one server, in increasing rate: the run's common rates (from
        the slowest server's capacity), then fractions of its own capacity."""
        connections = max(self.profile.levels_for(RATE_SCENARIO))
        seconds = self.step_seconds(RATE_SCENARIO)
        steps = [
            rate.RateStep(connections, seconds, rate=value, common=True)
            for value in common_rates(slowest, self.profile.rate_common)
        ]
        if capacity:
            steps += [
                rate.RateStep(connections, seconds, rate=_round_rate(capacity * f),
                              capacity_fraction=f)
                for f in self.profile.rate_fractions
            ]  # fmt: skip
        return sorted(steps, key=lambda step: step.rate or 0.0)

    def step_seconds(self, scenario: str) -> float:
        """The profile's step, or longer where the scenario's requests need it to complete
        inside a step at all (io_hold's 2 s sleeps)."""
        return max(self.profile.step_seconds, SCENARIOS[scenario].min_step_seconds)

    def scenario_specs(self) -> dict[str, ScenarioSpec]:
        specs = {}
        for scenario in self.scenarios:
            sent = SCENARIOS[scenario]
            if scenario == RATE_SCENARIO:
                sent = rate_driver.scenario_for(self.profile.rate_routes)
            specs[scenario] = ScenarioSpec(
                requests=sent.describe(),
                levels=list(self.profile.levels_for(scenario)),
                step_seconds=self.step_seconds(scenario),
                settle_seconds=SCENARIOS[scenario].settle_seconds,
            )
            if scenario == RATE_SCENARIO:
                specs[spec_name(scenario, "open")] = specs[scenario].model_copy(update={
                    "capacity_fractions": list(self.profile.rate_fractions),
                    "common_rates": self.profile.rate_common,
                    "slo_ms": self.slo_ms,
                })  # fmt: skip
        if OPEN_MODEL_SCENARIO in self.scenarios:
            specs[spec_name(OPEN_MODEL_SCENARIO, "open")] = ScenarioSpec(
                requests=SCENARIOS[OPEN_MODEL_SCENARIO].describe(),
                levels=[self.profile.open_streams],
                step_seconds=self.step_seconds(OPEN_MODEL_SCENARIO),
                settle_seconds=SCENARIOS[OPEN_MODEL_SCENARIO].settle_seconds,
                rate_per_stream=self.profile.open_rate_per_stream,
            )
        return specs


def _round_rate(value: float) -> float:
    """Two significant digits: a rate a reader can name."""
    if value <= 0:
        return value
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return round(value / scale) * scale


def common_rates(slowest: float | None, count: int) -> list[float]:
    """`count` rates of the 1-2-5 series offered to every server: the highest at most
    COMMON_RATE_CEILING of the slowest server's capacity, the others below it within a decade
    (two: the highest and a fifth of it)."""
    if not slowest or count < 1:
        return []
    top = COMMON_RATE_CEILING * slowest
    decade = 10 ** math.floor(math.log10(top))
    series = sorted(
        (m * decade * 10**k for k in (-2, -1, 0) for m in (1, 2, 5) if m * decade * 10**k <= top),
        reverse=True,
    )
    chosen = [series[0], series[2]] if count == 2 and len(series) > 2 else series[:count]
    return sorted(chosen)


def cpu_layout() -> tuple[list[int], list[int]]:
    """Server on one CPU, the load generator on all the others (the same one on a 1-CPU
    machine)."""
    cpus = sorted(os.sched_getaffinity(0))
    return [cpus[0]], cpus[1:] or [cpus[0]]


def locust_workers(plan: Plan, driver_cpus: list[int]) -> int:
    """Locust worker processes beside a master, started as separate `locust --worker`
    processes; 0: one Locust process alone, no master."""
    if plan.locust_workers is not None:
        return plan.locust_workers
    return len(driver_cpus) if len(driver_cpus) > 1 else 0


def raise_fd_limit(plan: Plan) -> int:
    """Each held request is a socket in the driver and one in the server."""
    users = max(max(plan.levels(s, m)) for s, m in plan.scenario_runs())
    needed = users + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RunError(
            f"profile {plan.profile.name} holds {users} connections and needs {needed} file "
            f"descriptors, but the hard limit is {hard}: raise it (ulimit -Hn) or pick a "
            "smaller profile"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, 65536)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("gevent", "greenlet", "trio", "h11", "aiohttp", "uvloop", "locust",
                    "prometheus-client", "psutil", "hdrhistogram"):  # fmt: skip
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    # The native tier's compilers, where installed (the servers' crates and Go modules are
    # Debian's: their versions are in each server's stackbench_server_info).
    for name, command, pattern in (
        ("go", ("/usr/bin/go", "version"), r"go(\d+\.\d+(?:\.\d+)?)"),
        ("rustc", ("/usr/bin/rustc", "--version"), r"rustc (\d+\.\d+\.\d+)"),
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            printed = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
            if match := re.search(pattern, printed):
                found[name] = match[1]
    return found


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def environment() -> Environment:
    model = ""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return Environment(
        platform=platform.platform(),
        kernel=platform.release(),
        cpu_model=model,
        cpus=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        cpu_governor=_read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        load_average_1m=round(os.getloadavg()[0], 2),
        python=platform.python_version(),
        clock_tick_s=CPU_TICK_S,
    )


def provenance() -> Provenance:
    root = Path(__file__).resolve().parent.parent.parent
    commit, dirty = None, None
    if (root / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                  capture_output=True, text=True, timeout=10)  # fmt: skip
            if head.returncode == 0:
                commit = head.stdout.strip()
                status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                        capture_output=True, text=True, timeout=10)  # fmt: skip
                dirty = bool(status.stdout.strip())
    try:
        version = importlib.metadata.version("stackbench")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Provenance(
        command=["stackbench", *sys.argv[1:]], stackbench_version=version,
        git_commit=commit, git_dirty=dirty,
    )  # fmt: skip


def prepare_out(out: Path) -> Path:
    """The run's directory, absolute, created empty. A directory that holds anything (a run
    before this one, above all) is refused: nothing is ever appended to or overwritten."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        held = "a stackbench run" if (out / "samples.jsonl").exists() else "files"
        raise RunError(f"--out {out} already holds {held}: choose a new directory")
    try:
        (out / "locust").mkdir(parents=True)
    except OSError as exc:
        raise RunError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    return out


class Progress:
    """One status line on the terminal: which server, scenario, step, time left."""

    def __init__(self, plan: Plan) -> None:
        self.total_seconds = (
            plan.repeat
            * len(plan.servers)
            * sum(plan.seconds(s, m) for s, m in plan.scenario_runs())
        )
        self.done_seconds = 0.0
        self.tty = sys.stderr.isatty()
        self._last = ""

    def show(self, text: str, scenario_elapsed: float = 0.0) -> None:
        left = max(0.0, self.total_seconds - self.done_seconds - scenario_elapsed)
        line = f"{text}  ~{left / 60:.1f} min left"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
        elif line.split("  ~")[0] != self._last:
            print(line, file=sys.stderr, flush=True)
        self._last = line.split("  ~")[0]

    def finish_scenario(self, seconds: float) -> None:
        self.done_seconds += seconds

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def execute(plan: Plan) -> Path:
    """Run the plan; return the output directory (results and report written even when the run
    is interrupted or a server dies)."""
    server_cpus, driver_cpus = cpu_layout()
    fd_limit = raise_fd_limit(plan)
    plan = dataclasses.replace(plan, out=prepare_out(plan.out))
    load_average = os.getloadavg()[0]  # before the run adds its own
    log = SampleLog(plan.out / "samples.jsonl")
    log.write(
        RunHeader(
            started=utc_iso(),
            profile=ProfileInfo(
                name=plan.profile.name, step_seconds=plan.profile.step_seconds,
                repeat=plan.repeat,
            ),
            planned=plan.keys(),
            tiers={
                tier: [s for s in members if s in plan.servers]
                for tier, members in TIERS.items()
                if any(s in plan.servers for s in members)
            },
            scenarios=plan.scenario_specs(),
            environment=environment().model_copy(update={"load_average_1m": load_average}),
            versions=versions(),
            pinning=Pinning(
                server_cpus=server_cpus, driver_cpus=driver_cpus,
                shared_cpu=server_cpus == driver_cpus,
                locust_processes=locust_driver.workers(plan.locust_workers, driver_cpus) or 1,
                fd_limit=fd_limit,
                locust_master=locust_driver.workers(plan.locust_workers, driver_cpus) > 0,
            ),
            provenance=provenance(),
        )
    )  # fmt: skip
    progress = Progress(plan)
    interrupted = False
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    upstream = None
    try:
        upstream = _start_upstream(plan, driver_cpus)
        for repeat in range(plan.repeat):
            capacities: dict[str, float] = {}
            if RATE_SCENARIO in plan.scenarios:
                for impl in plan.servers:  # every capacity before any open-loop step
                    found = _run_server(plan, impl, repeat, log, progress, server_cpus,
                                        driver_cpus, upstream, capacity_pass=True)  # fmt: skip
                    if found:
                        capacities[impl] = found
            for impl in plan.servers:
                _run_server(plan, impl, repeat, log, progress, server_cpus, driver_cpus,
                            upstream, capacities=capacities)  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
        log.write(Event(event="interrupted", t=time.time()))
    finally:
        if upstream is not None:
            upstream.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
        progress.close()
        if not interrupted:
            log.write(Event(event="finished", t=time.time()))
        log.close()
    built = results.build(plan.out)
    results.write(plan.out, built)
    report.write(plan.out, built)
    if interrupted:
        raise KeyboardInterrupt
    return plan.out


def _raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _start_upstream(plan: Plan, driver_cpus: list[int]) -> ServerProcess | None:
    """The server `/upstream` calls, when a scenario needs one: aiohttp on uvloop (the
    cheapest), on the driver's CPUs so that the server measured keeps its own to itself."""
    if not any(SCENARIOS[s].needs_upstream for s in plan.scenarios):
        return None
    if all(server in dict(plan.remote) for server in plan.servers):
        return None  # servers the run did not start call the upstream they were given
    try:
        return ServerProcess(UPSTREAM_IMPL, extra_args=("--uvloop",), cpus=set(driver_cpus))
    except ServerStartError as exc:
        raise RunError(f"the upstream server did not start: {exc}") from None


def _upstream_connections(upstream: ServerProcess) -> int | None:
    """Connections the upstream has accepted so far (this scrape's own included)."""
    samples = scrape(upstream.url + "/metrics")
    if samples is None:
        return None
    return int(sum(s.value for s in samples if s.name == "http_server_connections_total"))


def _run_server(
    plan: Plan,
    impl: str,
    repeat: int,
    log: SampleLog,
    progress: Progress,
    server_cpus: list[int],
    driver_cpus: list[int],
    upstream: ServerProcess | None = None,
    capacity_pass: bool = False,
    capacities: dict[str, float] | None = None,
) -> float | None:
    """Start the server and drive its scenario runs in order, each by its driver. The capacity
    pass runs the rate sweep's closed-loop capacity alone and returns it (the open-loop steps,
    in the main pass, need every server's)."""

    def key(scenario: str, model: str) -> RunKey:
        return RunKey(server=impl, scenario=scenario, model=model, repeat=repeat)

    runs = [
        (scenario, model)
        for scenario, model in plan.scenario_runs()
        if ((scenario, model) == (RATE_SCENARIO, "closed")) == capacity_pass
    ]
    remote = dict(plan.remote)
    try:
        server = (
            RemoteServer(impl, remote[impl])
            if impl in remote
            else ServerProcess(
                impl,
                cpus=set(server_cpus),
                extra_args=("--upstream", upstream.url) if upstream else (),
            )
        )
    except ServerStartError as exc:
        for scenario, model in runs:
            _event(log, key(scenario, model), "failed", error=str(exc))
        return None
    capacity = None
    with server:
        _measure_idle(server, repeat, log)
        for scenario, model in runs:
            job = Job(plan, server, key(scenario, model), log, progress, server_cpus,
                      driver_cpus, upstream)  # fmt: skip
            if server.process.poll() is not None:
                job.event("failed", error=f"{impl} server exited with code "
                          f"{server.process.returncode}")  # fmt: skip
            elif model == "held" and impl in remote:
                job.event("failed", error="not measured: held connections need the server's "
                          "process (--target)")  # fmt: skip
            elif model == "held":
                _run_held(job)
            elif SCENARIOS[scenario].driver == "rate":
                found = _run_rate(job, capacities or {})
                capacity = found if model == "closed" else capacity
            else:
                locust_driver.run(job)
    return capacity


def _run_rate(job: Job, capacities: dict[str, float]) -> float | None:
    """The rate sweep: closed loop, the capacity (returned); open loop, the offered rates."""
    plan, key = job.plan, job.key
    if key.model == "closed":
        steps = plan.capacity_steps()
    else:
        measured = [capacities[s] for s in plan.servers if s in capacities]
        steps = plan.sweep_steps(capacities.get(key.server), min(measured, default=None))
    if not steps:
        job.event("failed", error="no capacity was measured, so no rate to offer")
        job.progress.finish_scenario(plan.seconds(key.scenario, key.model))
        return None
    job.event("started", levels=list(plan.levels(key.scenario, key.model)), steps=[
        PlannedStep(connections=s.connections, seconds=s.seconds, rate=s.rate,
                    common=s.common, capacity_fraction=s.capacity_fraction)
        for s in steps
    ])  # fmt: skip
    what = "capacity, closed loop" if key.model == "closed" else "open loop"

    def show(index: int, step: rate.RateStep) -> None:
        level = f"{step.connections} connections" if step.rate is None else f"{step.rate:g}/s"
        job.progress.show(
            f"[{key.server}] {key.scenario} ({what}) step {index + 1}/{len(steps)}: {level}",
            sum(s.seconds for s in steps[:index]),
        )

    try:
        results = rate_driver.run_steps(
            key, steps, rate_driver.scenario_for(plan.profile.rate_routes), job.server.url,
            job.server.pid, job.log, job.driver_cpus, on_step=show,
        )  # fmt: skip
    except NativeBuildError as exc:
        job.event("failed", error=str(exc))
        return None
    finally:
        job.progress.finish_scenario(plan.seconds(key.scenario, key.model))
    error = next((r.error for r in results if r.error), None)
    if error:
        job.event("failed", error=error)
        return None
    job.event("finished")
    return results[-1].achieved_rps if results else None


def _event(log: SampleLog, key: RunKey, event: str, **extra: Any) -> None:
    log.write(Event(event=event, t=time.time(), key=key, **extra))


def _measure_idle(server: ServerProcess | RemoteServer, repeat: int, log: SampleLog) -> None:
    """The server's CPU with no load but what a run always adds (its timers, our scrapes at
    the sampling pace): subtracted from every step's CPU, so that CPU per request is the
    requests' alone. A remote server's from its own /metrics."""
    process = psutil.Process(server.pid) if server.pid is not None else None

    def cpu() -> float | None:
        if process is None:
            return process_figures(scrape(server.url + "/metrics"))[1]
        return cpu_seconds(process, children=False)

    ns_before = cpu_ns_seconds(server.pid) if server.pid is not None else None
    lag = LagReader(server.url)
    before, started = cpu(), time.monotonic()
    while time.monotonic() - started < IDLE_SECONDS:
        # What a sample costs the server: a scrape and a read of its exact lag.
        scrape(server.url + "/metrics")
        lag.read()
        time.sleep(SAMPLE_INTERVAL_S)
    after = cpu()
    ns_after = cpu_ns_seconds(server.pid) if server.pid is not None else None
    if before is not None and after is not None:
        seconds = time.monotonic() - started
        ns = ns_after - ns_before if ns_before is not None and ns_after is not None else None
        log.write(IdleProbe(server=server.impl, repeat=repeat, seconds=seconds,
                            cpu_seconds=after - before, cpu_ns_seconds=ns))  # fmt: skip


def _run_held(job: Job) -> None:
    """Memory per in-flight request without Locust, on a fresh server: one that has served
    the scenarios before would reuse the memory they freed, and its RSS would not grow."""
    plan, key, log, progress, server_cpus = (
        job.plan, job.key, job.log, job.progress, job.server_cpus,
    )  # fmt: skip
    levels = plan.levels(key.scenario, key.model)
    progress.show(f"[{key.server}] {key.scenario} (raw held connections): {max(levels)} max")
    _event(log, key, "started", levels=list(levels))
    try:
        with ServerProcess(key.server, cpus=set(server_cpus)) as server:
            points, readings = held.measure(server.url, server.pid, levels)
    except (held.HeldError, ServerStartError) as exc:
        log.write(HeldProbe(key=key, points=[], error=str(exc)))
        _event(log, key, "failed", error=str(exc))
    else:
        log.write(HeldProbe(key=key, points=points, samples=readings))
        _event(log, key, "finished")
    finally:
        progress.finish_scenario(plan.seconds(key.scenario, key.model))


def default_out() -> Path:
    """results/<local time>, with a suffix if a run already took that second."""
    base = Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate


def validate(servers: list[str], scenarios: list[str], remote: tuple[str, ...] = ()) -> None:
    from servers.contract import IMPLS

    if unknown := [s for s in servers if s not in IMPLS and s not in remote]:
        raise RunError(f"unknown server {unknown[0]!r}; choose from {', '.join(IMPLS)}")
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        raise RunError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if not servers or not scenarios:
        raise RunError("nothing to run: give at least one server and one scenario")
    rate_driven = any(SCENARIOS[s].driver == "rate" for s in scenarios)
    _build_natives([s for s in servers if s not in remote], rate_driven)


def _build_natives(servers: list[str], needs_rate_driver: bool) -> None:
    """Build the native servers the run needs now, before any clock runs (a first Rust build
    takes longer than a server is given to start)."""
    from servers.native import NATIVE_SERVERS, RATE_DRIVER, binary

    for program in [RATE_DRIVER] * needs_rate_driver + servers:
        if program in NATIVE_SERVERS or program == RATE_DRIVER:
            try:
                binary(program)
            except NativeBuildError as exc:
                raise RunError(str(exc)) from None
