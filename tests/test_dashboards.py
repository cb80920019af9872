"""The Grafana dashboards: structure, and every query evaluated by a real Prometheus scraping
the real servers and a real Locust run. A panel that cannot show data fails here."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loadtest.orchestrator.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards" / "grafana" / "dashboards"
PROVISIONING = ROOT / "dashboards" / "grafana" / "provisioning"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
SERVERS = ("gevent", "trio", "aiohttp")
RATE_INTERVAL = "10s"  # what Grafana makes of $__rate_interval at a 1 s scrape interval


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _as_grafana_sends_it(dashboard: dict, expr: str) -> str:
    """The query with every variable set to "All" (its allValue), as Grafana would send it."""
    for variable in dashboard["templating"]["list"]:
        expr = expr.replace(f"${variable['name']}", variable["allValue"])
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def _panel_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, query, legend) for every query of every panel."""
    return [
        (path.name, panel["title"], _as_grafana_sends_it(dashboard, target["expr"]),
         target.get("legendFormat", ""))
        for path in DASHBOARDS
        for dashboard in [_load(path)]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]  # fmt: skip


def test_dashboards_are_generated_from_code() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "dashboards" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in DASHBOARDS} == {"server-comparison.json", "load-generator.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = _load(path)
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            if "rate(" in target["expr"]:
                assert "$__rate_interval" in target["expr"], panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_dashboard_uids_are_distinct_and_provisioned() -> None:
    uids = [_load(path)["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "stackbench.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert f"./dashboards/grafana/dashboards:{path}:ro" in mounts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _derived_prometheus_config(
    server_ports: dict[str, int], client_port: int, prometheus_port: int
) -> dict:
    """The project's own scrape config with loopback addresses in place of compose services."""
    config = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "servers":
            for static in job["static_configs"]:
                static["targets"] = [f"127.0.0.1:{server_ports[static['labels']['impl']]}"]
        elif name == "locust":
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{client_port}"]}]
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
        else:
            continue  # cadvisor needs Docker
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]


@pytest.fixture(scope="module")
def prometheus(
    servers: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    assert shutil.which("prometheus"), "prometheus (Debian package) is installed by make test"
    workdir = tmp_path_factory.mktemp("prometheus")
    client_port, prometheus_port = _free_port(), _free_port()
    targets = ",".join(f"{impl}={servers[impl].url}" for impl in SERVERS)
    locust = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f", str(ROOT / "loadtest/locustfiles/mixed.py"),
            "--headless", "-u", "9", "-r", "9", "-t", "90s", "--only-summary",
        ],
        env={**os.environ, "STACKBENCH_TARGETS": targets,
             "STACKBENCH_CLIENT_METRICS_PORT": str(client_port)},
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(_derived_prometheus_config(
            {impl: servers[impl].port for impl in SERVERS}, client_port, prometheus_port
        ))
    )  # fmt: skip
    server = subprocess.Popen(
        [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = Prometheus(prometheus_port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                targets_up = client.query("up == 1")
                load = client.query(
                    "sum(rate(stackbench_client_request_duration_seconds_count[10s]))"
                )
                if len(targets_up) == 5 and load and float(load[0]["value"][1]) > 0:
                    break
            except OSError:
                pass
            time.sleep(1)
        time.sleep(4)  # a few more scrapes, so every rate() window holds several samples
        yield client
    finally:
        for process in (locust, server):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def test_every_scrape_target_is_up(prometheus: Prometheus) -> None:
    up = {(r["metric"]["job"], r["metric"].get("impl", "")) for r in prometheus.query("up == 1")}
    assert up == {
        ("servers", "gevent"), ("servers", "trio"), ("servers", "aiohttp"),
        ("locust", ""), ("prometheus", ""),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("dashboard", "title", "query", "legend"),
    _panel_queries(),
    ids=[f"{d}:{t}:{legend}" for d, t, _, legend in _panel_queries()],
)
def test_every_panel_query_returns_data(
    prometheus: Prometheus, dashboard: str, title: str, query: str, legend: str
) -> None:
    assert "$" not in query, f"unsubstituted variable in {query}"
    result = prometheus.query(query)
    assert result, f"{dashboard} / {title}: no data for {query}"
    for label in re.findall(r"\{\{(impl|target)\}\}", legend):
        values = {series["metric"].get(label) for series in result}
        assert values == set(SERVERS), f"{title}: {label} values {values}"
