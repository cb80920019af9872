"""Instructions per request of each server beside its bare reference, counted by callgrind.

Wall-clock throughput on a shared 2-core machine swings by tens of percent between rounds;
instruction counts repeat to a fraction of a percent, so they show what a server costs per
request beside the best case of its own stack (benchmarks/bare/) and what its telemetry adds.

Each variant (the server, the server with `--no-metrics`, its bare reference) runs in a fresh
process under `valgrind --tool=callgrind`, pinned to one CPU. A client on another CPU sends
sequential keep-alive `GET /` requests on one connection: a warm-up, then N1, then N2, with the
counters dumped (and so zeroed) between the phases by `callgrind_control --dump`. Instructions
per request = (count of the N2 phase - count of the N1 phase) / (N2 - N1): what a phase costs
besides its requests (the dump, the client's first and last packets) cancels out. Then the
server idles for a few seconds and a last dump gives its idle instructions per second: periodic
work (the lag monitor's 10 ms timer, the timeout reaper), which under valgrind's slowdown lands
many times more often per request than at full speed (2-12 % of a request with the lag monitor
on, against ~0.2 % at wrk's rates). The "net" figures subtract it, at the idle rate, for the
time the requests took, and the ratio and telemetry share are taken from them (the raw ones are
shown in brackets). Net is an estimate: a busy server's timers fire ~5 % less often than an idle
one's here, and a tick that rides along with requests may cost less than one that wakes the
server, so net can be low by a few thousand instructions; read telemetry shares within ~2 % of
zero as "small", not as a ranking.

    python benchmarks/instructions.py                              # stack tier, ~4 minutes
    python benchmarks/instructions.py --servers all --json out.json
    python benchmarks/instructions.py --servers trio --keep dumps/ # then callgrind_annotate
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from launch import BARE, KINDS, SERVERS_HELP, Launched, Variant, parse_servers

# Under valgrind a server starts 20-50x slower than natively (15 s for aiohttp here).
START_TIMEOUT_S = 120.0
RESPONSE_TIMEOUT_S = 60.0
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"Hello, World!"
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")


class KeepAliveClient:
    """One connection, one request at a time: the server does the same work for each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RESPONSE_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def get(self, count: int) -> None:
        for _ in range(count):
            self.sock.sendall(REQUEST)
            head = self._head()
            length = _CONTENT_LENGTH.search(head)
            if not head.startswith(b"HTTP/1.1 200 ") or length is None:
                raise RuntimeError(f"unexpected response head: {head[:200]!r}")
            body = self._exactly(int(length[1]))
            if body != BODY:
                raise RuntimeError(f"unexpected body: {body[:200]!r}")

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buffer += data

    def _head(self) -> bytes:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._recv()
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        return head

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._recv()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def close(self) -> None:
        self.sock.close()


class Callgrind:
    """The counters of one server running under callgrind."""

    def __init__(self, out_file: Path) -> None:
        self.out_file = out_file
        self.dumps = 0

    def wrapper(self) -> list[str]:
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out_file}"]

    def dump(self, pid: int) -> int:
        """Instructions executed since the last dump (a dump zeroes the counters)."""
        subprocess.run(
            ["callgrind_control", "--dump", str(pid)],
            check=True,
            capture_output=True,
            timeout=RESPONSE_TIMEOUT_S,
        )
        self.dumps += 1
        # callgrind numbers the dumps of a run: file.1, file.2, ...
        path = self.out_file.with_name(f"{self.out_file.name}.{self.dumps}")
        deadline = time.monotonic() + RESPONSE_TIMEOUT_S
        while time.monotonic() < deadline:
            if path.exists():
                with path.open() as dump:
                    for line in dump:
                        if line.startswith("summary:"):
                            return int(line.split()[1])
            time.sleep(0.05)
        raise RuntimeError(f"callgrind wrote no summary to {path}")


@dataclass
class Count:
    """What one variant cost, from one process under callgrind."""

    label: str
    per_request: float  # median over the repeats of (I(N2) - I(N1)) / (N2 - N1)
    per_request_net: float  # minus idle work at the idle rate, for the time requests took
    per_request_runs: list[float]
    idle_per_s: float  # instructions per second with one idle keep-alive connection open
    seconds_per_request: float  # under valgrind: how much idle work lands on a request


def count(variant: Variant, args: argparse.Namespace, keep: Path | None) -> Count:
    """One process, its counters dumped between phases, rather than one process for N1 and
    another for N2: with a fixed hash seed a bare server's start-up repeats to the instruction
    (1,142,915,059 twice for aiohttp_web here), but a stackbench server's timers tick from the
    moment it serves (~50-130k instructions a tick), so each process's total would also carry
    however many ticks valgrind's wall-clock let fall before its requests: far more than the
    0.3 % sought. And valgrind's slow start (15-40 s) is paid once, not twice."""
    workdir = Path(tempfile.mkdtemp(prefix="stackbench-callgrind-"))
    callgrind = Callgrind(workdir / f"callgrind.out.{variant.impl}.{variant.kind}")
    # A fixed hash seed: the same dict and set layouts in every run, so the same work. Go's
    # asynchronous preemption (a signal to a goroutine that runs 10 ms) trips an assertion in
    # callgrind's signal handling, which a valgrind-slowed goroutine soon reaches: off.
    env = {**os.environ, "PYTHONHASHSEED": "0", "GODEBUG": "asyncpreemptoff=1"}
    try:
        with Launched(
            variant,
            cpus=args.server_cpus,
            wrapper=callgrind.wrapper(),
            start_timeout=args.start_timeout,
            env=env,
        ) as server:
            client = KeepAliveClient(server.port)
            try:
                # Warm-up: first-request work (lazy imports, caches, the interpreter's
                # specialisation of hot code) is no part of the steady state. Then zero.
                client.get(args.warmup)
                callgrind.dump(server.pid)
                phases: list[tuple[int, float]] = []  # (instructions, seconds) per phase
                for _ in range(args.repeat):
                    for requests in (args.n1, args.n2):
                        started = time.monotonic()
                        client.get(requests)
                        # The requests' time only: a dump's latency is the same in each phase.
                        seconds = time.monotonic() - started
                        phases.append((callgrind.dump(server.pid), seconds))
                started = time.monotonic()
                time.sleep(args.idle_seconds)
                idle_per_s = callgrind.dump(server.pid) / (time.monotonic() - started)
            finally:
                client.close()
        runs, extra_s = [], []
        for (first, first_s), (second, second_s) in zip(phases[::2], phases[1::2], strict=True):
            runs.append((second - first) / (args.n2 - args.n1))
            extra_s.append((second_s - first_s) / (args.n2 - args.n1))
        per_request, seconds_per_request = statistics.median(runs), statistics.median(extra_s)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for dump in workdir.iterdir():
                shutil.copy2(dump, keep / dump.name)
        return Count(
            variant.label,
            per_request,
            per_request - idle_per_s * seconds_per_request,
            runs,
            idle_per_s,
            seconds_per_request,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _k(instructions: float) -> str:
    return f"{instructions / 1000:,.1f}k"


def _cpus(text: str) -> set[int]:
    return {int(cpu) for cpu in text.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="stack", help=SERVERS_HELP + " (default: stack)")
    parser.add_argument("--n1", type=int, default=200, help="requests in the first phase")
    parser.add_argument("--n2", type=int, default=1200, help="requests in the second phase")
    parser.add_argument("--warmup", type=int, default=50, help="requests before counting")
    parser.add_argument(
        "--repeat", type=int, default=1, help="N1/N2 pairs per process (median taken)"
    )
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--start-timeout", type=float, default=START_TIMEOUT_S)
    parser.add_argument("--server-cpus", type=_cpus, default={0})
    parser.add_argument("--client-cpus", type=_cpus, default={1})
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"which variants of each server to count (default: {','.join(KINDS)}; the ratio "
        "and telemetry share need all three)",
    )
    parser.add_argument("--keep", type=Path, help="copy callgrind's dumps here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        impls = parse_servers(args.servers)
    except ValueError as exc:
        parser.error(str(exc))
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if not kinds or not set(kinds) <= set(KINDS):
        parser.error(f"--kinds takes some of {','.join(KINDS)}")
    if not 0 < args.n1 < args.n2 or args.warmup < 0 or args.repeat < 1:
        parser.error("need 0 < --n1 < --n2, --warmup >= 0 and --repeat >= 1")
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"error: {' and '.join(missing)} not found (Debian: apt-get install valgrind)")
    if not (args.server_cpus | args.client_cpus) <= os.sched_getaffinity(0):
        parser.error(f"this machine has CPUs {sorted(os.sched_getaffinity(0))} only")
    os.sched_setaffinity(0, args.client_cpus)  # the client; each server is pinned on its own

    counts: dict[str, dict[str, Count]] = {}
    for impl in impls:
        for kind in kinds:
            variant = Variant(impl, kind)
            result = count(variant, args, args.keep)
            counts.setdefault(impl, {})[kind] = result
            print(
                f"{variant.label:<26} {_k(result.per_request):>9} instructions/request "
                f"(net of idle {_k(result.per_request_net)}), idle {_k(result.idle_per_s)}/s",
                file=sys.stderr,
                flush=True,
            )

    if set(kinds) != set(KINDS):
        if args.json:
            args.json.write_text(json.dumps({
                "n1": args.n1, "n2": args.n2,
                "servers": {i: {k: asdict(c) for k, c in by.items()} for i, by in counts.items()},
            }, indent=2))  # fmt: skip
        return
    print(
        f"\ncallgrind, {args.n2} - {args.n1} sequential keep-alive GET / on one connection, "
        f"server on CPU {sorted(args.server_cpus)}\nidle/req: the idle rate times the time a "
        "request took under valgrind; net = instr/req - idle/req\nratio and telemetry share "
        "from the net figures (from the raw ones in brackets)\n"
    )
    print(
        f"{'server':<11} {'instr/req':>9} {'idle/req':>8} {'net':>9} {'bare reference':<14} "
        f"{'bare net':>9} {'ratio':>13} {'telemetry share':>17} {'idle instr/s':>12}"
    )
    summary = {}
    for impl, by_kind in counts.items():
        server, off, bare = by_kind["server"], by_kind["no-metrics"], by_kind["bare"]
        ratio = server.per_request_net / bare.per_request_net
        ratio_raw = server.per_request / bare.per_request
        share = (server.per_request_net - off.per_request_net) / server.per_request_net
        share_raw = (server.per_request - off.per_request) / server.per_request
        print(
            f"{impl:<11} {_k(server.per_request):>9} "
            f"{_k(server.per_request - server.per_request_net):>8} "
            f"{_k(server.per_request_net):>9} {BARE[impl]:<14} {_k(bare.per_request_net):>9} "
            f"{f'{ratio:.2f}x ({ratio_raw:.2f}x)':>13} {f'{share:.1%} ({share_raw:.1%})':>17} "
            f"{_k(server.idle_per_s):>12}"
        )
        summary[impl] = {
            "bare_reference": BARE[impl],
            "ratio": ratio,
            "ratio_raw": ratio_raw,
            "telemetry_share": share,
            "telemetry_share_raw": share_raw,
            **{kind: asdict(by_kind[kind]) for kind in KINDS},
        }
    if args.json:
        args.json.write_text(
            json.dumps({"n1": args.n1, "n2": args.n2, "servers": summary}, indent=2)
        )


if __name__ == "__main__":
    main()
