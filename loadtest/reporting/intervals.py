"""95 % intervals from within one run: one named method per kind of figure, free of I/O.

- Percentiles: the order-statistic interval of the step's exact histogram (the ranks
  n q -/+ 1.96 sqrt(n q (1 - q) phi) of a binomial count), where phi >= 1 is how much more the
  batches disagree than independent requests would: Pearson's chi-square over k - 1 of the
  count of each batch's requests above the step's percentile against its binomial share
  (quasi-binomial overdispersion; requests within one stall are not independent).
- Means: the batch-means interval of the per-second means, and at least the mean's standard
  error over the requests.
- CPU per request and rates: the value's own measurement error (ticks or the clock's skew)
  plus the batch-means interval of its per-second values.
- A fitted slope (memory per in-flight request): Student's t on the fit's n - 2 degrees of
  freedom times the slope's standard error.

Batch means: a step's samples (every 0.5 s) are taken in batches of BATCH_SAMPLES, a figure is
read per batch, and the interval is mean -/+ t(k - 1) s / sqrt(k) over the k batches (a 3 s step
gives five).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from functools import lru_cache

from scipy import stats

from loadtest.records import Interval

__all__ = [
    "BATCH_SAMPLES",
    "CALIBRATION",
    "CONFIDENCE",
    "around",
    "batch_half_width",
    "calibrated",
    "kind_of",
    "mean_ci",
    "overdispersion",
    "quantile_ci",
    "slope_ci",
    "t_quantile",
]

CONFIDENCE = 0.95
BATCH_SAMPLES = 1  # samples are 0.5 s apart: a batch is half a second
# How much wider than the within-run interval a figure of each kind varies between runs, here:
# on a recorded `--repeat 3` quick run (benchmarks/calibrate_intervals.py), the factor on
# repeat 1's half-widths that puts 90 % of the other repeats' values inside them. A run's
# interval is its within-run interval times this (a VM's CPU steal moves a whole run).
CALIBRATION = {"percentile": 10.0, "mean": 2.9, "cpu": 2.3, "rate": 2.3, "fit": 1.3}
Z = 1.959963984540054  # the normal's 97.5th percentile


@lru_cache(maxsize=256)
def t_quantile(df: int) -> float:
    """Student's t at 97.5 % with `df` degrees of freedom."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def batch_half_width(values: Sequence[float]) -> float | None:
    """t(k - 1) s / sqrt(k) over k per-batch values; None with fewer than two."""
    if len(values) < 2:
        return None
    return t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def around(centre: float, half: float) -> Interval:
    return (centre - half, centre + half)


def kind_of(figure: str) -> str | None:
    """Which method a headline figure's interval comes from (CALIBRATION's keys); None for
    figures with none (inputs, counts, fit qualities)."""
    if "bytes_per_request" in figure and not figure.endswith("_r2"):
        return "fit"
    if "cpu" in figure:
        return "cpu"
    if figure in ("capacity_rps", "ceiling_rps"):
        return "rate"
    if figure == "offload_overhead_ms":
        return "mean"
    if figure.endswith("_ms"):
        return "percentile"
    return None


def calibrated(value: float, ci: Interval | None, figure: str) -> Interval | None:
    """`ci` widened around `value` by its kind's CALIBRATION factor."""
    kind = kind_of(figure)
    if ci is None or kind is None:
        return ci
    factor = CALIBRATION[kind]
    low = value - (value - ci[0]) * factor
    if kind != "mean":  # a latency, a cost, a rate, a size: never below zero
        low = max(low, 0.0)
    return (low, value + (ci[1] - value) * factor)


def _value_at_rank(histogram, rank: int, count: int) -> float:
    return histogram.get_value_at_percentile(100.0 * rank / count) / 1000


def overdispersion(histogram, q: float, batches: Sequence) -> float:
    """phi >= 1: Pearson's chi-square over k - 1 of the number of each batch's requests above
    the histogram's q quantile, against the binomial share 1 - q of the batch; 1 with fewer
    than two batches that hold any."""
    threshold = histogram.get_value_at_percentile(100 * q)
    tail = 1 - q
    chi2, k = 0.0, 0
    for batch in batches:
        n = batch.get_total_count()
        if n == 0:
            continue
        above = sum(
            item.count_at_value_iterated_to
            for item in batch.get_recorded_iterator()
            if item.value_iterated_to > threshold
        )
        expected, variance = n * tail, n * tail * (1 - tail)
        if variance > 0:
            chi2 += (above - expected) ** 2 / variance
            k += 1
    return max(1.0, chi2 / (k - 1)) if k >= 2 else 1.0


def quantile_ci(histogram, q: float, batches: Sequence = ()) -> Interval | None:
    """The 95 % interval of quantile q (0-1) of an HdrHistogram in µs, in ms: the binomial
    order-statistic interval, widened by the overdispersion of `batches` (histograms of
    consecutive parts of the same requests). None when nothing was recorded."""
    count = histogram.get_total_count()
    if count == 0:
        return None
    phi = overdispersion(histogram, q, batches) if batches else 1.0
    spread = Z * math.sqrt(count * q * (1 - q) * phi)
    low_rank = max(1, math.floor(count * q - spread))
    high_rank = min(count, math.ceil(count * q + spread) + 1)
    return _value_at_rank(histogram, low_rank, count), _value_at_rank(histogram, high_rank, count)


def mean_ci(histogram, batches: Sequence = ()) -> Interval | None:
    """The 95 % interval of an HdrHistogram's mean (µs in, ms out): its standard error over the
    requests, widened to the batch-means interval of the per-batch means."""
    count = histogram.get_total_count()
    if count == 0:
        return None
    mean = histogram.get_mean_value() / 1000
    half = Z * histogram.get_stddev() / 1000 / math.sqrt(count)
    per_batch = [b.get_mean_value() / 1000 for b in batches if b.get_total_count()]
    batch = batch_half_width(per_batch)
    if batch is not None:
        half = max(half, batch)
    return around(mean, half)


def slope_ci(points: Sequence[tuple[float, float]]) -> Interval | None:
    """The least-squares slope's 95 % interval, Student's t on n - 2 degrees of freedom times
    its standard error (scipy's linregress; three points give one degree of freedom: t = 12.7,
    so three levels alone rarely decide anything)."""
    if len(points) < 3:
        return None
    xs, ys = zip(*points, strict=True)
    if len(set(xs)) < 2:
        return None
    fit = stats.linregress(xs, ys)
    return around(float(fit.slope), t_quantile(len(points) - 2) * float(fit.stderr))
