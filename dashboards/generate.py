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
from servers.contract import IMPLS, TIERS

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "grafana" / "dashboards"
# Panels name the datasource through a variable, so the dashboards import into any Grafana;
# under compose it defaults to the provisioned one (provisioning/datasources/prometheus.yml).
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONED_DATASOURCE_UID = "stackbench-prometheus"
# One colour per server, the same on every panel of both dashboards as in the report's charts.
COLOURS = {impl: colour for impl, colour in REPORT_COLOURS.items() if impl in IMPLS}
RATE = "$__rate_interval"
RANGE = "$__range"


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
    description: str
    max_value: float | None = None
    repeat: str | None = None  # one panel per selected value of this variable


@dataclass(frozen=True)
class Variable:
    name: str
    query: str  # label_values(...), or for a custom variable "text : value,..."
    label: str = ""
    custom: bool = False


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


SERVER = 'impl=~"$tier", impl=~"$impl"'
SERVER_ROUTE = SERVER + ', route=~"$route"'
REQUESTS = "http_server_request_duration_seconds"
RSS = f"process_resident_memory_bytes{{{SERVER}}}"
IN_FLIGHT = f"http_server_active_requests{{{SERVER}}}"
# Below this many requests in flight above the quietest moment, RSS noise (allocator, GC)
# outweighs what the requests hold: the memory-per-request panel shows nothing rather than noise.
MIN_IN_FLIGHT_FOR_MEMORY = 10


def _tier_variable() -> Variable:
    options = ",".join(f"{tier} tier : {'|'.join(members)}" for tier, members in TIERS.items())
    return Variable("tier", options, label="tier", custom=True)


def _server_comparison() -> Dashboard:
    request_rate = _rate_sum(f"{REQUESTS}_count", SERVER_ROUTE, "impl")
    errors = _rate_sum(f"{REQUESTS}_count", SERVER_ROUTE + ', status=~"[45].."', "impl")
    return Dashboard(
        uid="stackbench-servers",
        title="stackbench: server comparison",
        description="gevent (stackful) against trio and aiohttp (stackless), side by side. The "
        "stack tier (gevent, trio, aiohttp) is what people deploy; the runtime tier "
        "(gevent-h11, asyncio-h11, trio, threads-h11) is one h11 core on each runtime; the "
        "native tier (go-nethttp, rust-hyper) is Go's goroutines and Rust's tokio tasks serving "
        "the same contract. Under compose the servers share one host: for the isolated "
        "comparison, run stackbench run.",
        filename="server-comparison.json",
        variables=(
            _tier_variable(),
            Variable(
                "impl", 'label_values(stackbench_server_info{impl=~"$tier"}, impl)', label="server"
            ),
            Variable("route", f"label_values({REQUESTS}_count, route)"),
        ),
        panels=(
            Panel(
                "Request rate",
                "reqps",
                (Query(request_rate, "{{impl}}"),),
                "impl",
                "Responses per second, every status, the selected routes.",
            ),
            *(
                Panel(
                    f"Latency p{q}, all selected routes",
                    "s",
                    (Query(_quantile(q / 100, REQUESTS, SERVER_ROUTE, "impl"), "{{impl}}"),),
                    "impl",
                    "From the request's arrival at the server to its last byte, every selected "
                    "route together (a mix: see the per-route panels). Read from the servers' "
                    "histogram buckets, whose bounds keep a p99 within 10 % of the exact figure "
                    "for the contract's routes.",
                )
                for q in (50, 99)
            ),
            Panel(
                "p99 latency of $route",
                "s",
                (Query(_quantile(0.99, REQUESTS, SERVER_ROUTE, "impl"), "{{impl}}"),),
                "impl",
                "One panel per route: /json beside /blocking shows function colouring (a "
                "blocking call made inline stalls every other request on an event loop, not on "
                "gevent or threads).",
                repeat="route",
            ),
            Panel(
                "Error ratio (4xx, 5xx, 499 client gone)",
                "percentunit",
                (Query(_or_zero(f"{errors} / {request_rate}", request_rate), "{{impl}}"),),
                "impl",
                "Share of responses that were errors, of all the server answered: 4xx (the "
                "client's mistake), 5xx, and 499 (the client left before the answer).",
            ),
            Panel(
                "Open connections and the connection limit",
                "short",
                (
                    Query(f"http_server_open_connections{{{SERVER}}}", "{{impl}}"),
                    Query(f"http_server_connection_limit{{{SERVER}}}", "{{impl}} limit"),
                ),
                "impl",
                "Client connections open now, and --max-connections: past it a new "
                "connection gets a 503 and is closed.",
            ),
            Panel(
                "Rejected connections",
                "cps",
                (
                    Query(
                        _rate_sum("http_server_rejected_connections_total", SERVER, "impl"),
                        "{{impl}}",
                    ),
                ),
                "impl",
                "Connections per second shed at the connection limit (503 and close).",
            ),
            Panel(
                "Resident memory (RSS)",
                "bytes",
                (Query(RSS, "{{impl}}"),),
                "impl",
                "The whole server process, as its own process collector reads /proc.",
            ),
            Panel(
                "Memory per in-flight request",
                "bytes",
                (
                    Query(
                        f"({RSS} - min_over_time({RSS}[{RANGE}])) / ({IN_FLIGHT} - "
                        f"min_over_time({IN_FLIGHT}[{RANGE}]) >= {MIN_IN_FLIGHT_FOR_MEMORY})",
                        "{{impl}}",
                    ),
                ),
                "impl",
                "RSS above the quietest moment of the time range, over the requests in flight "
                "above it: the chord of RSS against requests in flight, what stackbench run "
                "fits as a slope across io_hold's levels (it agrees when the range starts "
                f"idle and the load steps up). Empty below {MIN_IN_FLIGHT_FOR_MEMORY} requests "
                "in flight, where allocator noise would dominate.",
            ),
            Panel(
                "Requests in flight",
                "short",
                (Query(IN_FLIGHT, "{{impl}}"),),
                "impl",
                "Requests received and not yet answered.",
            ),
            Panel(
                "Connections accepted",
                "cps",
                (Query(_rate_sum("http_server_connections_total", SERVER, "impl"), "{{impl}}"),),
                "impl",
                "New client connections per second, shed ones included. Keep-alive clients "
                "open few; a steady rate under steady load means connections are not reused.",
            ),
            Panel(
                "Live tasks / greenlets / threads",
                "short",
                (Query(f"stackbench_tasks{{{SERVER}}}", "{{impl}}"),),
                "impl",
                "What the runtime is running: trio and asyncio tasks, gevent greenlets the "
                "server spawned, threads-h11's connection threads.",
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
                "Fraction of one core the server process uses (user + system).",
            ),
            Panel(
                "CPU per request",
                "s",
                (
                    Query(
                        f"sum by (impl) (rate(process_cpu_seconds_total{{{SERVER}}}[{RATE}])) "
                        f"/ ({_rate_sum(f'{REQUESTS}_count', SERVER, 'impl')} > 0)",
                        "{{impl}}",
                    ),
                ),
                "impl",
                "CPU seconds over requests answered, all routes: what one request costs, "
                "idle timers and scrapes included (stackbench run subtracts those; at low "
                "rates they dominate here).",
            ),
            Panel(
                "GC collections",
                "ops",
                (
                    Query(
                        f"{_rate_sum('python_gc_collections_total', SERVER, 'impl')} or "
                        f"{_rate_sum('go_gc_duration_seconds_count', SERVER, 'impl')}",
                        "{{impl}}",
                    ),
                ),
                "impl",
                "Garbage collections per second: Python's, all generations, and Go's cycles. "
                "rust-hyper has no collector, so no line.",
            ),
        ),
    )


TARGET = 'target=~"$target"'
CLIENT = "stackbench_client_request_duration_seconds"


def _load_generator() -> Dashboard:
    achieved = _rate_sum(f"{CLIENT}_count", TARGET, "target")
    client_errors = _rate_sum(f"{CLIENT}_count", TARGET + ', outcome="error"', "target")
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
                "Locust users running, summed over the processes that run them.",
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
                "Open model: arrivals per second not sent because the user's in-flight limit "
                "was reached (0 in the closed model).",
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
                "Client error ratio",
                "percentunit",
                (
                    Query(
                        _or_zero(
                            f"{client_errors} / {achieved}",
                            achieved,
                        ),
                        "{{target}}",
                    ),
                ),
                "target",
                "Share of requests Locust counted as failed (error status, refused or reset "
                "connection, timeout).",
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
    repeat = {"repeat": panel.repeat, "repeatDirection": "h", "maxPerRow": 3}
    return {
        **(repeat if panel.repeat else {}),
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


def _datasource_variable() -> dict:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {"text": "Prometheus", "value": PROVISIONED_DATASOURCE_UID},
        "hide": 0,
    }


def _variable_json(variable: Variable) -> dict:
    if variable.custom:
        return {
            "name": variable.name,
            "label": variable.label or variable.name,
            "type": "custom",
            "query": variable.query,
            "multi": False,
            "includeAll": True,
            "allValue": ".+",
            "current": {"selected": True, "text": "All", "value": "$__all"},
            "options": [],
        }
    return {
        "name": variable.name,
        "label": variable.label or variable.name,
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
        "templating": {
            "list": [_datasource_variable(), *(_variable_json(v) for v in dashboard.variables)]
        },
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
