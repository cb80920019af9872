"""What a run writes and what it concludes, as typed records: the lines of samples.jsonl (run
header, events, samples, probes) and results.json (steps, runs, headline figures).

This module is the one place where these records meet JSON: `dump_line`/`read_line` for
samples.jsonl, `Results.model_validate_json`/`model_dump_json` for results.json. The JSON
Schema of results.json (docs/results.schema.json) is generated from `Results` here
(`python -m loadtest.records --write-schema`), and the tests validate every results.json that a
run produces against that file.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = [
    "RESULTS_SCHEMA",
    "SCHEMA_PATH",
    "AnyLine",
    "ClientSnapshot",
    "Event",
    "Figure",
    "HeldProbe",
    "IdleProbe",
    "Interval",
    "Line",
    "LinearFit",
    "PlannedStep",
    "RecordError",
    "Results",
    "RouteFigures",
    "RouteHistograms",
    "RunHeader",
    "RunKey",
    "Sample",
    "ScenarioRun",
    "ServerHeadline",
    "ServerSnapshot",
    "Step",
    "dump_line",
    "read_line",
    "read_samples",
    "spec_name",
    "utc_iso",
]

RESULTS_SCHEMA = "stackbench.results/3"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "results.schema.json"

Model = Literal["closed", "open", "held"]
Status = Literal["ok", "failed", "interrupted"]


class RecordError(ValueError):
    """A line or file is not a stackbench record (one line for the user)."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def utc_iso(timestamp: float | None = None) -> str:
    """ISO 8601 in UTC, to the millisecond: the one timestamp format of results.json."""
    moment = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- samples.jsonl ------------------------------------------------------------------------


class RunKey(Record):
    """Which measurement a line belongs to: one server, one scenario, one model, one repeat."""

    server: str
    scenario: str
    model: Model
    repeat: int

    @property
    def locust_name(self) -> str:
        """The name of Locust's files (CSV, HTML, log) for this run, under `locust/`."""
        return f"{self.server}-{self.scenario}-{self.model}-r{self.repeat + 1}"


class ScenarioSpec(Record):
    """A scenario as it was run: what it sent and at which levels (compared across runs)."""

    requests: list[str]
    levels: list[int]
    step_seconds: float
    settle_seconds: float  # left out at the start of each level
    rate_per_stream: float | None = None
    # The rate sweep (scenario `rate`): closed-loop capacity at `levels` connections, then
    # open-loop steps at `common_rates` rates common to every server and at these fractions of
    # each server's own capacity; the SLO that sustainable throughput is read against.
    capacity_fractions: list[float] | None = None
    common_rates: int | None = None
    slo_ms: float | None = None


def spec_name(scenario: str, model: str) -> str:
    """The key of a scenario's ScenarioSpec in the run header: the open-model pass of a
    scenario runs with parameters of its own."""
    return f"{scenario} (open)" if model == "open" else scenario


class Pinning(Record):
    server_cpus: list[int]
    driver_cpus: list[int]
    shared_cpu: bool
    locust_processes: int  # Locust processes that run users: the workers, or the one alone
    fd_limit: int
    # A `locust --master` beside them, its workers separate `locust --worker` processes
    locust_master: bool = False


class Environment(Record):
    platform: str
    kernel: str
    cpu_model: str
    cpus: int
    memory_bytes: int
    cpu_governor: str | None
    load_average_1m: float
    python: str
    clock_tick_s: float  # /proc's unit of CPU time: bounds the error of CPU figures


class Provenance(Record):
    command: list[str]
    stackbench_version: str
    git_commit: str | None
    git_dirty: bool | None


class ProfileInfo(Record):
    name: str
    step_seconds: float
    repeat: int


class RunHeader(Record):
    type: Literal["run"] = "run"
    started: str
    profile: ProfileInfo
    # The tiers whose servers were run: "stack" (the idiomatic stacks), "runtime" (one h11
    # core on each runtime), "native" (Go and Rust); a server in two (trio) appears in both.
    tiers: dict[str, list[str]]
    planned: list[RunKey]
    scenarios: dict[str, ScenarioSpec]
    environment: Environment
    versions: dict[str, str]
    pinning: Pinning
    provenance: Provenance


class PlannedStep(Record):
    """A step of a driver that runs each level as a step of its own (the rate driver): its
    connections and length, and the rate offered (None: closed loop), common to every server
    of the run or a fraction of this server's measured capacity."""

    connections: int
    seconds: float
    rate: float | None
    common: bool = False
    capacity_fraction: float | None = None


class Event(Record):
    type: Literal["event"] = "event"
    event: Literal["started", "finished", "failed", "interrupted"]  # no key: the whole run
    t: float
    key: RunKey | None = None
    levels: list[int] | None = None
    error: str | None = None
    exit_code: int | None = None
    # A scenario whose servers call an upstream: connections the upstream accepted meanwhile.
    upstream_connections: int | None = None
    steps: list[PlannedStep] | None = None  # "started" of a run of steps (the rate driver)


class ServerSnapshot(Record):
    """What one scrape of a server's /metrics said (cumulative counts)."""

    active_requests: float
    open_connections: float
    tasks: float
    lag: dict[str, float]  # scheduler-lag histogram: {le: cumulative count}


class ClientSnapshot(Record):
    """What one scrape of the Locust processes' /metrics said (cumulative, summed), or one line
    of the rate driver (cumulative since its step began)."""

    users: float  # the rate driver: its connections
    intended: float
    dropped: float
    errors: float
    completed: float
    # The rate driver's errors by kind (connect, reset, timeout, status, parse).
    error_kinds: dict[str, float] | None = None


class RouteHistograms(Record):
    """HdrHistograms (loadtest.histograms encoding) of one route over one sample interval."""

    latency: str
    service: str | None = None  # open model: from the actual send


class Sample(Record):
    type: Literal["sample"] = "sample"
    key: RunKey
    t: float
    server: ServerSnapshot | None
    client: ClientSnapshot | None
    # Requests that completed since the previous sample, per route; None when the Locust
    # processes did not answer (their intervals then arrive with the next sample).
    latency: dict[str, RouteHistograms] | None
    server_rss_bytes: float | None  # from /proc, independent of the server's own report
    server_cpu_seconds: float | None  # utime + stime from /proc
    server_alive: bool
    driver_cpu_seconds: float | None
    # The server's CPU to the nanosecond (its process CPU clock: every thread, dead ones too),
    # where the run started it; /proc's ticks above stay as the cross-check.
    server_cpu_ns_seconds: float | None = None
    # The step of a driver that runs its load levels as steps of their own (the rate driver):
    # samples are grouped by it instead of by the users gauge.
    step: int | None = None
    # Every scheduler-lag tick since the previous sample (the server's /lag, an HdrHistogram
    # in loadtest.histograms' encoding); None when it was not read.
    lag: str | None = None


class IdleProbe(Record):
    """A server's CPU use with no load but the run's own sampling (subtracted per second)."""

    type: Literal["idle"] = "idle"
    server: str
    repeat: int
    seconds: float
    cpu_seconds: float
    cpu_ns_seconds: float | None = None  # the same, from the process CPU clock


class HeldPoint(Record):
    in_flight: float
    rss_bytes: float


class HeldProbe(Record):
    """Memory per in-flight request measured without Locust: raw connections held on /sleep."""

    type: Literal["held"] = "held"
    key: RunKey
    points: list[HeldPoint]  # one per level: the median of its readings
    error: str | None = None
    samples: list[HeldPoint] | None = None  # every reading of every level (the fit's interval)


AnyLine = RunHeader | Event | Sample | IdleProbe | HeldProbe
Line = Annotated[AnyLine, Field(discriminator="type")]
_LINE = TypeAdapter(Line)


def dump_line(record: BaseModel) -> str:
    return record.model_dump_json()


def read_line(text: str) -> AnyLine:
    try:
        return _LINE.validate_json(text)
    except ValidationError as exc:
        raise RecordError(_first_error(exc)) from None


def read_samples(path: Path) -> tuple[list[AnyLine], int]:
    """Every readable line of a samples file, and how many were not (a run killed mid-write
    leaves at most one)."""
    records, broken = [], 0
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(read_line(text))
        except RecordError:
            broken += 1
    return records, broken


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "record"
    return f"{where}: {error['msg']}"


# --- results.json -------------------------------------------------------------------------


Interval = tuple[float, float]  # a 95 % interval: (low, high), in the figure's unit


class RouteFigures(Record):
    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    # 95 % intervals (loadtest/reporting/intervals.py says how each is made)
    p50_ci: Interval | None = None
    p99_ci: Interval | None = None
    mean_ci: Interval | None = None


class Step(Record):
    """One load level: its figures from the samples inside it (the first, the ramp, left out)."""

    users: float
    seconds: float
    completed: int
    achieved_rps: float
    # The open model's scheduled arrivals per second; None in the closed model, which has no
    # schedule (each user sends when its last request returns).
    intended_rps: float | None
    dropped: float
    errors: float
    # Exact to loadtest.histograms.RELATIVE_ERROR (HdrHistogram), every request of the step.
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    p99_uncorrected_ms: float | None
    routes: dict[str, RouteFigures]
    # The rate driver's steps: what was offered (open loop; None closed), how it was chosen
    # ("common": a rate offered to every server of the run; else this fraction of the
    # server's own measured capacity), its connections, errors by kind, and the percentiles
    # from each request's actual send (what a closed-loop tool reports).
    offered_rps: float | None = None
    common: bool = False
    capacity_fraction: float | None = None
    connections: int | None = None
    error_kinds: dict[str, float] | None = None
    p50_uncorrected_ms: float | None = None
    p999_uncorrected_ms: float | None = None
    max_uncorrected_ms: float | None = None
    # The scheduler lag's p99 from the Prometheus histogram: only known to lie in one of its
    # buckets, so this is that bucket's upper bound (the cross-check of the exact one)
    lag_p99_at_most_ms: float | None
    # The exact scheduler lag (every tick, the server's /lag): p99 and its 95 % interval
    lag_p99_ms: float | None = None
    lag_p99_ci: Interval | None = None
    server_cpu: float  # cores busy (1.0 = one core), idle load subtracted
    # 95 % intervals of the step's figures, from within the step (intervals.py)
    p50_ci: Interval | None = None
    p99_ci: Interval | None = None
    p999_ci: Interval | None = None
    cpu_us_ci: Interval | None = None
    achieved_rps_ci: Interval | None = None
    cpu_us_per_request: float | None
    cpu_us_error: float | None  # the accounting's resolution (ticks or ns), per request
    cpu_source: Literal["ticks", "ns"] = "ticks"
    # With ns accounting: the same figure from /proc's ticks, and its error (the cross-check).
    cpu_us_ticks: float | None = None
    cpu_us_ticks_error: float | None = None
    driver_cpu: float | None
    rss_bytes: float | None
    active_requests: float | None
    tasks: float | None
    littles_in_flight: float | None
    driver_bound: bool
    server_saturated: bool


class LinearFit(Record):
    slope: float
    intercept: float
    r2: float
    points: int
    slope_ci: Interval | None = None  # 95 %, Student's t on points - 2 degrees of freedom


class ScenarioRun(Record):
    key: RunKey
    status: Status
    error: str | None
    samples: int
    steps: list[Step]
    driver_bound: bool
    memory_fit: LinearFit | None = None  # io_hold, upstream: RSS against requests in flight
    # starvation: (s, the scheduler lag's exact p99 ms over each second; where the server has
    # no /lag, the p99's bucket bound from its Prometheus histogram)
    lag_series: list[tuple[float, float]] | None = None
    # starvation: (s, users) where each load level began, on lag_series' clock
    level_starts: list[tuple[float, float]] | None = None
    # upstream: connections the upstream accepted while the scenario ran (the client's reuse)
    upstream_connections: int | None = None
    # Every request in the exact histograms per route, ramps and the end included: what the
    # server's own request counter should say the run sent (none for the held probe)
    recorded_requests: dict[str, int] | None = None
    # The rate sweep's open-loop run: the latency objective sustainable throughput is read at
    slo_ms: float | None = None


class Figure(Record):
    """One headline figure over the repeats: median, min, max, n and every value."""

    median: float
    min: float
    max: float
    n: int
    values: list[float]
    error: float | None = None  # stated error of one value, in its unit, where known
    # The 95 % interval of each value (as `values`), from within its own run, and the
    # envelope of them all; None where the figure has no interval (an input, a count).
    intervals: list[Interval | None] | None = None
    low: float | None = None
    high: float | None = None
    driver_bound: bool = False  # some value was measured while the driver was the limit
    saturated: bool = False  # some value was measured with the server's CPU saturated
    at_rps: float | None = None  # the achieved rate it was measured at (median), where it matters


class ServerHeadline(Record):
    # Per Locust scenario: server CPU per completed request at the busiest step where neither
    # the server nor the driver was saturated (the level is in each Figure's at_rps). What a
    # server can serve is measured, by the rate sweep (figures "capacity_rps" and others).
    cpu_us_per_request: dict[str, Figure]
    figures: dict[str, Figure]


class Lost(Record):
    unreadable_sample_lines: int
    not_measured: list[RunKey]
    failures: list[dict[str, str]]


class Results(Record):
    schema_: str = Field(RESULTS_SCHEMA, alias="schema")
    started: str
    finished: str | None
    profile: ProfileInfo
    tiers: dict[str, list[str]]
    scenarios: dict[str, ScenarioSpec]
    environment: Environment
    versions: dict[str, str]
    pinning: Pinning
    provenance: Provenance
    idle_cpu: dict[str, float]  # cores busy per server with no load (median over repeats)
    complete: bool
    interrupted: bool
    lost: Lost
    headline: dict[str, ServerHeadline]
    runs: list[ScenarioRun]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Results:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA:
            raise RecordError(f"not a {RESULTS_SCHEMA} file")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecordError(_first_error(exc)) from None


def json_schema() -> str:
    schema = Results.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "stackbench results.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="the JSON Schema of results.json")
    parser.add_argument("--write-schema", action="store_true", help=f"write {SCHEMA_PATH}")
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args()
    if args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != json_schema():
            sys.exit(f"{SCHEMA_PATH} is out of date: python -m loadtest.records --write-schema")
        return
    if args.write_schema:
        SCHEMA_PATH.parent.mkdir(exist_ok=True)
        SCHEMA_PATH.write_text(json_schema())
        return
    sys.stdout.write(json_schema())


if __name__ == "__main__":
    main()
