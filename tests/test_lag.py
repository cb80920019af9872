"""Exact scheduler lag: every tick of each server's lag monitor in `/lag` (HdrHistogram, 3
significant digits), against a loop blocked for a duration the test measures; the Prometheus
histogram beside it; and the native servers' hand-written encoders against Python's hdrh."""

from __future__ import annotations

import http.client
import itertools
import json
import math
import random
import subprocess
import time
from dataclasses import dataclass

import pytest
from httpclient import histogram_quantile, metrics

from loadtest import histograms
from loadtest.orchestrator.serverproc import ServerProcess
from servers.contract import IMPLS, NATIVE_TIER, RUNTIMES
from servers.native import binary
from servers.telemetry import LAG_BUCKETS

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

LAG = "stackbench_scheduler_lag_seconds"
# Servers whose one loop a /cpu request blocks: every task waits for it, the lag monitor too.
# (gevent's hub and tokio's current_thread runtime as much as asyncio's and trio's loops; Go
# preempts a goroutine that computes, and threads-h11's monitor is a thread of its own.)
COOPERATIVE = [impl for impl in IMPLS if RUNTIMES[impl] in ("gevent", "trio", "asyncio", "tokio")]
TARGET_BLOCK_S = 0.040  # what each /cpu request is sized to block for, about
BLOCKS = 6  # /cpu requests per server: each leaves one late tick
MONITOR_INTERVAL_MS = 10.0
SLACK_MS = 1.0  # the issue's: [D - 10 ms - 1 ms, D + 1 ms]
IDLE_MS = 25  # between blocks: two and a half monitor intervals
PROMETHEUS_TOLERANCE = 0.12  # R20 buckets are 11-12.7 % wide


def _lag_reading(conn: http.client.HTTPConnection) -> tuple[dict, object]:
    conn.request("GET", "/lag")
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200, body
    return body, histograms.decode(body["histogram"])


def _lag_buckets(port: int) -> dict[float, float]:
    """The Prometheus lag histogram now: {le: cumulative count}."""
    return {
        float(sample.labels["le"]): sample.value
        for sample in metrics(port)[LAG].samples
        if sample.name == f"{LAG}_bucket"
    }


def _paired(
    conn: http.client.HTTPConnection, port: int, since: tuple[dict, dict] | None = None
) -> tuple[dict, dict, object]:
    """The /lag reading and the Prometheus lag buckets, one after the other. After a first
    pair (`since`), read again until both counted as many ticks since it (a tick can land
    between the two reads, and a slow scrape lets several in), so that the two windows hold
    the same ticks."""
    for _ in range(20):
        # /lag first: the client parses /metrics slowly (tens of ms for a big one), but only
        # after the server took its snapshot, which then follows /lag's by a millisecond or two.
        body, histogram = _lag_reading(conn)
        buckets = _lag_buckets(port)
        if math.inf not in buckets:  # a server just started: no tick observed yet
            time.sleep(0.05)
            continue
        if since is None:
            return buckets, body, histogram
        first_buckets, first_body = since
        if buckets[math.inf] - first_buckets[math.inf] == body["count"] - first_body["count"]:
            return buckets, body, histogram
    raise AssertionError("the Prometheus histogram and /lag never counted the same ticks")


def _timed_cpu(conn: http.client.HTTPConnection, rounds: int) -> tuple[float, float]:
    """When one /cpu request was sent and when its last byte arrived (perf_counter seconds), on
    a kept-alive connection: no connect in it."""
    sent = time.perf_counter()
    conn.request("GET", f"/cpu?n={rounds}")
    response = conn.getresponse()
    response.read()
    answered = time.perf_counter()
    assert response.status == 200
    return sent, answered


def _idle(conn: http.client.HTTPConnection, ms: int) -> tuple[float, float]:
    """A request that waits without blocking the loop (when it was sent, when it answered):
    the monitor's overdue tick (its deadline is earlier than this sleep's) has fired and been
    recorded when it answers."""
    sent = time.perf_counter()
    conn.request("GET", f"/sleep?ms={ms}")
    response = conn.getresponse()
    response.read()
    answered = time.perf_counter()
    assert response.status == 200
    return sent, answered


@dataclass
class Block:
    """One /cpu request of the test, as the client timed it (ms)."""

    duration: float  # D: its send to its last byte
    gap: float  # from then to the next /sleep's send
    idle_excess: float  # how much longer than IDLE_MS that /sleep took


@pytest.mark.parametrize("impl", COOPERATIVE)
def test_exact_lag_brackets_a_blocked_loop(impl: str, machine_alone: None) -> None:
    """A loop blocked for D ms by a /cpu request makes the 10 ms monitor wake between D - 10
    and D ms late: the exact p99 of the ticks lies within [D - 11, D + 1] ms.

    D is the wall time of each /cpu request as the client sees it (its send to its last byte:
    the block and a little more), measured here and now, never a figure fixed in advance (CPU
    steal stretches some blocks here by tens of ms). Each block leaves one late tick, within
    [D - 10, D] of its own D, and below 100 ticks the p99 is the latest tick: it lies within
    D + 1 ms of the longest D, and above D - 11 ms of any. The lower bound takes the third
    longest D: the client itself is held up now and then after an answer has arrived (a D
    overstated by 10-30 ms, one request in ~30 here), which would otherwise fail a test of
    the server.

    The blocks are phased. Each begins after a /sleep of 25 ms (IDLE_MS) that began as the
    previous block ended, which is when the monitor, overdue, woke and armed again: so the
    monitor has recorded one block's tick before the next block starts (one tick over two
    blocks would read 2 D), and the next block begins half-way through the monitor's sleep
    (its tick is then about D - 5 ms late, mid-bracket). A block that began just after the
    monitor's deadline, while the loop still waited out the millisecond its poll rounds a
    timeout up to, would have that wait in its tick too (up to D + 1.5 ms, measured); after a
    sleep of 20 ms, a whole number of intervals, each block began just after the monitor
    armed (D - 10 ms). The first block follows a phasing block of half its size; its tick,
    and the sizing probes' (5-10 ms), are below the blocks'.

    The machine is paused now and then, both CPUs at once, for about 10 ms (a virtual
    machine's steal): a pause between a block's answer and the monitor's wake holds the loop
    up after the client has timed D. The client sees such a pause as the time from that answer
    to its next /sleep (`gap`), or as that /sleep's lateness beyond the run's least
    (`idle_excess`): the loop was blocked that much longer, and it counts into the D of the
    upper bound (0.05 ms and 0 when nothing paused).

    The Prometheus histogram of the same ticks, read as Prometheus reads buckets
    (histogram_quantile), must give a p99 within 12 % of the exact one. The two are read one
    after the other, so the test runs on a fresh server, whose small /metrics renders in a
    few ms: one that had served the other suites renders for tens of ms, and the tick it delays
    lands in one window and not the other."""
    fresh = ServerProcess(impl)
    port = fresh.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        buckets_before, reading_before, before = _paired(conn, port)
        # Size the requests on this server, now: the least of three probes of 5-10 ms, each
        # followed by a /sleep (two requests that block back to back may leave one tick).
        probe = 1_000
        while (took := _probe(conn, probe)) < 0.005:
            probe *= 2
        took = min(took, _probe(conn, probe), _probe(conn, probe))
        rounds = max(1, round(probe * TARGET_BLOCK_S / took))
        # The phasing block, which sizes them again: being longer, it is less noise than work.
        half = max(1, rounds // 2)
        rounds = max(rounds, round(half * TARGET_BLOCK_S / _span(_timed_cpu(conn, half))))
        timings = []
        for _ in range(BLOCKS):
            idle = _idle(conn, IDLE_MS)
            timings.append((idle, _timed_cpu(conn, rounds)))
        last_idle = _idle(conn, IDLE_MS)
        buckets_after, reading_after, after = _paired(
            conn, port, since=(buckets_before, reading_before)
        )
    finally:
        conn.close()
        fresh.__exit__(None, None, None)

    idles = [idle for idle, _ in timings[1:]] + [last_idle]  # the /sleep after each block
    excess = [(_span(idle) - IDLE_MS / 1e3) * 1e3 for idle in idles]
    blocks = [
        Block(_span(cpu) * 1e3, (idle[0] - cpu[1]) * 1e3, lateness - min(excess))
        for (_, cpu), idle, lateness in zip(timings, idles, excess, strict=True)
    ]
    ticks = histograms.subtract(after, before)
    assert ticks.get_total_count() == reading_after["count"] - reading_before["count"]
    assert BLOCKS <= ticks.get_total_count() < 100, ticks.get_total_count()
    exact_p99 = histograms.percentiles_ms(ticks, [99.0])[99.0]
    window = {le: buckets_after[le] - buckets_before[le] for le in buckets_after}
    prometheus_p99 = histogram_quantile(0.99, window) * 1e3
    third_longest = sorted(block.duration for block in blocks)[-3]
    low = third_longest - MONITOR_INTERVAL_MS - SLACK_MS
    high = max(block.duration + block.gap + block.idle_excess for block in blocks) + SLACK_MS
    late = [
        item.value_iterated_to / 1e3
        for item in ticks.get_recorded_iterator()
        for _ in range(item.count_at_value_iterated_to)
    ][-BLOCKS:]
    print(
        f"{impl}: /cpu?n={rounds}, D "
        + ", ".join(f"{b.duration:.2f}" for b in blocks)
        + " ms (pauses after: "
        + ", ".join(f"{b.gap + b.idle_excess:.2f}" for b in blocks)
        + f"); the {BLOCKS} latest of {ticks.get_total_count()} ticks "
        + ", ".join(f"{t:.2f}" for t in late)
        + f" ms; exact p99 {exact_p99:.2f} ms (allowed {low:.2f}-{high:.2f}); Prometheus p99 "
        f"{prometheus_p99:.2f} ms ({window[math.inf]:.0f} ticks)"
    )
    assert low <= exact_p99 <= high
    assert abs(prometheus_p99 - exact_p99) <= PROMETHEUS_TOLERANCE * exact_p99


def _probe(conn: http.client.HTTPConnection, rounds: int) -> float:
    took = _span(_timed_cpu(conn, rounds))
    _idle(conn, IDLE_MS)
    return took


def _span(times: tuple[float, float]) -> float:
    return times[1] - times[0]


def test_lag_buckets_are_r20_from_a_tenth_of_a_millisecond() -> None:
    """20 a decade (the R20 numbers of the latency buckets: each 11-12.7 % above the last, but
    1.6 which is 14.3 % above 1.4) from 0.1 ms, past the 60 s a /sleep may last."""
    assert LAG_BUCKETS[0] == 0.0001
    assert LAG_BUCKETS[-1] >= 60
    assert list(LAG_BUCKETS) == sorted(set(LAG_BUCKETS))
    ratios = [b / a for a, b in itertools.pairwise(LAG_BUCKETS)]
    assert max(ratios) < 1.143 and sorted(ratios)[-7] < 1.128
    assert sum(0.001 <= b < 0.01 for b in LAG_BUCKETS) == 20
    assert {0.001, 0.01, 0.1, 0.25, 1.0, 10.0} <= set(LAG_BUCKETS)  # thresholds tests quote


@pytest.mark.parametrize("impl", IMPLS)
def test_every_server_exposes_the_same_lag_buckets(
    servers: dict[str, ServerProcess], impl: str
) -> None:
    bounds = sorted(_lag_buckets(servers[impl].port))
    assert bounds == [*LAG_BUCKETS, math.inf]


def _values_to_encode() -> list[int]:
    """Microseconds covering the encoding's cases: every sub-bucket edge, runs of zeros long and
    short, a count above one byte of varint, the setting's lowest and highest values, and
    what an idle and a stalled loop record."""
    rng = random.Random(22)
    values = [1, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 65_535, 1_000_000,
              3_599_999_999, 3_600_000_000]  # fmt: skip
    values += [150] * 300  # a count of 300: a two-byte varint
    values += [round(rng.lognormvariate(math.log(300), 1.0)) + 1 for _ in range(5_000)]
    values += [rng.randint(30_000, 45_000) for _ in range(40)]
    return values


@pytest.mark.parametrize("impl", NATIVE_TIER)
def test_native_encoder_is_hdrhistograms(impl: str) -> None:
    """go-nethttp and rust-hyper write HdrHistogram's V2 encoding by hand: the same values,
    recorded there and by Python's hdrh, decode (with hdrh) to the same counts and the same
    percentiles, and the /lag body around them is the Python servers'."""
    values = _values_to_encode()
    done = subprocess.run(
        [str(binary(impl)), "--encode-lag"],
        input="\n".join(map(str, values)) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body = json.loads(done.stdout)
    assert list(body) == ["unit", "interval_ms", "count", "histogram"]
    assert (body["unit"], body["interval_ms"], body["count"]) == ("us", 10, len(values))
    native = histograms.decode(body["histogram"])
    python = histograms.empty()
    for value in values:
        python.record_value(value)
    assert native.get_total_count() == len(values)
    assert [native.get_count_at_index(i) for i in range(native.counts_len)] == [
        python.get_count_at_index(i) for i in range(python.counts_len)
    ]
    wanted = [0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0]
    assert histograms.percentiles_ms(native, wanted) == histograms.percentiles_ms(python, wanted)
    assert native.get_max_value() == python.get_highest_equivalent_value(max(values))
    # An empty histogram too (a server asked before its first tick).
    done = subprocess.run(
        [str(binary(impl)), "--encode-lag"], input="", capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    body = json.loads(done.stdout)
    assert body["count"] == 0
    assert histograms.decode(body["histogram"]).get_total_count() == 0


def test_python_recorder_is_hdrhistograms() -> None:
    """The Python servers' recorder (a plain list indexed as HdrHistogram indexes its counts)
    against hdrh's own record_value, on the same values."""
    from servers.lag import LagHistogram

    values = _values_to_encode()
    recorder = LagHistogram()
    for value in values:
        recorder.record(value / 1e6)
    recorder.record(0.0)  # a timer exactly on time: counted as the lowest value, 1 µs
    recorder.record(10_000.0)  # beyond the setting's hour: counted as an hour
    body = json.loads(recorder.body(10))
    assert list(body) == ["unit", "interval_ms", "count", "histogram"]
    decoded = histograms.decode(body["histogram"])
    python = histograms.empty()
    for value in [*values, 1, histograms.HIGHEST_US]:
        python.record_value(value)
    assert body["count"] == decoded.get_total_count() == len(values) + 2
    assert [decoded.get_count_at_index(i) for i in range(decoded.counts_len)] == [
        python.get_count_at_index(i) for i in range(python.counts_len)
    ]
