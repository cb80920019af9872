"""`stackbench live` for real: the servers, Locust's web UI and Debian's Prometheus with the
generated local scrape config; every target up, then Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from loadtest.orchestrator.live import grafana_provisioning, scrape_config
from servers.contract import STACK_TIER

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

ROOT = Path(__file__).resolve().parent.parent


def _free_ports(count: int) -> list[int]:
    """Ports free now, with `count` consecutive ones first (the servers take a run)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return list(range(base, base + count))
    raise AssertionError("no run of free ports")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except OSError:
        return None


def test_scrape_config_labels_each_server_by_impl() -> None:
    config = scrape_config({"gevent": 8081, "trio": 8082}, [9646], 9090)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"servers", "locust", "prometheus"}
    assert jobs["servers"]["static_configs"] == [
        {"targets": ["127.0.0.1:8081"], "labels": {"impl": "gevent"}},
        {"targets": ["127.0.0.1:8082"], "labels": {"impl": "trio"}},
    ]
    assert jobs["locust"]["static_configs"] == [{"targets": ["127.0.0.1:9646"]}]


def test_grafana_provisioning_is_composes_pointed_at_the_local_prometheus(tmp_path: Path) -> None:
    """What a local Grafana is started with (no Grafana binary here to start)."""
    shipped = ROOT / "dashboards" / "grafana" / "provisioning"
    local = grafana_provisioning(tmp_path, "http://127.0.0.1:9999")
    (source,) = yaml.safe_load((local / "datasources" / "stackbench.yml").read_text())[
        "datasources"
    ]
    (composed,) = yaml.safe_load((shipped / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source == {**composed, "url": "http://127.0.0.1:9999"}
    (provider,) = yaml.safe_load((local / "dashboards" / "stackbench.yml").read_text())["providers"]
    dashboards = Path(provider["options"]["path"])
    assert {p.name for p in dashboards.glob("*.json")} == {
        "server-comparison.json",
        "load-generator.json",
    }


def test_live_is_scraped_whole_and_stops_whole_on_ctrl_c(tmp_path: Path) -> None:
    assert shutil.which("prometheus"), "prometheus (Debian package) is installed by make test"
    servers = _free_ports(len(STACK_TIER))
    locust, metrics, prometheus = _free_port(), _free_port(), _free_port()
    live = subprocess.Popen(
        [sys.executable, "-m", "loadtest.cli", "live", "--duration", "120",
         "--base-port", str(servers[0]), "--locust-port", str(locust),
         "--client-metrics-port", str(metrics), "--prometheus-port", str(prometheus),
         "--grafana-port", str(_free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        expected = {("servers", impl) for impl in STACK_TIER} | {("locust", ""), ("prometheus", "")}
        deadline = time.monotonic() + 90
        up: set[tuple[str, str]] = set()
        while up != expected:
            assert live.poll() is None, live.communicate()[1][-2000:]
            assert time.monotonic() < deadline, f"targets up: {up}"
            time.sleep(0.5)
            answer = _json(f"http://127.0.0.1:{prometheus}/api/v1/targets")
            targets = answer["data"]["activeTargets"] if answer else []
            up = {
                (t["labels"]["job"], t["labels"].get("impl", ""))
                for t in targets
                if t["health"] == "up"
            }
        # The web UI's Host starts with the first server (standing for all of them).
        with urllib.request.urlopen(f"http://127.0.0.1:{locust}/", timeout=5) as page:
            assert f'"host": "http://127.0.0.1:{servers[0]}"' in page.read().decode()
        children = psutil.Process(live.pid).children(recursive=True)
        assert len(children) >= len(STACK_TIER) + 2  # servers, Locust, Prometheus
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=60)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert live.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    for url in (f"http://127.0.0.1:{locust}", f"http://127.0.0.1:{prometheus}",
                f"http://127.0.0.1:{servers[0]}/metrics"):  # fmt: skip
        assert url in out
    # Nothing it started outlives it (checked on the processes themselves: once it has
    # exited, an orphan would no longer name it as its parent).
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
