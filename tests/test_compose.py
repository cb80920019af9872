"""The compose stack, checked without a Docker engine: `docker-compose config` validates it
offline, and everything it mounts or runs is checked against this repository."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from servers.contract import IMPLS, NATIVE_TIER, RUNTIME_TIER, STACK_TIER
from servers.native import PREBUILT_ENV

ROOT = Path(__file__).resolve().parent.parent
SERVERS = STACK_TIER
# Paths the image puts the repository's files at (see Dockerfile).
IMAGE_PATHS = {"/app/locustfiles/": ROOT / "loadtest" / "locustfiles"}


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker-compose ARGS` with nothing in the environment but PATH and `env`: what a new
    user who has set nothing gets."""
    assert shutil.which("docker-compose"), "docker-compose is installed by `make test`"
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )  # fmt: skip


def _config(*args: str, env: dict[str, str] | None = None) -> dict:
    done = _compose(*args, "config", env=env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _config()


def _default_profile(compose: dict) -> set[str]:
    return {name for name, service in compose["services"].items() if not service.get("profiles")}


def _profile(compose: dict, profile: str) -> set[str]:
    return {n for n, s in compose["services"].items() if profile in s.get("profiles", [])}


@pytest.fixture(scope="module")
def every_profile() -> dict:
    """The file with every profile on: every service it can run at once."""
    return _config("--profile", "runtime", "--profile", "native", "--profile", "cadvisor")


def test_compose_has_the_stack(compose: dict) -> None:
    assert _default_profile(compose) == {
        *SERVERS, "upstream", "locust-master", "locust-worker", "prometheus", "grafana",
    }  # fmt: skip
    runtime = {n for n, s in compose["services"].items() if "runtime" in s.get("profiles", [])}
    assert runtime == set(RUNTIME_TIER) - set(SERVERS)
    assert _profile(compose, "native") == set(NATIVE_TIER)
    assert set(IMPLS) <= set(compose["services"])  # every server, in some profile


def test_every_profile_publishes_distinct_host_ports(every_profile: dict) -> None:
    """All profiles up at once: no two services publish the same host port."""
    published: dict[str, str] = {}
    for name, service in every_profile["services"].items():
        for port in service.get("ports", []):
            host = port.rsplit(":", 1)[0] if isinstance(port, str) else port
            assert host not in published, f"{name} and {published.get(host)} publish {host}"
            published[host] = name
    for name in IMPLS:
        assert every_profile["services"][name]["ports"], f"{name} publishes no port"


@pytest.mark.parametrize(
    "profile",
    [(), ("--profile", "runtime"), ("--profile", "native"), ("--profile", "cadvisor"),
     ("--profile", "runtime", "--profile", "native", "--profile", "cadvisor")],
)  # fmt: skip
def test_every_compose_command_works_with_an_empty_environment(profile: tuple[str, ...]) -> None:
    for command in (("config",), ("config", "--services"), ("config", "--volumes")):
        done = _compose(*profile, *command)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
        assert "WARNING" not in done.stderr, done.stderr  # no unset variable, nothing defaulted


def test_env_example_lists_the_defaults(compose: dict) -> None:
    """.env.example shows what an empty environment gets, and each of its settings takes."""
    assert _config("--env-file", str(ROOT / ".env.example")) == compose
    assert ".env" in (ROOT / ".gitignore").read_text().split()  # a password is never committed
    changed = _config(env={"CPUSET_GEVENT": "1", "CPUSET_THREADS_H11": "1"})
    assert changed["services"]["gevent"]["cpuset"] == "1"
    assert changed["services"]["threads-h11"]["cpuset"] == "1"
    assert changed["services"]["trio"]["cpuset"] == compose["services"]["trio"]["cpuset"]
    native = ("--profile", "native")
    assert _config(*native, "--env-file", str(ROOT / ".env.example")) == _config(*native)
    changed = _config(*native, env={"CPUSET_RUST_HYPER": "1"})
    assert changed["services"]["rust-hyper"]["cpuset"] == "1"
    assert changed["services"]["go-nethttp"]["cpuset"] == compose["services"]["gevent"]["cpuset"]


CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL", re.I)


def test_no_service_has_a_default_credential(compose: dict) -> None:
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if CREDENTIAL.search(variable):
                assert not value, f"{name}: {variable} has a default value"
        assert not CREDENTIAL.search(" ".join(service.get("command") or [])), name
    assert not CREDENTIAL.search((ROOT / "Dockerfile").read_text())


def _mounts(service: dict) -> dict[str, str]:
    """{path in the container: source} of a service's volumes (docker-compose's short form)."""
    return dict(reversed(volume.split(":")[:2]) for volume in service.get("volumes", []))


def _grafana_environment(compose: dict, **extra: str) -> dict[str, str]:
    """The environment Grafana starts with: compose's, passed through the real start.sh."""
    service = compose["services"]["grafana"]
    shell, script = service["entrypoint"]
    mounted = _mounts(service)
    done = subprocess.run(
        ["sh", mounted[script]],
        env={**{k: str(v) for k, v in service["environment"].items()}, **extra,
             "GRAFANA_RUN": "env", "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert shell == "/bin/sh"
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_grafana_has_no_admin_account_unless_a_password_is_given(compose: dict) -> None:
    env = _grafana_environment(compose)
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env  # Grafana's own default would be "admin"
    assert not any(CREDENTIAL.search(k) and v for k, v in env.items())
    chosen = _config(env={"GRAFANA_ADMIN_PASSWORD": "test-only"})
    env = _grafana_environment(chosen)
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "test-only"
    assert "GRAFANA_ADMIN_PASSWORD" not in env  # only under Grafana's own name


def test_grafana_is_anonymous_read_only(compose: dict) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_health_checks_gate_what_depends_on_them(compose: dict) -> None:
    services = compose["services"]
    for name in (*IMPLS, "prometheus", "grafana", "locust-master"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], dependency
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}
    assert set(services["locust-worker"]["depends_on"]) == {"locust-master"}
    assert set(services["locust-master"]["depends_on"]) == set(SERVERS)


def test_data_lives_in_named_volumes(compose: dict) -> None:
    for name, path in (("prometheus", "/prometheus"), ("grafana", "/var/lib/grafana")):
        assert _mounts(compose["services"][name])[path] in compose["volumes"], name
    assert "--storage.tsdb.path=/prometheus" in compose["services"]["prometheus"]["command"]


def test_images_are_pinned_by_tag(compose: dict) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in compose["services"].items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: {service['image']}"
        if image == "stackbench":
            assert tag == version, f"{name}: the image is stackbench {version}"


def test_servers_are_pinned_to_cpus(compose: dict) -> None:
    for name in IMPLS:
        assert re.fullmatch(r"[0-9,-]+", compose["services"][name]["cpuset"]), name


def test_published_ports_bind_loopback_only(compose: dict) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip')}:{port}"
            assert text.startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_every_service_has_a_memory_limit(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert service.get("mem_limit"), f"{name} has no memory limit"


def test_servers_have_cpu_limits_and_health_checks(compose: dict) -> None:
    for name in IMPLS:
        service = compose["services"][name]
        assert float(service["cpus"]) > 0
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
        assert service["image"] == compose["services"]["gevent"]["image"], name  # one image
        command = service["command"]
        assert command[:3] == ["stackbench", "serve", name], name
        assert command[command.index("--upstream") + 1] == "http://upstream:8080", name
        assert command[command.index("--host") + 1] == "0.0.0.0", name


def test_the_image_compiles_the_native_tier_and_ships_only_its_binaries() -> None:
    """The `native` stage builds both servers from the Makefile's Debian packages; the final
    stage, on the same Debian, gets the two binaries and serves them with no toolchain."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    _, *stages, final_stage = dockerfile.split("\nFROM ")
    (native,) = (stage for stage in stages if stage.startswith("python:3.11-slim AS native\n"))
    assert final_stage.startswith("python:3.11-slim\n")  # the same Debian, the same libc
    assert "apt-get install -y --no-install-recommends $(make -s native-packages)" in native
    assert "COPY servers/native ./servers/native" in native
    assert "RUN python -m servers.native --install-to /native" in native
    assert "COPY --from=native /native /opt/stackbench/native" in final_stage
    assert re.search(rf"^ENV {PREBUILT_ENV}=/opt/stackbench/native$", final_stage, re.M)
    packages = subprocess.run(
        ["make", "-s", "native-packages"], capture_output=True, text=True, timeout=30, cwd=ROOT,
        check=True,
    ).stdout.split()  # fmt: skip
    assert {"golang-go", "rustc", "cargo"} <= set(packages)
    for package in (*packages, "build-essential", "apt-get"):
        assert package not in final_stage, f"the final stage installs {package}"


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
    assert checked == len(IMPLS) + 3  # every server, the upstream, the Locust master and worker


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


def test_prometheus_scrapes_only_services_that_exist(compose: dict) -> None:
    """Every target is found by DNS among compose's services, so a profile that is off (the
    runtime and native tiers, cAdvisor) leaves nothing down; the servers' `impl` is their
    service name."""
    config = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, job in jobs.items():
        statics = [t for c in job.get("static_configs", []) for t in c["targets"]]
        assert all(t.startswith("localhost:") for t in statics), f"{name}: {statics}"
        for sd in job.get("dns_sd_configs", []):
            assert set(sd["names"]) <= set(compose["services"]), name
    names = jobs["servers"]["dns_sd_configs"][0]["names"]
    assert set(names) == set(IMPLS) and len(names) == len(IMPLS)
    assert jobs["servers"]["relabel_configs"] == [
        {"source_labels": ["__meta_dns_name"], "target_label": "impl"}
    ]
    default = _default_profile(compose)
    assert set(jobs["locust"]["dns_sd_configs"][0]["names"]) <= default


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health_check(compose: dict, name: str, port: int) -> subprocess.CompletedProcess:
    """A service's compose health check, run here against `port` in place of its own."""
    kind, *command = compose["services"][name]["healthcheck"]["test"]
    assert kind == "CMD"
    if command[0] == "python":
        command[0] = sys.executable
    local = [re.sub(r"(//127\.0\.0\.1:)\d+", rf"\g<1>{port}", arg) for arg in command]
    return subprocess.run(local, capture_output=True, text=True, timeout=30)


def test_health_checks_pass_against_real_servers(compose: dict, servers: dict) -> None:
    for name in IMPLS:
        assert _health_check(compose, name, servers[name].port).returncode == 0, name
    assert _health_check(compose, "gevent", _free_port()).returncode != 0  # nothing there


def test_locust_master_health_check_passes_against_a_real_master(
    compose: dict, tmp_path: Path
) -> None:
    port = _free_port()
    command = _local_command(compose["services"]["locust-master"]["command"])
    command[0] = str(Path(sys.executable).parent / "locust")
    command[command.index("--web-port") + 1] = str(port)
    command[command.index("--web-host") + 1] = "127.0.0.1"
    master = subprocess.Popen(
        [*command, "--master-bind-port", str(_free_port())],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "STACKBENCH_CLIENT_METRICS_PORT": "0",
             "STACKBENCH_TARGETS": "gevent=http://127.0.0.1:9"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _health_check(compose, "locust-master", port).returncode != 0:
            assert master.poll() is None, "the Locust master exited"
            assert time.monotonic() < deadline, "the master's health check never passed"
            time.sleep(0.5)
    finally:
        master.terminate()
        master.wait(15)
