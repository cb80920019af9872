"""How much work does each server do for a client that has gone?

A client starts a long request (`/sleep`, `/fanout`, `/stream`) and closes its connection
after a moment. The server records the request when it ends: status 499 if it noticed the
client leave and cancelled the work, 200 if it ran to completion for nobody. This script
reports, per server and route, how long the work went on after the client left.

aiohttp keeps running such handlers by default; stackbench runs it with
`handler_cancellation=True`, and `--no-cancel-on-disconnect` shows what the default costs.

    python benchmarks/disconnect_work.py
"""

from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from loadtest.orchestrator.serverproc import ServerProcess

WORK_S = 3.0
ROUTES = {
    "/sleep": f"/sleep?ms={WORK_S * 1000:.0f}",
    "/fanout": f"/fanout?n=100&ms={WORK_S * 1000:.0f}",
    "/stream": f"/stream?chunks=300&ms={WORK_S * 1000 / 300:.0f}",
}
VARIANTS = (
    ("gevent", ()),
    ("trio", ()),
    ("aiohttp", ()),
    ("aiohttp", ("--no-cancel-on-disconnect",)),
)


def recorded(port: int, route: str) -> dict[str, float]:
    """Requests recorded for `route`, by status."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "http_server_request_duration_seconds_count"
                and sample.labels["route"] == route
            ):
                counts[sample.labels["status"]] = sample.value
    return counts


def work_after_leaving(port: int, route: str, target: str) -> tuple[float, str]:
    before = recorded(port, route)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    time.sleep(0.3)
    sock.close()
    left = time.monotonic()
    while time.monotonic() - left < WORK_S * 2:
        after = recorded(port, route)
        ended = {s: n - before.get(s, 0) for s, n in after.items() if n > before.get(s, 0)}
        if ended:
            return time.monotonic() - left, ",".join(sorted(ended))
        time.sleep(0.01)
    return float("inf"), "never"


def main() -> None:
    print(f"A client leaves 0.3 s into a {WORK_S:g} s request; how long does the work go on?\n")
    print(f"{'server':<34} {'route':<8} {'work after leaving':>18}  recorded as")
    for impl, flags in VARIANTS:
        with ServerProcess(impl, extra_args=flags) as server:
            for route, target in ROUTES.items():
                seconds, statuses = work_after_leaving(server.port, route, target)
                name = f"{impl} {' '.join(flags)}".strip()
                print(f"{name:<34} {route:<8} {seconds * 1000:>15.0f} ms  {statuses}")


if __name__ == "__main__":
    main()
