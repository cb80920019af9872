"""The exact scheduler lag: every tick of a Python server's lag monitor, as HdrHistogram counts.

The monitor sleeps LAG_INTERVAL_S (10 ms) and records how late it woke, 100 times a second, on
the loop it watches; so recording must cost next to nothing. It increments one element of a
plain list laid out as HdrHistogram lays out its counts (the setting of loadtest.histograms:
microseconds, 1 to 3,600,000,000, 3 significant digits) and nothing else; only `GET /lag` builds
an HdrHistogram from the list and encodes it, in HdrHistogram's V2 compressed encoding, so that
`loadtest.histograms.decode` reads it and two readings subtract. Measured here (CPython 3.11,
timeit): `record` 0.23 µs a tick, hdrh's own record_value 0.95 µs; a reading 0.5 ms (a loop's
ticks in a few hundred distinct values) to 2.5 ms (3,000), less of the loop than a scrape.

A recorder has one writer, the monitor: a reading copies the list in one call (atomic under the
GIL), so threads-h11, whose /lag is answered on a connection's thread while its monitor thread
records, reads a consistent snapshot without a lock.
"""

from __future__ import annotations

import json

from hdrh.histogram import HdrHistogram

from loadtest.histograms import HIGHEST_US, LOWEST_US, empty, encode

_LAYOUT = empty()
assert _LAYOUT.unit_magnitude == 0  # the index below assumes a lowest value of 1
_HALF = _LAYOUT.sub_bucket_half_count_magnitude  # 10: 1,024 values a half bucket
_MASK = _LAYOUT.sub_bucket_mask  # 2047
_SHIFT = _HALF + 1
COUNTS_LEN = _LAYOUT.counts_len  # 23,552


class LagHistogram:
    """Every lag tick since start, exactly (to 0.1 %). One writer: the lag monitor."""

    __slots__ = ("counts", "top")

    def __init__(self) -> None:
        self.counts = [0] * COUNTS_LEN
        self.top = 0  # the highest index recorded into: readings copy up to it

    def record(self, seconds: float) -> None:
        microseconds = int(seconds * 1e6 + 0.5)
        if microseconds < LOWEST_US:
            microseconds = LOWEST_US  # on time: the setting's lowest value
        elif microseconds > HIGHEST_US:
            microseconds = HIGHEST_US
        # HdrHistogram's counts index: the bucket is how many doublings above 2,047 the value
        # is, the sub-bucket its top 11 bits ((bucket + 1) * 1024 + (v >> bucket) - 1024).
        bucket = (microseconds | _MASK).bit_length() - _SHIFT
        index = (bucket << _HALF) + (microseconds >> bucket)
        self.counts[index] += 1
        if index > self.top:
            self.top = index

    def histogram(self) -> HdrHistogram:
        counts = self.counts[: self.top + 1]  # one copy: a consistent snapshot
        histogram = empty()
        recorded = [(index, count) for index, count in enumerate(counts) if count]
        if recorded:
            # Straight into hdrh's counts array, as its own decoder fills it (record_value per
            # index took 4 ms of the loop for 3,000 distinct values; this, under 1 ms).
            into = histogram.counts
            for index, count in recorded:
                into[index] = count
            total = sum(count for _, count in recorded)
            histogram.set_internal_tacking_values(recorded[0][0], recorded[-1][0], total)
        return histogram

    def body(self, interval_ms: int) -> bytes:
        """The `/lag` answer: `{"unit":"us","interval_ms":10,"count":N,"histogram":"..."}`."""
        histogram = self.histogram()
        answer = {
            "unit": "us",
            "interval_ms": interval_ms,
            "count": histogram.get_total_count(),
            "histogram": encode(histogram),
        }
        return json.dumps(answer, separators=(",", ":")).encode()
