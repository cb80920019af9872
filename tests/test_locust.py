"""The scenario files under plain Locust, as a Locust user drives them: `-f` with a folder or a
comma list, `--list`, headless without a host, the step shape under `-u`, and the web UI
through its HTTP API (POST /swarm, /stop) against real servers, checked on the servers' own
request counters. Locust runs only in subprocesses (importing it patches the interpreter)."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from loadtest.driver.scenarios import SCENARIOS
from loadtest.orchestrator.serverproc import ServerProcess

# Measuring tests run one after another on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("measuring")

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILES = ROOT / "loadtest" / "locustfiles"
LOCUST = str(Path(sys.executable).parent / "locust")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**variables: str) -> dict[str, str]:
    """This environment without any STACKBENCH_* of the caller's, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKBENCH_")}
    return {**env, "STACKBENCH_CLIENT_METRICS_PORT": "0", **variables}


def _locust(*args: str, cwd: Path, timeout: float = 60, **variables: str):
    return subprocess.run(
        [LOCUST, *args], env=_env(**variables), cwd=cwd,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _served(server: ServerProcess) -> dict[str, float]:
    """Requests the server itself counted, per route (its own /metrics)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for route, value in re.findall(
        r'^http_server_request_duration_seconds_count\{[^}]*route="([^"]+)"[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    ):
        counts[route] = counts.get(route, 0.0) + float(value)
    return counts


def _load(server: ServerProcess) -> float:
    """What a scenario sent to the server: every request but the probes and scrapes."""
    return sum(n for route, n in _served(server).items() if route not in ("/healthz", "/metrics"))


def _class_name(scenario: str) -> str:
    return "".join(part.capitalize() for part in scenario.split("_")) + "User"


def test_list_names_every_scenarios_user_class(tmp_path: Path) -> None:
    done = _locust("-f", str(LOCUSTFILES), "--list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {line.strip() for line in done.stdout.splitlines()[1:]}
    assert listed == {_class_name(s) for s in SCENARIOS}


@pytest.fixture(scope="module")
def trio_with_upstream() -> Iterator[ServerProcess]:
    """trio with an upstream of its own, so that every scenario's requests succeed."""
    with (
        ServerProcess("aiohttp") as upstream,
        ServerProcess("trio", extra_args=("--upstream", upstream.url)) as server,
    ):
        yield server


@pytest.mark.parametrize(
    ("files", "routes"),
    [
        (
            [str(LOCUSTFILES)],
            {"/", "/echo", "/sleep", "/cpu", "/blocking", "/fanout", "/upstream"},
        ),
        ([str(LOCUSTFILES / "plaintext.py"), str(LOCUSTFILES / "echo.py")], {"/", "/echo"}),
    ],
    ids=["folder", "comma-list"],
)
def test_several_files_run_together(
    trio_with_upstream: ServerProcess, tmp_path: Path, files: list[str], routes: set[str]
) -> None:
    server = trio_with_upstream
    before = _served(server)
    done = _locust(
        "-f", ",".join(files), "--host", server.url, "--headless",
        "-u", str(2 * len(SCENARIOS)), "-r", "100", "-t", "3s", "--only-summary",
        "--csv", str(tmp_path / "run"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    after = _served(server)
    grew = {route for route, n in after.items() if n > before.get(route, 0)}
    assert routes <= grew
    with (tmp_path / "run_stats.csv").open() as stats:
        names = {row["Name"] for row in csv.DictReader(stats)} - {"Aggregated"}
    # Reached by a bare URL, rows still carry the server's own name.
    assert names and all(name.startswith("trio ") for name in names), names


def test_headless_without_a_host_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _locust("-f", str(LOCUSTFILES / "plaintext.py"), "--headless", "-t", "5s",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "stackbench: error: no target: pass --host (or fill in the web UI's Host) "
        "or set STACKBENCH_TARGETS"
    ]
    assert "Traceback" not in done.stderr and "Aggregated" not in done.stdout


def test_user_count_caps_the_step_shape(servers: dict[str, ServerProcess], tmp_path: Path) -> None:
    done = _locust(
        "-f", str(LOCUSTFILES / "plaintext.py"), "--host", servers["aiohttp"].url,
        "--headless", "-u", "3", "--only-summary", "--csv", str(tmp_path / "run"),
        "--csv-full-history", cwd=tmp_path,
        STACKBENCH_SHAPE="steps", STACKBENCH_STEP_SECONDS="1", STACKBENCH_LEVELS="1,3,40",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 users at most: step levels 40 dropped" in done.stderr
    with (tmp_path / "run_stats_history.csv").open() as history:
        users = [int(row["User Count"]) for row in csv.DictReader(history)]
    assert users and max(users) == 3


class WebUI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return response.read()

    def post(self, path: str, **form: str) -> dict:
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(self.base + path, data=data, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body.startswith(b"{") else {}

    def state(self) -> dict:
        return json.loads(self.get("/stats/requests"))

    def swarm(self, host: str, users: int = 2) -> dict:
        return self.post(
            "/swarm", user_count=str(users), spawn_rate=str(users), host=host,
            user_classes="PlaintextUser",
        )  # fmt: skip

    def stop(self) -> None:
        self.post("/stop")
        _until(lambda: self.state()["state"] == "stopped", "the test did not stop")


def _until(condition, failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.2)


@pytest.fixture(scope="module")
def web_ui(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WebUI, subprocess.Popen, int]]:
    """Locust's web UI on every scenario with the class picker, no host given, its
    client-metrics port taken by someone else beforehand."""
    workdir = tmp_path_factory.mktemp("webui")
    web_port = _free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    log = (workdir / "locust.log").open("wb")
    locust = subprocess.Popen(
        [LOCUST, "-f", str(LOCUSTFILES), "--class-picker", "--web-host", "127.0.0.1",
         "--web-port", str(web_port)],
        env=_env(STACKBENCH_CLIENT_METRICS_PORT=str(taken)), cwd=workdir,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ui = WebUI(web_port)
    try:
        _until(lambda: _answers(ui), "Locust's web UI did not come up")
        yield ui, locust, taken
    finally:
        locust.terminate()
        locust.wait(15)
        squatter.close()
        log.close()


def _answers(ui: WebUI) -> bool:
    try:
        ui.get("/")
    except OSError:
        return False
    return True


def _log(locust: subprocess.Popen) -> str:
    cwd = Path(psutil.Process(locust.pid).cwd())
    return (cwd / "locust.log").read_text(errors="replace")


def test_client_metrics_bind_loopback_and_say_which_port(web_ui) -> None:
    _, locust, taken = web_ui
    line = next(line for line in _log(locust).splitlines() if "client metrics" in line)
    match = re.search(r"on http://127\.0\.0\.1:(\d+)/metrics \(port (\d+) was taken\)", line)
    assert match and int(match[2]) == taken and int(match[1]) != taken, line
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(locust.pid).net_connections("tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert ("127.0.0.1", int(match[1])) in listening


def test_web_ui_offers_every_scenario_and_no_made_up_host(web_ui) -> None:
    ui, _, _ = web_ui
    page = ui.get("/").decode()
    offered = re.search(r'"available_user_classes": \[([^\]]*)\]', page)
    assert offered, "the class picker lists no user class"
    assert set(re.findall(r'"(\w+)"', offered[1])) == {_class_name(s) for s in SCENARIOS}
    assert "configured-per-user" not in page
    assert '"host": ""' in page, "the Host field starts empty without STACKBENCH_TARGETS"


def test_web_ui_loads_the_host_of_each_test(servers: dict[str, ServerProcess], web_ui) -> None:
    ui, _, _ = web_ui
    first, second = servers["gevent"], servers["trio"]
    started = ui.swarm(first.url)
    assert started["success"], started
    before = _load(first)
    _until(lambda: _load(first) > before + 200, "the first host got no load")
    rows = {row["name"] for row in ui.state()["stats"]} - {"Aggregated"}
    assert rows == {"gevent /"}, rows  # named by the server, reached by its URL
    ui.stop()
    first_done, second_before = _load(first), _load(second)
    started = ui.swarm(second.url)
    assert started["success"], started
    _until(lambda: _load(second) > second_before + 200, "the second host got no load")
    ui.stop()
    assert _load(first) == first_done, "the first host was loaded in the second test"


@pytest.mark.parametrize(
    ("host", "reason"),
    [("", "no target"), ("http://remote.invalid:8080", "not a loopback address")],
)
def test_web_ui_refuses_a_host_with_its_reason_and_stops(
    servers: dict[str, ServerProcess], web_ui, host: str, reason: str
) -> None:
    ui, _, _ = web_ui
    assert ui.swarm(servers["aiohttp"].url)["success"]
    _until(lambda: ui.state()["user_count"] > 0, "no user started")
    refused = ui.swarm(host)
    assert not refused["success"] and reason in refused["message"], refused
    _until(lambda: ui.state()["state"] == "stopped", "the refused start left the test running")
    assert ui.state()["user_count"] == 0
