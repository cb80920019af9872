"""Memory per in-flight request measured a second way: raw connections held on /sleep, no
load generator.

The probe opens plain TCP sockets to a fresh server, each sending one `GET /sleep?ms=HOLD` and
then waiting, so every socket is exactly one request in flight for the whole measurement: no
request completes, none is re-sent, no keep-alive churn. At each level it reads the server's
own `http_server_active_requests` gauge (the x of the io_hold fit under Locust) and the
server's RSS from /proc, and `analysis.held_fit` fits bytes per in-flight request across the
levels.

What the slope includes: everything the server allocates per open connection with one request
waiting in it (its socket object and buffers in the process, its task/greenlet/coroutine and
stack, the parsed request, the disconnect watcher). What it leaves out: garbage and allocator
growth from requests that have finished, since none finish. Kernel socket buffers are not in
RSS either way. The gauge counts the /metrics scrape itself (+1 on every point), which moves
the intercept, not the slope. A non-blocking selector loop, because one thread must hold
thousands of sockets while it reads the server between levels.
"""

from __future__ import annotations

import contextlib
import errno
import re
import resource
import selectors
import socket
import statistics
import time
import urllib.request
from urllib.parse import urlsplit

from loadtest.records import HeldPoint

__all__ = ["HOLD_MS", "HeldError", "expected_seconds", "measure"]

HOLD_MS = 20_000  # every level must be measured before the first requests complete
SCRAPE_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.1
# RSS counts as settled when it moved less than this over the last STABLE_WINDOW_S.
STABLE_BYTES = 64 * 1024
STABLE_WINDOW_S = 0.6
SAMPLES_PER_POINT = 5  # (gauge, RSS) pairs per level once settled; the point is their median
SAFETY_MARGIN_S = 1.0  # finish this long before the first-sent requests would complete

_GAUGE = re.compile(rb"^http_server_active_requests(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)


class HeldError(RuntimeError):
    """The probe could not hold its levels (one line for the report)."""


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def active_requests(url: str) -> float:
    """The server's `http_server_active_requests` gauge (this scrape included)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read()
    return sum(float(value) for value in _GAUGE.findall(text))


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit if `needed` descriptors do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise OSError(errno.EMFILE, f"need {needed} file descriptors, the hard limit is {hard}")


class _HeldSockets:
    """Non-blocking sockets, each sending one request and then only watched for closing."""

    def __init__(self, address: tuple[str, int], request: bytes) -> None:
        self.address = address
        self.request = request
        self.selector = selectors.DefaultSelector()
        self.pending: dict[socket.socket, bytes] = {}  # still connecting or sending
        self.held: set[socket.socket] = set()  # request sent, waiting for the answer
        self.lost = 0  # closed, reset or answered early: no longer in flight

    def open(self, count: int) -> None:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(self.address)
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                raise OSError(code, f"connect to {self.address}: {errno.errorcode.get(code)}")
            self.pending[sock] = self.request
            self.selector.register(sock, selectors.EVENT_WRITE)

    def poll(self, timeout: float) -> None:
        """Advance connects and sends, and notice closed sockets, for up to `timeout`."""
        for key, events in self.selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if events & selectors.EVENT_WRITE:
                self._send(sock)
            elif events & selectors.EVENT_READ:
                # An answer (a 503, say) or a close before the hold ends: no longer in flight.
                with contextlib.suppress(BlockingIOError):
                    with contextlib.suppress(OSError):
                        sock.recv(65536)
                    self._drop(sock)

    def _send(self, sock: socket.socket) -> None:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._drop(sock)
            return
        try:
            sent = sock.send(self.pending[sock])
        except BlockingIOError:
            return
        except OSError:
            self._drop(sock)
            return
        rest = self.pending[sock][sent:]
        if rest:
            self.pending[sock] = rest
            return
        del self.pending[sock]
        self.held.add(sock)
        self.selector.modify(sock, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        self.pending.pop(sock, None)
        self.held.discard(sock)
        sock.close()
        self.lost += 1

    def close(self) -> None:
        for sock in [*self.pending, *self.held]:
            self.selector.unregister(sock)
            sock.close()
        self.pending.clear()
        self.held.clear()
        self.selector.close()


def measure(
    url: str, pid: int, levels: tuple[int, ...], hold_ms: int = HOLD_MS
) -> tuple[list[HeldPoint], list[HeldPoint]]:
    """Bytes of server RSS per in-flight request, from raw connections held on /sleep.

    For each level (increasing; each is a total, so only the difference is opened) it opens
    sockets that each send one `GET /sleep?ms={hold_ms}` with the headers Locust sends, waits until
    the server's `http_server_active_requests` gauge reaches the number held and RSS has
    settled, and records the median of a few (gauge, RSS) pairs (returned with every pair read,
    for the fit's interval). The slope is least squares of
    RSS on the gauge across the levels. Every socket is closed before returning. All levels must
    be measured before the first requests complete, so the whole call takes under `hold_ms`;
    if time runs out it raises HeldError.

    Raises HeldError with one line for the report when the levels cannot be held.
    """
    levels = tuple(sorted(levels))
    if len(levels) < 2 or levels[0] < 1:
        raise HeldError("need at least two positive levels")
    parts = urlsplit(url if "//" in url else f"http://{url}")
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    # The headers Locust's FastHttpUser sends, so both methods hold the same request.
    request = (
        f"GET /sleep?ms={hold_ms} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "User-Agent: python/gevent-http-client-2.6.1\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n"
    ).encode()
    raise_fd_limit(levels[-1] + 64)

    sockets = _HeldSockets(address, request)
    deadline = time.monotonic() + hold_ms / 1000 - SAFETY_MARGIN_S
    points: list[HeldPoint] = []
    readings: list[HeldPoint] = []
    try:
        for level in levels:
            sockets.open(level - len(sockets.held) - len(sockets.pending))
            samples = _settle(url, pid, sockets, level, deadline)
            readings += [HeldPoint(in_flight=x, rss_bytes=y) for x, y in samples]
            points.append(HeldPoint(
                in_flight=statistics.median(x for x, _ in samples),
                rss_bytes=statistics.median(y for _, y in samples),
            ))  # fmt: skip
    except (OSError, RuntimeError) as exc:  # TimeoutError and ConnectionError included
        raise HeldError(str(exc)) from None
    finally:
        sockets.close()
    return points, readings


def expected_seconds(levels: tuple[int, ...]) -> float:
    """Roughly how long `measure` takes (for the run's progress line)."""
    return 1.5 * len(levels)


def _settle(
    url: str, pid: int, sockets: _HeldSockets, level: int, deadline: float
) -> list[tuple[float, float]]:
    """Wait until `level` requests are held and in flight and RSS is steady; return a few
    (gauge, RSS) readings."""
    history: list[tuple[float, int]] = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"level {level}: {len(sockets.held)} held, {sockets.lost} lost, "
                "not settled before the first requests would complete"
            )
        sockets.poll(POLL_INTERVAL_S)
        if sockets.lost:
            raise ConnectionError(f"{sockets.lost} connections closed or answered early")
        if sockets.pending:
            continue
        now, rss = time.monotonic(), rss_bytes(pid)
        history.append((now, rss))
        window = [r for t, r in history if now - t <= STABLE_WINDOW_S]
        if now - history[0][0] < STABLE_WINDOW_S or max(window) - min(window) > STABLE_BYTES:
            continue
        with contextlib.suppress(OSError):
            if active_requests(url) >= level:
                break
    samples = []
    for _ in range(SAMPLES_PER_POINT):
        sockets.poll(POLL_INTERVAL_S)
        samples.append((active_requests(url), float(rss_bytes(pid))))
    return samples
