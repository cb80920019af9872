"""The Grafana dashboards, as code: the one source of the JSON under grafana/dashboards/.

    python dashboards/generate.py          # rewrite the JSON files
    python dashboards/generate.py --check  # exit 1 if they differ from this code (CI runs it)

Each panel names the label its series are split by (`impl` or `target`), so the tests can run
every query against a real Prometheus and demand a series for every server.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.reporting.colours import COLOURS as REPORT_COLOURS
from servers.contract import IMPLS

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "stackbench-prometheus"}
# One colour per server, the same on every panel of both dashboards as in the report's charts.
COLOURS = {impl: colour for impl, colour in REPORT_COLOURS.items() if impl in IMPLS}
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    split_by: str | None  # every value of this label must have a series (tests check it)
    description: str = ""
    max_value: float | None = None


@dataclass(frozen=True)
class Variable:
    name: str
    query: str  # label_values(...)


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...] = field(default_factory=tuple)
    filename: str = ""


def _quantile(q: float, metric: str, selector: str, by: str) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
    )


def _rate_sum(metric: str, selector: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"


def _or_zero(expr: str, baseline: str) -> str:
    """`expr`, or 0 for every series of `baseline` where `expr` has none (errors that have not
    happened yet show as 0, not as an empty panel)."""
    return f"({expr}) or ({baseline} * 0)"


SERVER = 'impl=~"$impl"'
SERVER_ROUTE = 'impl=~"$impl", route=~"$route"'
REQUESTS = "http_server_request_duration_seconds"


def _server_comparison() -> Dashboard:
    request_rate = _rate_sum(f"{REQUESTS}_count", SERVER_ROUTE, "impl")
    return Dashboard(
        uid="stackbench-servers",
        title="stackbench: server comparison",
        description="gevent (stackful) vs trio and aiohttp (stackless), side by side: the "
        "stack tier (gevent, trio, aiohttp) and the runtime tier (gevent-h11, asyncio-h11, trio, "
        "threads-h11: one h11 core on each runtime).",
        filename="server-comparison.json",
        variables=(
            Variable("impl", "label_values(stackbench_server_info, impl)"),
            Variable("route", f"label_values({REQUESTS}_count, route)"),
        ),
        panels=(
            Panel("Request rate", "reqps", (Query(request_rate, "{{impl}}"),), "impl"),
            *(
                Panel(
                    f"Latency p{q}",
                    "s",
                    (Query(_quantile(q / 100, REQUESTS, SERVER_ROUTE, "impl"), "{{impl}}"),),
                    "impl",
                    "From the request's arrival at the server to its last byte.",
                )
                for q in (50, 95, 99)
            ),
            Panel(
                "Error responses (4xx, 5xx, 499 client gone)",
                "reqps",
                (
                    Query(
                        _or_zero(
                            _rate_sum(
                                f"{REQUESTS}_count", SERVER_ROUTE + ', status=~"[45].."', "impl"
                            ),
                            request_rate,
                        ),
                        "{{impl}}",
                    ),
                ),
                "impl",
            ),
            Panel(
                "Resident memory (RSS)",
                "bytes",
                (Query(f"process_resident_memory_bytes{{{SERVER}}}", "{{impl}}"),),
                "impl",
            ),
            Panel(
                "RSS per active request",
                "bytes",
                (
                    Query(
                        f"process_resident_memory_bytes{{{SERVER}}} "
                        f"/ clamp_min(http_server_active_requests{{{SERVER}}}, 1)",
                        "{{impl}}",
                    ),
                ),
                "impl",
                "Whole-process RSS divided by requests in flight: falls towards the cost of "
                "one in-flight request as concurrency grows (io_hold scenario).",
            ),
            Panel(
                "Active requests",
                "short",
                (Query(f"http_server_active_requests{{{SERVER}}}", "{{impl}}"),),
                "impl",
            ),
            Panel(
                "Open connections",
                "short",
                (Query(f"http_server_open_connections{{{SERVER}}}", "{{impl}}"),),
                "impl",
            ),
            Panel(
                "Live tasks / greenlets",
                "short",
                (Query(f"stackbench_tasks{{{SERVER}}}", "{{impl}}"),),
                "impl",
            ),
            Panel(
                "Scheduler lag p99",
                "s",
                (
                    Query(
                        _quantile(0.99, "stackbench_scheduler_lag_seconds", SERVER, "impl"),
                        "{{impl}}",
                    ),
                ),
                "impl",
                "How late a 10 ms timer fires: CPU work or a blocking call on the event loop.",
            ),
            Panel(
                "CPU",
                "percentunit",
                (Query(f"rate(process_cpu_seconds_total{{{SERVER}}}[{RATE}])", "{{impl}}"),),
                "impl",
                "Fraction of one core.",
            ),
            Panel(
                "GC collections",
                "ops",
                (
                    Query(
                        _rate_sum("python_gc_collections_total", SERVER, "impl"),
                        "{{impl}}",
                    ),
                ),
                "impl",
            ),
        ),
    )


TARGET = 'target=~"$target"'
CLIENT = "stackbench_client_request_duration_seconds"


def _load_generator() -> Dashboard:
    achieved = _rate_sum(f"{CLIENT}_count", TARGET, "target")
    return Dashboard(
        uid="stackbench-load",
        title="stackbench: load generator",
        description="Is the driver keeping up? Intended vs achieved rate, drops, driver CPU.",
        filename="load-generator.json",
        variables=(
            Variable("target", "label_values(stackbench_client_intended_requests_total, target)"),
        ),
        panels=(
            Panel(
                "Users",
                "short",
                (
                    Query(
                        'sum by (scenario) (stackbench_client_users{role!="master"})',
                        "{{scenario}}",
                    ),
                ),
                None,
            ),
            Panel(
                "Intended vs achieved request rate",
                "reqps",
                (
                    Query(
                        _rate_sum("stackbench_client_intended_requests_total", TARGET, "target"),
                        "{{target}} intended",
                    ),
                    Query(achieved, "{{target}} achieved"),
                ),
                "target",
                "Achieved below intended means the driver or the server fell behind.",
            ),
            Panel(
                "Dropped arrivals (open model)",
                "reqps",
                (
                    Query(
                        _rate_sum("stackbench_client_dropped_arrivals_total", TARGET, "target"),
                        "{{target}}",
                    ),
                ),
                "target",
            ),
            *(
                Panel(
                    f"Client latency p{q}",
                    "s",
                    (Query(_quantile(q / 100, CLIENT, TARGET, "target"), "{{target}}"),),
                    "target",
                    "Open model: from each request's intended start (coordinated omission "
                    "corrected).",
                )
                for q in (50, 99)
            ),
            Panel(
                "Client errors",
                "reqps",
                (
                    Query(
                        _or_zero(
                            _rate_sum(f"{CLIENT}_count", TARGET + ', outcome="error"', "target"),
                            achieved,
                        ),
                        "{{target}}",
                    ),
                ),
                "target",
            ),
            Panel(
                "Driver CPU (per Locust process)",
                "percentunit",
                (
                    Query(
                        f"rate(stackbench_client_cpu_seconds_total[{RATE}])",
                        "{{role}} {{instance}}",
                    ),
                ),
                None,
                "Near 100 % of a core, the load generator is the bottleneck, not the server.",
                max_value=1.0,
            ),
        ),
    )


DASHBOARDS = (_server_comparison(), _load_generator())


def _colour_overrides() -> list[dict]:
    return [
        {
            "matcher": {"id": "byRegexp", "options": f"^{name}( .*)?$"},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}],
        }
        for name, colour in COLOURS.items()
    ]


def _panel_json(panel: Panel, panel_id: int) -> dict:
    defaults: dict = {"unit": panel.unit, "min": 0, "custom": {"lineWidth": 2, "fillOpacity": 5}}
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": 0.8}],
        }
        defaults["custom"]["thresholdsStyle"] = {"mode": "line+area"}
    index = panel_id - 1
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": defaults, "overrides": _colour_overrides()},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": q.expr,
                "legendFormat": q.legend,
            }
            for i, q in enumerate(panel.queries)
        ],
    }


def _variable_json(variable: Variable) -> dict:
    return {
        "name": variable.name,
        "label": variable.name,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": variable.query,
        "query": {"query": variable.query, "refId": "vars"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",  # ".*" would also match series without the label
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard_json(dashboard: Dashboard) -> dict:
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["stackbench"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [_variable_json(v) for v in dashboard.variables]},
        "panels": [_panel_json(p, i) for i, p in enumerate(dashboard.panels, start=1)],
    }


def render(dashboard: Dashboard) -> str:
    return json.dumps(dashboard_json(dashboard), indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args()
    stale = []
    for dashboard in DASHBOARDS:
        path = OUTPUT / dashboard.filename
        text = render(dashboard)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
