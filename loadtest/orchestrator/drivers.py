"""What `stackbench run` hands a driver: one scenario run (a server, a scenario, a model, a
repeat) to drive, and where its samples go.

Three drivers run steps and hand back samples, each in a module of its own: Locust
(locust_driver: the behavioural scenarios, closed and open model), the rate driver
(rate_driver: capacity and the open-loop sweep, `stackbench-rate` in C) and the held-connection
probe (held: memory per in-flight request with raw sockets). run.py plans and sequences the
steps; which driver runs a scenario is the scenario table's `driver` (and the model: "held" is
the probe's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadtest.orchestrator.sampling import SampleLog, scrape
from loadtest.records import Event, RunKey

if TYPE_CHECKING:
    from loadtest.orchestrator.remote import RemoteServer
    from loadtest.orchestrator.run import Plan, Progress
    from loadtest.orchestrator.serverproc import ServerProcess

__all__ = ["Job"]


@dataclass
class Job:
    plan: Plan
    server: ServerProcess | RemoteServer
    key: RunKey
    log: SampleLog
    progress: Progress
    server_cpus: list[int]
    driver_cpus: list[int]
    upstream: ServerProcess | None = None

    def event(self, event: str, **extra: Any) -> None:
        self.log.write(Event(event=event, t=time.time(), key=self.key, **extra))

    def upstream_connections(self) -> int | None:
        """Connections the run's upstream has accepted so far (this scrape's own included)."""
        if self.upstream is None:
            return None
        samples = scrape(self.upstream.url + "/metrics")
        if samples is None:
            return None
        return int(sum(s.value for s in samples if s.name == "http_server_connections_total"))
