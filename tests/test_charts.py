"""The report's charts as a reader and a browser get them: inline SVG with its title, axis
labels and legend as text, no script, no external reference. I/O-free (matplotlib in memory)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from loadtest.records import Figure
from loadtest.reporting import charts, report, results

DATA = Path(__file__).parent / "data" / "smoke-run"


def _self_contained(svg: str) -> None:
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert not re.search(r"https?://|<script|<image|<foreignObject", svg)


def test_a_line_chart_carries_its_title_labels_and_legend_as_text() -> None:
    series = {
        "gevent": [(100, 2.0, False, "1"), (900, 9.0, True, "32")],
        "trio": [(80, 3.0, False, "")],
    }
    svg = charts.lines("p99 vs load", "requests per second", "p99, ms", series)
    _self_contained(svg)
    for text in ("p99 vs load", "requests per second", "p99, ms", "gevent", "trio", ">32<"):
        assert text in svg
    assert 'aria-label="p99 vs load"' in svg
    assert charts.COLOURS["gevent"] in svg


def test_bars_show_the_spread_of_repeats() -> None:
    spread = Figure(median=10, min=8, max=13, n=3, values=[8, 10, 13])
    svg = charts.bars_with_spread("cpu", "µs", ["plaintext"], {"gevent": {"plaintext": spread}})
    _self_contained(svg)
    assert "plaintext" in svg and "µs" in svg


def test_a_chart_without_data_says_so() -> None:
    assert "not measured by this run" in charts.lines("t", "x", "y", {"gevent": []})


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("run")
    shutil.copy(DATA / "samples.jsonl", out / "samples.jsonl")
    return report.render(results.build(out))


def test_the_report_draws_every_chart_with_the_library(page: str) -> None:
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) >= 4
    for svg in svgs:
        _self_contained(svg)
    for title in ("server CPU per request", "resident memory vs requests in flight",
                  "p99 vs achieved load", "scheduler lag"):  # fmt: skip
        assert title in page
    assert "KiB per request" in page  # each server's fitted slope, in the memory legend


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("built")
    shutil.copy(DATA / "samples.jsonl", out / "samples.jsonl")
    return results.build(out)


def test_each_scenario_is_explained_with_its_locust_pages(page: str) -> None:
    section = page[page.index("<h2>Scenarios</h2>") : page.index("<h2>Every step</h2>")]
    from loadtest.driver.scenarios import SCENARIOS

    assert SCENARIOS["io_hold"].question in section
    assert "1 x GET /sleep?ms=2000" in section
    assert 'href="locust/trio-plaintext-closed-r1.html"' in section


def test_a_busy_machine_is_warned_of_before_any_figure(built) -> None:
    def rendered(load: float) -> str:
        environment = built.environment.model_copy(update={"load_average_1m": load, "cpus": 2})
        return report.render(built.model_copy(update={"environment": environment}))

    assert "Busy machine" not in rendered(0.9)  # 0.45 per CPU
    busy = rendered(1.1)
    assert busy.index("Busy machine") < busy.index("<h2>Verdict</h2>")


def test_runs_whose_requests_failed_are_warned_of(built) -> None:
    assert "Failed requests" not in report.render(built)
    first = built.runs[0]
    steps = [step.model_copy(update={"errors": step.completed * 0.5}) for step in first.steps]
    failed = first.model_copy(update={"steps": steps})
    page = report.render(built.model_copy(update={"runs": [failed, *built.runs[1:]]}))
    warning = page[page.index("Failed requests") : page.index("<h2>Verdict</h2>")]
    assert f"{first.key.server} {first.key.scenario} (50% of" in warning
