"""The native tier: Go net/http and Rust tokio/hyper serving the same contract, built from source;
and the rate driver (loadtest/rate/, C), built the same way.

`stackbench serve go-nethttp` (or `rust-hyper`) builds the server on first use with the
toolchain and libraries Debian packages (`make system-deps` installs them), keeps the binary in
a cache keyed by a hash of its sources and the toolchain's version, and then *execs* it with the
same options the Python servers take, so the process `stackbench run` pins and measures is the
native server itself.

The builds are offline by design: Go in GOPATH mode against /usr/share/gocode, Rust with cargo's
source replacement pointing at /usr/share/cargo/registry (rust/.cargo/config.toml, which cargo
reads from the directory it builds in).

An image without the toolchains serves prebuilt binaries instead: `python -m servers.native
--install-to DIR` builds both and copies them to DIR/<impl>, and with STACKBENCH_NATIVE_PREBUILT=DIR
set, `binary()` returns DIR/<impl> as it is, with no source hashed and no toolchain asked (the
Dockerfile does both: it builds in one stage and runs the binaries in a stage without compilers).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NATIVE_SERVERS",
    "PREBUILT_ENV",
    "PROGRAMS",
    "RATE_DRIVER",
    "NativeBuildError",
    "binary",
    "build_all",
    "exec_argv",
    "install",
]

HERE = Path(__file__).resolve().parent
CACHE_ENV = "STACKBENCH_NATIVE_CACHE"
# A directory of ready binaries, one per server named after it (the Docker image's): used as
# they are, never rebuilt, so they are only as current as whatever installed them there.
PREBUILT_ENV = "STACKBENCH_NATIVE_PREBUILT"


class NativeBuildError(RuntimeError):
    """The toolchain is missing or the build failed; the message is one line for the user."""


@dataclass(frozen=True)
class NativeServer:
    impl: str
    source: Path  # the directory whose files the binary is built from
    toolchain: tuple[str, ...]  # prints the version the cache key includes
    tools: tuple[str, ...]  # what the build runs (Debian ships rustc and cargo apart)
    packages: str  # the Debian packages that provide the toolchain and libraries
    # Only files with these suffixes are sources (a directory shared with Python code), if set.
    suffixes: tuple[str, ...] = ()

    def sources(self) -> list[Path]:
        skip = {"target", ".git", "Cargo.lock"}  # Cargo.lock: written by the build
        return sorted(
            p for p in self.source.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(self.source).parts)
            and (not self.suffixes or p.suffix in self.suffixes)
        )  # fmt: skip

    def build_command(self, out: Path) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.impl == RATE_DRIVER:
            # gcc and libc only (no library: see the source's header), so any machine that
            # builds Python packages builds it, in about a second.
            source = self.source / "stackbench_rate.c"
            return [self.tools[0], "-O2", "-Wall", "-o", str(out), str(source), "-lm"], env
        if self.impl == "go-nethttp":
            env.update(GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="",
                       GOCACHE=str(out.parent / "go-build-cache"))  # fmt: skip
            return ["/usr/bin/go", "build", "-o", str(out), "."], env
        # Debian's cargo and rustc, whatever rustup put first on the PATH: the crates under
        # /usr/share/cargo/registry are the versions Debian's rustc builds.
        env.update(RUSTC="/usr/bin/rustc", CARGO_TARGET_DIR=str(out.parent / "target"),
                   CARGO_HOME=str(out.parent / "cargo-home"))  # fmt: skip
        env.pop("RUSTUP_TOOLCHAIN", None)
        return ["/usr/bin/cargo", "build", "--release", "--offline", "--quiet"], env


NATIVE_SERVERS = {
    "go-nethttp": NativeServer(
        "go-nethttp", HERE / "go", ("/usr/bin/go", "version"), ("/usr/bin/go",),
        "golang-go golang-github-prometheus-client-golang-dev",
    ),
    "rust-hyper": NativeServer(
        "rust-hyper", HERE / "rust", ("/usr/bin/rustc", "--version"),
        ("/usr/bin/rustc", "/usr/bin/cargo"),
        "rustc cargo librust-tokio-dev librust-hyper-dev librust-prometheus-dev "
        "librust-prometheus+process-dev librust-sha2-dev librust-form-urlencoded-dev "
        "librust-flate2-dev",
    ),
}  # fmt: skip
# The load generator of `stackbench run`'s rate sweep: not a server, but built, cached, installed
# and prebuilt like the native servers (the Docker image carries it beside them).
RATE_DRIVER = "stackbench-rate"
PROGRAMS = {
    **NATIVE_SERVERS,
    RATE_DRIVER: NativeServer(
        RATE_DRIVER, HERE.parent.parent / "loadtest" / "rate", ("/usr/bin/gcc", "--version"),
        ("/usr/bin/gcc",), "gcc libc6-dev", suffixes=(".c",),
    ),
}  # fmt: skip


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stackbench" / "native"
    return Path(root)


def _prebuilt(impl: str) -> Path | None:
    """$STACKBENCH_NATIVE_PREBUILT/<impl>, where that variable is set: asked for, so a missing
    binary there is an error, not a reason to build another."""
    root = os.environ.get(PREBUILT_ENV)
    if not root:
        return None
    path = Path(root) / impl
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise NativeBuildError(f"{PREBUILT_ENV}={root} has no executable {impl}")
    return path


def _key(server: NativeServer) -> str:
    if not server.source.is_dir():
        raise NativeBuildError(f"{server.impl} has no sources: {server.source} is missing")
    for tool in server.tools:
        if not os.access(tool, os.X_OK):
            raise NativeBuildError(
                f"{server.impl} needs {tool}: `make system-deps` installs the Debian packages "
                f"{server.packages}"
            )
    digest = hashlib.sha256()
    version = subprocess.run(server.toolchain, capture_output=True, text=True, check=False)
    digest.update(version.stdout.encode())
    for path in server.sources():
        digest.update(str(path.relative_to(server.source)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _progress(line: str) -> None:
    print(line, file=sys.stderr)


def binary(impl: str, progress=_progress) -> Path:
    """The server's binary: the prebuilt one if $STACKBENCH_NATIVE_PREBUILT is set, else the
    built one, building it first if its sources or toolchain changed."""
    return _prebuilt(impl) or _built(impl, progress)


def _built(impl: str, progress=_progress) -> Path:
    server = PROGRAMS[impl]
    out_dir = _cache_dir() / impl
    out = out_dir / f"{impl}-{_key(server)}"
    if out.exists():  # only ever there whole: it is renamed into place
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes asking at once build it once
        if out.exists():
            return out
        progress(f"building {impl} (once per source change) ...")
        started = time.monotonic()
        partial = out_dir / f".{out.name}.partial"
        command, env = server.build_command(partial)
        if impl == "rust-hyper":
            # cargo judges what to rebuild by file times, and the cache is keyed by contents:
            # after a checkout that restored older times, it could hand back the binary of
            # other sources under this key. Touched, the crate is rebuilt (its dependencies
            # are not).
            for source in server.sources():
                with contextlib.suppress(OSError):  # a read-only install: built once anyway
                    os.utime(source)
        try:
            done = subprocess.run(command, cwd=server.source, env=env, capture_output=True,
                                  text=True, check=False)  # fmt: skip
        except OSError as exc:
            raise NativeBuildError(f"building {impl} failed: {exc}") from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            why = " | ".join(last) or f"{command[0]} exited with status {done.returncode}"
            raise NativeBuildError(f"building {impl} failed: {why}")
        if impl == "rust-hyper":
            shutil.copy2(out_dir / "target" / "release" / "stackbench-rust-hyper", partial)
        partial.chmod(0o755)
        # A reader sees no binary or the whole one, never a half-copied file: a process that
        # found `out` existing above must not exec a partial binary.
        partial.replace(out)
        progress(f"built {impl} in {time.monotonic() - started:.0f} s: {out}")
    return out


def build_all() -> dict[str, Path]:
    return {impl: binary(impl) for impl in PROGRAMS}


def install(into: Path, progress=_progress) -> dict[str, Path]:
    """Build every server from its sources (never a prebuilt binary) and copy each binary to
    `into`/<impl>, the layout $STACKBENCH_NATIVE_PREBUILT reads."""
    built = {impl: _built(impl, progress) for impl in PROGRAMS}
    into.mkdir(parents=True, exist_ok=True)
    installed = {}
    for impl, path in built.items():
        target = into / impl
        partial = into / f".{impl}.partial"
        shutil.copy2(path, partial)
        partial.chmod(0o755)
        partial.replace(target)  # a reader sees the old binary or the new one, never half
        installed[impl] = target
    return installed


def exec_argv(impl: str, options: list[str]) -> list[str]:
    return [str(binary(impl)), "--impl", impl, *options]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m servers.native",
        description="Build the native servers and the rate driver (or find them built) and "
        "print where they are.",
    )
    parser.add_argument(
        "--install-to", type=Path, metavar="DIR",
        help=f"build both from source and copy them to DIR/<impl> (for {PREBUILT_ENV}=DIR)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        paths = install(args.install_to) if args.install_to else build_all()
    except (NativeBuildError, OSError) as exc:
        sys.exit(f"stackbench: {exc}")
    for impl, path in paths.items():
        print(f"{impl}: {path}")
