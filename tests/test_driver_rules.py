"""The Locust side's rules that need no I/O: which servers a test loads, the step shape's levels
under a user cap, the STACKBENCH_* variables (and the README's table of them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtest.driver import settings
from loadtest.driver.levels import cap_levels, step_levels
from loadtest.driver.scenarios import SCENARIOS
from loadtest.driver.settings import ConfigError
from loadtest.driver.targets import Target, chosen_targets, default_host

ROOT = Path(__file__).resolve().parent.parent
CONFIGURED = "gevent=http://127.0.0.1:8081,trio=http://127.0.0.1:8082/"


def test_no_host_and_no_targets_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"pass --host .* or set STACKBENCH_TARGETS"):
        chosen_targets(None, "", allow_remote=False)
    with pytest.raises(ConfigError):
        chosen_targets("  ", "", allow_remote=False)


def test_a_remote_host_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="STACKBENCH_ALLOW_REMOTE=1"):
        chosen_targets("http://10.1.2.3:80", "", allow_remote=False)
    assert chosen_targets("http://10.1.2.3:80", "", allow_remote=True) == [
        Target("http://10.1.2.3:80", "10.1.2.3:80")
    ]


@pytest.mark.parametrize("host", ["127.0.0.1:8081", "ftp://127.0.0.1", "http://"])
def test_a_host_that_is_not_a_url_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="is not a URL"):
        chosen_targets(host, "", allow_remote=False)


def test_the_web_uis_host_starts_with_the_first_configured_server() -> None:
    assert default_host(CONFIGURED) == "http://127.0.0.1:8081"
    assert default_host("http://[::1]:9000/") == "http://[::1]:9000"
    assert default_host("") is None


def test_the_default_host_stands_for_every_configured_server() -> None:
    every = [Target("http://127.0.0.1:8081", "gevent"), Target("http://127.0.0.1:8082", "trio")]
    assert chosen_targets(None, CONFIGURED, allow_remote=False) == every
    assert chosen_targets("http://127.0.0.1:8081/", CONFIGURED, allow_remote=False) == every


def test_another_host_is_loaded_alone() -> None:
    assert chosen_targets("http://127.0.0.1:8082", CONFIGURED, allow_remote=False) == [
        Target("http://127.0.0.1:8082", "127.0.0.1:8082")
    ]
    assert [t.url for t in chosen_targets("http://[::1]:1,http://localhost:2", "", False)] == [
        "http://[::1]:1",
        "http://localhost:2",
    ]


def test_user_count_caps_the_steps_and_says_what_it_dropped() -> None:
    assert cap_levels((500, 1000, 2000), None) == ((500, 1000, 2000), None)
    assert cap_levels((8, 32, 128), 200) == ((8, 32, 128), None)
    kept, note = cap_levels((8, 32, 128), 40)
    assert kept == (8, 32)
    assert note is not None and "128 dropped" in note and "40 users" in note
    kept, note = cap_levels((500, 1000), 100)
    assert kept == (100,)
    assert note is not None and "500, 1000 dropped" in note


def test_step_levels_come_from_the_scenario_table_or_the_variable() -> None:
    io_hold = SCENARIOS["io_hold"]
    assert step_levels(io_hold, settings.read({})) == io_hold.user_steps
    assert step_levels(io_hold, settings.read({settings.LEVELS: "1,2"})) == (1, 2)
    open_model = settings.read({settings.MODEL: "open", settings.RATE: "250"})
    assert step_levels(io_hold, open_model) == tuple(
        round(rate / 250) for rate in io_hold.rate_steps
    )


def test_settings_round_trip_through_the_environment() -> None:
    config = settings.DriverSettings(
        targets=CONFIGURED, model="open", rate=20, steps=True, levels=(1, 4),
        client_metrics_port=0, client_metrics_host="0.0.0.0", allow_remote=True,
    )  # fmt: skip
    assert settings.read(settings.as_environment(config)) == config


def test_client_metrics_bind_loopback_by_default() -> None:
    assert settings.read({}).client_metrics_host == "127.0.0.1"


def _readme_variables() -> dict[str, str]:
    """The README's table of STACKBENCH_* variables: {name: default column}."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(STACKBENCH_[A-Z_]+)` \| ([^|]*) \|", text, re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_readme_lists_every_stackbench_variable_with_its_default() -> None:
    used = set()
    sources = [
        *ROOT.glob("loadtest/**/*.py"),
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("benchmarks/*.py"),
    ]
    for path in [*sources, ROOT / "docker-compose.yml", ROOT / "Makefile"]:
        used |= set(re.findall(r"\bSTACKBENCH_[A-Z_]*[A-Z]\b", path.read_text()))
    documented = _readme_variables()
    assert used - set(documented) == set(), "variables missing from the README's table"
    assert set(documented) - used == set(), "the README documents variables nothing reads"
    assert all(documented.values()), "every variable has a default (or says none)"
