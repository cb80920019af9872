"""The report's charts, drawn by matplotlib into inline SVG: text stays text (titles and labels
can be searched and read by a screen reader), no script, no external reference, the same
colour for a server as on the dashboards. Free of I/O: each function takes figures and returns
an `<svg>` element as a string.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: render to files only


import matplotlib.pyplot as plt
from matplotlib import ticker
from matplotlib.figure import Figure as PlotFigure

from loadtest.records import Figure
from loadtest.reporting.colours import COLOURS, OTHER_COLOUR

__all__ = [
    "COLOURS",
    "OTHER_COLOUR",
    "Point",
    "bars_with_spread",
    "horizontal_bars",
    "lines",
    "scatter_with_fits",
    "sweep",
]

WIDTH_IN, HEIGHT_IN = 5.8, 3.6  # at 96 px per inch: two charts side by side in the page

plt.rcParams.update({
    "svg.fonttype": "none",  # text as <text>, not paths
    "svg.hashsalt": "stackbench",  # the same ids on every render
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
})  # fmt: skip

Point = tuple[float, float, bool, str]  # x, y, hollow (driver-bound), label ("" for none)


def _legend(name: str) -> str:
    # A repeat beyond the first shares its server's colour and legend entry.
    return "_" + name if "(repeat" in name else name


def colour(name: str) -> str:
    return COLOURS.get(name, COLOURS.get(name.split()[0], OTHER_COLOUR))


def _svg(figure: PlotFigure, title: str) -> str:
    """The figure as an inline <svg>: without the XML prologue, the metadata block and the
    namespace URLs (HTML's parser knows SVG's), labelled for assistive technology."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(figure)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)
    text = text.replace("xlink:href", "href")
    return text.replace("<svg", f'<svg role="img" aria-label="{_attr(title)}"', 1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _minor_log_label(value: float, _position: object) -> str:
    # Label 2x and 5x between powers of ten: enough to read a value off a log axis.
    mantissa = value / 10 ** int(f"{value:e}".split("e")[1])
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def _empty(title: str) -> str:
    figure, axes = plt.subplots(figsize=(WIDTH_IN, 1.3))
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.3, "not measured by this run", ha="center", transform=axes.transAxes)
    return _svg(figure, title)


def lines(
    title: str,
    x_label: str,
    y_label: str,
    series: dict[str, Sequence[Point]],
    log_y: bool = False,
    x_ticks: Sequence[tuple[float, str]] = (),
    x_marks: Sequence[tuple[float, str]] = (),
) -> str:
    """One line per server through its points in order; hollow points: driver-bound; each
    point labelled with its label (a load level). `x_ticks`: named positions on the x axis
    instead of numbers; `x_marks`: labelled vertical lines (where a load level began)."""
    if not any(series.values()):
        return _empty(title)
    figure, axes = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), layout="constrained")
    for name, points in series.items():
        if not points:
            continue
        shade = colour(name)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        axes.plot(xs, ys, color=shade, linewidth=1.6, label=_legend(name))
        for x, y, hollow, label in points:
            axes.plot(
                x, y, marker="o", markersize=5, color=shade,
                markerfacecolor="white" if hollow else shade,
            )  # fmt: skip
            if label:
                axes.annotate(
                    label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color="#444",
                )  # fmt: skip
    for x, label in x_marks:
        axes.axvline(x, color="#999", linestyle=":", linewidth=1)
        axes.annotate(
            label, (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
            textcoords="offset points", fontsize=7, color="#555",
        )  # fmt: skip
    if log_y:
        axes.set_yscale("log")
        # Plain numbers (2, 5, 20 ms), not powers of ten.
        axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_log_label))
    axes.set_title(title)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    if x_ticks:
        axes.set_xticks([x for x, _ in x_ticks], [label for _, label in x_ticks])
        axes.set_xlim(x_ticks[0][0] - 0.2, x_ticks[-1][0] + 0.3)
    else:
        axes.set_xlim(left=0)
    axes.legend(loc="best", fontsize=8, frameon=False)
    return _svg(figure, title)


# The percentiles of the sweep's latency chart: one line style each, a server's colour.
SWEEP_STYLES = {"p50": ":", "p99": "-", "p99.9": "--"}


def sweep(
    title: str,
    y_label: str,
    series: dict[str, dict[str, Sequence[tuple[float, float, bool]]]],
    marks: dict[str, float],
    log_y: bool = True,
) -> str:
    """Figures against offered load on a log x axis: per server (its colour) one line per
    named quantity (SWEEP_STYLES' styles, or solid), points (x, y, hollow: driver-bound or not
    served in full); each server's capacity as a dotted vertical line of its colour."""
    if not any(points for lines in series.values() for points in lines.values()):
        return _empty(title)
    figure, axes = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), layout="constrained")
    for server, quantities in series.items():
        shade = colour(server)
        primary = "p99" if "p99" in quantities else next(iter(quantities), "")
        for name, points in quantities.items():
            if not points:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            axes.plot(xs, ys, color=shade, linewidth=1.4, linestyle=SWEEP_STYLES.get(name, "-"),
                      label=_legend(server) if name == primary else "_")  # fmt: skip
            for x, y, hollow in points:
                axes.plot(x, y, marker="o", markersize=3.5, color=shade,
                          markerfacecolor="white" if hollow else shade)  # fmt: skip
        if server in marks:
            axes.axvline(marks[server], color=shade, linestyle=(0, (1, 2)), linewidth=1)
    styles = {name for quantities in series.values() for name in quantities} & set(SWEEP_STYLES)
    if len(styles) > 1:  # which line is which percentile: grey entries of each style
        for name, style in SWEEP_STYLES.items():
            axes.plot([], [], color="#666", linewidth=1.2, linestyle=style, label=name)
    axes.set_xscale("log")
    # Plain numbers on both ticks (matplotlib's own minor labels are mathtext, 2 x 10^3).
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axes.xaxis.set_minor_formatter(
        ticker.FuncFormatter(lambda v, p: f"{v:,.0f}" if _minor_log_label(v, p) else "")
    )
    if log_y:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_log_label))
    axes.set_title(title)
    axes.set_xlabel("offered requests per second (log scale), vertical: capacity")
    axes.set_ylabel(y_label)
    axes.legend(loc="best", fontsize=7, frameon=False)
    return _svg(figure, title)


def scatter_with_fits(
    title: str,
    x_label: str,
    y_label: str,
    series: dict[str, Sequence[tuple[float, float]]],
    fits: dict[str, tuple[float, float, str]],
) -> str:
    """Points per server and, where known, its fitted line (slope, intercept, legend text)."""
    if not any(series.values()):
        return _empty(title)
    figure, axes = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), layout="constrained")
    for name, points in series.items():
        if not points:
            continue
        shade = colour(name)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        fit = fits.get(name)
        axes.scatter(xs, ys, s=18, color=shade, label="_" if fit else _legend(name))
        if fit:
            slope, intercept, legend = fit
            ends = [0.0, max(xs)]
            axes.plot(
                ends, [intercept + slope * x for x in ends], color=shade,
                label=_legend(name) if "(repeat" in name else legend,
            )  # fmt: skip
    axes.set_title(title)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_xlim(left=0)
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    return _svg(figure, title)


def bars_with_spread(
    title: str,
    y_label: str,
    groups: Sequence[str],
    values: dict[str, dict[str, Figure]],
) -> str:
    """Grouped bars: per group (a scenario), one bar per server at its median, whiskers from
    the repeats' min to max (none for a single repeat)."""
    servers = [s for s in values if any(g in values[s] for g in groups)]
    if not servers or not groups:
        return _empty(title)
    figure, axes = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), layout="constrained")
    width = 0.8 / len(servers)
    for index, server in enumerate(servers):
        xs, heights, low, high = [], [], [], []
        for position, group in enumerate(groups):
            figure_ = values[server].get(group)
            if figure_ is None:
                continue
            xs.append(position - 0.4 + width * (index + 0.5))
            heights.append(figure_.median)
            low.append(figure_.median - figure_.min)
            high.append(figure_.max - figure_.median)
        axes.bar(xs, heights, width=width * 0.92, color=colour(server), label=server)
        if any(low) or any(high):
            axes.errorbar(xs, heights, yerr=[low, high], fmt="none", ecolor="#333", capsize=2)
    axes.set_xticks(range(len(groups)), list(groups), rotation=25, ha="right")
    axes.set_title(title)
    axes.set_ylabel(y_label)
    axes.grid(axis="x", visible=False)
    axes.legend(fontsize=8, frameon=False, ncols=min(len(servers), 4))
    return _svg(figure, title)


def horizontal_bars(
    title: str, x_label: str, bars: Iterable[tuple[str, float]], reference: float | None = None,
    reference_label: str = "",
) -> str:  # fmt: skip
    """One bar per (label, value), labelled with its value; an optional reference line."""
    bars = list(bars)
    if not bars:
        return _empty(title)
    height = 0.9 + 0.32 * len(bars)
    figure, axes = plt.subplots(figsize=(WIDTH_IN, height), layout="constrained")
    labels = [label for label, _ in bars]
    numbers = [value for _, value in bars]
    axes.barh(labels, numbers, color=[colour(label) for label in labels])
    for position, value in enumerate(numbers):
        axes.annotate(
            f"{value:,.0f}", (value, position), textcoords="offset points", xytext=(3, -3),
            fontsize=8,
        )  # fmt: skip
    if reference is not None:
        axes.axvline(reference, color="#555", linestyle="--", linewidth=1, label=reference_label)
        axes.legend(fontsize=8, frameon=False, loc="lower right")
    axes.invert_yaxis()
    axes.set_title(title)
    axes.set_xlabel(x_label)
    axes.grid(axis="y", visible=False)
    return _svg(figure, title)
