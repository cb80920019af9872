"""Do the 95 % intervals from within one run hold between runs? Read a recorded run with
repeats (`stackbench run --repeat 3 ...`): for every headline figure with an interval, the share
of the other repeats' values that fall inside repeat 1's interval, per figure and overall, and
the factor by which repeat 1's half-widths would have to grow for 90 % of them to.

    python benchmarks/calibrate_intervals.py results/20261202-070000
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

from loadtest.reporting.intervals import CALIBRATION, kind_of
from loadtest.reporting.results import ResultsError, load

TARGET = 0.90


def widening(cases: list[tuple[float, tuple[float, float], float]]) -> float:
    """The smallest factor on every interval's half-widths that covers TARGET of the cases."""
    needed = []
    for first, (low, high), other in cases:
        half = (high - first) if other >= first else (first - low)
        needed.append(abs(other - first) / half if half > 0 else math.inf)
    needed.sort()
    return needed[max(0, math.ceil(TARGET * len(needed)) - 1)] if needed else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory or its results.json")
    args = parser.parse_args()
    try:
        results = load(args.run)
    except ResultsError as exc:
        sys.exit(f"calibrate_intervals: {exc}")
    if results.profile.repeat < 2:
        sys.exit("calibrate_intervals: the run has one repeat; it needs --repeat 2 or more")
    per_figure: dict[str, list] = defaultdict(list)
    for server, headline in results.headline.items():
        named = {**{f"cpu:{s}": f for s, f in headline.cpu_us_per_request.items()},
                 **headline.figures}  # fmt: skip
        for name, figure in named.items():
            if not figure.intervals or figure.n < 2 or figure.intervals[0] is None:
                continue
            first, (low, high) = figure.values[0], figure.intervals[0]
            # As measured within the run: the stored interval is widened by CALIBRATION.
            factor = CALIBRATION.get(
                kind_of(name if not name.startswith("cpu:") else "cpu") or "", 1
            )
            raw = (first - (first - low) / factor, first + (high - first) / factor)
            for other in figure.values[1:]:
                per_figure[name].append((server, first, raw, other))
    if not per_figure:
        sys.exit("calibrate_intervals: no figure has intervals and repeats")
    total = inside_total = 0
    print(f"{'figure':<32} {'inside repeat 1':>16} {'widen by':>9}  misses")
    for name, cases in sorted(per_figure.items()):
        inside = [low <= other <= high for _, _, (low, high), other in cases]
        total += len(cases)
        inside_total += sum(inside)
        misses = [
            f"{server} {other:.4g} vs {low:.4g}-{high:.4g}"
            for (server, _, (low, high), other), ok in zip(cases, inside, strict=True)
            if not ok
        ]
        factor = widening([(first, interval, other) for _, first, interval, other in cases])
        print(f"{name:<32} {sum(inside):>7}/{len(cases):<8} {factor:>8.2f}x  "
              f"{'; '.join(misses[:3])}")  # fmt: skip
    every = [(f, i, o) for cases in per_figure.values() for _, f, i, o in cases]
    print(f"\noverall: {inside_total}/{total} ({inside_total / total:.0%}) of the other repeats' "
          f"values inside repeat 1's within-run 95 % interval (target {TARGET:.0%}); widening "
          f"every interval by {widening(every):.2f}x would cover {TARGET:.0%}")  # fmt: skip
    kinds: dict[str, list] = defaultdict(list)
    for name, cases in per_figure.items():
        kinds[kind_of("cpu" if name.startswith("cpu:") else name) or "?"].extend(cases)
    for kind, cases in sorted(kinds.items()):
        factor = CALIBRATION.get(kind, 1.0)
        inside = sum(
            first - (first - low) * factor <= other <= first + (high - first) * factor
            for _, first, (low, high), other in cases
        )
        print(f"{kind:<11} needs {widening([(f, i, o) for _, f, i, o in cases]):6.2f}x; "
              f"CALIBRATION {factor}x covers {inside}/{len(cases)}")  # fmt: skip


if __name__ == "__main__":
    main()
