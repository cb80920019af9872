"""`stackbench run --target NAME=URL`: a server the run did not start, driven through the
remote path (its memory and CPU from its own /metrics), here against a local server whose
/proc figures the test can compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from loadtest.orchestrator.remote import process_figures
from loadtest.orchestrator.sampling import scrape
from loadtest.orchestrator.serverproc import ServerProcess

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

ROOT = Path(__file__).resolve().parent.parent


def _stackbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def test_a_remote_target_is_measured_from_its_own_metrics(tmp_path: Path) -> None:
    with ServerProcess("aiohttp") as server:
        target = f"far-aiohttp={server.url}"
        done = _stackbench("run", "--profile", "smoke", "--scenarios", "plaintext",
                           "--target", target, "--out", str(tmp_path))  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        # What /metrics says of the process against what /proc says, at the same moment.
        rss, cpu = process_figures(scrape(server.url + "/metrics"))
        proc = psutil.Process(server.pid)
        proc_rss, proc_cpu = proc.memory_info().rss, sum(proc.cpu_times()[:2])
        assert server.process.poll() is None  # the run did not stop a server it did not start
    print(f"RSS: /metrics {rss:.0f} B, /proc {proc_rss} B; CPU: /metrics {cpu:.2f} s, "
          f"/proc {proc_cpu:.2f} s")  # fmt: skip
    # /metrics reads RSS before it renders ~90 KB of exposition, /proc just after: ~1 % apart.
    assert rss == pytest.approx(proc_rss, rel=0.02), (rss, proc_rss)
    assert cpu == pytest.approx(proc_cpu, abs=0.05), (cpu, proc_cpu)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    taken = [s for s in samples if s["type"] == "sample"]
    assert taken and all(s["key"]["server"] == "far-aiohttp" for s in taken)
    assert all(s["server_rss_bytes"] and s["server_cpu_seconds"] for s in taken)
    results = json.loads((tmp_path / "results.json").read_text())
    text = json.dumps(results)
    assert "far-aiohttp" in text
    (run,) = [r for r in results["runs"] if r["key"]["server"] == "far-aiohttp"]
    assert all(step["completed"] > 0 and step["rss_bytes"] for step in run["steps"])
    assert any(step["cpu_us_per_request"] for step in run["steps"])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nonsense", "expected NAME=URL"),
        ("x=ftp://host:1", "http(s)://HOST[:PORT]"),
        ("x=http://host:99999", "bad port"),
        ("x=http://host/path", "http(s)://HOST[:PORT]"),
    ],
)
def test_a_bad_target_is_one_line_exit_2(target: str, message: str) -> None:
    done = _stackbench("run", "--target", target)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
