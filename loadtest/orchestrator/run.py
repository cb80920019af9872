"""`stackbench run`: each server in turn on its own CPU, each scenario driven by Locust on the
other CPU, everything sampled to disk as it happens, then results.json and report.html."""

from __future__ import annotations

import contextlib
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from loadtest.driver.scenarios import SCENARIOS
from loadtest.orchestrator.profiles import Profile
from loadtest.orchestrator.sampling import SampleLog, Sampler
from loadtest.orchestrator.serverproc import ServerProcess, ServerStartError
from loadtest.reporting import report, results

LOCUSTFILES = Path(__file__).resolve().parent.parent / "locustfiles"
LOCUST_START_TIMEOUT_S = 30.0
CLIENT_METRICS_LINE = re.compile(r"stackbench client metrics \(\w+\) on :(\d+)/metrics")
FD_HEADROOM = 256
OPEN_MODEL_SCENARIO = "starvation"  # the open-model pass: where stalls hide from closed loops


class RunError(Exception):
    """The run cannot start as asked (printed as one line, exit 2)."""


@dataclass(frozen=True)
class Plan:
    servers: tuple[str, ...]
    scenarios: tuple[str, ...]
    profile: Profile
    repeat: int
    out: Path

    def scenario_runs(self) -> list[tuple[str, str]]:
        """(scenario, model) pairs, in order: each scenario closed, then the open-model pass."""
        runs = [(scenario, "closed") for scenario in self.scenarios]
        if OPEN_MODEL_SCENARIO in self.scenarios:
            runs.append((OPEN_MODEL_SCENARIO, "open"))
        return runs

    def levels(self, scenario: str, model: str) -> tuple[int, ...]:
        if model == "open":
            return (self.profile.open_streams,)
        return self.profile.levels_for(scenario)

    def seconds(self, scenario: str, model: str) -> float:
        return len(self.levels(scenario, model)) * self.profile.step_seconds


def cpu_layout() -> tuple[list[int], list[int]]:
    """Server on one CPU, the load generator on all the others (the same one on a 1-CPU
    machine)."""
    cpus = sorted(os.sched_getaffinity(0))
    return [cpus[0]], cpus[1:] or [cpus[0]]


def driver_processes(driver_cpus: list[int]) -> int:
    """One Locust process per driver CPU (Locust's --processes), unless told otherwise."""
    forced = os.environ.get("STACKBENCH_DRIVER_PROCESSES", "")
    if forced:
        if not forced.isdigit() or not 1 <= int(forced) <= 64:
            raise RunError(f"STACKBENCH_DRIVER_PROCESSES={forced!r}: expected 1 to 64")
        return int(forced)
    return len(driver_cpus)


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
                    "prometheus-client", "psutil"):  # fmt: skip
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def environment() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
    }


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
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "locust").mkdir(exist_ok=True)
    log = SampleLog(plan.out / "samples.jsonl")
    log.write({
        "type": "run",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": {"name": plan.profile.name, "step_seconds": plan.profile.step_seconds,
                    "repeat": plan.repeat},
        "planned": [[impl, s, m, r] for r in range(plan.repeat) for impl in plan.servers
                    for s, m in plan.scenario_runs()],
        "environment": environment(),
        "versions": versions(),
        "pinning": {"server_cpus": server_cpus, "driver_cpus": driver_cpus,
                    "shared_cpu": server_cpus == driver_cpus,
                    "locust_processes": driver_processes(driver_cpus),
                    "fd_limit": fd_limit},
    })  # fmt: skip
    progress = Progress(plan)
    interrupted = False
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        for repeat in range(plan.repeat):
            for impl in plan.servers:
                _run_server(plan, impl, repeat, log, progress, server_cpus, driver_cpus)
    except KeyboardInterrupt:
        interrupted = True
        log.write({"type": "event", "event": "interrupted", "t": time.time()})
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        progress.close()
        if not interrupted:
            log.write({"type": "event", "event": "finished", "t": time.time()})
        log.close()
    built = results.build(plan.out)
    results.write(plan.out, built)
    report.write(plan.out, built)
    if interrupted:
        raise KeyboardInterrupt
    return plan.out


def _raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _run_server(
    plan: Plan,
    impl: str,
    repeat: int,
    log: SampleLog,
    progress: Progress,
    server_cpus: list[int],
    driver_cpus: list[int],
) -> None:
    try:
        server = ServerProcess(impl, cpus=set(server_cpus))
    except ServerStartError as exc:
        for scenario, model in plan.scenario_runs():
            _event(log, impl, scenario, model, repeat, "failed", error=str(exc))
        return
    with server:
        for scenario, model in plan.scenario_runs():
            if server.process.poll() is not None:
                error = f"{impl} server exited with code {server.process.returncode}"
                _event(log, impl, scenario, model, repeat, "failed", error=error)
                continue
            _run_scenario(plan, server, scenario, model, repeat, log, progress, driver_cpus)


def _event(log: SampleLog, impl: str, scenario: str, model: str, repeat: int, event: str,
           **extra: Any) -> None:  # fmt: skip
    log.write({"type": "event", "event": event, "server_impl": impl, "scenario": scenario,
               "model": model, "repeat": repeat, "t": time.time(), **extra})  # fmt: skip


def _run_scenario(
    plan: Plan,
    server: ServerProcess,
    scenario: str,
    model: str,
    repeat: int,
    log: SampleLog,
    progress: Progress,
    driver_cpus: list[int],
) -> None:
    impl = server.impl
    levels = plan.levels(scenario, model)
    seconds = plan.seconds(scenario, model)
    name = f"{impl}-{scenario}-{model}-r{repeat + 1}"
    client_port = _free_port()  # the master's; forked workers take the next free ones
    env = {
        **os.environ,
        "STACKBENCH_TARGETS": f"{impl}={server.url}",
        "STACKBENCH_MODEL": model,
        "STACKBENCH_SHAPE": "steps",
        "STACKBENCH_STEP_SECONDS": str(plan.profile.step_seconds),
        "STACKBENCH_LEVELS": ",".join(map(str, levels)),
        "STACKBENCH_RATE": str(plan.profile.open_rate_per_stream),
        "STACKBENCH_CLIENT_METRICS_PORT": str(client_port),
    }
    locust_dir = plan.out / "locust"
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f", str(LOCUSTFILES / f"{scenario}.py"),
        "--headless", "--only-summary",
        "--run-time", f"{seconds + 5:.0f}s", "--stop-timeout", "5",
        "--csv", str(locust_dir / name), "--html", str(locust_dir / f"{name}.html"),
    ]  # fmt: skip
    processes = driver_processes(driver_cpus)
    if processes > 1:
        command += ["--processes", str(processes)]
    _event(log, impl, scenario, model, repeat, "started", levels=list(levels))
    with (locust_dir / f"{name}.log").open("wb") as output:
        locust = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=locust_dir,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, set(driver_cpus)),
        )  # fmt: skip
    sampler = None
    started = time.monotonic()
    error = None
    try:
        # The master and each forked worker export metrics on a port of their own.
        client_urls = _wait_for_metrics(locust_dir / f"{name}.log", locust, processes)
        if not client_urls:
            error = f"Locust did not start: see locust/{name}.log"
            return
        sampler = Sampler(
            log,
            {"type": "sample", "server_impl": impl, "scenario": scenario, "model": model,
             "repeat": repeat},
            server.url, server.pid, client_urls, locust.pid,
        )  # fmt: skip
        sampler.start()
        deadline = started + seconds + 60
        while locust.poll() is None:
            if server.process.poll() is not None:
                error = f"{impl} server exited with code {server.process.returncode} mid-run"
                break
            if time.monotonic() > deadline:
                error = "Locust overran its time bound and was stopped"
                break
            elapsed = time.monotonic() - started
            step = min(int(elapsed // plan.profile.step_seconds), len(levels) - 1)
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
        if locust.poll() is None:
            locust.terminate()
            try:
                locust.wait(15)
            except subprocess.TimeoutExpired:
                locust.kill()
                locust.wait()
        progress.finish_scenario(seconds)
        if error:
            _event(log, impl, scenario, model, repeat, "failed", error=error)
        else:
            _event(log, impl, scenario, model, repeat, "finished", exit_code=locust.returncode)


def _wait_for_metrics(log: Path, locust: subprocess.Popen, processes: int) -> list[str]:
    """The client-metrics URLs of every Locust process, read from the lines they print."""
    expected = processes + 1 if processes > 1 else 1
    deadline = time.monotonic() + LOCUST_START_TIMEOUT_S
    while time.monotonic() < deadline and locust.poll() is None:
        ports = CLIENT_METRICS_LINE.findall(log.read_text(errors="replace"))
        if len(ports) >= expected:
            return [f"http://127.0.0.1:{port}" for port in ports]
        time.sleep(0.1)
    return []


def default_out() -> Path:
    return Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")


def validate(servers: list[str], scenarios: list[str]) -> None:
    from servers.contract import IMPLS

    if unknown := [s for s in servers if s not in IMPLS]:
        raise RunError(f"unknown server {unknown[0]!r}; choose from {', '.join(IMPLS)}")
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        raise RunError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if not servers or not scenarios:
        raise RunError("nothing to run: give at least one server and one scenario")
