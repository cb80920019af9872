"""Behaviour that shows each server's concurrency model, measured against the server itself
(ratios to the waits the test asks for, never a fixed number of seconds)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import aiohttp
import pytest
from httpclient import get, metrics, sample_value, timed_get, wait_until

from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import RUNTIMES

SLEEP_S = 0.5


async def _concurrent_gets(port: int, target: str, count: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(f"http://127.0.0.1:{port}{target}") as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one() for _ in range(count)))


def test_200_concurrent_sleeps_overlap(server: ServerProcess) -> None:
    """200 requests that each wait 500 ms finish together, not one after another (100 s)."""
    started = time.perf_counter()
    statuses = asyncio.run(_concurrent_gets(server.port, f"/sleep?ms={SLEEP_S * 1000:.0f}", 200))
    elapsed = time.perf_counter() - started
    assert statuses == [200] * 200
    assert elapsed < 4 * SLEEP_S, f"200 concurrent sleeps took {elapsed:.2f}s"


BLOCK_MS = 1000


def _lag_samples_over(port: int, seconds: str) -> float:
    """How many scheduler-lag observations exceeded `seconds` (a bucket boundary)."""
    scrape = metrics(port)
    total = sample_value(scrape, "stackbench_scheduler_lag_seconds_count")
    within = sample_value(scrape, "stackbench_scheduler_lag_seconds_bucket", le=seconds)
    return total - within


def _json_latency_while_blocking(port: int, offload: int, kind: str) -> float:
    blocker = threading.Thread(
        target=get, args=(port, f"/blocking?ms={BLOCK_MS}&offload={offload}&kind={kind}")
    )
    blocker.start()
    time.sleep(0.1)  # let the blocking call begin
    latency, reply = timed_get(port, "/json")
    blocker.join()
    assert reply.status == 200
    return latency


@pytest.mark.parametrize("kind", ["python", "c"])
@pytest.mark.parametrize("offload", [0, 1])
def test_blocking_call_stalls_only_a_loop_that_did_not_offload(
    server: ServerProcess, offload: int, kind: str
) -> None:
    """The colouring pitfall and the C boundary: an explicit-await loop stalls on any blocking
    call made inline (tokio too: its current_thread runtime runs every task on the thread that
    blocks, and an FFI call is a plain call there); gevent only on one made in C, which monkey
    patching cannot see; threads never. Offloaded, nothing stalls."""
    lag_before = _lag_samples_over(server.port, "0.25")
    latency = _json_latency_while_blocking(server.port, offload, kind)
    lag_after = _lag_samples_over(server.port, "0.25")
    runtime = RUNTIMES[server.impl]
    stalls = offload == 0 and (
        runtime in ("trio", "asyncio", "tokio") or (runtime == "gevent" and kind == "c")
    )
    if stalls:
        # /json waited for the rest of the blocking call: the loop could not run it
        assert latency > 0.5 * BLOCK_MS / 1000, f"/json took {latency:.3f}s"
        assert lag_after > lag_before, "the lag monitor did not see the stalled loop"
    else:
        # gevent's monkey-patched call yields; offload=1 runs it on a thread
        assert latency < 0.25 * BLOCK_MS / 1000, f"/json took {latency:.3f}s"
        assert lag_after == lag_before


def _hold_open(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


def test_client_leaving_mid_fanout_cancels_every_child(server: ServerProcess) -> None:
    children, child_ms = 300, 30_000
    baseline = sample_value(server.port, "stackbench_tasks")
    sock = _hold_open(server.port, f"/fanout?n={children}&ms={child_ms}")
    assert wait_until(
        lambda: sample_value(server.port, "stackbench_tasks") >= baseline + children, timeout=10
    ), "the fan-out children never started"
    sock.close()
    # The children would otherwise live 30 s; they must be gone in a fraction of that.
    assert wait_until(
        lambda: sample_value(server.port, "stackbench_tasks") <= baseline, timeout=child_ms / 3000
    ), f"tasks stayed at {sample_value(server.port, 'stackbench_tasks')} (baseline {baseline})"


@pytest.mark.parametrize("target", ["/sleep?ms=30000", "/stream?chunks=1000&ms=30"])
def test_client_leaving_stops_the_request(server: ServerProcess, target: str) -> None:
    route = target.partition("?")[0]
    gone_before = sample_value(
        server.port, "http_server_request_duration_seconds_count", route=route, status="499"
    )
    sock = _hold_open(server.port, target)
    assert wait_until(
        lambda: sample_value(server.port, "http_server_active_requests") >= 2, timeout=10
    )
    sock.close()
    # Recorded as 499 (client closed) well before the request would have ended by itself.
    assert wait_until(
        lambda: (
            sample_value(
                server.port, "http_server_request_duration_seconds_count", route=route, status="499"
            )
            > gone_before
        ),
        timeout=10,
    ), f"{server.impl} kept serving {target} after its client left"
    assert wait_until(
        lambda: sample_value(server.port, "http_server_active_requests") <= 1, timeout=10
    )
