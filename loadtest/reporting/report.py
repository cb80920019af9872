"""report.html: one self-contained file (inline CSS and SVG, no script, no external URL) that
answers "which server costs how much memory per concurrent request, and what latency"."""

from __future__ import annotations

import html
import shlex
from pathlib import Path

from loadtest.driver.scenarios import BLOCKING_MS, SCENARIOS, UPSTREAM_CALLS, UPSTREAM_MS
from loadtest.histograms import RELATIVE_ERROR
from loadtest.records import Figure, Results, ScenarioRun, spec_name
from loadtest.reporting import charts
from loadtest.reporting.colours import COLOURS, OTHER_COLOUR
from loadtest.reporting.figures import FIGURES, MEMORY_DISAGREEMENT, SUSTAINED, served
from loadtest.reporting.formatting import number
from loadtest.reporting.verdict import ONE_RUN_RULE, verdict
from servers.contract import IMPLS
from servers.upstream import CLIENTS as UPSTREAM_CLIENTS

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1180px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; }
td, th { padding: 4px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flag { background: #fde2c2; color: #8a4b00; border-radius: 3px; padding: 0 4px; }
.bad { background: #f8d0d0; color: #8a0000; border-radius: 3px; padding: 0 4px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.charts svg { max-width: 100%; height: auto; }
.note { color: #666; font-size: 0.9em; }
.warn { background: #fff4d6; border-left: 4px solid #e0a800; padding: 6px 10px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
table.verdict td:last-child { min-width: 24em; max-width: 36em; }
table.verdict td.num { white-space: nowrap; }
"""


def _cell(
    figure: Figure | None, scale: float = 1.0, prefix: str = "", show_error: bool = False
) -> str:
    """A headline figure: its median (with its stated error if `show_error`), with the spread
    when it was measured more than once; no more digits than its stated error (or 3
    significant) support."""
    if figure is None:
        return '<td class="num">&ndash;</td>'
    error = figure.error * scale if figure.error else None
    text = prefix + number(figure.median * scale, error)
    if figure.low is not None and figure.high is not None:
        # Its 95 % interval from within the run (with repeats: the envelope of them all).
        half = max(figure.high - figure.median, figure.median - figure.low) * scale
        text += (
            f' <span class="note" title="95 % interval, from within the run">'
            f"&plusmn; {number(half, significant=2)}</span>"
        )
    elif error is not None and show_error:
        text += f' <span class="note">&plusmn; {number(error, significant=1)}</span>'
    if figure.n > 1:
        text += (
            f' <span class="note">({number(figure.min * scale, error)}&ndash;'
            f"{number(figure.max * scale, error)}, n={figure.n})</span>"
        )
    if figure.at_rps is not None:
        text += f' <span class="note">at {number(figure.at_rps)}/s</span>'
    if figure.driver_bound:
        text += ' <span class="flag">driver-bound</span>'
    if figure.saturated:
        text += (
            ' <span class="flag" title="measured with the server\'s CPU saturated">saturated</span>'
        )
    return f'<td class="num">{text}</td>'


def _runs(results: Results, scenario: str, model: str) -> list[ScenarioRun]:
    """Every repeat's runs of a scenario, servers in their usual order, then by repeat."""
    order = {impl: index for index, impl in enumerate(IMPLS)}
    runs = [r for r in results.runs if r.key.scenario == scenario and r.key.model == model]
    return sorted(runs, key=lambda r: (order.get(r.key.server, len(order)), r.key.repeat))


def _series_name(run: ScenarioRun) -> str:
    # Repeats beyond the first are drawn too, in the server's colour, named apart.
    return (
        run.key.server if run.key.repeat == 0 else f"{run.key.server} (repeat {run.key.repeat + 1})"
    )


def _chart_latency_vs_load(results: Results) -> str:
    series = {
        _series_name(run): [
            (s.achieved_rps, s.p99_ms, s.driver_bound, f"{s.users:g}")
            for s in run.steps
            if s.p99_ms
        ]
        for run in _runs(results, "plaintext", "closed")
    }
    return charts.lines(
        "plaintext: p99 vs achieved load (labels: users)", "achieved requests per second",
        "p99 latency, ms (log scale)", series, log_y=True,
    )  # fmt: skip


def _capacities(results: Results) -> dict[str, float]:
    """Each server's measured capacity (the first repeat's), to mark on the sweep's charts."""
    return {
        run.key.server: max(s.achieved_rps for s in run.steps)
        for run in _runs(results, "rate", "closed")
        if run.steps and run.key.repeat == 0
    }


def _chart_sweep_latency(results: Results) -> str:
    series = {
        _series_name(run): {
            name: [
                (s.offered_rps, value, s.driver_bound or not served(s))
                for s in run.steps
                if s.offered_rps and (value := getattr(s, attribute)) is not None
            ]
            for name, attribute in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"))
        }
        for run in _runs(results, "rate", "open")
    }
    return charts.sweep(
        "rate sweep: latency vs offered load", "latency from the intended send, ms (log scale)",
        series, _capacities(results),
    )  # fmt: skip


def _chart_sweep_cpu(results: Results) -> str:
    series = {
        _series_name(run): {
            "cpu": [
                (s.offered_rps, s.cpu_us_per_request, s.driver_bound or not served(s))
                for s in run.steps
                if s.offered_rps and s.cpu_us_per_request
            ]
        }
        for run in _runs(results, "rate", "open")
    }
    return charts.sweep(
        "rate sweep: server CPU per request vs offered load", "CPU µs per request (log scale)",
        series, _capacities(results),
    )  # fmt: skip


def _sweep_table(results: Results) -> str:
    """The rate sweep's figures per server; empty when the run did not include it."""
    servers = [s for s in _servers(results) if "capacity_rps" in results.headline[s].figures]
    if not servers:
        return ""
    common = sorted({
        s.offered_rps for r in _runs(results, "rate", "open") for s in r.steps
        if s.common and s.offered_rps
    })  # fmt: skip
    rows = []
    for server in servers:
        figures = results.headline[server].figures
        rows.append(
            f"<tr><th>{_swatch(server)}</th>"
            + _cell(figures.get("capacity_rps"))
            + _cell(figures.get("saturation_cpu_us"), show_error=True)
            + _cell(figures.get("common_cpu_us"), show_error=True)
            + _cell(figures.get("p99_at_50_ms"))
            + _cell(figures.get("p99_at_90_ms"))
            + _cell(figures.get("sustainable_rps"))
            + "</tr>"
        )
    slo = next((r.slo_ms for r in _runs(results, "rate", "open") if r.slo_ms), None)
    rates = ", ".join(f"{number(rate)}/s" for rate in common) or "none"
    return (
        "<h2>Capacity and cost at equal load: the rate sweep</h2>\n<p>The rate driver "
        "(<code>stackbench-rate</code>, C, never the load's limit: its own CPU is audited "
        "like Locust's) first measures each server's <b>capacity</b>, closed-loop at "
        f"{', '.join(str(c) for c in results.scenarios['rate'].levels)} keep-alive "
        "connections, then offers fixed rates <b>open-loop</b>: rates common to every server "
        f"(here {rates}, the highest at most half the slowest server's capacity) and fractions "
        "of each server's own capacity. Latency runs from each request's intended send, so a "
        "stall delays every request due during it (corrected for coordinated omission). CPU "
        "per request is read from the server's CPU clock to the nanosecond. Sustainable "
        "throughput: the highest offered rate served in full (achieved/offered &ge; "
        f"{SUSTAINED:.0%}) with its p99 within the SLO ({f'{slo:g}' if slo else '?'} ms, "
        "<code>--slo-ms</code>).</p>\n"
        "<table><tr><th>server</th><th>capacity req/s</th><th>CPU µs per request at capacity"
        "</th><th>CPU µs per request at the highest common rate</th>"
        "<th>p99 ms at 50 % of capacity</th><th>p99 ms at 90 % of capacity</th>"
        "<th>sustainable req/s</th></tr>" + "".join(rows) + "</table>"
    )


def _chart_memory(results: Results) -> str:
    series, fits = {}, {}
    for run in _runs(results, "io_hold", "closed"):
        name = _series_name(run)
        series[name] = [
            (s.active_requests, s.rss_bytes / 2**20)
            for s in run.steps
            if s.active_requests is not None and s.rss_bytes is not None
        ]
        if run.memory_fit:
            fit = run.memory_fit
            fits[name] = (
                fit.slope / 2**20, fit.intercept / 2**20,
                f"{name}: {number(fit.slope / 1024)} KiB per request",
            )  # fmt: skip
    return charts.scatter_with_fits(
        "io_hold: resident memory vs requests in flight", "requests in flight (server gauge)",
        "RSS, MiB", series, fits,
    )  # fmt: skip


def _chart_lag(results: Results) -> str:
    runs = _runs(results, "starvation", "closed")
    series = {
        _series_name(run): [(t, lag, False, "") for t, lag in run.lag_series or []] for run in runs
    }
    # Where each load level began, from the first run that knows (the same plan for all).
    starts = next((run.level_starts for run in runs if run.level_starts), None) or []
    marks = [(t, f"{users:g} users") for t, users in starts]
    return charts.lines(
        "starvation: scheduler lag over the run", "seconds since the scenario started",
        "lag p99 over each second, ms (exact)", series, x_marks=marks,
    )  # fmt: skip


PERCENTILE_TICKS = ((0, "p50"), (1, "p99"), (2, "p99.9"), (3, "max"))


def _chart_percentiles(results: Results, scenario: str, model: str, route: str | None) -> str:
    """The latency distribution at a scenario's top level, p50 to max, per server: the whole
    pass (route None) or one route's requests."""
    series = {}
    for run in _runs(results, scenario, model):
        top = run.steps[-1] if run.steps else None
        if top is None:
            continue
        figures = top if route is None else top.routes.get(route)
        if figures is None or figures.p50_ms is None:
            continue
        values = (figures.p50_ms, figures.p99_ms, figures.p999_ms, figures.max_ms)
        series[_series_name(run)] = [
            (x, value, top.driver_bound, "")
            for (x, _), value in zip(PERCENTILE_TICKS, values, strict=True)
        ]
    what = f"{route} requests" if route else f"the {model} pass"
    return charts.lines(
        f"{scenario}: latency of {what} at its top level", "percentile",
        "latency, ms (log scale)", series, log_y=True, x_ticks=PERCENTILE_TICKS,
    )  # fmt: skip


def _chart_cpu(results: Results) -> str:
    scenarios = [
        s for s in results.scenarios
        if any(s in h.cpu_us_per_request for h in results.headline.values())
    ]  # fmt: skip
    values = {server: results.headline[server].cpu_us_per_request for server in _servers(results)}
    return charts.bars_with_spread(
        "server CPU per request (median, min-max over repeats)", "µs per request",
        scenarios, values,
    )  # fmt: skip


def _tiers_note(results: Results) -> str:
    if not results.tiers:
        return ""
    parts = []
    for tier, servers in results.tiers.items():
        if len(servers) < 2 and tier != "native":
            continue  # trio alone is not the runtime tier: it is in both
        what = {
            "stack": "each runtime with the HTTP stack people deploy on it (aiohttp parses in C, "
            "gevent.pywsgi and h11 in Python)",
            "runtime": "one HTTP core (h11) on each runtime, so the runtimes differ and nothing "
            "else",
            "native": "the archetypes outside Python, Go's goroutines (stackful, as gevent) and "
            "Rust's futures on tokio (stackless, as asyncio and trio), on one core each; the "
            "verdict reads them beside the Python servers, not among them",
        }.get(tier, "")
        parts.append(f"<b>{html.escape(tier)} tier</b> ({html.escape(', '.join(servers))}): {what}")
    if not parts:
        return ""
    return '<p class="note">Servers: ' + "; ".join(parts) + ".</p>"


def _swatch(server: str) -> str:
    colour = COLOURS.get(server, OTHER_COLOUR)
    return f'<span class="swatch" style="background:{colour}"></span>{html.escape(server)}'


def _servers(results: Results) -> list[str]:
    order = {impl: index for index, impl in enumerate(IMPLS)}
    return sorted(results.headline, key=lambda s: (order.get(s, len(order)), s))


NO_FIGURE = "\u2013"  # an en dash


def _verdict_cell(text: str) -> str:
    # The median on its line, the repeats' spread under it, smaller.
    median, _, spread = text.partition(" (")
    below = f'<br><span class="note">({html.escape(spread)}</span>' if spread else ""
    return f'<td class="num">{html.escape(median)}{below}</td>'


def _verdict_table(results: Results) -> str:
    """The debate's claims, each with this run's figures and a sentence read off them."""
    servers = _servers(results)
    head = "".join(f"<th>{_swatch(server)}</th>" for server in servers)
    rows = []
    for row in verdict(results.headline):
        cells = "".join(_verdict_cell(row.figures.get(server, NO_FIGURE)) for server in servers)
        mark = "" if row.decided else ' class="note"'
        rows.append(
            f"<tr><th>{html.escape(row.claim)}</th>{cells}"
            f"<td{mark}>{html.escape(row.reading)}</td></tr>"
        )
    return (
        f'<table class="verdict"><tr><th>claim</th>{head}<th>what this run says</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _cpu_table(results: Results) -> str:
    scenarios = sorted({s for h in results.headline.values() for s in h.cpu_us_per_request},
                       key=lambda s: list(results.scenarios).index(s)
                       if s in results.scenarios else 99)  # fmt: skip
    if not scenarios:
        return '<p class="note">No step qualified for CPU per request.</p>'
    head = "".join(f"<th>{html.escape(s)}</th>" for s in scenarios)
    rows = []
    for server in _servers(results):
        figures = results.headline[server].cpu_us_per_request
        cells = "".join(_cell(figures.get(s), show_error=True) for s in scenarios)
        rows.append(f"<tr><th>{_swatch(server)}</th>{cells}</tr>")
    return f"<table><tr><th>server</th>{head}</tr>" + "".join(rows) + "</table>"


def _memory_cell(results: Results, server: str) -> str:
    figures = results.headline[server].figures
    locust, raw = figures.get("bytes_per_request"), figures.get("held_bytes_per_request")
    text = _cell(locust, 1 / 1024)
    if locust and raw:
        gap = abs(locust.median - raw.median) / raw.median
        if gap > MEMORY_DISAGREEMENT:
            text = text.replace(
                "</td>",
                f' <span class="flag" title="the two methods differ by more than '
                f'{MEMORY_DISAGREEMENT:.0%}">differs {gap:.0%}</span></td>',
            )
    return text + _cell(raw, 1 / 1024)


def _headline_table(results: Results) -> str:
    rows = []
    for server in _servers(results):
        figures = results.headline[server].figures
        cells = [
            _cell(figures.get("capacity_rps")),
            _cell(figures.get("fixed_load_p50_ms")),
            _cell(figures.get("fixed_load_p99_ms")),
            _cell(figures.get("fixed_load_p99_uncorrected_ms")),
            _memory_cell(results, server),
            _cell(figures.get("starvation_lag_p99_ms")),
            _cell(figures.get("starvation_probe_p99_ms")),
            _cell(figures.get("offload_overhead_ms")),
            _cell(figures.get("coloring_probe_p99_ms")),
            _cell(figures.get("c_boundary_probe_p99_ms")),
        ]
        rows.append(f"<tr><th>{_swatch(server)}</th>{''.join(cells)}</tr>")
    return (
        "<table><tr><th>server</th><th>capacity req/s (rate driver)</th>"
        "<th>p50 ms at fixed load</th><th>p99 ms at fixed load</th>"
        "<th>p99 ms uncorrected</th><th>KiB per in-flight request, under Locust</th>"
        "<th>KiB per in-flight request, raw held connections</th>"
        "<th>scheduler lag p99 ms under CPU load</th>"
        "<th>/json p99 ms beside CPU-bound requests</th>"
        f"<th>offload overhead ms (mean, on a {BLOCKING_MS} ms call)</th>"
        "<th>/json p99 ms beside blocking calls</th>"
        "<th>/json p99 ms beside blocking calls in C</th></tr>" + "".join(rows) + "</table>"
    )


UPSTREAM_COLUMNS = (
    "upstream_p50_ms",
    "upstream_p99_ms",
    "upstream_bytes_per_request",
    "upstream_bytes_per_request_r2",
    "upstream_connections",
)


def _count_cell(figure: Figure | None) -> str:
    """A count: exact, so no digits after the point; with its spread over repeats."""
    if figure is None:
        return '<td class="num">&ndash;</td>'
    text = f"{figure.median:,.0f}"
    if figure.n > 1:
        spread = f"{figure.min:,.0f}&ndash;{figure.max:,.0f}, n={figure.n}"
        text += f' <span class="note">({spread})</span>'
    return f'<td class="num">{text}</td>'


def _upstream_table(results: Results) -> str:
    """The upstream scenario's figures per server, with the client each server calls through;
    empty when the run did not include it."""
    servers = [s for s in _servers(results) if "upstream_p50_ms" in results.headline[s].figures]
    if not servers:
        return ""
    rows = []
    for server in servers:
        headline = results.headline[server]
        cells = [
            f"<td>{html.escape(UPSTREAM_CLIENTS.get(server, ''))}</td>",
            _cell(headline.cpu_us_per_request.get("upstream"), show_error=True),
            *(
                _count_cell(headline.figures.get(name))
                if name == "upstream_connections"
                else _cell(headline.figures.get(name), FIGURES[name].scale)
                for name in UPSTREAM_COLUMNS
            ),
        ]
        rows.append(f"<tr><th>{_swatch(server)}</th>{''.join(cells)}</tr>")
    head = "".join(
        f"<th>{html.escape(FIGURES[name].label)}"
        + (f" {html.escape(FIGURES[name].unit)}" if FIGURES[name].unit else "")
        + "</th>"
        for name in UPSTREAM_COLUMNS
    )
    return (
        "<h2>Calling another service</h2>\n<p>The upstream scenario: each request makes "
        f"{UPSTREAM_CALLS} concurrent {UPSTREAM_MS} ms calls to an upstream server through "
        "the server's own pooled HTTP client. CPU per request is the server's and its "
        "client's together.</p>\n<table><tr><th>server</th><th>client</th>"
        f"<th>CPU µs per request</th>{head}</tr>" + "".join(rows) + "</table>"
    )


def _steps_table(results: Results) -> str:
    rows = []
    for run in results.runs:
        key = run.key
        badge = "" if run.status == "ok" else f' <span class="bad">{html.escape(run.status)}</span>'
        ident = (f"<td>{key.server}</td><td>{key.scenario}</td><td>{key.model}</td>"
                 f"<td>{key.repeat + 1}{badge}</td>")  # fmt: skip
        if key.model == "held":
            fit = run.memory_fit
            text = (f"raw held connections: {number(fit.slope / 1024)} KiB per request "
                    f"(r²={fit.r2:.3f}, {fit.points} levels)") if fit else "no fit"  # fmt: skip
            error = f": {html.escape(run.error)}" if run.error else ""
            rows.append(f"<tr>{ident}<td colspan=12>{text}{error}</td></tr>")
            continue
        if not run.steps:
            error = f": {html.escape(run.error)}" if run.error else ""
            rows.append(f"<tr>{ident}<td colspan=12>no complete step{error}</td></tr>")
            continue
        for step in run.steps:
            flag = ' <span class="flag">driver-bound</span>' if step.driver_bound else ""
            saturated = ' <span class="flag">saturated</span>' if step.server_saturated else ""
            offered = f" at {number(step.offered_rps)}/s" if step.offered_rps else ""
            cpu = number(step.cpu_us_per_request, step.cpu_us_error)
            rows.append(
                f"<tr>{ident}<td class=num>{step.users:.0f}{offered}</td>"
                f"<td class=num>{number(step.achieved_rps)}</td>"
                f"<td class=num>{_latency(step.p50_ms)}</td>"
                f"<td class=num>{_latency(step.p99_ms)}</td>"
                f"<td class=num>{_latency(step.p999_ms)}</td>"
                f"<td class=num>{_lag_cell(step)}</td>"
                f"<td class=num>{number((step.rss_bytes or 0) / 2**20)}</td>"
                f"<td class=num>{step.server_cpu * 100:.0f}%{saturated}</td>"
                f"<td class=num>{html.escape(cpu)}</td>"
                f"<td class=num>{(step.driver_cpu or 0) * 100:.0f}%{flag}</td>"
                f"<td class=num>{number(step.littles_in_flight)}</td>"
                f"<td class=num>{step.errors:.0f} / {step.dropped:.0f}</td></tr>"
            )
    return (
        "<table><tr><th>server</th><th>scenario</th><th>model</th><th>repeat</th>"
        "<th>users (rate driver: connections, at the offered rate)</th>"
        "<th>req/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>lag p99 ms</th>"
        "<th>RSS MiB</th><th>server CPU</th><th>CPU µs per request</th><th>driver CPU</th>"
        "<th title=\"Little's law: throughput x mean latency; in the closed model it should be "
        "close to the users\">in flight</th><th>errors / dropped</th></tr>"
        + "".join(rows) + "</table>"
    )  # fmt: skip


def _latency(value: float | None) -> str:
    # HdrHistogram: 0.1 % of the value, and never finer than its 1 µs unit.
    return number(value, max(value * RELATIVE_ERROR, 0.001) if value else None)


def _lag_cell(step) -> str:
    if step.lag_p99_ms is not None:
        return _latency(step.lag_p99_ms)
    return _bound(step.lag_p99_at_most_ms)


def _bound(value: float | None) -> str:
    return "&ndash;" if value is None else f"&le; {number(value)}"


def _lost(results: Results) -> str:
    lost = results.lost
    items = []
    if results.interrupted:
        items.append("The run was interrupted; everything measured before that is shown.")
    for failure in lost.failures:
        items.append(f"{failure['server']} / {failure['scenario']}: {failure['error']}")
    if lost.not_measured:
        missing = ", ".join(
            f"{k.server} {k.scenario} ({k.model}) #{k.repeat + 1}" for k in lost.not_measured
        )
        items.append(f"Not measured: {missing}.")
    if lost.unreadable_sample_lines:
        items.append(f"{lost.unreadable_sample_lines} unreadable sample line(s) skipped.")
    if not items:
        return ""
    return '<h2>Gaps</h2><ul class="bad-list">' + "".join(
        f"<li>{html.escape(item)}</li>" for item in items
    ) + "</ul>"  # fmt: skip


def _repeats_note(results: Results) -> str:
    repeats = results.profile.repeat
    if repeats == 1:
        return (
            '<p class="warn"><b>Single run.</b> Every figure below was measured once: its '
            "&plusmn; is its 95 % interval from within this run, widened by how much such a "
            "figure moved between repeats on the project's reference machine (the README's "
            "calibration), not by how much it moves on this one. Use <code>--repeat 3</code> "
            "(or the standard profile) for medians with their min&ndash;max, and <code>"
            "stackbench compare</code> to test a difference.</p>"
        )
    return (
        f'<p class="note">{repeats} repeats: each figure is the median, with its '
        "(min&ndash;max, n) beside it.</p>"
    )


BUSY_LOAD_PER_CPU = 0.5  # a load average above this per CPU at the start: a busy machine


MAX_ERROR_SHARE = 0.01  # failed requests in a run past which the report warns


def _warnings(results: Results) -> str:
    """What may make this run's figures less than they seem, said before any figure."""
    env = results.environment
    warnings = []
    if env.cpus and env.load_average_1m / env.cpus > BUSY_LOAD_PER_CPU:
        warnings.append(
            f"<b>Busy machine.</b> The load average was {env.load_average_1m:.2f} on "
            f"{env.cpus} CPUs when the run started: something else was running, and the "
            "figures carry its noise. Run again on a quiet machine."
        )
    bound = sorted({
        f"{server} ({FIGURES[name].label})"
        for server, headline in results.headline.items()
        for name, figure in headline.figures.items()
        if figure.driver_bound and FIGURES[name].better is not None
    })  # fmt: skip
    if bound:
        warnings.append(
            "<b>Driver-bound figures.</b> The load generator was the limit, not the server, for: "
            + html.escape(", ".join(bound))
            + ". Those figures are what the load generator reached, a lower bound on the "
            "server's (see CPU per request for what the servers cost)."
        )
    failing = []
    for run in results.runs:
        answered = sum(step.completed for step in run.steps)
        errors = sum(step.errors for step in run.steps)
        if answered and errors / answered > MAX_ERROR_SHARE:
            failing.append(
                f"{run.key.server} {run.key.scenario} ({errors / answered:.0%} of "
                f"{answered:,} requests)"
            )
    if failing:
        warnings.append(
            "<b>Failed requests.</b> These runs' requests failed more than "
            f"{MAX_ERROR_SHARE:.0%} of the time, so their figures describe failures, not the "
            "work asked for (Locust's pages under locust/ say which errors): "
            + html.escape(", ".join(failing))
            + (
                ". (The upstream scenario needs servers started with --upstream.)"
                if any(" upstream (" in run for run in failing)
                else "."
            )
        )
    return "".join(f'<p class="warn">{text}</p>' for text in warnings)


def _scenarios(results: Results) -> str:
    """What each scenario asks and sends, at which levels, with the Locust pages of its runs."""
    runs: dict[str, list] = {}
    for run in results.runs:
        if run.key.model != "held":  # raw held connections: no Locust, no page
            runs.setdefault(spec_name(run.key.scenario, run.key.model), []).append(run.key)
    items = []
    for name, spec in results.scenarios.items():
        scenario = SCENARIOS.get(name.removesuffix(" (open)"))
        question = scenario.question if scenario else ""
        unit = "arrivals/s per stream" if spec.rate_per_stream else "users"
        levels = ", ".join(f"{level:,}" for level in spec.levels)
        links = " ".join(
            f'<a href="locust/{html.escape(key.locust_name)}.html">'
            f"{html.escape(key.server)} r{key.repeat + 1}</a>"
            for key in sorted(runs.get(name, []), key=lambda k: (k.server, k.repeat))
        )
        items.append(
            f"<tr><th>{html.escape(name)}</th><td>{html.escape(question)}</td>"
            f"<td>{'<br>'.join(html.escape(r) for r in spec.requests)}</td>"
            f"<td>{levels} {unit}, {spec.step_seconds:g} s each</td>"
            f'<td class="note">{links}</td></tr>'
        )
    return (
        "<table><tr><th>scenario</th><th>the question</th><th>what it sends</th>"
        "<th>load levels</th><th>Locust's pages</th></tr>" + "".join(items) + "</table>"
    )


def render(results: Results) -> str:
    pinning = results.pinning
    env = results.environment
    versions = ", ".join(f"{k} {v}" for k, v in results.versions.items())
    dirty = " (with uncommitted changes)" if results.provenance.git_dirty else ""
    status = "complete" if results.complete else "partial"
    commit = results.provenance.git_commit
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>stackbench report {html.escape(results.started)}</title>
<style>{CSS}</style></head><body>
<h1>stackbench: what the concurrency model costs</h1>
<p class="note">Run started {html.escape(results.started)}, profile
{html.escape(results.profile.name)} ({results.profile.step_seconds:g} s per step,
{results.profile.repeat} repeat(s)), {status}. Server on CPU {pinning.server_cpus},
load generators on CPU {pinning.driver_cpus}. {html.escape(env.cpu_model)}, kernel
{html.escape(env.kernel)}, governor {html.escape(env.cpu_governor or "unknown")}, load average
{env.load_average_1m:.2f} at start. stackbench {html.escape(results.provenance.stackbench_version)}
{html.escape(commit[:12] if commit else "")}{dirty}. {html.escape(versions)}.
Command: <code>{html.escape(shlex.join(results.provenance.command))}</code>.</p>
{_warnings(results)}
{_repeats_note(results)}
{_tiers_note(results)}
<h2>Verdict</h2>
<p class="note">The claims of the stackful (Go's goroutines, gevent's greenlets) against
stackless (Rust's futures, trio's and asyncio's coroutines) debate, each read off this run's
figures below: memory per in-flight request with raw held connections, server CPU per
request at the highest offered rate common to every server (the rate sweep), CPU per child
task of a fan-out (the fanout request's CPU less a plaintext
request's, over its 20 children), <code>/json</code> p99 beside blocking calls (inline, in
Python and in C) and beside CPU-bound requests, and server CPU per request that calls another
service through the server's own HTTP client (urllib3, aiohttp's, httpx).
{html.escape(ONE_RUN_RULE)} Otherwise the row says why not. &plusmn;: the 95 % interval
from within the run, calibrated against repeats.</p>
{_verdict_table(results)}
{_sweep_table(results)}
<h2>CPU per request</h2>
{_cpu_table(results)}
<p class="note">Under Locust's scenarios: server CPU time (from its CPU clock, to the
nanosecond; /proc's ticks are kept as the cross-check) per completed request, with the
server's idle load (timers, the run's own scrapes) subtracted. It depends on the load: the
busier a server, the more requests one wake-up serves (compare the rate sweep's CPU at capacity
with its CPU at a common rate), so every server is read at the same Locust level, the highest
where none was saturated nor driver-bound, at the rate shown; where no level suits all, each
server's own quietest fit, flagged. The last digit shown is the first that the error touches;
&ndash;: no step had requests enough to measure it to 25 %.</p>
<h2>Headline</h2>
{_headline_table(results)}
{_upstream_table(results)}
<p class="note">Percentiles are exact to 0.1 % (HdrHistogram of every request, 3 significant
digits). Fixed load: the open-model starvation pass, latency measured from each request's
intended start; "uncorrected" is what a closed-loop tool would report from the same requests.
KiB per in-flight request, two ways: the slope of RSS (from /proc) against requests in flight
across io_hold's levels under Locust (keep-alive connections whose requests finish and are
sent again), and with raw connections each holding one request on a fresh server (nothing
finishes); <span class="flag">differs</span> marks a gap over
{MEMORY_DISAGREEMENT:.0%}. The scheduler lag is exact: every tick of the server's monitor
(<code>GET /lag</code>), which sleeps 10 ms and records how late it woke, so a loop blocked for
D ms yields lags between D &minus; 10 ms and D (&le;: a server without <code>/lag</code>, the
upper bound of its Prometheus bucket). <span class="flag">driver-bound</span>: the load
generator (Locust, or the rate driver) used &ge;85 % of its CPU, so the figure is its limit,
not the server's.</p>
<h2>Charts</h2>
<div class="charts">
{_chart_sweep_latency(results)}{_chart_sweep_cpu(results)}
{_chart_cpu(results)}{_chart_memory(results)}{_chart_latency_vs_load(results)}{_chart_lag(results)}
{_chart_percentiles(results, "starvation", "open", None)}
{_chart_percentiles(results, "coloring", "closed", "/json")}
</div>
<p class="note">Hollow points: driver-bound steps. Every repeat is drawn, in its server's
colour.</p>
{_lost(results)}
<h2>Scenarios</h2>
{_scenarios(results)}
<h2>Every step</h2>
{_steps_table(results)}
</body></html>
"""


def write(out: Path, results: Results) -> Path:
    path = out / "report.html"
    path.write_text(render(results), encoding="utf-8")
    return path
