"""Latency histograms with a bounded relative error: one HdrHistogram setting for the Locust
side (which records every request) and for reporting (which merges and reads percentiles).

Prometheus' fixed buckets only bound a percentile to the bucket it falls in (~25 % wide for the
load generator's, wider on the servers); an HdrHistogram with 3 significant digits keeps every
value to within 0.1 %, so a percentile read from it is exact to that error whatever the
distribution. Histograms travel and are stored in HdrHistogram's own compressed base64 encoding,
so samples.jsonl stays small and any HdrHistogram tool can read them.
"""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

__all__ = [
    "HIGHEST_US",
    "LOWEST_US",
    "RELATIVE_ERROR",
    "SIGNIFICANT_DIGITS",
    "decode",
    "empty",
    "encode",
    "merge",
    "percentiles_ms",
    "record_ms",
    "subtract",
]

LOWEST_US = 1  # values are recorded in microseconds
HIGHEST_US = 3_600_000_000  # an hour: anything longer is recorded as an hour
SIGNIFICANT_DIGITS = 3
RELATIVE_ERROR = 10.0**-SIGNIFICANT_DIGITS  # what a recorded value may be off by


def empty() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_ms(histogram: HdrHistogram, milliseconds: float) -> None:
    microseconds = round(milliseconds * 1000)
    histogram.record_value(min(max(microseconds, LOWEST_US), HIGHEST_US))


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode("ascii"))


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram holding every value of the encoded ones."""
    total = empty()
    for item in encoded:
        total.add(decode(item))
    return total


def subtract(after: HdrHistogram, before: HdrHistogram) -> HdrHistogram:
    """What was recorded between two readings of one cumulative histogram (a server's `/lag`
    answers, decoded): `after`'s counts less `before`'s, value range by value range.

    Raises ValueError when `before` counts something `after` does not (readings of two
    histograms, in the wrong order, or across a server restart) or when either is not in this
    module's setting."""
    difference = empty()
    for histogram in (after, before):
        if histogram.counts_len != difference.counts_len or (
            histogram.significant_figures != SIGNIFICANT_DIGITS
        ):
            raise ValueError("a histogram in another setting than loadtest.histograms'")
    # Counted up to the higher of the two highest indices recorded (an empty one has none).
    top = max(_top_index(after), _top_index(before))
    for index in range(top + 1):
        count = after.get_count_at_index(index) - before.get_count_at_index(index)
        if count < 0:
            raise ValueError(
                "the earlier reading counts values the later one does not: not two readings "
                "of one histogram, in order"
            )
        if count:
            difference.record_value(difference.get_value_from_index(index), count)
    return difference


def _top_index(histogram: HdrHistogram) -> int:
    if histogram.get_total_count() == 0:
        return -1
    return histogram.get_counts_array_index(histogram.get_max_value())


def percentiles_ms(histogram: HdrHistogram, percentiles: Iterable[float]) -> dict[float, float]:
    """{percentile: value in ms} (percentiles from 0 to 100); empty when nothing was recorded."""
    if histogram.get_total_count() == 0:
        return {}
    wanted = list(percentiles)
    values = histogram.get_percentile_to_value_dict(wanted)
    return {p: values[p] / 1000 for p in wanted}
