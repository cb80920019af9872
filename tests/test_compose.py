"""The compose stack, checked without a Docker engine: `docker-compose config` validates it
offline, and everything it mounts or runs is checked against this repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("gevent", "trio", "aiohttp")
# Paths the image puts the repository's files at (see Dockerfile).
IMAGE_PATHS = {"/app/locustfiles/": ROOT / "loadtest" / "locustfiles"}


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    assert shutil.which("docker-compose"), "docker-compose is installed by `make test`"
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict:
    done = _compose_config({"GRAFANA_ADMIN_PASSWORD": "test-only"})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_has_the_stack(compose: dict) -> None:
    assert set(compose["services"]) >= {
        *SERVERS,
        "locust-master",
        "locust-worker",
        "prometheus",
        "grafana",
    }


def test_grafana_password_has_no_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in done.stderr


def test_grafana_is_anonymous_read_only(compose: dict) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "test-only"  # from the environment


def test_published_ports_bind_loopback_only(compose: dict) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip')}:{port}"
            assert text.startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_every_service_has_a_memory_limit(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert service.get("mem_limit"), f"{name} has no memory limit"


def test_servers_have_cpu_limits_and_health_checks(compose: dict) -> None:
    for name in SERVERS:
        service = compose["services"][name]
        assert float(service["cpus"]) > 0
        assert "/healthz" in " ".join(service["healthcheck"]["test"])


def test_containers_run_as_non_root(compose: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER (?!root)\S+", final_stage, re.M)
    assert "build-essential" not in final_stage
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("stackbench"):
            continue  # the Dockerfile's USER
        if name == "cadvisor":
            continue  # opt-in profile; it reads every container's cgroups and needs root
        assert service.get("user", "0").split(":")[0] not in ("0", "root"), name


def test_mounted_files_exist(compose: dict) -> None:
    mounted = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith(str(ROOT)):
                assert Path(source).exists(), f"{name} mounts missing {source}"
                mounted += 1
    assert mounted >= 3


def _local_command(command: list[str]) -> list[str]:
    """A compose command as it runs from this checkout: image paths mapped to the repo."""
    local = []
    for arg in command:
        for image_path, repo_path in IMAGE_PATHS.items():
            if arg.startswith(image_path):
                arg = str(repo_path / arg.removeprefix(image_path))
        local.append(arg)
    return local


def test_every_command_is_a_real_cli_invocation(compose: dict) -> None:
    bin_dir = Path(sys.executable).parent
    checked = 0
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] not in ("stackbench", "locust"):
            continue
        local = _local_command(command)
        local[0] = str(bin_dir / local[0])
        done = subprocess.run(
            [*local, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert done.returncode == 0, f"{name}: {' '.join(command)}\n{done.stderr[-2000:]}"
        checked += 1
        if command[0] == "locust":
            assert Path(local[2]).is_file(), f"{name}: no Locust file {command[2]}"
    assert checked == 5


def test_every_scenario_has_a_locust_file() -> None:
    from loadtest.driver.scenarios import SCENARIOS

    files = {p.stem for p in (ROOT / "loadtest" / "locustfiles").glob("*.py")} - {"__init__"}
    assert files == set(SCENARIOS)


def test_prometheus_config_passes_promtool() -> None:
    assert shutil.which("promtool"), (
        "promtool (Debian package prometheus) is installed by make test"
    )
    done = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "dashboards/prometheus/prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_labels_every_server_with_impl() -> None:
    config = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    impls = {c["labels"]["impl"] for c in jobs["servers"]["static_configs"]}
    assert impls == set(SERVERS)
    assert "locust" in jobs and "prometheus" in jobs


def test_health_checks_pass_against_a_real_server(compose: dict, servers: dict) -> None:
    for name in SERVERS:
        kind, *command = compose["services"][name]["healthcheck"]["test"]
        assert kind == "CMD" and command[0] == "python"
        local = [sys.executable, *(arg.replace(":8080/", f":{servers[name].port}/")
                                   for arg in command[1:])]  # fmt: skip
        assert subprocess.run(local, timeout=30).returncode == 0, name
