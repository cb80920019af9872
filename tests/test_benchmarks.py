"""The benchmark scripts still run and print figures (tiny durations: a smoke test of the
scripts, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

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


def test_rate_vs_wrk_benchmark_reports_both_ratios(tmp_path: Path) -> None:
    out = tmp_path / "rate_vs_wrk.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "rate_vs_wrk.py"), "--rounds", "1",
            "--duration", "1", "--servers", "aiohttp", "--json", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"aiohttp"}
    assert figures["aiohttp"]["capacity_over_wrk"]["median"] > 0
    assert figures["aiohttp"]["cpu_over_wrk"]["median"] > 0
    assert "ratios taken inside each round" in done.stdout


def test_bare_servers_answer_hello_world() -> None:
    import http.client

    sys.path.insert(0, str(BENCHMARKS))
    from launch import BARE, Launched, Variant

    for impl, name in BARE.items():
        with Launched(Variant(impl, "bare")) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                for _ in range(2):  # the second on the same connection: keep-alive
                    conn.request("GET", "/")
                    response = conn.getresponse()
                    assert (response.status, response.read()) == (200, b"Hello, World!"), name
                    assert response.getheader("Content-Type", "").startswith("text/plain"), name
                    assert not response.will_close, name
            finally:
                conn.close()
            assert server.stop() == 0, f"{name} did not exit cleanly: {server.stderr_tail()}"


def test_wrk_benchmark_runs_beside_bare_reference(tmp_path: Path) -> None:
    out = tmp_path / "wrk.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "wrk_servers.py"), "--bare",
            "--servers", "threads-h11", "--duration", "1", "--warmup", "0", "--rounds", "1",
            "--connections", "8", "--json", str(out),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text())["threads-h11"]
    assert row["bare"]["name"] == "threads_h11" and row["bare"]["median"] > 0
    assert row["bare"]["errors"] == 0 and row["vs_bare"]["median"] > 0
    assert "bare reference" in done.stdout


def test_instruction_count_benchmark_counts_per_request(tmp_path: Path) -> None:
    """Under valgrind: one server process (each takes 15-20 s to start there)."""
    import shutil

    # `make test` installs valgrind (SYSTEM_PACKAGES): missing, it is a failure, not a skip.
    assert shutil.which("valgrind"), "valgrind is not installed: run make system-deps"
    out = tmp_path / "instructions.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "instructions.py"), "--servers", "aiohttp",
            "--kinds", "server", "--n1", "20", "--n2", "60", "--warmup", "5",
            "--idle-seconds", "1", "--json", str(out),
        ],
        capture_output=True, text=True, timeout=140,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    counted = json.loads(out.read_text())["servers"]["aiohttp"]["server"]
    # A GET / costs a few hundred thousand instructions on any of these servers.
    assert 50_000 < counted["per_request"] < 5_000_000, counted
    assert counted["idle_per_s"] >= 0
    assert "instructions/request" in done.stderr


def test_instruction_count_benchmark_counts_the_native_servers(tmp_path: Path) -> None:
    """The binary itself is counted (not the Python process that execs it), and Go's
    asynchronous preemption does not crash callgrind."""
    out = tmp_path / "instructions.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "instructions.py"), "--servers", "native",
            "--kinds", "server,bare", "--n1", "20", "--n2", "220", "--warmup", "5",
            "--idle-seconds", "1", "--json", str(out),
        ],
        capture_output=True, text=True, timeout=140,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    servers = json.loads(out.read_text())["servers"]
    for impl in ("go-nethttp", "rust-hyper"):
        for kind in ("server", "bare"):
            # A GET / costs 10-50 thousand instructions natively; a Python process, 200k+.
            assert 3_000 < servers[impl][kind]["per_request"] < 150_000, (impl, kind)


def test_upstream_clients_benchmark_reports_every_client() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "upstream_clients.py"), "--rounds", "1", "--calls", "20"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.rsplit(maxsplit=2) for line in done.stdout.splitlines()[2:]]
    assert [row[0].split()[0] for row in rows] == ["urllib3", "aiohttp", "httpx", "httpx"]
    assert all(float(row[1]) > 0 for row in rows), done.stdout
