"""The throwaway PostgreSQL cluster (loadtest/orchestrator/postgres.py): it starts with the
tables loaded, and leaves nothing behind, whether stopped, orphaned by a killed stackbench, or
left stale for the next start to find."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from loadtest.orchestrator.postgres import (
    PORT_RANGE,
    TEMPLATE_PREFIX,
    PostgresCluster,
    stop_stale_clusters,
)


@pytest.fixture
def root() -> Iterator[Path]:
    """A root for clusters that the postgres user can reach (pytest's root is root's
    alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="stackbench-pg-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        stop_stale_clusters(path)
        shutil.rmtree(path, ignore_errors=True)


def _clusters(root: Path) -> list[str]:
    """The clusters' directories under `root` (not the initdb template they are copied from)."""
    return [path.name for path in root.iterdir() if not path.name.startswith(TEMPLATE_PREFIX)]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _cluster_processes(data: Path) -> list[int]:
    """Processes (the postmaster and its backends) running in the data directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(data):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_starts_with_the_tables_and_stops_leaving_nothing(root: Path) -> None:
    with PostgresCluster(max_connections=37, root=root) as cluster:
        assert PORT_RANGE[0] <= cluster.port <= PORT_RANGE[1] < 32768
        data, pid, port = cluster.data, cluster.pid, cluster.port
        with psycopg.connect(cluster.url) as conn:
            worlds = conn.execute(
                "SELECT count(*), min(randomnumber), max(randomnumber),"
                " count(DISTINCT randomnumber) FROM world"
            ).fetchone()
            assert worlds == (10_000, 1, 10_000, 10_000)
            assert conn.execute("SELECT randomnumber FROM world WHERE id = 1").fetchone() == (7920,)
            fortunes = dict(conn.execute("SELECT id, message FROM fortune").fetchall())
            assert len(fortunes) == 12
            assert fortunes[12] == "フレームワークのベンチマーク"
            assert fortunes[11].startswith("<script>alert(")
            assert conn.execute("SHOW max_connections").fetchone() == ("37",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the postgres user
            uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
            assert uid != 0
        # A direct child of this process, not daemonized.
        assert int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]) == (
            os.getpid()
        )
    assert _gone(pid, 5)
    assert not _cluster_processes(data)
    assert not data.exists()
    assert _refused(port)
    assert _clusters(root) == []


_ORPHAN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from loadtest.orchestrator.postgres import PostgresCluster
    cluster = PostgresCluster(root=Path(sys.argv[1]), sql=None, die_with_parent=sys.argv[2] == "1")
    cluster.start()
    print(cluster.pid, cluster.port, cluster.data, flush=True)
    time.sleep(600)
    """
)


def _orphan(root: Path, die_with_parent: bool) -> tuple[int, int, Path]:
    """A stackbench-like process that starts a cluster and is then SIGKILLed (no cleanup)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(root), "1" if die_with_parent else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    pid, port, data = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    return int(pid), int(port), Path(data)


def test_postgres_stops_when_stackbench_is_killed(root: Path) -> None:
    """The parent-death signal: SIGKILL the process that started the cluster and postgres
    shuts itself down, backends included."""
    pid, port, data = _orphan(root, die_with_parent=True)
    assert _gone(pid, 10)
    deadline = time.monotonic() + 5
    while _cluster_processes(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _cluster_processes(data)
    assert _refused(port)
    stop_stale_clusters(root)  # the files stay until the next start tidies them
    assert _clusters(root) == []


def test_a_stale_cluster_is_stopped_at_the_next_start(root: Path) -> None:
    """A cluster whose stackbench died without the parent-death signal (it was cleared, or the
    process was not its parent) is found by its pidfile when the next cluster starts."""
    pid, port, data = _orphan(root, die_with_parent=False)
    time.sleep(0.5)
    assert not _gone(pid, 0.1), "the orphaned postgres should still be running"
    with PostgresCluster(root=root, sql=None) as fresh:
        assert _gone(pid, 5)
        assert not data.exists()
        assert _refused(port) or fresh.port == port
        assert _clusters(root) == [fresh.directory.name]
    assert _clusters(root) == []


def test_a_live_stackbench_keeps_its_cluster(root: Path) -> None:
    """Another live process's cluster (another test worker's) is not stale."""
    with PostgresCluster(root=root, sql=None) as first:
        assert stop_stale_clusters(root) == []
        with PostgresCluster(root=root, sql=None) as second:
            assert first.process is not None and first.process.poll() is None
            assert second.port != first.port


def test_killed_and_restarted_on_the_same_port(root: Path) -> None:
    with PostgresCluster(root=root) as cluster:
        port = cluster.port
        cluster.kill()
        assert _refused(port)
        cluster.restart()
        assert cluster.port == port
        with psycopg.connect(cluster.url) as conn:
            assert conn.execute("SELECT count(*) FROM fortune").fetchone() == (12,)
