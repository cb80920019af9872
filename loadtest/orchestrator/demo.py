"""`stackbench demo`: the three servers side by side on fixed ports, checked for identical
answers, serving until Ctrl-C (or --duration) so you can point curl, wrk or Locust at them."""

from __future__ import annotations

import contextlib
import signal
import threading
import urllib.error
import urllib.request

from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import STACK_TIER

SMOKE_TARGETS = ("/", "/json", "/sleep?ms=10", "/fanout?n=10&ms=10", "/cpu?n=1000", "/nope")


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_demo(base_port: int, duration: float | None) -> None:
    """Start gevent, trio and aiohttp on base_port, +1, +2; raise ServerStartError if one cannot."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for offset, impl in enumerate(STACK_TIER):
            servers[impl] = stack.enter_context(ServerProcess(impl, port=base_port + offset))
        print(f"{'server':<8} {'URL':<24} metrics")
        for impl, server in servers.items():
            print(f"{impl:<8} {server.url:<24} {server.url}/metrics")
        print("\nSame request, same bytes from every server:")
        for target in SMOKE_TARGETS:
            answers = {impl: _fetch(server.url + target) for impl, server in servers.items()}
            status, body = answers[STACK_TIER[0]]
            same = "identical" if len(set(answers.values())) == 1 else "DIFFERENT"
            print(f"  {target:<22} {status} {len(body):>4} bytes  {same}")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        if duration is None:
            print("\nServing until Ctrl-C. Try: curl " + servers["trio"].url + "/sleep?ms=100")
        else:
            print(f"\nServing for {duration:g} s.")
        stop.wait(duration)
        print("Stopping: each server drains its in-flight requests.")
    print("Stopped.")
