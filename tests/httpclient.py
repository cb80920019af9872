"""Small real HTTP clients for the tests: stdlib http.client for ordinary requests, raw sockets
where the test is about the bytes on the wire (pipelining, chunked bodies, disconnects)."""

from __future__ import annotations

import contextlib
import http.client
import math
import socket
import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def get(port: int, target: str, timeout: float = 30.0) -> Reply:
    return request(port, "GET", target, timeout=timeout)


def timed_get(port: int, target: str) -> tuple[float, Reply]:
    started = time.perf_counter()
    reply = get(port, target)
    return time.perf_counter() - started, reply


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` (whose last request says `Connection: close`) on a new connection and read
    until the server closes it. No half-close: servers take end-of-file as a client gone."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def half_closed_exchange(
    port: int,
    data: bytes,
    timeout: float = 5.0,
    tolerate: tuple[type[OSError], ...] = (ConnectionResetError,),
) -> bytes:
    """Send `data`, half-close (as `nc -N` does) and read until the server closes, ending quietly
    on the errors in `tolerate`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(*tolerate):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def metrics(port: int) -> dict[str, object]:
    """Metric families by name, parsed by prometheus_client's own parser."""
    text = get(port, "/metrics").body.decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(port_or_families: int | dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, from a fresh scrape of
    a port or from families already scraped (so that several values come from one instant)."""
    families = metrics(port_or_families) if isinstance(port_or_families, int) else port_or_families
    total = 0.0
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile on cumulative {le: count}: linear within the bucket the
    rank falls in, from 0 below the first bound."""
    bounds = sorted(buckets)
    rank = q * buckets[math.inf]
    lower, below = 0.0, 0.0
    for upper in bounds:
        if buckets[upper] >= rank:
            if upper == math.inf:
                return lower
            return lower + (upper - lower) * (rank - below) / (buckets[upper] - below)
        lower, below = upper, buckets[upper]
    return lower


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
