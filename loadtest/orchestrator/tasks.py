"""`stackbench tasks`: the seed question without HTTP. What does one idle task cost in memory,
how long does it take to spawn, and what does a switch cost, in each runtime?

Each measurement runs in a fresh subprocess (gevent must monkey-patch alone, and RSS must not
carry over): it parks N tasks, each `depth` frames deep (a greenlet's saved stack grows with
depth; a coroutine's frames live on the heap either way), and reports the RSS delta per task.
The archetypes are measured the same way by the native servers' binaries (`--measure-tasks`):
a goroutine (Go's runtime, stackful) and a task on tokio (Rust's futures, stackless). Go's
binary also times a cgo call, the price of Go's C boundary.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

PYTHON_RUNTIMES = ("gevent", "asyncio", "uvloop", "trio", "thread")
# Each native runtime and the server binary that measures it.
NATIVE_RUNTIMES = {"go": "go-nethttp", "tokio": "rust-hyper"}
RUNTIMES = (*PYTHON_RUNTIMES, *NATIVE_RUNTIMES)
GO_MIN_STACK_BYTES = 2048  # a goroutine's initial stack (Go 1.4 and later), as documented
SWITCHES = 20_000
CGO_CALLS = 2_000_000


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _nest(depth: int, park: Callable[[], Any]) -> Any:
    return park() if depth <= 0 else _nest(depth - 1, park)


async def _anest(depth: int, park: Callable[[], Any]) -> Any:
    return await park() if depth <= 0 else await _anest(depth - 1, park)


def _measure_gevent(n: int, depth: int) -> dict[str, float]:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.event

    release = gevent.event.Event()
    before = _rss()
    started = time.perf_counter()
    parked = [gevent.spawn(_nest, depth, release.wait) for _ in range(n)]
    gevent.sleep(0)  # every greenlet runs to its park point (and its stack is saved)
    spawn = time.perf_counter() - started
    after = _rss()
    release.set()
    gevent.joinall(parked)

    def ping() -> None:
        for _ in range(SWITCHES // 2):
            gevent.sleep(0)

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(ping), gevent.spawn(ping)])
    return {"rss_delta": after - before, "spawn": spawn,
            "switch": (time.perf_counter() - started) / SWITCHES}  # fmt: skip


def _measure_asyncio(n: int, depth: int, uvloop: bool = False) -> dict[str, float]:
    import asyncio

    async def main() -> dict[str, float]:
        release = asyncio.Event()
        before = _rss()
        started = time.perf_counter()
        parked = [asyncio.create_task(_anest(depth, release.wait)) for _ in range(n)]
        await asyncio.sleep(0)
        spawn = time.perf_counter() - started
        after = _rss()
        release.set()
        await asyncio.gather(*parked)

        async def ping() -> None:
            for _ in range(SWITCHES // 2):
                await asyncio.sleep(0)

        started = time.perf_counter()
        await asyncio.gather(ping(), ping())
        return {"rss_delta": after - before, "spawn": spawn,
                "switch": (time.perf_counter() - started) / SWITCHES}  # fmt: skip

    if uvloop:
        import uvloop as uv

        with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


def _measure_trio(n: int, depth: int) -> dict[str, float]:
    import trio
    import trio.testing

    async def main() -> dict[str, float]:
        release = trio.Event()
        result: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            before = _rss()
            started = time.perf_counter()
            for _ in range(n):
                nursery.start_soon(_anest, depth, release.wait)
            # trio runs new tasks in a later batch, in random order: wait until all are parked.
            await trio.testing.wait_all_tasks_blocked()
            result["spawn"] = time.perf_counter() - started
            result["rss_delta"] = _rss() - before
            release.set()

        async def ping() -> None:
            for _ in range(SWITCHES // 2):
                await trio.sleep(0)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ping)
            nursery.start_soon(ping)
        result["switch"] = (time.perf_counter() - started) / SWITCHES
        return result

    return trio.run(main)


def _measure_thread(n: int, depth: int) -> dict[str, float]:
    release = threading.Event()
    before = _rss()
    started = time.perf_counter()
    parked = [threading.Thread(target=_nest, args=(depth, release.wait)) for _ in range(n)]
    for thread in parked:
        thread.start()
    spawn = time.perf_counter() - started
    after = _rss()
    release.set()
    for thread in parked:
        thread.join()
    ping, pong = threading.Event(), threading.Event()

    def player(mine: threading.Event, theirs: threading.Event) -> None:
        for _ in range(SWITCHES // 20):
            mine.wait()
            mine.clear()
            theirs.set()

    players = [threading.Thread(target=player, args=(ping, pong)),
               threading.Thread(target=player, args=(pong, ping))]  # fmt: skip
    started = time.perf_counter()
    for player_thread in players:
        player_thread.start()
    ping.set()
    for player_thread in players:
        player_thread.join()
    return {"rss_delta": after - before, "spawn": spawn,
            "switch": (time.perf_counter() - started) / (SWITCHES // 10)}  # fmt: skip


def _command(runtime: str, n: int, depth: int) -> list[str]:
    if runtime in NATIVE_RUNTIMES:
        from servers.native import binary

        binary_path = binary(NATIVE_RUNTIMES[runtime])
        return [str(binary_path), "--measure-tasks", str(n), "--depth", str(depth)]
    return [sys.executable, "-m", "loadtest.orchestrator.tasks", "--child", runtime, str(n),
            str(depth)]  # fmt: skip


def measure(runtime: str, n: int, depth: int) -> dict[str, Any]:
    """Run one measurement in a fresh process."""
    done = subprocess.run(_command(runtime, n, depth), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{runtime} n={n}: {done.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(done.stdout)
    return {
        "runtime": runtime,
        "tasks": n,
        "depth": depth,
        "bytes_per_task": figures["rss_delta"] / n,
        "spawn_us": figures["spawn"] / n * 1e6,
        "switch_us": figures["switch"] * 1e6,
    }


def sizes_for(runtime: str, scale: float) -> tuple[int, ...]:
    base = (1_000, 10_000) if runtime == "thread" else (10_000, 100_000)
    return tuple(max(100, int(n * scale)) for n in base)


def run_all(scale: float, depths: tuple[int, ...], progress: Callable[[str], None]) -> list[dict]:
    rows = []
    for depth in depths:
        for runtime in RUNTIMES:
            for n in sizes_for(runtime, scale):
                progress(f"{runtime}: {n} tasks, depth {depth}")
                rows.append(measure(runtime, n, depth))
    return rows


def measure_cgo(calls: int = CGO_CALLS) -> dict[str, float]:
    """What one call from Go into C costs against one Go call (nanoseconds, Go's binary timing
    `calls` of each, best of its repeats): the toll at Go's C boundary."""
    from servers.native import binary

    command = [str(binary("go-nethttp")), "--measure-cgo", str(calls)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"cgo: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def table(rows: list[dict], cgo: dict[str, float] | None = None) -> str:
    lines = [
        f"{'runtime':<8} {'tasks':>7} {'depth':>5} {'bytes/task':>11} {'spawn us':>9} "
        f"{'switch us':>9}"
    ]
    for row in rows:
        lines.append(
            f"{row['runtime']:<8} {row['tasks']:>7} {row['depth']:>5} "
            f"{row['bytes_per_task']:>11,.0f} {row['spawn_us']:>9.2f} {row['switch_us']:>9.2f}"
        )
    lines.append(f"(Go documents {GO_MIN_STACK_BYTES:,} bytes as a goroutine's minimum stack)")
    if cgo:
        lines.append(
            f"a call from Go into C (cgo): {cgo['cgo_call_ns']:.0f} ns; "
            f"a Go call: {cgo['go_call_ns']:.1f} ns"
        )
    return "\n".join(lines)


def page(rows: list[dict], cgo: dict[str, float] | None = None) -> str:
    """A self-contained HTML page: the table and a bar chart of bytes per task."""
    from loadtest.reporting.charts import horizontal_bars
    from loadtest.reporting.report import CSS

    largest = {}
    for row in rows:
        key = (row["runtime"], row["depth"])
        if key not in largest or row["tasks"] > largest[key]["tasks"]:
            largest[key] = row
    bars = [(f"{r['runtime']} (depth {r['depth']})", r["bytes_per_task"])
            for r in largest.values()]  # fmt: skip
    chart = horizontal_bars(
        "Bytes per idle task (largest N measured)", "bytes per task", bars,
        reference=GO_MIN_STACK_BYTES, reference_label="Go's minimum goroutine stack",
    )  # fmt: skip
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>stackbench tasks</title>"
        f"<style>{CSS}</style></head><body><h1>Memory per idle task</h1>"
        f"{chart}"
        f"<pre>{table(rows, cgo)}</pre></body></html>"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="stackbench tasks")
    parser.add_argument("--child", nargs=3, metavar=("RUNTIME", "N", "DEPTH"))
    args = parser.parse_args()
    runtime, n, depth = args.child[0], int(args.child[1]), int(args.child[2])
    measurers = {
        "gevent": _measure_gevent,
        "asyncio": _measure_asyncio,
        "uvloop": lambda n, d: _measure_asyncio(n, d, uvloop=True),
        "trio": _measure_trio,
        "thread": _measure_thread,
    }
    print(json.dumps(measurers[runtime](n, depth)))


def write(out: Path, rows: list[dict], cgo: dict[str, float] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks.json").write_text(json.dumps(rows, indent=2) + "\n")
    if cgo:
        (out / "cgo.json").write_text(json.dumps(cgo, indent=2) + "\n")
    path = out / "tasks.html"
    path.write_text(page(rows, cgo), encoding="utf-8")
    return path


if __name__ == "__main__":
    main()
