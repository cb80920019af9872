"""What reading the `stackbench_tasks` gauge costs with many live tasks.

Each server counts its live tasks at scrape time, the cheapest exact way its runtime allows:
trio asks the scheduler (`current_statistics().tasks_living`, O(1)); aiohttp asks asyncio
(`len(asyncio.all_tasks())`, O(n): it copies the registry and drops finished tasks); gevent
counts the greenlets the server spawned itself (a Group, O(1)), because its only global count,
`gc.get_objects()`, walks the whole heap. This script parks N idle tasks in each runtime (each
in its own process) and times one count.

    python benchmarks/task_count_cost.py            # N = 10k and 100k
    python benchmarks/task_count_cost.py --tasks 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

RUNTIMES = ("gevent", "trio", "asyncio")


def _time_per_call(count: Callable[[], int], budget_s: float = 1.0) -> tuple[float, int]:
    calls, started = 0, time.perf_counter()
    while True:
        value = count()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed > budget_s or calls >= 10_000:
            return elapsed / calls, value


def _measure_gevent(tasks: int) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import gc

    import gevent
    import gevent.pool

    group = gevent.pool.Group()
    for _ in range(tasks):
        group.spawn(gevent.sleep, 3600)
    gevent.sleep(0)  # let every greenlet start and park
    per_call, counted = _time_per_call(lambda: len(group))
    walk, walked = _time_per_call(
        lambda: sum(isinstance(o, gevent.Greenlet) for o in gc.get_objects()), budget_s=2.0
    )
    return {
        "method": "len(Group) of spawned greenlets",
        "seconds": per_call,
        "counted": counted,
        "alternative": {"method": "gc.get_objects() walk", "seconds": walk, "counted": walked},
    }


def _measure_trio(tasks: int) -> dict:
    import trio

    async def main() -> dict:
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(trio.sleep_forever)
            await trio.sleep(0.1)
            per_call, counted = _time_per_call(
                lambda: trio.lowlevel.current_statistics().tasks_living
            )
            nursery.cancel_scope.cancel()
        return {"method": "current_statistics().tasks_living", "seconds": per_call,
                "counted": counted}  # fmt: skip

    return trio.run(main)


def _measure_asyncio(tasks: int) -> dict:
    import asyncio

    from servers.aiohttp_server import count_live_tasks

    async def main() -> dict:
        parked = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(tasks)]
        await asyncio.sleep(0.1)
        per_call, counted = _time_per_call(count_live_tasks)
        for task in parked:
            task.cancel()
        await asyncio.gather(*parked, return_exceptions=True)
        return {"method": "len(asyncio.all_tasks())", "seconds": per_call, "counted": counted}

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, action="append", help="default: 10000 and 100000")
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.tasks or [10_000, 100_000]
    if args.child:
        measure = {"gevent": _measure_gevent, "trio": _measure_trio, "asyncio": _measure_asyncio}
        print(json.dumps(measure[args.child](sizes[0])))
        return
    print(f"{'runtime':<8} {'tasks':>7} {'per count':>11}  method")
    for tasks in sizes:
        for runtime in RUNTIMES:
            done = subprocess.run(
                [sys.executable, __file__, "--child", runtime, "--tasks", str(tasks)],
                capture_output=True, text=True, check=True, timeout=600,
            )  # fmt: skip
            result = json.loads(done.stdout)
            assert result["counted"] >= tasks, result
            print(f"{runtime:<8} {tasks:>7} {result['seconds'] * 1e6:>9.1f}us  {result['method']}")
            if alternative := result.get("alternative"):
                print(
                    f"{'':<8} {'':>7} {alternative['seconds'] * 1e6:>9.1f}us  "
                    f"{alternative['method']} (not used)"
                )


if __name__ == "__main__":
    main()
