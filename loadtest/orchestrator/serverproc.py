"""Start a stackbench server as a child process and know when it is ready.

Every server runs in a process of its own (gevent monkey-patches the whole interpreter, and
each server's `process_*` metrics must describe that server alone). The child prints one line
when it accepts connections; this module waits for that line rather than polling a port.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ANNOUNCE = re.compile(r"(?:stackbench|bare) ([\w-]+) listening on (http://\S+):(\d+)")
START_TIMEOUT_S = 30.0


def wait_for_line(
    process: subprocess.Popen, pattern: re.Pattern[str], timeout: float
) -> re.Match[str] | None:
    """The first line the process prints to stdout that matches `pattern`; None if it exits
    or stays silent for `timeout` seconds."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.1):
                if process.poll() is not None:
                    return None
                continue
            line = process.stdout.readline().decode(errors="replace")
            if not line:
                return None
            if match := pattern.search(line):
                return match
    return None


class ServerStartError(RuntimeError):
    pass


class ServerProcess:
    """One `stackbench serve IMPL` child (or, given `command`, any server that prints the same
    announce line, such as the benchmarks' bare references). Use as a context manager, or call
    stop()."""

    def __init__(
        self,
        impl: str,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: tuple[str, ...] = (),
        cpus: set[int] | None = None,
        command: Sequence[str] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> None:
        self.impl = impl
        self.stderr_path = Path(tempfile.mkstemp(prefix=f"stackbench-{impl}-", suffix=".log")[1])
        if command is None:
            command = [
                sys.executable, "-m", "loadtest.cli", "serve", impl,
                "--host", host, "--port", str(port), *extra_args,
            ]  # fmt: skip
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                # pin before exec, so not one instruction of the server runs on the driver's CPU
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        self.url, self.port = self._wait_for_announce(start_timeout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_for_announce(self, timeout: float) -> tuple[str, int]:
        match = wait_for_line(self.process, ANNOUNCE, timeout)
        if match:
            return f"{match[2]}:{match[3]}", int(match[3])
        why = "exited" if self.process.poll() is not None else f"not up after {timeout:g} s"
        tail = self.stderr_tail()
        self.__exit__(None, None, None)
        raise ServerStartError(f"{self.impl} server did not start ({why}): {tail}")

    def stderr_tail(self, lines: int = 5) -> str:
        if not self.stderr_path.exists():
            return "(no output)"
        text = self.stderr_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the server drains and exits 0), SIGKILL if it has not exited by `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr_path.unlink(missing_ok=True)
