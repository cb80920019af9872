"""loadtest.histograms: the HdrHistogram setting and codec, and the difference of two cumulative
readings (what a run makes of two `/lag` answers)."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from loadtest import histograms


def _recorded(values_us: list[int]) -> str:
    histogram = histograms.empty()
    for value in values_us:
        histogram.record_value(value)
    return histograms.encode(histogram)


def test_subtract_leaves_what_was_recorded_between_two_readings() -> None:
    rng = random.Random(22)
    early = [rng.randint(50, 2_000) for _ in range(5_000)]  # an idle loop: sub-millisecond
    late = [rng.randint(30_000, 40_000) for _ in range(20)] + [500] * 30  # blocked, then idle
    before = histograms.decode(_recorded(early))
    after = histograms.decode(_recorded(early + late))
    difference = histograms.subtract(after, before)
    assert difference.get_total_count() == len(late)
    expected = histograms.empty()
    for value in late:
        expected.record_value(value)
    wanted = [50.0, 90.0, 99.0, 100.0]
    assert histograms.percentiles_ms(difference, wanted) == histograms.percentiles_ms(
        expected, wanted
    )
    p99 = histograms.percentiles_ms(difference, [99.0])[99.0]
    assert max(late) / 1000 <= p99 <= max(late) / 1000 * (1 + histograms.RELATIVE_ERROR)
    # The difference is a histogram like any other: it encodes and decodes.
    assert histograms.decode(histograms.encode(difference)).get_total_count() == len(late)


def test_subtract_of_equal_readings_is_empty() -> None:
    reading = histograms.decode(_recorded([1, 10, 3_600_000_000]))
    difference = histograms.subtract(reading, reading)
    assert difference.get_total_count() == 0
    assert histograms.percentiles_ms(difference, [99.0]) == {}
    empty = histograms.empty()
    assert histograms.subtract(empty, empty).get_total_count() == 0
    assert histograms.subtract(reading, empty).get_total_count() == 3


def test_subtract_refuses_readings_out_of_order() -> None:
    before = histograms.decode(_recorded([100, 200]))
    after = histograms.decode(_recorded([100, 200, 300]))
    with pytest.raises(ValueError, match="in order"):
        histograms.subtract(before, after)
    with pytest.raises(ValueError, match="in order"):  # another histogram altogether
        histograms.subtract(histograms.decode(_recorded([100, 900])), before)


def test_subtract_refuses_another_setting() -> None:
    other = HdrHistogram(1, 60_000_000, 2)
    other.record_value(100)
    with pytest.raises(ValueError, match="setting"):
        histograms.subtract(other, histograms.empty())
