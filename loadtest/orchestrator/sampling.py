"""Sampling while a scenario runs: the server's /metrics and process (RSS and CPU from /proc),
the load generator's metrics, exact latency histograms and CPU, appended to samples.jsonl as
each sample arrives, so that an interrupted run keeps everything measured up to the
interruption."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import psutil
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from loadtest import histograms
from loadtest.orchestrator.remote import process_figures
from loadtest.records import (
    ClientSnapshot,
    RouteHistograms,
    RunKey,
    Sample,
    ServerSnapshot,
    dump_line,
)

SAMPLE_INTERVAL_S = 0.5
# A scrape slower than this is recorded as missing, so a saturated server cannot stretch the
# time between samples past a second.
SCRAPE_TIMEOUT_S = 0.8
# /proc counts CPU time in clock ticks: a CPU figure from two readings is off by up to two.
CPU_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> list | None:
    """Every sample of a Prometheus endpoint, or None if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode()
        families = list(text_string_to_metric_families(text))
    except (OSError, ValueError, http.client.HTTPException):  # e.g. a server dying mid-answer
        return None
    return [sample for family in families for sample in family.samples]


def _scrape_all(urls: Iterable[str]) -> list | None:
    """The samples of several Locust processes together (None if any did not answer, so a
    sample never mixes a partial sum into the deltas)."""
    merged: list = []
    for url in urls:
        samples = scrape(url)
        if samples is None:
            return None
        merged.extend(samples)
    return merged


def _buckets(samples: list, name: str) -> dict[str, float]:
    """Cumulative bucket counts {le: count} of histogram `name`, summed over its labels."""
    grouped: dict[str, float] = defaultdict(float)
    for sample in samples:
        if sample.name == f"{name}_bucket":
            grouped[sample.labels["le"]] += sample.value
    return dict(grouped)


def _total(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def server_snapshot(samples: list) -> ServerSnapshot:
    return ServerSnapshot(
        active_requests=_total(samples, "http_server_active_requests"),
        open_connections=_total(samples, "http_server_open_connections"),
        tasks=_total(samples, "stackbench_tasks"),
        lag=_buckets(samples, "stackbench_scheduler_lag_seconds"),
    )


def client_snapshot(samples: list) -> ClientSnapshot:
    return ClientSnapshot(
        # A master reports its workers' users again: count the processes that run users.
        users=sum(
            s.value
            for s in samples
            if s.name == "stackbench_client_users" and s.labels.get("role") != "master"
        ),
        intended=_total(samples, "stackbench_client_intended_requests_total"),
        dropped=_total(samples, "stackbench_client_dropped_arrivals_total"),
        errors=_total(samples, "stackbench_client_request_duration_seconds_count", outcome="error"),
        completed=_total(samples, "stackbench_client_request_duration_seconds_count"),
    )


class LatencyReader:
    """Reads the exact latency intervals of several Locust processes (/latency), each
    acknowledged only once received, and merges them per route for one target. Each process
    is read on its own: one that does not answer (slow, or gone after handing over its last
    requests) delays only its own intervals, which come with its next answer."""

    def __init__(self, urls: list[str], target: str) -> None:
        self.target = target
        self._acknowledged = dict.fromkeys(urls, 0)

    def read(self) -> dict[str, RouteHistograms] | None:
        """What completed since the last successful read; None if no process answered."""
        fetched = {}
        for url, acknowledged in self._acknowledged.items():
            try:
                with urllib.request.urlopen(
                    f"{url}/latency?ack={acknowledged}", timeout=SCRAPE_TIMEOUT_S
                ) as response:
                    fetched[url] = json.loads(response.read())["intervals"]
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                continue
        if not fetched:
            return None
        per_route: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for url, intervals in fetched.items():
            for interval in intervals:
                for route, encoded in interval["histograms"].get(self.target, {}).items():
                    for kind, histogram in encoded.items():
                        per_route[route][kind].append(histogram)
            if intervals:
                self._acknowledged[url] = intervals[-1]["seq"]
        return {
            route: RouteHistograms(
                latency=histograms.encode(histograms.merge(kinds["latency"])),
                service=histograms.encode(histograms.merge(kinds["service"]))
                if kinds.get("service")
                else None,
            )
            for route, kinds in per_route.items()
        }


class LagReader:
    """A server's exact scheduler lag (`GET /lag`: every tick since it started, an HdrHistogram):
    each read returns what was recorded since the previous one, encoded; None when the server
    did not answer (the ticks then come with the next read) or on the first read."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._previous = None

    def read(self) -> str | None:
        try:
            with urllib.request.urlopen(self.url + "/lag", timeout=SCRAPE_TIMEOUT_S) as response:
                current = histograms.decode(json.loads(response.read())["histogram"])
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
            return None
        previous, self._previous = self._previous, current
        if previous is None:
            return None
        try:
            return histograms.encode(histograms.subtract(current, previous))
        except ValueError:  # a server restarted between the two readings
            return None


class SampleLog:
    """samples.jsonl: one record per line, flushed as written. Never appends to a file that
    exists: a second run into the same place must not mix with the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("x", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: BaseModel) -> None:
        line = dump_line(record)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class Sampler:
    """A thread that samples one server and its Locust processes until stopped."""

    def __init__(
        self,
        log: SampleLog,
        key: RunKey,
        server_url: str,
        server_pid: int | None,
        client_urls: list[str],
        driver_pids: list[int],
    ) -> None:
        self.log = log
        self.key = key
        self.server_url = server_url
        self.client_urls = client_urls
        self.latency = LatencyReader(client_urls, key.server)
        self.lag = LagReader(server_url)
        # None: a server this run did not start (--target); its own /metrics reports its process
        self.server = _process(server_pid) if server_pid is not None else None
        self.remote = server_pid is None
        self.driver = [_process(pid) for pid in driver_pids]
        self.samples_taken = 0
        self._scrapers = ThreadPoolExecutor(1, thread_name_prefix="scrape")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self) -> None:
        self.lag.read()  # the baseline the first sample's lag is counted from
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._scrapers.shutdown()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.log.write(self.sample())
            self.samples_taken += 1
            self._stop.wait(max(0.0, SAMPLE_INTERVAL_S - (time.monotonic() - started)))

    def sample(self) -> Sample:
        # Server and driver at once: one slow scrape does not delay the other.
        server_future = self._scrapers.submit(scrape, self.server_url + "/metrics")
        lag_future = self._scrapers.submit(self.lag.read)
        client_metrics = _scrape_all(url + "/metrics" for url in self.client_urls)
        latency = self.latency.read()
        server_metrics = server_future.result()
        if self.remote:
            rss, cpu = process_figures(server_metrics)
            alive = server_metrics is not None
            ns = None
        else:
            ns = cpu_ns_seconds(self.server.pid) if self.server else None
            rss, cpu = _rss(self.server), cpu_seconds(self.server, children=False)
            alive = _alive(self.server)
        return Sample(
            key=self.key,
            t=time.time(),
            server=server_snapshot(server_metrics) if server_metrics is not None else None,
            client=client_snapshot(client_metrics) if client_metrics is not None else None,
            latency=latency,
            server_rss_bytes=rss,
            server_cpu_seconds=cpu,
            server_cpu_ns_seconds=ns,
            server_alive=alive,
            driver_cpu_seconds=_sum_or_none(cpu_seconds(p, children=True) for p in self.driver),
            lag=lag_future.result(),
        )


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    """The driver's CPU: the sum over its processes, None if one could not be read (a sum
    without it would show as a drop)."""
    total = 0.0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _alive(process: psutil.Process | None) -> bool:
    try:
        return process is not None and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _rss(process: psutil.Process | None) -> float | None:
    try:
        return float(process.memory_info().rss) if process else None
    except psutil.Error:
        return None


def cpu_ns_seconds(pid: int) -> float | None:
    """The CPU time of process `pid` to the nanosecond, every thread counted (exited ones too):
    its process CPU clock, the id `clock_getcpuclockid(3)` gives (a negative number that
    encodes the pid; Linux lets any process read another's, as /proc/PID/stat). /proc's ticks
    are 10 ms here, too coarse for a step of a few seconds at a few µs a request. None if the
    process is gone."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process
    except OSError:
        return None


def cpu_seconds(process: psutil.Process | None, children: bool) -> float | None:
    """utime + stime from /proc (clock ticks: CPU_TICK_S each), with `children` those of
    the processes it started too."""
    if process is None:
        return None
    try:
        total = sum(process.cpu_times()[:2])
        if children:
            for child in process.children(recursive=True):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return None
