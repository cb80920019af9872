"""Start the servers the benchmarks measure, and know when each accepts.

A stackbench server (`stackbench serve IMPL`, with telemetry or `--no-metrics`) or its bare
reference (benchmarks/bare/), each in a process of its own, pinned before exec, optionally under
a wrapper such as valgrind. Both kinds print one line once they accept; this waits for that line
rather than polling a port. Used by wrk_servers.py and instructions.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loadtest.orchestrator.serverproc import ServerProcess, ServerStartError
from servers.contract import IMPLS, TIERS
from servers.native import NATIVE_SERVERS, binary, exec_argv

BARE_DIR = Path(__file__).resolve().parent / "bare"
# Each stackbench server's best-case reference: the same runtime and HTTP stack, bare.
BARE = {
    "gevent": "pywsgi",
    "aiohttp": "aiohttp_web",
    "trio": "trio_h11",
    "gevent-h11": "gevent_h11",
    "asyncio-h11": "asyncio_h11",
    "threads-h11": "threads_h11",
    # The native servers' own binaries, run with --bare: the library alone (servers/native/).
    "go-nethttp": "go_nethttp",
    "rust-hyper": "rust_hyper",
}
assert set(BARE) == set(IMPLS), "every stackbench server needs a bare reference"

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
        if self.kind == "bare" and self.impl in NATIVE_SERVERS:
            return [str(binary(self.impl)), "--bare", "--host", "127.0.0.1", "--port", "0"]
        if self.kind == "bare":
            return [sys.executable, str(BARE_DIR / f"{BARE[self.impl]}.py"), "--port", "0"]
        extra = ["--no-metrics"] if self.kind == "no-metrics" else []
        if self.impl in NATIVE_SERVERS:
            # The binary itself, as `stackbench serve` execs it (its defaults are the CLI's):
            # a wrapper such as valgrind would follow the Python process, not what it execs.
            return exec_argv(self.impl, ["--host", "127.0.0.1", "--port", "0", *extra])
        command = [sys.executable, "-m", "loadtest.cli", "serve", self.impl]
        return [*command, "--host", "127.0.0.1", "--port", "0", *extra]


def parse_servers(text: str) -> list[str]:
    """`--servers`: names from IMPLS, comma-separated, or a tier (stack, runtime, native) or
    all."""
    groups = {**TIERS, "all": IMPLS}
    names = [name for part in text.split(",") for name in groups.get(part, (part,))]
    if unknown := sorted(set(names) - set(IMPLS)):
        raise ValueError(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(IMPLS)}")
    return list(dict.fromkeys(names))


SERVERS_HELP = f"comma-separated, of: {', '.join(IMPLS)}; or stack, runtime, native, all"


StartError = ServerStartError


class Launched(ServerProcess):
    """One variant's server process (stackbench's own, or a bare reference), started and
    stopped as the orchestrator starts its servers. Use as a context manager."""

    def __init__(
        self,
        variant: Variant,
        cpus: set[int] | None = None,
        wrapper: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> None:
        self.variant = variant
        super().__init__(
            variant.impl,
            cpus=cpus,
            command=[*wrapper, *variant.command()],
            start_timeout=start_timeout,
            env=env,
        )
