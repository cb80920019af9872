"""The rate driver's steps in `stackbench run`: one `stackbench-rate` process per step on the
driver's CPUs, and one sample per line it prints (every SAMPLE_INTERVAL_S), with the server's
/metrics, RSS and CPU (ticks and nanoseconds) read as the line arrives.

Each step begins with a baseline sample (nothing sent yet), so the step's first interval, in
which the driver connects, is its ramp and left out like a Locust level's first sample. The
driver's last line ("end") holds the answers still in flight when the step ended: it is kept in
samples.jsonl (every request is recorded) without client counters, so no step figure uses it.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil

from loadtest import rate
from loadtest.driver.scenarios import SCENARIOS, Scenario
from loadtest.orchestrator.remote import process_figures
from loadtest.orchestrator.sampling import (
    SAMPLE_INTERVAL_S,
    LagReader,
    SampleLog,
    cpu_ns_seconds,
    cpu_seconds,
    scrape,
    server_snapshot,
)
from loadtest.records import ClientSnapshot, RunKey, Sample

__all__ = ["StepResult", "run_steps", "scenario_for"]


@dataclass(frozen=True)
class StepResult:
    """What the orchestrator needs back from a step at once: the achieved rate over the
    measured part (the capacity, for a closed-loop step), and why it failed if it did."""

    achieved_rps: float | None
    error: str | None = None


def scenario_for(routes: tuple[str, ...]) -> Scenario:
    """The `rate` scenario with only the routes a profile sends."""
    scenario = SCENARIOS["rate"]
    requests = tuple(r for r in scenario.requests if r.route in routes)
    return Scenario(**{**scenario.__dict__, "requests": requests or scenario.requests})


def run_steps(
    key: RunKey,
    steps: list[rate.RateStep],
    scenario: Scenario,
    server_url: str,
    server_pid: int | None,
    log: SampleLog,
    driver_cpus: list[int],
    on_step=None,
) -> list[StepResult]:
    """Run each step against the server, writing its samples; a step that fails (the driver
    exits non-zero) ends the run of steps with its error."""
    binary = rate.binary()
    host, _, port = server_url.removeprefix("http://").rpartition(":")
    process = psutil.Process(server_pid) if server_pid is not None else None
    scrapers = ThreadPoolExecutor(1, thread_name_prefix="scrape")
    lag = LagReader(server_url)
    lag.read()  # the baseline the first sample's lag ticks are counted from
    results = []
    try:
        for index, step in enumerate(steps):
            if on_step:
                on_step(index, step)
            result = _run_step(
                key, index, step, scenario, binary, host, int(port), server_url, process,
                log, driver_cpus, scrapers, lag,
            )  # fmt: skip
            results.append(result)
            if result.error:
                break
    finally:
        scrapers.shutdown()
    return results


def _server_reading(
    server_url: str, process: psutil.Process | None, scrapers: ThreadPoolExecutor, lag: LagReader
) -> tuple[float | None, float | None, float | None, object, str | None]:
    """CPU first (ns, then ticks: both as close to the line's arrival as can be), then RSS; the
    /metrics and /lag reads run meanwhile."""
    pending = scrapers.submit(scrape, server_url + "/metrics")
    ticks_pending = scrapers.submit(lag.read)
    if process is None:
        metrics = pending.result()
        rss, cpu = process_figures(metrics)
        return None, cpu, rss, metrics, ticks_pending.result()
    ns = cpu_ns_seconds(process.pid)
    ticks = cpu_seconds(process, children=False)
    try:
        rss = float(process.memory_info().rss)
    except psutil.Error:
        rss = None
    return ns, ticks, rss, pending.result(), ticks_pending.result()


def _run_step(
    key: RunKey,
    index: int,
    step: rate.RateStep,
    scenario: Scenario,
    binary,
    host: str,
    port: int,
    server_url: str,
    process: psutil.Process | None,
    log: SampleLog,
    driver_cpus: list[int],
    scrapers: ThreadPoolExecutor,
    lag: LagReader,
) -> StepResult:
    def sample(
        client: ClientSnapshot | None, latency, driver_cpu: float | None, at: float
    ) -> Sample:
        ns, ticks, rss, metrics, lag_ticks = _server_reading(server_url, process, scrapers, lag)
        alive = metrics is not None if process is None else process.is_running()
        return Sample(
            key=key, t=at, step=index,
            server=server_snapshot(metrics) if metrics is not None else None,
            client=client, latency=latency, server_rss_bytes=rss, server_cpu_seconds=ticks,
            server_cpu_ns_seconds=ns, server_alive=alive, driver_cpu_seconds=driver_cpu,
            lag=lag_ticks,
        )  # fmt: skip

    baseline = ClientSnapshot(
        users=float(step.connections), intended=0, dropped=0, errors=0, completed=0,
        error_kinds=dict.fromkeys(rate.ERROR_KINDS, 0.0),
    )  # fmt: skip
    log.write(sample(baseline, {}, 0.0, time.time()))
    argv = rate.command(binary, host, port, step, scenario, SAMPLE_INTERVAL_S, seed=index + 1)
    # A line's time is the driver's own clock (its elapsed since it began, from here): the
    # step's rates come out exact, whatever the scrapes after each line take.
    began = time.time()
    driver = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, preexec_fn=lambda: os.sched_setaffinity(0, set(driver_cpus)),
    )  # fmt: skip
    assert driver.stdout is not None
    measured: list[tuple[float, float]] = []  # (elapsed, completed) of the interval lines
    try:
        for text in driver.stdout:
            line = rate.parse_line(text, step.connections)
            driver_cpu = cpu_ns_seconds(driver.pid)
            if line.final:
                # The answers in flight at the end: recorded, but in no step's window.
                log.write(sample(None, line.latency, line.cpu_seconds, began + line.elapsed))
            else:
                measured.append((line.elapsed, line.client.completed))
                log.write(sample(line.client, line.latency, driver_cpu, began + line.elapsed))
        code = driver.wait(timeout=30)
    except (ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        driver.kill()
        driver.wait()
        return StepResult(None, f"the rate driver printed what it should not: {exc}")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    if code != 0:
        why = (driver.stderr.read() if driver.stderr else "").strip().splitlines()
        return StepResult(None, f"the rate driver exited {code}: {' | '.join(why[-2:])}")
    if len(measured) < 2 or measured[-1][0] <= measured[0][0]:
        return StepResult(None)
    (t0, c0), (t1, c1) = measured[0], measured[-1]
    return StepResult((c1 - c0) / (t1 - t0))
