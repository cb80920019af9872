"""What one scrape of /metrics costs a server: bytes, and CPU per scrape from /proc.

    python benchmarks/exposition_cost.py [--impls gevent,trio,aiohttp] [--scrapes 400]

Each server is started, sent every request of the mixed scenario (so the latency histogram has
the series it has under the live demo), then scraped `--scrapes` times back to back; the CPU
the server used meanwhile (utime + stime, /proc's 10 ms ticks: +-2 ticks over the whole) over
the scrapes is the cost of one. Run it against another checkout with PYTHONPATH to compare.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request

import psutil

from loadtest.driver.scenarios import SCENARIOS
from loadtest.orchestrator.serverproc import ServerProcess

TICK_S = 0.01


def _get(url: str, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def measure(impl: str, scrapes: int) -> tuple[int, int, float, float]:
    with ServerProcess(impl) as server:
        for request in SCENARIOS["mixed"].requests:
            for _ in range(3):
                _get(server.url + request.target, request.body)
        text = _get(server.url + "/metrics")
        process = psutil.Process(server.pid)
        before = sum(process.cpu_times()[:2])
        started = time.perf_counter()
        for _ in range(scrapes):
            _get(server.url + "/metrics")
        wall = time.perf_counter() - started
        cpu = sum(process.cpu_times()[:2]) - before
    return len(text), text.count(b"\n"), cpu / scrapes, wall / scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impls", default="gevent,trio,aiohttp")
    parser.add_argument("--scrapes", type=int, default=400)
    args = parser.parse_args()
    print(f"{'server':12} {'bytes':>8} {'lines':>6} {'CPU ms/scrape':>14} {'wall ms':>8}")
    for impl in args.impls.split(","):
        size, lines, cpu, wall = measure(impl, args.scrapes)
        error = 2 * TICK_S / args.scrapes * 1000
        print(f"{impl:12} {size:8} {lines:6} {cpu * 1000:8.2f} +-{error:.2f} {wall * 1000:8.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
