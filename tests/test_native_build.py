"""The native tier's prebuilt binaries (servers/native/__init__.py), without a toolchain: what the
Docker image relies on. A small shell script stands in for the built server."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import servers.native as native
from servers.native import NATIVE_SERVERS, PREBUILT_ENV, PROGRAMS, NativeBuildError, binary, install

ROOT = Path(__file__).resolve().parent.parent
# Prints the argv it was started with, one argument a line, as the real server would receive it.
FAKE_SERVER = '#!/bin/sh\nprintf "%s\\n" "$0" "$@"\n'


def _fake(directory: Path, impl: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / impl
    path.write_text(FAKE_SERVER)
    path.chmod(0o755)
    return path


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to hash sources or build fails the test."""

    def refuse(server: native.NativeServer) -> str:
        pytest.fail(f"{server.impl}: the sources were hashed (a build was attempted)")

    monkeypatch.setattr(native, "_key", refuse)


def test_the_prebuilt_variable_keeps_its_documented_name() -> None:
    # The Dockerfile's ENV and the README's table of variables name it literally.
    assert PREBUILT_ENV == "STACKBENCH_NATIVE_PREBUILT"


@pytest.mark.parametrize("impl", sorted(NATIVE_SERVERS))
def test_a_prebuilt_binary_is_used_as_it_is(
    impl: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_build: None
) -> None:
    path = _fake(tmp_path, impl)
    monkeypatch.setenv(PREBUILT_ENV, str(tmp_path))
    assert binary(impl) == path
    assert native.exec_argv(impl, ["--port", "1"]) == [str(path), "--impl", impl, "--port", "1"]


def test_a_prebuilt_directory_without_the_server_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for prebuilt binaries, a missing or non-executable one is said, not replaced by a
    build the user did not ask for."""
    (tmp_path / "go-nethttp").write_text(FAKE_SERVER)  # not executable: not a binary
    monkeypatch.setenv(PREBUILT_ENV, str(tmp_path))
    for impl in ("go-nethttp", "rust-hyper"):  # not executable; absent
        with pytest.raises(NativeBuildError) as error:
            binary(impl)
        message = str(error.value)
        assert "\n" not in message
        assert message == f"{PREBUILT_ENV}={tmp_path} has no executable {impl}"


def test_a_missing_tool_is_a_one_line_error_naming_its_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rust").mkdir()
    missing = dataclasses.replace(
        NATIVE_SERVERS["rust-hyper"], source=tmp_path / "rust",
        tools=("/usr/bin/rustc", str(tmp_path / "no-cargo")),
    )  # fmt: skip
    monkeypatch.setitem(PROGRAMS, "rust-hyper", missing)
    with pytest.raises(NativeBuildError) as error:
        binary("rust-hyper")
    message = str(error.value)
    assert "\n" not in message and f"needs {tmp_path / 'no-cargo'}" in message
    assert "make system-deps" in message and "librust-sha2-dev" in message


def test_missing_sources_are_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PREBUILT_ENV, raising=False)
    monkeypatch.setenv("STACKBENCH_NATIVE_CACHE", str(tmp_path / "cache"))
    gone = dataclasses.replace(NATIVE_SERVERS["rust-hyper"], source=tmp_path / "rust")
    monkeypatch.setitem(PROGRAMS, "rust-hyper", gone)
    with pytest.raises(NativeBuildError, match=r"^rust-hyper has no sources: .*/rust is missing$"):
        binary("rust-hyper")


def test_install_copies_each_built_binary_to_the_prebuilt_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    built = {impl: _fake(cache, f"{impl}-0123456789abcdef") for impl in PROGRAMS}
    monkeypatch.setattr(native, "_built", lambda impl, progress=None: built[impl])
    # A prebuilt directory already set is not what install copies: it builds from source.
    monkeypatch.setenv(PREBUILT_ENV, str(tmp_path / "elsewhere"))
    _fake(tmp_path / "elsewhere", "go-nethttp").write_text("#!/bin/sh\nexit 1\n")
    into = tmp_path / "opt" / "native"
    native.main(["--install-to", str(into)])
    for impl in PROGRAMS:  # the servers and the rate driver
        assert (into / impl).read_text() == FAKE_SERVER
        assert os.access(into / impl, os.X_OK)
    assert sorted(p.name for p in into.iterdir()) == sorted(PROGRAMS)  # no partial left
    monkeypatch.setenv(PREBUILT_ENV, str(into))
    assert {impl: binary(impl) for impl in PROGRAMS} == install(into)


def test_a_failed_build_is_one_line_and_exit_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(impl: str, progress=None) -> Path:
        raise NativeBuildError(f"building {impl} failed: error[E0425] | cannot find value")

    monkeypatch.setattr(native, "_built", fail)
    with pytest.raises(SystemExit) as exit_:
        native.main(["--install-to", str(tmp_path / "native")])
    assert (
        exit_.value.code
        == "stackbench: building go-nethttp failed: error[E0425] | cannot find value"
    )
    assert not (tmp_path / "native").exists()


def test_serve_execs_the_prebuilt_binary_with_the_servers_options(tmp_path: Path) -> None:
    path = _fake(tmp_path / "native", "go-nethttp")
    stackbench = Path(sys.executable).parent / "stackbench"
    env = {**os.environ, PREBUILT_ENV: str(tmp_path / "native"),
           "STACKBENCH_NATIVE_CACHE": str(tmp_path / "empty-cache")}  # fmt: skip
    done = subprocess.run(
        [str(stackbench), "serve", "go-nethttp", "--host", "0.0.0.0", "--port", "8080",
         "--upstream", "http://upstream:8080"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = done.stdout.splitlines()
    assert argv[:3] == [str(path), "--impl", "go-nethttp"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert options["--host"] == "0.0.0.0"
    assert options["--port"] == "8080"
    assert options["--upstream"] == "http://upstream:8080"
    assert options["--cores"] == "1"
    assert {"--drain-timeout", "--max-connections", "--upstream-pool"} <= set(options)
    assert not (tmp_path / "empty-cache").exists()  # nothing was built or cached


def test_the_wheel_carries_every_source_a_build_reads() -> None:
    """A non-editable install (the image's wheel) must hold what `binary()` hashes and builds
    from: every source file matches one of pyproject's package-data patterns."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["servers.native"]
    here = native.HERE
    shipped = {p for pattern in package_data for p in here.glob(pattern) if p.is_file()}
    sources = {p for server in NATIVE_SERVERS.values() for p in server.sources()}
    assert here / "rust" / ".cargo" / "config.toml" in sources
    assert sources <= shipped, sorted(str(p.relative_to(here)) for p in sources - shipped)


def test_the_module_runs_as_the_makefile_and_the_image_call_it() -> None:
    """`python -m servers.native` (make test, the Dockerfile's native stage) is a command."""
    done = subprocess.run(
        [sys.executable, "-m", "servers.native", "--help"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--install-to" in done.stdout


def test_the_rust_servers_cli_errors_read_as_the_python_clis() -> None:
    """`stackbench: error: ...`, as argparse words the Python CLI's, exit status 2."""
    if not Path("/usr/bin/cargo").exists():
        pytest.skip("no Rust toolchain to build rust-hyper")
    done = subprocess.run(
        [str(binary("rust-hyper")), "--port", "nope"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.startswith("stackbench: error: "), done.stderr
