"""The benchmark scripts still run and print figures (tiny durations: a smoke test of the
scripts, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_wrk_benchmark_reports_every_server(tmp_path: Path) -> None:
    out = tmp_path / "wrk.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "wrk_servers.py"),
            "--duration", "1", "--warmup", "0", "--rounds", "1", "--connections", "8",
            "--json", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"gevent", "trio", "aiohttp"}
    for impl, row in figures.items():
        assert row["requests_per_s"] > 0 and row["requests_per_s_no_metrics"] > 0, impl
        assert 0 < row["p50_ms"] <= row["p99_ms"], impl
        assert row["errors"] == 0, impl
    assert "telemetry cost" in done.stdout


def test_task_count_benchmark_counts_every_task() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "task_count_cost.py"), "--tasks", "2000"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:] if line.split()[:1] != []]
    runtimes = {row[0] for row in rows if row[1] == "2000"}
    assert runtimes == {"gevent", "trio", "asyncio"}


def test_wrk_vs_cpu_benchmark_reports_a_ratio(tmp_path: Path) -> None:
    out = tmp_path / "wrk_vs_cpu.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "wrk_vs_cpu.py"),
            "--rounds", "1", "--duration", "1", "--warmup", "0", "--connections", "8",
            "--servers", "aiohttp", "--json", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"aiohttp"}
    assert figures["aiohttp"]["ratio"]["median"] > 0
    assert "ratio inside one run" in done.stdout
