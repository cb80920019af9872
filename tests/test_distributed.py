"""`stackbench run --locust-workers 2`: a Locust master and two workers, each a separate
`locust` process on loopback, driving one server the run did not start (--target), so that the
server outlives the run and its own request counter can be read afterwards: the run's exact
histograms must hold every worker's requests once, no more, no fewer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from loadtest.orchestrator.profiles import PROFILES
from loadtest.orchestrator.serverproc import ServerProcess

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

WORKERS = 2
LEVELS = PROFILES["smoke"].levels_for("plaintext")


def _served(url: str, route: str) -> int:
    """Requests to `route` the server counted itself, whatever their status."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^http_server_request_duration_seconds_count\{{[^}}]*route="{re.escape(route)}"'
    return round(sum(float(line.rsplit(" ", 1)[1])
                     for line in text.splitlines() if re.match(pattern, line)))  # fmt: skip


def test_every_workers_requests_are_counted_once(tmp_path: Path) -> None:
    with ServerProcess("aiohttp", cpus={min(os.sched_getaffinity(0))}) as server:
        before = _served(server.url, "/")
        # A relative --out from another directory: every Locust process's files must land in
        # that run's locust/, whatever directory each runs in.
        done = subprocess.run(
            [sys.executable, "-m", "loadtest.cli", "run", "--profile", "smoke",
             "--step-seconds", "3", "--scenarios", "plaintext",
             "--target", f"aiohttp={server.url}", "--locust-workers", str(WORKERS),
             "--out", "relative/out"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        served = _served(server.url, "/") - before
        assert server.process.poll() is None  # the run left the server it did not start
    out = tmp_path / "relative" / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["pinning"]["locust_master"] is True
    assert results["pinning"]["locust_processes"] == WORKERS
    (run,) = results["runs"]
    assert run["status"] == "ok"
    recorded = run["recorded_requests"]["/"]
    print(f"requests: run's exact histograms {recorded}, server's own counter {served}")
    # Users are stopped mid-request at the end: the server may have answered a request whose
    # user was stopped before reading it, one at most per user of the last level. A worker
    # counted twice, or one whose last half-second was lost, is off by hundreds or more.
    assert recorded <= served <= recorded + LEVELS[-1], (recorded, served)
    # Users counted once (the master's total is not added to its workers'), each level reached.
    assert [round(step["users"]) for step in run["steps"]] == list(LEVELS)
    for step in run["steps"]:
        assert step["achieved_rps"] > 0
        # Both workers' histograms merged: as many requests as the counters say, within the
        # half-second that separates a counter scrape from a histogram read.
        assert abs(step["routes"]["/"]["count"] - step["completed"]) <= 0.1 * step["completed"]
    logs = {p.name for p in (out / "locust").iterdir()}
    name = "aiohttp-plaintext-closed-r1"
    assert {f"{name}.log", f"{name}_stats.csv", f"{name}.html"} <= logs
    for index in range(1, WORKERS + 1):
        worker_log = (out / "locust" / f"{name}-worker{index}.log").read_text()
        assert "client metrics (worker)" in worker_log
    assert not (out / "locust" / "relative").exists()
