"""`stackbench run`: each server in turn on its own CPU, each scenario driven by Locust on the
other CPU, everything sampled to disk as it happens, then results.json and report.html."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from loadtest.driver import settings
from loadtest.driver.scenarios import SCENARIOS
from loadtest.orchestrator import held
from loadtest.orchestrator.profiles import Profile
from loadtest.orchestrator.remote import RemoteServer, process_figures
from loadtest.orchestrator.sampling import (
    CPU_TICK_S,
    SAMPLE_INTERVAL_S,
    SampleLog,
    Sampler,
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

LOCUSTFILES = Path(__file__).resolve().parent.parent / "locustfiles"
LOCUST_START_TIMEOUT_S = 30.0
FD_HEADROOM = 256
OPEN_MODEL_SCENARIO = "starvation"  # the open-model pass: where stalls hide from closed loops
HELD_SCENARIO = "io_hold"  # followed by memory per request measured without Locust
UPSTREAM_IMPL = "aiohttp"  # what `/upstream` calls in a run (on uvloop): the cheapest server
IDLE_SECONDS = 1.0  # how long each server's idle CPU (timers, our scrapes) is measured


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

    def scenario_runs(self) -> list[tuple[str, str]]:
        """(scenario, model) pairs, in order: each scenario closed (io_hold followed by its
        held-connection probe), then the open-model pass."""
        runs = []
        for scenario in self.scenarios:
            runs.append((scenario, "closed"))
            if scenario == HELD_SCENARIO:
                runs.append((scenario, "held"))
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
        if model == "open":
            return (self.profile.open_streams,)
        return self.profile.levels_for(scenario)

    def seconds(self, scenario: str, model: str) -> float:
        if model == "held":
            return held.expected_seconds(self.levels(scenario, model))
        return len(self.levels(scenario, model)) * self.step_seconds(scenario)

    def step_seconds(self, scenario: str) -> float:
        """The profile's step, or longer where the scenario's requests need it to complete
        inside a step at all (io_hold's 2 s sleeps)."""
        return max(self.profile.step_seconds, SCENARIOS[scenario].min_step_seconds)

    def scenario_specs(self) -> dict[str, ScenarioSpec]:
        specs = {}
        for scenario in self.scenarios:
            specs[scenario] = ScenarioSpec(
                requests=SCENARIOS[scenario].describe(),
                levels=list(self.profile.levels_for(scenario)),
                step_seconds=self.step_seconds(scenario),
                settle_seconds=SCENARIOS[scenario].settle_seconds,
            )
        if OPEN_MODEL_SCENARIO in self.scenarios:
            specs[spec_name(OPEN_MODEL_SCENARIO, "open")] = ScenarioSpec(
                requests=SCENARIOS[OPEN_MODEL_SCENARIO].describe(),
                levels=[self.profile.open_streams],
                step_seconds=self.step_seconds(OPEN_MODEL_SCENARIO),
                settle_seconds=SCENARIOS[OPEN_MODEL_SCENARIO].settle_seconds,
                rate_per_stream=self.profile.open_rate_per_stream,
            )
        return specs


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
                locust_processes=locust_workers(plan, driver_cpus) or 1, fd_limit=fd_limit,
                locust_master=locust_workers(plan, driver_cpus) > 0,
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
            for impl in plan.servers:
                _run_server(plan, impl, repeat, log, progress, server_cpus, driver_cpus, upstream)
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
) -> None:
    def key(scenario: str, model: str) -> RunKey:
        return RunKey(server=impl, scenario=scenario, model=model, repeat=repeat)

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
        for scenario, model in plan.scenario_runs():
            _event(log, key(scenario, model), "failed", error=str(exc))
        return
    with server:
        _measure_idle(server, repeat, log)
        for scenario, model in plan.scenario_runs():
            if server.process.poll() is not None:
                error = f"{impl} server exited with code {server.process.returncode}"
                _event(log, key(scenario, model), "failed", error=error)
                continue
            if model == "held" and impl in remote:
                error = "not measured: held connections need the server's process (--target)"
                _event(log, key(scenario, model), "failed", error=error)
            elif model == "held":
                _run_held(plan, key(scenario, model), log, progress, server_cpus)
            else:
                _run_scenario(
                    plan, server, key(scenario, model), log, progress, driver_cpus, upstream
                )


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

    before, started = cpu(), time.monotonic()
    while time.monotonic() - started < IDLE_SECONDS:
        scrape(server.url + "/metrics")
        time.sleep(SAMPLE_INTERVAL_S)
    after = cpu()
    if before is not None and after is not None:
        seconds = time.monotonic() - started
        log.write(IdleProbe(server=server.impl, repeat=repeat, seconds=seconds,
                            cpu_seconds=after - before))  # fmt: skip


def _run_held(
    plan: Plan, key: RunKey, log: SampleLog, progress: Progress, server_cpus: list[int]
) -> None:
    """Memory per in-flight request without Locust, on a fresh server: one that has served
    the scenarios before would reuse the memory they freed, and its RSS would not grow."""
    levels = plan.levels(key.scenario, key.model)
    progress.show(f"[{key.server}] {key.scenario} (raw held connections): {max(levels)} max")
    _event(log, key, "started", levels=list(levels))
    try:
        with ServerProcess(key.server, cpus=set(server_cpus)) as server:
            points = held.measure(server.url, server.pid, levels)
    except (held.HeldError, ServerStartError) as exc:
        log.write(HeldProbe(key=key, points=[], error=str(exc)))
        _event(log, key, "failed", error=str(exc))
    else:
        log.write(HeldProbe(key=key, points=points))
        _event(log, key, "finished")
    finally:
        progress.finish_scenario(plan.seconds(key.scenario, key.model))


def _run_scenario(
    plan: Plan,
    server: ServerProcess | RemoteServer,
    key: RunKey,
    log: SampleLog,
    progress: Progress,
    driver_cpus: list[int],
    upstream: ServerProcess | None = None,
) -> None:
    impl, scenario, model = key.server, key.scenario, key.model
    levels = plan.levels(scenario, model)
    seconds = plan.seconds(scenario, model)
    name = key.locust_name
    driver = settings.DriverSettings(
        targets=f"{impl}={server.url}",
        allow_remote=server.pid is None,  # named by the user with --target
        model=model,
        rate=plan.profile.open_rate_per_stream,
        steps=True,
        step_seconds=plan.step_seconds(scenario),
        levels=levels,
    )
    locust_dir = plan.out / "locust"  # absolute: Locust runs with it as its working directory
    locustfile = str(LOCUSTFILES / f"{scenario}.py")
    common = [str(Path(sys.executable).parent / "locust"), "-f", locustfile, "--stop-timeout", "0"]
    main = [
        *common, "--headless", "--only-summary",
        # Users still mid-request when the last level ends are past what is measured: stop
        # them at once rather than wait for them (an open-model user never finishes).
        "--run-time", f"{seconds + 5:.0f}s",
        "--csv", str(locust_dir / name), "--html", str(locust_dir / f"{name}.html"),
    ]  # fmt: skip
    workers = locust_workers(plan, driver_cpus)
    commands = {name: main}
    if workers:
        master_port = _free_port()
        commands[name] = [
            *main, "--master", "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(master_port), "--expect-workers", str(workers),
            "--expect-workers-max-wait", f"{LOCUST_START_TIMEOUT_S:.0f}",
        ]  # fmt: skip
        for index in range(1, workers + 1):
            commands[f"{name}-worker{index}"] = [
                *common, "--worker", "--master-host", "127.0.0.1",
                "--master-port", str(master_port),
            ]  # fmt: skip
    # Only a server the run started calls the run's upstream (a --target has its own).
    counts_upstream = (
        upstream is not None and server.pid is not None and SCENARIOS[scenario].needs_upstream
    )
    upstream_before = _upstream_connections(upstream) if counts_upstream else None
    _event(log, key, "started", levels=list(levels))
    # The master (or the lone process) first: its exit code is the run's.
    locusts = [
        _start_locust(command, driver, locust_dir / f"{stem}.log", driver_cpus)
        for stem, command in commands.items()
    ]
    sampler = None
    started = time.monotonic()
    error = None
    try:
        # Each process exports client metrics and its requests' latencies on a port of its own.
        client_urls = _wait_for_metrics(locusts)
        if not client_urls:
            error = f"Locust did not start: see locust/{name}*.log"
            return
        pids = [process.pid for process, _ in locusts]
        sampler = Sampler(log, key, server.url, server.pid, client_urls, pids)
        sampler.start()
        deadline = started + seconds + 60
        # Until every process has exited: a worker exits once its last requests were read.
        while any(process.poll() is None for process, _ in locusts):
            if server.process.poll() is not None:
                error = f"{impl} server exited with code {server.process.returncode} mid-run"
                break
            if time.monotonic() > deadline:
                error = "Locust overran its time bound and was stopped"
                break
            elapsed = time.monotonic() - started
            step = min(int(elapsed // plan.step_seconds(scenario)), len(levels) - 1)
            unit = "streams" if model == "open" else "users"
            progress.show(
                f"[{impl}] {scenario} ({model}) step {step + 1}/{len(levels)}: "
                f"{levels[step]} {unit}",
                elapsed,
            )
            time.sleep(0.25)
    finally:
        if sampler is not None:
            sampler.stop()
        for process, _ in locusts:
            _stop(process)
        progress.finish_scenario(seconds)
        opened = None
        if counts_upstream and upstream_before is not None:
            after = _upstream_connections(upstream)
            # less the second scrape's own connection
            opened = after - upstream_before - 1 if after is not None else None
        if error:
            _event(log, key, "failed", error=error)
        else:
            _event(log, key, "finished", exit_code=locusts[0][0].returncode,
                   upstream_connections=opened)  # fmt: skip


def _start_locust(
    command: list[str], driver: settings.DriverSettings, log: Path, driver_cpus: list[int]
) -> tuple[subprocess.Popen, Path]:
    """One Locust process on the driver's CPUs, its client metrics on a free port of its own,
    its output in `log`."""
    env = {
        **os.environ,
        **settings.as_environment(dataclasses.replace(driver, client_metrics_port=_free_port())),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=log.parent,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, set(driver_cpus)),
        )  # fmt: skip
    return process, log


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_metrics(locusts: list[tuple[subprocess.Popen, Path]]) -> list[str]:
    """The client-metrics URL of every Locust process, read from the line each prints to its
    log; none if one did not start."""
    deadline = time.monotonic() + LOCUST_START_TIMEOUT_S
    urls: dict[Path, str] = {}
    while time.monotonic() < deadline and all(p.poll() is None for p, _ in locusts):
        for _, log in locusts:
            found = settings.METRICS_ANNOUNCE_PATTERN.search(log.read_text(errors="replace"))
            if found:
                urls[log] = f"http://{found[2]}:{found[3]}"
        if len(urls) == len(locusts):
            return [urls[log] for _, log in locusts]
        time.sleep(0.1)
    return []


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
    _build_natives([s for s in servers if s not in remote])


def _build_natives(servers: list[str]) -> None:
    """Build the native servers the run needs now, before any clock runs (a first Rust build
    takes longer than a server is given to start)."""
    from servers.native import NATIVE_SERVERS, NativeBuildError, binary

    for server in servers:
        if server in NATIVE_SERVERS:
            try:
                binary(server)
            except NativeBuildError as exc:
                raise RunError(str(exc)) from None
