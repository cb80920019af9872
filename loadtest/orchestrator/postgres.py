"""A throwaway PostgreSQL cluster, started by stackbench for the database routes and gone when
it is done.

`postgres` runs as a direct child of this process (not daemonized by pg_ctl), as the `postgres`
user when stackbench runs as root (PostgreSQL refuses to run as root), with its parent-death
signal set so that it stops if stackbench dies without cleaning up (a crash, SIGKILL). Data and
socket directories live under one temporary directory of ours, owned by the user postgres runs
as; it listens on loopback at a free port below the ephemeral range (so no client's outgoing
connection can be holding it), with `max_connections` sized by the caller from the servers and
their pools, fsync off and trust authentication (loopback only, data that is thrown away). A
cluster left by a stackbench that died anyway (its parent-death signal cleared, a killed
container) is found at the next start by its pidfile and stopped first.

    with PostgresCluster(max_connections=200) as cluster:
        ... cluster.url ...  # postgresql://postgres@127.0.0.1:PORT/stackbench, tables loaded
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATABASE",
    "WORLD_SQL",
    "PostgresCluster",
    "PostgresError",
    "find_bindir",
    "stop_stale_clusters",
]

# The SQL that creates and fills the tables: one file for the tests, the run, compose, Kubernetes.
WORLD_SQL = Path(__file__).resolve().parents[2] / "servers" / "db" / "world.sql"
DATABASE = "stackbench"
SUPERUSER = "postgres"
# Our clusters live here, one directory each, so that a later start can find stale ones.
ROOT = Path(tempfile.gettempdir()) / "stackbench-postgres"
TEMPLATE_PREFIX = "template-"  # initdb's output, copied for each cluster (never started)
OWNER_FILE = "owner"  # "<pid> <start time>" of the stackbench process that made the cluster
PORT_RANGE = (20_000, 32_767)  # below Linux's ephemeral range (32768-60999)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


class PostgresError(RuntimeError):
    """PostgreSQL is missing or would not start: one line the user can act on."""


def find_bindir() -> Path:
    """Where initdb and postgres are: Debian's /usr/lib/postgresql/<newest>/bin, else PATH."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresError(
        "PostgreSQL is not installed (no initdb): `make system-deps` installs Debian's "
        "postgresql, or pass --database URL for a server of your own"
    )


@dataclass(frozen=True)
class _RunAs:
    """The user postgres runs as: `postgres` when we are root, else ourselves."""

    uid: int
    gid: int
    name: str

    @classmethod
    def choose(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)
        try:
            entry = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise PostgresError(
                "running as root and there is no `postgres` user to run PostgreSQL as "
                "(Debian's postgresql package creates it)"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def preexec(self, parent: int, die_with_parent: bool) -> None:
        """In the child, before exec: drop to the user, then (after: a change of credentials
        clears it) ask for SIGQUIT, PostgreSQL's immediate shutdown, when the parent dies."""
        if os.geteuid() == 0 and self.uid != 0:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
        os.setsid()  # not in stackbench's process group: a terminal's Ctrl-C is ours to relay
        if die_with_parent:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the prctl: nobody will ask
                os._exit(1)


def _process_start(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat), to tell it from a later one that
    reuses its pid; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int) -> bool:
    return _process_start(pid) is not None and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False


def _postmaster_pid(data: Path) -> int | None:
    try:
        first = (data / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.strip().isdigit() else None


def stop_stale_clusters(root: Path = ROOT) -> list[int]:
    """Stop the clusters under `root` whose stackbench is gone (found by their pidfile), and
    remove their directories. The pids of the postmasters stopped."""
    stopped: list[int] = []
    if not root.is_dir():
        return stopped
    for directory in root.iterdir():
        if directory.name.startswith(TEMPLATE_PREFIX):
            if "building-" in directory.name and _owner_gone(directory):
                shutil.rmtree(directory, ignore_errors=True)
            continue
        try:
            pid_text, _, started = (directory / OWNER_FILE).read_text().partition(" ")
            owner = int(pid_text)
        except (OSError, ValueError):
            owner, started = 0, ""
        if owner and _process_start(owner) == started.strip():
            continue  # a live stackbench's (another test worker's, another run's)
        postmaster = _postmaster_pid(directory / "data")
        if postmaster is not None and _alive(postmaster) and _is_postgres(postmaster):
            _stop_pid(postmaster)
            stopped.append(postmaster)
        shutil.rmtree(directory, ignore_errors=True)
    return stopped


def _owner_gone(directory: Path) -> bool:
    """Whether the process that named `directory` after its pid (a template being built)
    is gone: only then may it be removed. Templates in the making older than a minute are."""
    try:
        return time.time() - directory.stat().st_mtime > 60
    except OSError:
        return False


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster")
    except OSError:
        return False


def _stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGINT (fast shutdown: clients disconnected, a clean stop), SIGQUIT, then SIGKILL."""
    for signum, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)


def _free_port(rng: random.Random) -> int:
    """A loopback port below the ephemeral range that nothing listens on now."""
    for _ in range(200):
        port = rng.randint(*PORT_RANGE)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PostgresError(f"no free port in {PORT_RANGE[0]}..{PORT_RANGE[1]}")


class PostgresCluster:
    """A throwaway cluster with the tables of `sql` loaded into database `stackbench`."""

    def __init__(
        self,
        max_connections: int = 100,
        sql: Path | None = WORLD_SQL,
        root: Path = ROOT,
        die_with_parent: bool = True,
    ) -> None:
        self.max_connections = max_connections
        self.sql = sql
        self.root = root
        self.die_with_parent = die_with_parent
        self.bindir = find_bindir()
        self.run_as = _RunAs.choose()
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.log_path: Path | None = None

    # -- where it is ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.directory is not None
        return self.directory / "socket"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        stop_stale_clusters(self.root)
        self.root.mkdir(mode=0o755, exist_ok=True)
        self.root.chmod(0o1777)  # each user's cluster directory is its own
        self.directory = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.root))
        me = os.getpid()
        (self.directory / OWNER_FILE).write_text(f"{me} {_process_start(me)}")
        self.socket_dir.mkdir()
        for path in (self.directory, self.socket_dir):
            os.chown(path, self.run_as.uid, self.run_as.gid)
        self.log_path = self.directory / "postgres.log"
        try:
            self._initdb()
            self._start_postgres()
            self._psql("postgres", "-c", f"CREATE DATABASE {DATABASE}")
            if self.sql is not None:
                self.load(self.sql)
        except BaseException:
            self.stop()
            raise
        return self

    def _as_postgres(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            preexec_fn=lambda: self.run_as.preexec(os.getppid(), False),
            capture_output=True,
            text=True,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )

    def _initdb(self) -> None:
        """The data directory: a copy of a template made by initdb once per PostgreSQL version
        and user (initdb takes 1-7 s here, the copy a tenth of a second)."""
        template = self.root / f"{TEMPLATE_PREFIX}{self.bindir.parent.name}-{self.run_as.uid}"
        if not (template / "PG_VERSION").exists():
            building = Path(tempfile.mkdtemp(prefix=f"{TEMPLATE_PREFIX}building-", dir=self.root))
            os.chown(building, self.run_as.uid, self.run_as.gid)
            argv = [str(self.bindir / "initdb"), "--pgdata", str(building / "data")]
            argv += ["--username", SUPERUSER, "--auth", "trust", "--encoding", "UTF8"]
            argv += ["--locale", "C", "--no-sync", "--no-instructions"]
            done = self._as_postgres(argv, cwd=building)
            if done.returncode != 0:
                shutil.rmtree(building, ignore_errors=True)
                raise PostgresError(f"initdb failed: {_last_line(done.stderr or done.stdout)}")
            with contextlib.suppress(OSError):  # another process made it meanwhile
                os.rename(building / "data", template)  # atomic: whole or not there
            shutil.rmtree(building, ignore_errors=True)
        done = self._as_postgres(["cp", "-a", str(template), str(self.data)])
        if done.returncode != 0:
            raise PostgresError(f"copying the template cluster failed: {_last_line(done.stderr)}")

    def _start_postgres(self) -> None:
        rng = random.Random()
        for _attempt in range(5):
            self.port = _free_port(rng)
            self._spawn()
            if self._wait_ready():
                return
            if "could not bind" not in self._log_tail(20):
                break  # not a port race: do not try again
            self._stop_process()
        raise PostgresError(f"postgres did not start: {self._log_tail()}")

    def _spawn(self) -> None:
        assert self.log_path is not None
        parent = os.getpid()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                preexec_fn=lambda: self.run_as.preexec(parent, self.die_with_parent),
            )

    def _argv(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D", str(self.data),
            "-k", str(self.socket_dir),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"max_connections={self.max_connections}",
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "shared_buffers=32MB",
            # Errors the servers provoke on purpose (cancelled queries) would flood the log.
            "-c", "log_min_error_statement=panic",
        ]  # fmt: skip

    def _wait_ready(self) -> bool:
        """Until postmaster.pid says ready (line 8, PM_STATUS) and it accepts on its port."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError, IndexError):
                lines = (self.data / "postmaster.pid").read_text().splitlines()
                if lines[7].strip() == "ready":
                    return True
            time.sleep(0.02)
        return False

    def _psql(self, database: str, *args: str) -> None:
        psql = shutil.which("psql", path=str(self.bindir)) or shutil.which("psql") or "psql"
        argv = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir)]
        argv += ["-p", str(self.port), "-U", SUPERUSER, "-d", database, *args]
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise PostgresError(f"psql {' '.join(args)}: {_last_line(done.stderr)}")

    def load(self, sql: Path) -> None:
        """Run `sql` in database `stackbench` (made by start())."""
        self._psql(DATABASE, "-f", str(sql))

    def _log_tail(self, lines: int = 3) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no log)"

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            _stop_pid(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)

    def stop(self) -> None:
        """Stop postgres (fast shutdown) and remove every file of the cluster."""
        self._stop_process()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def kill(self) -> None:
        """SIGKILL the postmaster (what a crashed database looks like), keeping the files: its
        backends exit on their own when they see it gone. `restart()` brings it back."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and self._backends_left():
            time.sleep(0.02)

    def _backends_left(self) -> bool:
        """Whether any process still has this cluster's data directory as its cwd."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "cwd") == str(self.data):
                        return True
        return False

    def restart(self) -> None:
        """Start postgres again on the same port and data (after kill())."""
        self._stop_process()
        # The killed postmaster's pidfile still says "ready": not the new one's word.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        self._spawn()
        if not self._wait_ready():
            raise PostgresError(f"postgres did not restart: {self._log_tail()}")

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # python -m loadtest.orchestrator.postgres: one until Ctrl-C
    # Explicitly: a shell's background job starts with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    with PostgresCluster() as cluster:
        print(cluster.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    sys.exit(0)
