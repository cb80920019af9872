"""Start the servers the benchmarks measure, and know when each accepts.

A stackbench server (`stackbench serve IMPL`, with telemetry or `--no-metrics`) or its bare
reference (benchmarks/bare/), each in a process of its own, pinned before exec, optionally under
a wrapper such as valgrind. Both kinds print one line once they accept; this waits for that line
rather than polling a port. Used by wrk_servers.py and instructions.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loadtest.orchestrator.serverproc import wait_for_line
from servers.contract import IMPLS, TIERS

BARE_DIR = Path(__file__).resolve().parent / "bare"
# Each stackbench server's best-case reference: the same runtime and HTTP stack, bare.
BARE = {
    "gevent": "pywsgi",
    "aiohttp": "aiohttp_web",
    "trio": "trio_h11",
    "gevent-h11": "gevent_h11",
    "asyncio-h11": "asyncio_h11",
    "threads-h11": "threads_h11",
}
assert set(BARE) == set(IMPLS), "every stackbench server needs a bare reference"

ANNOUNCE = re.compile(r"(?:stackbench|bare) ([\w-]+) listening on (http://\S+):(\d+)")
START_TIMEOUT_S = 30.0

Kind = Literal["server", "no-metrics", "bare"]
KINDS: tuple[Kind, ...] = ("server", "no-metrics", "bare")


@dataclass(frozen=True)
class Variant:
    """One thing to measure: a stackbench server as shipped, without telemetry, or its bare
    reference."""

    impl: str
    kind: Kind = "server"

    @property
    def label(self) -> str:
        match self.kind:
            case "server":
                return self.impl
            case "no-metrics":
                return f"{self.impl} --no-metrics"
        return f"bare {BARE[self.impl]}"

    def command(self) -> list[str]:
        if self.kind == "bare":
            return [sys.executable, str(BARE_DIR / f"{BARE[self.impl]}.py"), "--port", "0"]
        extra = ["--no-metrics"] if self.kind == "no-metrics" else []
        command = [sys.executable, "-m", "loadtest.cli", "serve", self.impl]
        return [*command, "--host", "127.0.0.1", "--port", "0", *extra]


def parse_servers(text: str) -> list[str]:
    """`--servers`: names from IMPLS, comma-separated, or a tier (stack, runtime) or all."""
    groups = {**TIERS, "all": IMPLS}
    names = [name for part in text.split(",") for name in groups.get(part, (part,))]
    if unknown := sorted(set(names) - set(IMPLS)):
        raise ValueError(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(IMPLS)}")
    return list(dict.fromkeys(names))


SERVERS_HELP = f"comma-separated, of: {', '.join(IMPLS)}; or stack, runtime, all"


class StartError(RuntimeError):
    pass


class Launched:
    """One server process. Use as a context manager: it stops the server (SIGTERM) on exit."""

    def __init__(
        self,
        variant: Variant,
        cpus: set[int] | None = None,
        wrapper: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> None:
        self.variant = variant
        fd, name = tempfile.mkstemp(prefix=f"stackbench-{variant.impl}-{variant.kind}-")
        os.close(fd)
        self.stderr_path = Path(name)
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [*wrapper, *variant.command()],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                # pin before exec, so that not one instruction of the server runs elsewhere
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        self.url, self.port = self._wait_for_announce(start_timeout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_for_announce(self, timeout: float) -> tuple[str, int]:
        if match := wait_for_line(self.process, ANNOUNCE, timeout):
            return f"{match[2]}:{match[3]}", int(match[3])
        why = "exited" if self.process.poll() is not None else f"not up after {timeout:g} s"
        tail = self.stderr_tail()
        self.close()
        raise StartError(f"{self.variant.label} did not start ({why}): {tail}")

    def stderr_tail(self, lines: int = 5) -> str:
        if not self.stderr_path.exists():
            return "(no output)"
        text = self.stderr_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (every server exits 0 on it), SIGKILL if it has not exited by `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def close(self) -> None:
        self.stop()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr_path.unlink(missing_ok=True)

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
