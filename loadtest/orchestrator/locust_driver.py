"""Locust as a driver of `stackbench run`'s steps: a headless Locust (a master and worker
processes where the driver has several CPUs) walks the scenario's load levels with its step
shape while a Sampler reads the server and Locust's client metrics and exact latencies twice a
second into samples.jsonl."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from loadtest.driver import settings
from loadtest.driver.scenarios import SCENARIOS
from loadtest.orchestrator.drivers import Job
from loadtest.orchestrator.sampling import Sampler

__all__ = ["LOCUSTFILES", "run", "workers"]

LOCUSTFILES = Path(__file__).resolve().parent.parent / "locustfiles"
LOCUST_START_TIMEOUT_S = 30.0


def workers(requested: int | None, driver_cpus: list[int]) -> int:
    """Locust worker processes beside a master, started as separate `locust --worker`
    processes; 0: one Locust process alone, no master."""
    if requested is not None:
        return requested
    return len(driver_cpus) if len(driver_cpus) > 1 else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(job: Job) -> None:
    """Drive one scenario run with Locust; every sample and its start, end or failure goes to
    the job's log."""
    plan, server, key, log, progress = job.plan, job.server, job.key, job.log, job.progress
    driver_cpus, upstream = job.driver_cpus, job.upstream
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
    worker_count = workers(plan.locust_workers, driver_cpus)
    commands = {name: main}
    if worker_count:
        master_port = _free_port()
        commands[name] = [
            *main, "--master", "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(master_port), "--expect-workers", str(worker_count),
            "--expect-workers-max-wait", f"{LOCUST_START_TIMEOUT_S:.0f}",
        ]  # fmt: skip
        for index in range(1, worker_count + 1):
            commands[f"{name}-worker{index}"] = [
                *common, "--worker", "--master-host", "127.0.0.1",
                "--master-port", str(master_port),
            ]  # fmt: skip
    # Only a server the run started calls the run's upstream (a --target has its own).
    counts_upstream = (
        upstream is not None and server.pid is not None and SCENARIOS[scenario].needs_upstream
    )
    upstream_before = job.upstream_connections() if counts_upstream else None
    job.event("started", levels=list(levels))
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
            after = job.upstream_connections()
            # less the second scrape's own connection
            opened = after - upstream_before - 1 if after is not None else None
        if error:
            job.event("failed", error=error)
        else:
            job.event("finished", exit_code=locusts[0][0].returncode,
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
