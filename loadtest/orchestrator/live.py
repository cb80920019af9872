"""`stackbench live`: the live view without Docker. The servers side by side, Locust's web UI on
a scenario (mixed by default) aimed at all of them, and Prometheus (the binary on the PATH,
Debian's here) scraping the servers and Locust with a scrape config generated for these local
ports; Grafana too, with the project's provisioning and dashboards, where a `grafana` binary
is on the PATH. Everything stops on Ctrl-C (or SIGTERM, or after --duration)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.driver import settings
from loadtest.orchestrator.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent.parent
LOCUSTFILES = ROOT / "loadtest" / "locustfiles"
GRAFANA_DIR = ROOT / "dashboards" / "grafana"
SCRAPE_INTERVAL = "2s"  # as in compose's scrape config: the dashboards' rate windows fit it
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
GRAFANA_BINARIES = ("grafana", "grafana-server")


class LiveError(Exception):
    """The live view cannot start as asked (printed as one line, exit 2)."""


@dataclass(frozen=True)
class Ports:
    servers: int  # the first server's; the others take the next ones
    locust: int
    client_metrics: int
    prometheus: int
    grafana: int


def scrape_config(servers: dict[str, int], client_metrics: Sequence[int], prometheus: int) -> dict:
    """Prometheus's configuration for these local ports: the jobs and labels of compose's
    (dashboards/prometheus/prometheus.yml), so the same dashboards query both."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "servers",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"impl": impl}}
                    for impl, port in servers.items()
                ],
            },
            {
                "job_name": "locust",
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in client_metrics]}],
            },
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{prometheus}"]}],
            },
        ],
    }


def write_yaml(path: Path, document: dict, comment: str) -> Path:
    """JSON is YAML: written without a YAML library, read by Prometheus and Grafana alike."""
    path.write_text(f"# {comment}\n{json.dumps(document, indent=2)}\n")
    return path


def grafana_provisioning(into: Path, prometheus_url: str) -> Path:
    """The project's Grafana provisioning with the datasource at the local Prometheus and the
    dashboards read from this checkout (the compose files' paths substituted)."""
    datasource = (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    dashboards = (GRAFANA_DIR / "provisioning" / "dashboards" / "stackbench.yml").read_text()
    datasource, found = re.subn(r"(?m)^(\s*url:).*$", rf"\1 {prometheus_url}", datasource)
    dashboards, found_path = re.subn(
        r"(?m)^(\s*path:).*$", rf"\1 {GRAFANA_DIR / 'dashboards'}", dashboards
    )
    if found != 1 or found_path != 1:
        raise LiveError("dashboards/grafana/provisioning changed shape: cannot derive a local copy")
    for sub, text in (("datasources", datasource), ("dashboards", dashboards)):
        (into / sub).mkdir(parents=True, exist_ok=True)
        (into / sub / "stackbench.yml").write_text(text)
    for sub in ("plugins", "alerting"):
        (into / sub).mkdir(exist_ok=True)
    return into


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class _Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, command: list[str], log: Path, **popen: object) -> None:
        self.name, self.log = name, log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                **popen,  # type: ignore[arg-type]
            )  # fmt: skip

    def wait_until(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():  # type: ignore[operator]
            if self.process.poll() is not None:
                raise LiveError(f"{self.name} exited ({self.process.returncode}): {self.tail()}")
            if time.monotonic() > deadline:
                raise LiveError(f"{self.name}: {what} not after {START_TIMEOUT_S:g} s")
            time.sleep(0.2)

    def tail(self, lines: int = 3) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def _child(name: str, command: list[str], log: Path, **popen: object) -> Iterator[_Child]:
    child = _Child(name, command, log, **popen)
    try:
        yield child
    finally:
        child.stop()


def _start_locust(
    stack: contextlib.ExitStack, work: Path, scenario: str, targets: str, ports: Ports
) -> int:
    """Locust's web UI (no test started: that is the user's) aimed at every server; the port
    its client metrics took."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STACKBENCH_")},
        **settings.as_environment(
            settings.DriverSettings(targets=targets, client_metrics_port=ports.client_metrics)
        ),
    }
    command = [
        str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILES / f"{scenario}.py"),
        "--web-host", "127.0.0.1", "--web-port", str(ports.locust),
    ]  # fmt: skip
    locust = stack.enter_context(_child("Locust", command, work / "locust.log", env=env, cwd=work))
    announced: list[str] = []

    def metrics_announced() -> bool:
        announced[:] = settings.METRICS_ANNOUNCE_PATTERN.findall(
            locust.log.read_text(errors="replace")
        )
        return bool(announced)

    locust.wait_until(metrics_announced, "no client metrics")
    locust.wait_until(lambda: _ready(f"http://127.0.0.1:{ports.locust}/"), "no web UI")
    return int(announced[0][2])


def _start_grafana(stack: contextlib.ExitStack, work: Path, ports: Ports) -> str | None:
    """Grafana with the project's dashboards, if a binary is on the PATH; its URL."""
    binary = next(filter(None, map(shutil.which, GRAFANA_BINARIES)), None)
    if binary is None:
        return None
    home = Path(binary).resolve().parent.parent
    if not (home / "public").is_dir():
        home = Path("/usr/share/grafana")  # Debian's and the official packages' layout
    provisioning = grafana_provisioning(
        work / "grafana-provisioning", f"http://127.0.0.1:{ports.prometheus}"
    )
    env = {
        **os.environ,
        "GF_PATHS_PROVISIONING": str(provisioning),
        "GF_PATHS_DATA": str(work / "grafana-data"),
        "GF_PATHS_LOGS": str(work / "grafana-logs"),
        "GF_SERVER_HTTP_ADDR": "127.0.0.1",
        "GF_SERVER_HTTP_PORT": str(ports.grafana),
        "GF_AUTH_ANONYMOUS_ENABLED": "true",
        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_AUTH_DISABLE_LOGIN_FORM": "true",  # no admin/admin: anonymous viewers only
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": str(
            GRAFANA_DIR / "dashboards" / "server-comparison.json"
        ),
    }
    command = [binary, *(["server"] if Path(binary).name == "grafana" else []),
               "--homepath", str(home)]  # fmt: skip
    grafana = stack.enter_context(_child("Grafana", command, work / "grafana.log", env=env))
    url = f"http://127.0.0.1:{ports.grafana}"
    grafana.wait_until(lambda: _ready(f"{url}/api/health"), "no answer on /api/health")
    return url


def run_live(servers: Sequence[str], scenario: str, ports: Ports, duration: float | None) -> None:
    """Start everything, print where it is, serve until Ctrl-C, SIGTERM or `duration`; stop
    everything it started. LiveError (and ServerStartError) when something cannot start."""
    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        raise LiveError("prometheus is not on the PATH: install it (Debian: apt-get install "
                        "prometheus, or make system-deps)")  # fmt: skip
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    work = Path(tempfile.mkdtemp(prefix="stackbench-live-"))
    try:
        with contextlib.ExitStack() as stack:
            # What the servers' /upstream calls (the upstream scenario, in the class picker).
            upstream = stack.enter_context(ServerProcess("aiohttp", extra_args=("--uvloop",)))
            started = {
                impl: stack.enter_context(
                    ServerProcess(
                        impl, port=ports.servers + offset, extra_args=("--upstream", upstream.url)
                    )
                )
                for offset, impl in enumerate(servers)
            }
            targets = ",".join(f"{impl}={server.url}" for impl, server in started.items())
            client_port = _start_locust(stack, work, scenario, targets, ports)
            config = write_yaml(
                work / "prometheus.yml",
                scrape_config(
                    {impl: s.port for impl, s in started.items()}, [client_port], ports.prometheus
                ),
                "generated by stackbench live for its local ports",
            )
            prometheus_url = f"http://127.0.0.1:{ports.prometheus}"
            prometheus = stack.enter_context(_child("Prometheus", [
                prometheus_binary, f"--config.file={config}",
                f"--storage.tsdb.path={work / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{ports.prometheus}",
            ], work / "prometheus.log"))  # fmt: skip
            prometheus.wait_until(lambda: _ready(f"{prometheus_url}/-/ready"), "not ready")
            grafana_url = _start_grafana(stack, work, ports)
            _print_where(started, scenario, ports, client_port, config, grafana_url)
            print(f"The servers' /upstream calls {upstream.url} (aiohttp).", flush=True)
            stop.wait(duration)
            first = "Grafana, Prometheus" if grafana_url else "Prometheus"
            print(f"Stopping: {first}, Locust, then each server drains.", flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(work, ignore_errors=True)
    print("Stopped.")


def _print_where(
    servers: dict[str, ServerProcess],
    scenario: str,
    ports: Ports,
    client_port: int,
    config: Path,
    grafana_url: str | None,
) -> None:
    rows = [
        (f"Locust web UI ({scenario}): start a test, it loads every server",
         f"http://127.0.0.1:{ports.locust}"),
        ("Prometheus", f"http://127.0.0.1:{ports.prometheus}"),
        ("Locust's client metrics", f"http://127.0.0.1:{client_port}/metrics"),
        *((f"{impl} /metrics", f"{server.url}/metrics") for impl, server in servers.items()),
    ]  # fmt: skip
    if grafana_url:
        rows.insert(1, ("Grafana (anonymous, read-only)", grafana_url))
    width = max(len(what) for what, _ in rows)
    print("\n".join(f"{what:<{width}}  {url}" for what, url in rows))
    print(f"Prometheus scrapes with {config} (generated; removed on exit).")
    if not grafana_url:
        print(
            "No grafana on the PATH: add the Prometheus above as a datasource of your Grafana "
            "and import dashboards/grafana/dashboards/*.json (README: Live view without Docker)."
        )
    print("Ctrl-C stops everything.", flush=True)
