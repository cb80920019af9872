"""`stackbench compare`: which headline figures changed between two runs, and whether the
change is larger than the noise.

As pyperf's compare_to does, a change is called only when the data can carry it: it must lie
outside both runs' spread (min-max over repeats) and, with at least three repeats a side, pass
Welch's t-test at p < 0.05. With fewer repeats a difference is shown but not called. Inputs
and fit qualities (the fixed arrival rate, r²) are shown for context and never ranked. Runs of
different profiles, scenario parameters or stackbench versions measure different things and
are refused unless forced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import stats

from loadtest.records import Figure, Results
from loadtest.reporting.figures import CPU, FIGURES, FigureSpec
from loadtest.reporting.formatting import number

__all__ = ["MIN_REPEATS", "SIGNIFICANCE", "Change", "compare", "incompatibility", "warnings"]

MIN_REPEATS = 3
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Change:
    server: str
    figure: str  # the figure's name in results.json
    label: str  # as the report prints it
    unit: str
    before: float
    after: float
    relative: float | None  # (after - before) / |before|
    p_value: float | None
    verdict: str  # same | within spread | within error | indicative | not significant |
    #               better | worse | changed (an input: shown, never ranked)

    def line(self) -> str:
        change = "" if self.relative is None else f" ({self.relative:+.1%})"
        p = "" if self.p_value is None else f", p={self.p_value:.2g}"
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{self.server:<8} {self.label + unit:<58} {number(self.before):>10} -> "
            f"{number(self.after):<10}{change} {self.verdict}{p}"
        )

    def as_json(self) -> dict:
        return asdict(self)


def incompatibility(before: Results, after: Results) -> str | None:
    """Why two runs measured different things (then they are not compared), or None."""
    if before.profile.name != after.profile.name:
        return f"different profiles ({before.profile.name} vs {after.profile.name})"
    if before.profile.step_seconds != after.profile.step_seconds:
        return (
            f"different step lengths ({before.profile.step_seconds:g} s vs "
            f"{after.profile.step_seconds:g} s)"
        )
    for name in sorted(set(before.scenarios) & set(after.scenarios)):
        if before.scenarios[name] != after.scenarios[name]:
            return f"scenario {name} ran with different parameters"
    a, b = before.provenance.stackbench_version, after.provenance.stackbench_version
    if a != b:
        return f"different stackbench versions ({a} vs {b})"
    return None


def warnings(before: Results, after: Results) -> list[str]:
    """What differs between the two machines or installs without making them incomparable."""
    found = []
    if before.environment.cpu_model != after.environment.cpu_model:
        found.append(
            f"CPU models differ: {before.environment.cpu_model or '?'} vs "
            f"{after.environment.cpu_model or '?'}"
        )
    for package in sorted(set(before.versions) | set(after.versions)):
        a, b = before.versions.get(package), after.versions.get(package)
        if a != b:
            found.append(f"{package} differs: {a or 'absent'} vs {b or 'absent'}")
    return found


def _verdict(spec: FigureSpec, a: Figure, b: Figure) -> tuple[str, float | None]:
    if spec.better is None:
        return ("same" if a.median == b.median else "changed"), None
    if a.values == b.values:
        return "same", None
    error = max(a.error or 0.0, b.error or 0.0)
    if abs(b.median - a.median) <= error:
        return "within error", None
    if a.min <= b.max and b.min <= a.max:
        return "within spread", None
    if a.n < MIN_REPEATS or b.n < MIN_REPEATS:
        return f"indicative (n={a.n}/{b.n}; {MIN_REPEATS} repeats a side to test)", None
    result = stats.ttest_ind(a.values, b.values, equal_var=False)
    p_value = float(result.pvalue)
    if math.isnan(p_value) or p_value >= SIGNIFICANCE:
        return "not significant", p_value
    improved = b.median < a.median if spec.better == "lower" else b.median > a.median
    return ("better" if improved else "worse"), p_value


def _pairs(before: Results, after: Results):
    for server in sorted(set(before.headline) & set(after.headline)):
        a, b = before.headline[server], after.headline[server]
        for scenario in sorted(set(a.cpu_us_per_request) & set(b.cpu_us_per_request)):
            yield (server, f"cpu_us_per_request.{scenario}", f"{CPU.label}, {scenario}", CPU,
                   a.cpu_us_per_request[scenario], b.cpu_us_per_request[scenario])  # fmt: skip
        for name in [n for n in FIGURES if n in a.figures and n in b.figures]:
            spec = FIGURES[name]
            yield server, name, spec.label, spec, a.figures[name], b.figures[name]


def compare(before: Results, after: Results) -> list[Change]:
    changes = []
    for server, name, label, spec, a, b in _pairs(before, after):
        verdict, p_value = _verdict(spec, a, b)
        changes.append(
            Change(
                server=server,
                figure=name,
                label=label,
                unit=spec.unit,
                before=a.median * spec.scale,
                after=b.median * spec.scale,
                relative=(b.median - a.median) / abs(a.median) if a.median else None,
                p_value=p_value,
                verdict=verdict,
            )
        )
    return changes
