"""`stackbench tasks` on small counts: every runtime measured in its own process, a table, a
chart. (The figures at 10k/100k are the benchmark; this checks the tool.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

ROOT = Path(__file__).resolve().parent.parent


def test_tasks_measures_every_runtime(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "tasks", "--scale", "0.02", "--depths", "0,10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "tasks.json").read_text())
    assert {row["runtime"] for row in rows} == {
        "gevent", "asyncio", "uvloop", "trio", "thread", "go", "tokio",
    }  # fmt: skip
    assert {row["depth"] for row in rows} == {0, 10}
    largest = {}
    for row in rows:
        key = (row["runtime"], row["depth"])
        if row["tasks"] > largest.get(key, {"tasks": 0})["tasks"]:
            largest[key] = row
    for key, row in largest.items():
        assert row["bytes_per_task"] > 100, key  # thousands of tasks must show in RSS
        assert row["spawn_us"] > 0 and row["switch_us"] > 0, key
    # A greenlet keeps a copy of its C stack: more than a stackless asyncio task.
    assert largest[("gevent", 10)]["bytes_per_task"] > largest[("asyncio", 10)]["bytes_per_task"]
    # The archetypes measured, not quoted: a goroutine keeps a stack of its own (Go documents
    # 2 KiB as its minimum), a parked tokio task only its future's state.
    assert largest[("go", 0)]["bytes_per_task"] >= 2048
    assert largest[("tokio", 0)]["bytes_per_task"] < largest[("go", 0)]["bytes_per_task"]
    cgo = json.loads((tmp_path / "cgo.json").read_text())
    assert cgo["cgo_call_ns"] > cgo["go_call_ns"] > 0
    assert "a call from Go into C (cgo)" in done.stdout
    page = (tmp_path / "tasks.html").read_text()
    assert "<svg" in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_tasks_rejects_bad_depths() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "tasks", "--depths", "deep"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "--depths" in done.stderr and "Traceback" not in done.stderr
