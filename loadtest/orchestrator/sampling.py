"""Sampling while a scenario runs: the server's /metrics and process, the load generator's
metrics and CPU, appended to a JSON Lines file as each sample arrives, so that an interrupted
run keeps everything measured up to the interruption."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

SAMPLE_INTERVAL_S = 0.5
# A scrape slower than this is recorded as missing, so a saturated server cannot stretch the
# time between samples past a second.
SCRAPE_TIMEOUT_S = 0.8


def scrape(url: str) -> list | None:
    """Every sample of a Prometheus endpoint, or None if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


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


def _buckets(samples: list, name: str, by: str | None = None) -> dict:
    """Cumulative bucket counts {le: count} of histogram `name`, summed over its other labels
    (or {label value: {le: count}} with `by`)."""
    grouped: dict = defaultdict(lambda: defaultdict(float))
    for sample in samples:
        if sample.name == f"{name}_bucket":
            key = sample.labels.get(by, "") if by else ""
            grouped[key][sample.labels["le"]] += sample.value
    if by:
        return {key: dict(value) for key, value in grouped.items()}
    return dict(grouped.get("", {}))


def _sums(samples: list, name: str, by: str) -> dict[str, float]:
    """The `_sum` of histogram `name` per value of label `by` (exact means, where buckets
    only bound a percentile)."""
    sums: dict[str, float] = defaultdict(float)
    for sample in samples:
        if sample.name == f"{name}_sum":
            sums[sample.labels.get(by, "")] += sample.value
    return dict(sums)


def _total(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def server_snapshot(samples: list) -> dict[str, Any]:
    return {
        "rss_bytes": _total(samples, "process_resident_memory_bytes"),
        "cpu_seconds": _total(samples, "process_cpu_seconds_total"),
        "active_requests": _total(samples, "http_server_active_requests"),
        "open_connections": _total(samples, "http_server_open_connections"),
        "tasks": _total(samples, "stackbench_tasks"),
        "lag": _buckets(samples, "stackbench_scheduler_lag_seconds"),
        "requests": _buckets(samples, "http_server_request_duration_seconds"),
    }


def client_snapshot(samples: list) -> dict[str, Any]:
    return {
        # A master reports its workers' users again: count the processes that run users.
        "users": sum(
            s.value
            for s in samples
            if s.name == "stackbench_client_users" and s.labels.get("role") != "master"
        ),
        "intended": _total(samples, "stackbench_client_intended_requests_total"),
        "dropped": _total(samples, "stackbench_client_dropped_arrivals_total"),
        "errors": _total(
            samples, "stackbench_client_request_duration_seconds_count", outcome="error"
        ),
        "latency": _buckets(samples, "stackbench_client_request_duration_seconds", by="route"),
        "latency_sum": _total(samples, "stackbench_client_request_duration_seconds_sum"),
        "latency_sums": _sums(samples, "stackbench_client_request_duration_seconds", by="route"),
        "service": _buckets(samples, "stackbench_client_service_duration_seconds", by="route"),
    }


class SampleLog:
    """samples.jsonl: one JSON object per line, flushed as written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_samples(path: Path) -> tuple[list[dict], int]:
    """Every complete line of a samples file, and how many lines were unreadable (a run killed
    mid-write leaves at most one)."""
    records, broken = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            broken += 1
    return records, broken


class Sampler:
    """A thread that samples one server and one Locust process until stopped."""

    def __init__(
        self,
        log: SampleLog,
        labels: dict[str, Any],
        server_url: str,
        server_pid: int,
        client_urls: list[str],
        driver_pid: int,
    ) -> None:
        self.log = log
        self.labels = labels
        self.server_url = server_url
        self.client_urls = client_urls
        self.server = _process(server_pid)
        self.driver = _process(driver_pid)
        self.samples_taken = 0
        self._scrapers = ThreadPoolExecutor(1, thread_name_prefix="scrape")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self) -> None:
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

    def sample(self) -> dict[str, Any]:
        # Server and driver at once: one slow scrape does not delay the other.
        server_future = self._scrapers.submit(scrape, self.server_url + "/metrics")
        client_metrics = _scrape_all(url + "/metrics" for url in self.client_urls)
        server_metrics = server_future.result()
        return {
            **self.labels,
            "t": time.time(),
            "server": server_snapshot(server_metrics) if server_metrics is not None else None,
            "client": client_snapshot(client_metrics) if client_metrics is not None else None,
            "server_rss_bytes": _rss(self.server),  # from /proc, independent of the server
            "server_alive": _alive(self.server),
            "driver_cpu_seconds": _cpu_seconds(self.driver),
        }


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


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


def _cpu_seconds(process: psutil.Process | None) -> float | None:
    """CPU of the Locust process and any workers it forked."""
    if process is None:
        return None
    try:
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return None
