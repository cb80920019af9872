"""Every request's latency, kept exactly: HdrHistograms per target and route, handed to the
orchestrator in intervals.

The orchestrator reads `/latency?ack=N` from each Locust process twice a second. Each read
closes the current interval and returns every interval the reader has not acknowledged yet, so
a read that times out loses nothing: its intervals come again with the next one. This is
HdrHistogram's interval-log idea (a recorder swapped on each read) with an acknowledgement,
which no library provides for a pull over HTTP. Imported only inside Locust processes (gevent:
one thread, no locks needed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from loadtest import histograms

__all__ = ["RECORDER", "IntervalRecorder"]

# Unread intervals kept at most (two minutes at the orchestrator's pace): a Locust started by
# hand, with nobody reading, must not grow without bound.
MAX_PENDING_INTERVALS = 240


@dataclass
class _RouteHistograms:
    latency: HdrHistogram = field(default_factory=histograms.empty)
    # From the actual send; only the open model measures it apart from `latency`.
    service: HdrHistogram | None = None


class IntervalRecorder:
    def __init__(self) -> None:
        self._current: dict[tuple[str, str], _RouteHistograms] = {}
        self._pending: list[dict] = []
        self._sequence = 0
        self.read = False  # has anyone taken an interval (is a reader counting on us)?

    def record(
        self, target: str, route: str, latency_ms: float, service_ms: float | None = None
    ) -> None:
        entry = self._current.get((target, route))
        if entry is None:
            entry = self._current[(target, route)] = _RouteHistograms()
        histograms.record_ms(entry.latency, latency_ms)
        if service_ms is not None:
            if entry.service is None:
                entry.service = histograms.empty()
            histograms.record_ms(entry.service, service_ms)

    def take(self, acknowledged: int) -> dict:
        """Close the current interval; every interval after `acknowledged`, oldest first."""
        self.read = True
        self._sequence += 1
        encoded: dict[str, dict[str, dict[str, str]]] = {}
        for (target, route), entry in self._current.items():
            item = {"latency": histograms.encode(entry.latency)}
            if entry.service is not None:
                item["service"] = histograms.encode(entry.service)
            encoded.setdefault(target, {})[route] = item
        self._current = {}
        self._pending.append({"seq": self._sequence, "histograms": encoded})
        self._pending = [i for i in self._pending if i["seq"] > acknowledged]
        lost = len(self._pending) - MAX_PENDING_INTERVALS
        if lost > 0:
            self._pending = self._pending[lost:]
        return {"intervals": self._pending}

    def unacknowledged(self) -> bool:
        """Whether a request recorded here has not yet reached a reader for certain: still in
        the current interval, or in one taken but not acknowledged."""
        return bool(self._current) or any(i["histograms"] for i in self._pending)

    def as_json(self, acknowledged: int) -> bytes:
        return json.dumps(self.take(acknowledged), separators=(",", ":")).encode()


RECORDER = IntervalRecorder()
