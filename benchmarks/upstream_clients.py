"""CPU per call of the HTTP clients `/upstream` goes through, outside any server.

The upstream scenario's CPU per request is the server's and its client's together. This takes
the client alone: sequential keep-alive `GET /sleep?ms=0` to a stackbench aiohttp server (on
uvloop, on another CPU), from urllib3 (what gevent, gevent-h11 and threads-h11 call), aiohttp's
ClientSession (the aiohttp server) and httpx.AsyncClient on asyncio and on trio (asyncio-h11,
trio), each through the servers' own client classes and settings (servers/upstream/), in
interleaved rounds, the process's CPU time per call (user + system).
Without monkey patching: what gevent adds to urllib3 is in the server figures, not here.

    python benchmarks/upstream_clients.py               # 5 rounds of 1,000 calls each
    python benchmarks/upstream_clients.py --rounds 3 --calls 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

import aiohttp
import httpx
import trio
import urllib3

from loadtest.orchestrator.serverproc import ServerProcess
from servers.upstream import UpstreamConfig
from servers.upstream.aiohttp_client import AiohttpUpstream
from servers.upstream.httpx_client import HttpxUpstream
from servers.upstream.sync_client import SyncUpstream

PATH = "/sleep?ms=0"
WARMUP = 100


def _sync(config: UpstreamConfig) -> Callable[[int], None]:
    def run(calls: int) -> None:
        client = SyncUpstream(config)
        try:
            for _ in range(calls):
                client.call(PATH)
        finally:
            client.close()

    return run


async def _async_calls(make: Callable[[UpstreamConfig], object], config, calls: int) -> None:
    client = make(config)  # made inside the running loop, as the servers do
    try:
        for _ in range(calls):
            await client.call(PATH)  # type: ignore[attr-defined]
    finally:
        await client.aclose()  # type: ignore[attr-defined]


# The servers' own client classes, configured as a server would be (servers/upstream/).
CLIENTS: dict[str, Callable[[UpstreamConfig], Callable[[int], None]]] = {
    f"urllib3 {urllib3.__version__}": _sync,
    f"aiohttp {aiohttp.__version__} (asyncio)": lambda config: (
        lambda calls: asyncio.run(_async_calls(AiohttpUpstream, config, calls))
    ),
    f"httpx {httpx.__version__} (asyncio)": lambda config: (
        lambda calls: asyncio.run(_async_calls(HttpxUpstream, config, calls))
    ),
    f"httpx {httpx.__version__} (trio)": lambda config: (
        lambda calls: trio.run(_async_calls, HttpxUpstream, config, calls)
    ),
}


def cpu_per_call(run: Callable[[int], None], calls: int) -> float:
    """Microseconds of this process's CPU per call; a client's set-up is paid once a round."""
    run(WARMUP)
    started = time.process_time()
    run(calls)
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000, help="calls per client per round")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--upstream-cpu", type=int, default=1)
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1")
    cpus = os.sched_getaffinity(0)
    if not {args.client_cpu, args.upstream_cpu} <= cpus:
        parser.error(f"this machine has CPUs {sorted(cpus)} only")
    os.sched_setaffinity(0, {args.client_cpu})
    figures: dict[str, list[float]] = {name: [] for name in CLIENTS}
    with ServerProcess("aiohttp", extra_args=("--uvloop",), cpus={args.upstream_cpu}) as up:
        config = UpstreamConfig.parse(up.url)
        clients = {name: make(config) for name, make in CLIENTS.items()}
        for _ in range(args.rounds):
            for name, run in clients.items():
                figures[name].append(cpu_per_call(run, args.calls))
    print(f"CPU per sequential keep-alive GET, {args.rounds} interleaved rounds of {args.calls}")
    print(f"{'client':<28} {'median µs':>9}  min-max")
    for name, values in figures.items():
        print(f"{name:<28} {statistics.median(values):9.0f}  {min(values):.0f}-{max(values):.0f}")


if __name__ == "__main__":
    main()
