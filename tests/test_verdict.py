"""The verdict is written from the figures: I/O-free, on headlines built by hand."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from loadtest.records import Figure, ServerHeadline
from loadtest.reporting import results
from loadtest.reporting.verdict import ALSO, verdict

DATA = Path(__file__).parent / "data" / "smoke-run"


def figure(*values: float, driver_bound: bool = False, ci: float | None = 0.05) -> Figure:
    """Values over repeats, each with a 95 % interval of +-`ci` of itself (None: none)."""
    ordered = sorted(values)
    intervals = [(v * (1 - ci), v * (1 + ci)) for v in values] if ci is not None else None
    return Figure(
        median=ordered[len(ordered) // 2], min=ordered[0], max=ordered[-1], n=len(values),
        values=list(values), driver_bound=driver_bound, intervals=intervals,
        low=min(low for low, _ in intervals) if intervals else None,
        high=max(high for _, high in intervals) if intervals else None,
    )  # fmt: skip


def headline(memory: tuple[float, ...], colouring: tuple[float, ...]) -> ServerHeadline:
    return ServerHeadline(
        cpu_us_per_request={},
        figures={
            "held_bytes_per_request": figure(*memory),
            "coloring_probe_p99_ms": figure(*colouring),
        },
    )


GEVENT = ((30_000, 31_000, 32_000), (4.0, 4.5, 5.0))
TRIO = ((9_000, 9_500, 10_000), (95.0, 99.0, 101.0))


def readings(run: dict[str, ServerHeadline]) -> dict[str, str]:
    return {row.claim.split(" (")[0]: row.reading for row in verdict(run)}


def test_the_sentences_follow_the_figures_when_two_servers_swap() -> None:
    as_measured = readings({"gevent": headline(*GEVENT), "trio": headline(*TRIO)})
    swapped = readings({"gevent": headline(*TRIO), "trio": headline(*GEVENT)})
    memory = "A stackful task costs more memory"
    assert as_measured[memory].startswith("gevent measured the most, 30.3 KiB, 3.3x trio's 9.28")
    assert "Holds here" in as_measured[memory]
    assert swapped[memory].startswith("trio measured the most, 30.3 KiB, 3.3x gevent's 9.28")
    assert "Does not hold here" in swapped[memory]
    colouring = "Synchronous libraries do not mix with async code"
    assert as_measured[colouring].startswith("trio measured the most, 99.0 ms, 22x gevent's 4.5")
    assert "Holds here" in as_measured[colouring]
    assert "Does not hold here" in swapped[colouring]


MEMORY = "A stackful task costs more memory"


def test_one_run_decides_where_the_intervals_are_apart() -> None:
    # Two kinds 3x apart, each with a 5 % interval: decided on one run, and said to be one run.
    single = readings({"gevent": headline((30_000,), (4.5,)), "trio": headline((10_000,), (99,))})
    assert "Holds in this run: every stackful (gevent) server measured more" in single[MEMORY]
    assert (
        "95 % intervals apart (one run: how much it varies between runs is not known"
        in (single[MEMORY])
    )
    # Reversed, it does not hold (and is decided so).
    reversed_ = readings(
        {"gevent": headline((10_000,), (99,)), "trio": headline((30_000,), (4.5,))}
    )
    assert "Does not hold in this run" in reversed_[MEMORY]


@pytest.mark.parametrize(("apart", "decided"), [(0.9, False), (1.1, True)])
def test_the_rule_is_the_intervals_being_apart(apart: float, decided: bool) -> None:
    """The two values `apart` x their combined half-widths from each other: at 0.9x the
    intervals overlap and nothing is decided, at 1.1x they are apart and the claim is."""
    low, ci = 10_000.0, 0.05
    # high - low = apart * (ci * high + ci * low)
    high = low * (1 + apart * ci) / (1 - apart * ci)
    for stackful, stackless, verdict_word in ((high, low, "Holds"), (low, high, "Does not hold")):
        run = {"gevent": headline((stackful,), (4.5,)), "trio": headline((stackless,), (99,))}
        row = next(r for r in verdict(run) if r.claim.startswith(MEMORY))
        assert row.decided is decided, row.reading
        assert ("the 95 % intervals overlap" in row.reading) is not decided
        assert (f"{verdict_word} in this run" in row.reading) is decided


def test_the_two_memory_methods_disagreeing_block_the_decision() -> None:
    run = {"gevent": headline((30_000,), (4.5,)), "trio": headline((10_000,), (99,))}
    run["gevent"].figures["bytes_per_request"] = figure(36_000)  # 20 % off the held figure
    row = next(r for r in verdict(run) if r.claim.startswith(MEMORY))
    assert not row.decided
    assert "the two memory methods" in row.reading and "gevent 20%" in row.reading
    run["gevent"].figures["bytes_per_request"] = figure(31_000)  # within 15 %: decided
    assert next(r for r in verdict(run) if r.claim.startswith(MEMORY)).decided


def test_a_claim_the_run_cannot_decide_says_why_instead_of_a_verdict() -> None:
    no_interval = {
        "gevent": ServerHeadline(cpu_us_per_request={}, figures={
            "held_bytes_per_request": figure(31_000, ci=None)}),
        "trio": headline((9_500,), (99,)),
    }  # fmt: skip
    assert "Not decided: no 95 % interval for gevent" in readings(no_interval)[MEMORY]
    overlapping = readings({
        "gevent": headline((9_000, 20_000, 31_000), (4.5, 5, 6)),
        "trio": headline((8_000, 10_000, 12_000), (99, 100, 101)),
    })  # fmt: skip
    assert "overlap" in overlapping["A stackful task costs more memory"]
    bound = {"gevent": headline(*GEVENT), "trio": headline(*TRIO)}
    bound["trio"].figures["coloring_probe_p99_ms"] = figure(95.0, 99.0, driver_bound=True)
    assert "driver-bound" in readings(bound)["Synchronous libraries do not mix with async code"]
    one_kind = readings({"trio": headline(*TRIO), "aiohttp": headline(*TRIO)})
    assert (
        "no stackful server to compare with (add one of gevent, gevent-h11, threads-h11)"
        in (one_kind["A stackful task costs more memory"])
    )
    missing = readings({"gevent": headline(*GEVENT), "trio": headline(*TRIO)})
    assert missing["Stackless extracts more performance from the machine"].startswith(
        "Not measured by this run: it needs rate"
    )


def _parts(reading: str) -> tuple[str, frozenset[str]]:
    """A reading as its sentence proper and the set of items of a completing figure list."""
    for _, lead, *_ in ALSO.values():
        if lead in reading:
            head, _, rest = reading.partition(lead)
            items = rest.rstrip(".").removesuffix(" per call").split(",")
            return head, frozenset(item.strip() for item in items)
    return reading, frozenset()


def test_on_a_recorded_run_swapping_two_servers_swaps_the_sentences(tmp_path) -> None:
    shutil.copy(DATA / "samples.jsonl", tmp_path / "samples.jsonl")
    headline = results.build(tmp_path).headline
    swapped = {"trio": headline["aiohttp"], "aiohttp": headline["trio"]}
    for row, other in zip(verdict(headline), verdict(swapped), strict=True):
        # The same sentence with the two names exchanged (figures that merely complete a
        # reading list servers in their figures' order, which ties leave to the names).
        exchanged = row.reading.replace("trio", "\0").replace("aiohttp", "trio")
        exchanged = exchanged.replace("\0", "aiohttp")
        assert _parts(other.reading) == _parts(exchanged), (row.reading, other.reading)
        pairs = (("trio", "aiohttp"), ("aiohttp", "trio"))
        expected = {name: row.figures[was] for name, was in pairs if was in row.figures}
        assert other.figures == expected


GO = ((20_000, 21_000, 22_000), (3.0, 3.5, 4.0))
RUST = ((14_000, 14_500, 15_000), (90.0, 95.0, 99.0))


def test_the_archetypes_stand_beside_the_python_worlds_not_in_their_groups() -> None:
    run = {
        "gevent": headline(*GEVENT), "trio": headline(*TRIO),
        "go-nethttp": headline(*GO), "rust-hyper": headline(*RUST),
    }  # fmt: skip
    rows = {row.claim.split(" (")[0]: row for row in verdict(run)}
    memory = rows["A stackful task costs more memory"]
    # Decided between the Python servers alone, as without the natives, and said so...
    assert memory.reading.startswith(
        "Among the Python servers, gevent measured the most, 30.3 KiB, 3.3x trio's 9.28"
    )
    assert "every stackful (gevent) server measured more than every stackless (trio)" in (
        memory.reading
    )
    # ...then the archetypes, ranked, and each Python server's distance from its own.
    assert "Natively: rust-hyper 14.2 KiB, go-nethttp 20.5 KiB" in memory.reading
    assert "holds between them: the stackful one measured more" in memory.reading
    assert "Beside its archetype: gevent 1.5x go-nethttp, trio 0.66x rust-hyper." in (
        memory.reading
    )
    assert set(memory.figures) == set(run)  # a column each in the report
    swapped = {**run, "go-nethttp": headline(*RUST), "rust-hyper": headline(*GO)}
    swapped_memory = next(r for r in verdict(swapped) if r.claim == memory.claim).reading
    assert "Natively: go-nethttp 14.2 KiB, rust-hyper 20.5 KiB" in swapped_memory
    assert "does not hold between them: the stackful one measured less" in swapped_memory


def test_natives_alone_do_not_decide_a_python_claim() -> None:
    rows = verdict({"go-nethttp": headline(*GO), "rust-hyper": headline(*RUST)})
    memory = rows[0].reading
    # The scenario ran (the natives measured it): what is missing is Python servers.
    assert memory.startswith(
        "Not decided between the Python servers: this run measured 0 (add some, e.g. "
        "--servers gevent,aiohttp beside the native ones)."
    )
    assert "Natively: rust-hyper 14.2 KiB, go-nethttp 20.5 KiB" in memory


def test_go_is_not_said_to_offload_and_no_ratio_is_negative() -> None:
    def with_figures(**figures: float) -> ServerHeadline:
        return ServerHeadline(
            cpu_us_per_request={},
            figures={name: figure(value) for name, value in figures.items()},
        )  # fmt: skip

    colouring = {"coloring_probe_p99_ms": 4.0, "offload_overhead_ms": 0.5}
    run = {s: with_figures(**colouring) for s in ("gevent", "trio", "go-nethttp", "rust-hyper")}
    reading = next(r for r in verdict(run) if r.claim.startswith("Synchronous")).reading
    assert "Offloading the call to a thread costs" in reading and "rust-hyper 0.5" in reading
    assert "go-nethttp 0.5" not in reading  # Go's offload=1 is the same direct call
    # CPU per child of a fan-out is a difference, and can be <= 0: no ratio to it.
    cpu = {
        "gevent": ServerHeadline(
            cpu_us_per_request={"plaintext": figure(100.0), "fanout": figure(90.0)},
            figures={},
        ),
        "go-nethttp": ServerHeadline(
            cpu_us_per_request={"plaintext": figure(50.0), "fanout": figure(150.0)},
            figures={},
        ),
    }  # fmt: skip
    fanout = next(r for r in verdict(cpu) if "fan-out" in r.claim).reading
    assert "x go-nethttp" not in fanout and not re.search(r"-\d", fanout), fanout


def test_the_c_boundary_row_reads_each_archetype_at_its_ffi() -> None:
    def c_boundary(colouring: float | None, c: float) -> ServerHeadline:
        figures = {"c_boundary_probe_p99_ms": figure(c)}
        if colouring is not None:
            figures["coloring_probe_p99_ms"] = figure(colouring)
        return ServerHeadline(cpu_us_per_request={}, figures=figures)

    run = {"go-nethttp": c_boundary(3.0, 4.5), "rust-hyper": c_boundary(None, 95.0)}
    row = verdict(run)[-1]
    assert row.reading.endswith(
        "Natively, /json p99: go-nethttp 4.50 ms beside C calls against 3.00 ms beside its own "
        "language's blocking calls (1.5x); rust-hyper 95.0 ms beside C calls."
    ), row.reading
