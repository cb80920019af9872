"""The figures, without I/O: exact percentiles from recorded latencies, step and headline
figures, results.json and its schema, and `compare`, from a small recorded samples.jsonl
(tests/data/smoke-run/, a real smoke run of trio and aiohttp)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import jsonschema
import pytest

from loadtest import histograms
from loadtest.driver.latency_log import IntervalRecorder
from loadtest.driver.scenarios import SCENARIOS
from loadtest.records import (
    SCHEMA_PATH,
    ClientSnapshot,
    Figure,
    RecordError,
    Results,
    RouteHistograms,
    RunKey,
    Sample,
    ServerSnapshot,
    json_schema,
    read_line,
)
from loadtest.reporting import analysis, compare, figures, results
from loadtest.reporting.formatting import number

FIXTURE = Path(__file__).resolve().parent / "data" / "smoke-run"
KEY = RunKey(server="trio", scenario="plaintext", model="closed", repeat=0)


def _exact(values: list[float], percentile: float) -> float:
    """The percentile as HdrHistogram defines it: the smallest value with at least that
    share of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, round(percentile / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def _samples(intervals: list[dict], completed_per_interval: list[int]) -> list[Sample]:
    """Samples as the sampler writes them, from the Locust side's interval recorder."""
    result, completed = [], 0
    for index, interval in enumerate(intervals):
        completed += completed_per_interval[index]
        latency = {
            route: RouteHistograms(**kinds)
            for route, kinds in interval.get("histograms", {}).get("trio", {}).items()
        }
        result.append(
            Sample(
                key=KEY,
                t=float(index),
                server=ServerSnapshot(active_requests=1, open_connections=1, tasks=5, lag={}),
                client=ClientSnapshot(
                    users=8, intended=completed, dropped=0, errors=0, completed=completed
                ),
                latency=latency,
                server_rss_bytes=50e6,
                server_cpu_seconds=index * 0.5,
                server_alive=True,
                driver_cpu_seconds=index * 0.2,
            )
        )
    return result


def test_percentiles_from_recorded_latencies_are_within_one_percent() -> None:
    rng = random.Random(7)
    # A long-tailed mix: most requests fast, some queued, a few stalled.
    values = [rng.lognormvariate(0.5, 0.6) for _ in range(20_000)]
    values += [rng.uniform(90, 110) for _ in range(300)]
    values += [2_000.0 + rng.random() for _ in range(30)]
    rng.shuffle(values)
    recorder = IntervalRecorder()
    intervals, counts = [recorder.take(0)["intervals"][-1]], [0]  # opens the window
    for chunk in range(4):
        part = values[chunk * len(values) // 4 : (chunk + 1) * len(values) // 4]
        for value in part:
            recorder.record("trio", "/", value)
        intervals.append(recorder.take(intervals[-1]["seq"])["intervals"][-1])
        counts.append(len(part))
    step = analysis.step_figures(_samples(intervals, counts), driver_cores=1)
    assert step is not None
    assert step.completed == len(values) == step.routes["/"].count
    for attribute, percentile in (("p50_ms", 50), ("p99_ms", 99), ("p999_ms", 99.9)):
        exact = _exact(values, percentile)
        assert getattr(step, attribute) == pytest.approx(exact, rel=0.01), attribute
    assert step.max_ms == pytest.approx(max(values), rel=0.01)
    assert step.mean_ms == pytest.approx(sum(values) / len(values), rel=0.01)


def _with_intended(samples: list[Sample], per_sample: float) -> list[Sample]:
    return [
        s.model_copy(update={"client": s.client.model_copy(update={"intended": per_sample * i})})
        for i, s in enumerate(samples)
        if s.client is not None
    ]


def test_intended_rate_is_the_schedules_or_none() -> None:
    """The open model counts scheduled arrivals; the closed model has no schedule and no
    intended rate (not its completions again, which could never show it falling behind)."""
    recorder = IntervalRecorder()
    intervals = [recorder.take(0)["intervals"][-1] for _ in range(3)]
    samples = _samples(intervals, [0, 100, 100])
    # The schedule ran ahead of the completions: the driver or the server fell behind.
    step = analysis.step_figures(_with_intended(samples, 150.0), driver_cores=1)
    assert step is not None and step.intended_rps == 150 and step.achieved_rps == 100
    step = analysis.step_figures(_with_intended(samples, 0.0), driver_cores=1)
    assert step is not None and step.intended_rps is None and step.achieved_rps == 100


def test_unacknowledged_intervals_are_sent_again() -> None:
    """A read that times out loses nothing: its intervals come with the next one."""
    recorder = IntervalRecorder()
    recorder.record("trio", "/", 5.0)
    lost = recorder.take(0)["intervals"]  # never received
    recorder.record("trio", "/", 7.0)
    again = recorder.take(0)["intervals"]
    assert [i["seq"] for i in again] == [lost[0]["seq"], lost[0]["seq"] + 1]
    merged = histograms.merge(i["histograms"]["trio"]["/"]["latency"] for i in again)
    assert merged.get_total_count() == 2
    assert recorder.take(again[-1]["seq"])["intervals"][0]["histograms"] == {}


def test_a_recorder_holds_its_exit_until_its_last_request_is_acknowledged() -> None:
    """What a Locust process waits for at exit: nothing if nobody reads it; otherwise every
    recorded request taken by the reader and acknowledged by its next read."""
    recorder = IntervalRecorder()
    recorder.record("trio", "/", 5.0)
    assert not recorder.read  # started by hand, nobody reading: exits at once
    first = recorder.take(0)["intervals"]
    assert recorder.read and recorder.unacknowledged()  # taken, maybe never received
    recorder.record("trio", "/", 6.0)
    second = recorder.take(first[-1]["seq"])["intervals"]
    assert recorder.unacknowledged()  # the second request is taken, not acknowledged
    recorder.take(second[-1]["seq"])
    assert not recorder.unacknowledged()


def test_recorded_requests_count_every_interval_ramps_included() -> None:
    recorder = IntervalRecorder()
    intervals = [recorder.take(0)["intervals"][-1]]
    for count in (3, 0, 4):
        for _ in range(count):
            recorder.record("trio", "/", 1.0)
        recorder.record("trio", "/json", 2.0)
        intervals.append(recorder.take(intervals[-1]["seq"])["intervals"][-1])
    samples = _samples(intervals, [0, 4, 1, 5])
    assert analysis.recorded_requests(samples) == {"/": 7, "/json": 3}
    # A sample whose Locust processes did not answer carries none (they come with the next).
    unanswered = samples[0].model_copy(update={"latency": None})
    assert analysis.recorded_requests([*samples, unanswered]) == {"/": 7, "/json": 3}


def test_cpu_per_request_subtracts_idle_load() -> None:
    # 0.5 CPU-s over 1 s for 1,000 requests with 0.1 cores idle: 400 µs each.
    cpu_us, error = analysis.cpu_step(0.5, 1.0, 1000, idle_cpu=0.1, cpu_tick_s=0.01)
    assert cpu_us == pytest.approx(400)
    assert error == pytest.approx(20)  # two ticks over 1,000 requests
    # ...and the idle rate's own error (0.01 cores here) over the step's second.
    _, error = analysis.cpu_step(0.5, 1.0, 1000, 0.1, cpu_tick_s=0.01, idle_error=0.01)
    assert error == pytest.approx(30)


def test_a_scheduler_lag_percentile_is_a_bucket_bound() -> None:
    buckets = {"0.001": 90.0, "0.005": 98.0, "0.025": 100.0, "+Inf": 100.0}
    assert analysis.bucket_bound(0.5, buckets) == 0.001
    assert analysis.bucket_bound(0.99, buckets) == 0.025
    assert analysis.bucket_bound(0.99, {"0.001": 0.0, "+Inf": 0.0}) is None


def test_every_figure_a_scenario_names_is_defined() -> None:
    for scenario in SCENARIOS.values():
        for name in scenario.figures:
            assert name in figures.FIGURES, (scenario.name, name)
            assert figures.FIGURES[name].better in ("lower", "higher", None)


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [(2001.5, 2.0, "2,002"), (1.6234, None, "1.62"), (38512.3, None, "38,500"),
     (38512.3, 38.0, "38,510"), (0.0234, None, "0.0234"), (None, None, "\u2013"),
     (0.4, 3.0, "< 3"), (0.0, 1.5, "< 2")],  # a value its error exceeds has no digit known
)  # fmt: skip
def test_numbers_carry_no_more_digits_than_their_error(value, error, text) -> None:
    assert number(value, error) == text


# --- from the recorded run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> Results:
    return results.build(FIXTURE)


def test_results_validate_against_the_schema_in_the_repo(built: Results) -> None:
    assert SCHEMA_PATH.read_text() == json_schema(), "python -m loadtest.records --write-schema"
    jsonschema.validate(json.loads(built.to_json()), json.loads(SCHEMA_PATH.read_text()))


def test_results_round_trip_through_json(built: Results) -> None:
    assert Results.from_json(built.to_json()) == built


def test_recorded_run_yields_cpu_per_request_and_both_memory_figures(built: Results) -> None:
    assert set(built.headline) == {"trio", "aiohttp"}
    for server, headline in built.headline.items():
        plaintext = headline.cpu_us_per_request["plaintext"]
        assert 5 < plaintext.median < 2000, server
        assert plaintext.at_rps and plaintext.error
        assert headline.figures["bytes_per_request"].median > 1000, server
        assert headline.figures["held_bytes_per_request"].median > 1000, server


def test_io_hold_percentiles_are_the_sleep_not_a_bucket(built: Results) -> None:
    for run in built.runs:
        if run.key.scenario == "io_hold" and run.key.model == "closed":
            for step in run.steps:
                if step.completed:
                    assert 2000 <= step.p50_ms <= 2030, (run.key, step.p50_ms)


def test_timestamps_are_iso_8601_utc(built: Results) -> None:
    for stamp in (built.started, built.finished):
        assert stamp and stamp.endswith("Z") and "T" in stamp


def test_a_run_compared_with_itself_shows_no_change(built: Results) -> None:
    changes = compare.compare(built, built)
    assert changes and {c.verdict for c in changes} == {"same"}
    assert compare.incompatibility(built, built) is None


def test_compare_refuses_different_profiles_and_warns_of_other_versions(built: Results) -> None:
    other = built.model_copy(update={"profile": built.profile.model_copy(update={"name": "quick"})})
    assert "different profiles" in compare.incompatibility(built, other)
    newer = built.model_copy(update={"versions": {**built.versions, "trio": "99.0"}})
    assert compare.incompatibility(built, newer) is None
    assert any("trio differs" in w for w in compare.warnings(built, newer))


def _figure(values: list[float]) -> Figure:
    return Figure(median=sorted(values)[len(values) // 2], min=min(values), max=max(values),
                  n=len(values), values=values)  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "verdict"),
    [
        ([100.0], [80.0], "indicative"),  # one run a side: shown, not called
        ([100, 110, 120], [105, 115, 125], "within spread"),
        ([100, 101, 102], [80, 81, 82], "better"),
        ([100, 101, 102], [120, 121, 122], "worse"),
        ([100, 101, 102], [100, 101, 102], "same"),
    ],
)
def test_compare_calls_a_change_only_beyond_spread_and_significant(before, after, verdict) -> None:
    spec = figures.CPU
    found, _ = compare._verdict(spec, _figure(before), _figure(after))
    assert found.startswith(verdict)


def test_compare_never_ranks_inputs_or_fit_quality() -> None:
    found, _ = compare._verdict(figures.FIGURES["fixed_load_rps"], _figure([200, 200, 200]),
                                _figure([400, 400, 400]))  # fmt: skip
    assert found == "changed"
    found, _ = compare._verdict(figures.FIGURES["bytes_per_request_r2"], _figure([0.9]),
                                _figure([0.99]))  # fmt: skip
    assert found == "changed"


def test_a_header_missing_a_field_is_one_line(tmp_path: Path) -> None:
    lines = (FIXTURE / "samples.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    del header["profile"]
    (tmp_path / "samples.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(results.ResultsError, match="no readable run header"):
        results.build(tmp_path)
    with pytest.raises(RecordError, match="profile"):
        read_line(json.dumps(header))


def test_a_results_file_that_is_a_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("[1, 2]")
    with pytest.raises(results.ResultsError, match=r"not a stackbench\.results"):
        results.load(path)


def test_the_fixture_rebuilds_without_its_results(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "samples.jsonl", tmp_path / "samples.jsonl")
    assert results.load(tmp_path).headline.keys() == {"trio", "aiohttp"}


def test_cpu_per_request_compares_servers_at_one_load_level(built: Results) -> None:
    plaintext = [r for r in built.runs if r.key.scenario == "plaintext" and r.key.model == "closed"]
    level = figures.common_quiet_level(plaintext)
    assert level is not None
    for run in plaintext:
        step = next(s for s in run.steps if s.users == level)
        assert not step.driver_bound and not step.server_saturated
        headline = built.headline[run.key.server].cpu_us_per_request["plaintext"]
        assert headline.median == step.cpu_us_per_request
