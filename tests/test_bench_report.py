"""The comparison's report (bench/report.py) on made-up runs: medians, ratios of medians,
and paired ratios (each run's WonderQ figure over the peer's in the same run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import report  # bench/ is a folder of scripts, not a package
from runner import Result


def result(scenario: str, system: str, run: int, value: float | None,
           server_us: float | None = 1.0) -> Result:
    return Result(scenario, system, run, value, server_us, 1.0,
                  note="" if value is not None else "stalled")


# A machine that slows down run by run: both systems of a run share its speed.
DRIFTING = [
    result("S1", "wonderq", 1, 300.0), result("S1", "peer", 1, 100.0),
    result("S1", "wonderq", 2, 200.0), result("S1", "peer", 2, 200.0),
    result("S1", "wonderq", 3, 100.0), result("S1", "peer", 3, 50.0),
]


def test_paired_ratios_divide_within_each_run() -> None:
    assert report.paired_ratios(DRIFTING, "S1", "peer") == [3.0, 1.0, 2.0]


def test_the_paired_median_differs_from_the_ratio_of_medians() -> None:
    summaries = report.summarize(DRIFTING)
    ours, theirs = summaries[("S1", "wonderq")], summaries[("S1", "peer")]
    assert (ours.median, ours.low, ours.high) == (200.0, 100.0, 300.0)
    assert (theirs.median, theirs.low, theirs.high) == (100.0, 50.0, 200.0)
    assert "2.00x" in report.main_table(summaries, ["S1"], ["wonderq", "peer"])
    assert report.paired_table(DRIFTING, ["S1"], ["wonderq", "peer"]).splitlines() == [
        "| scenario | wonderq ÷ peer |", "|---|---|", "| S1 | 2.00x [1.00-3.00] (3 runs) |"]


def test_a_run_missing_on_either_side_is_left_out_of_the_pairs() -> None:
    results = [*DRIFTING, result("S1", "wonderq", 4, None), result("S1", "peer", 4, 80.0),
               result("S1", "wonderq", 5, 90.0), result("S1", "peer", 5, None),
               result("S1", "wonderq", 6, 70.0)]
    assert report.paired_ratios(results, "S1", "peer") == [3.0, 1.0, 2.0]
    assert report.paired_ratios(results, "S2", "peer") == []
    table = report.paired_table(results, ["S1", "S2"], ["wonderq", "peer"])
    assert table.splitlines()[2:] == ["| S1 | 2.00x [1.00-3.00] (3 runs) |", "| S2 | - |"]


@pytest.mark.parametrize("systems", [["peer"], ["wonderq"]])
def test_no_paired_table_without_both_sides(systems: list[str]) -> None:
    assert report.paired_table(DRIFTING, ["S1"], systems) == ""


def test_a_step_outside_the_measured_phases_that_hangs_ends_its_group(monkeypatch):
    # prepare, connect and count get READY_LIMIT_S, so a hung server cannot hang the run.
    import asyncio

    import runner

    monkeypatch.setattr(runner, "READY_LIMIT_S", 0.01)

    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError, match=r"prepare: no answer within 0\.01 s"):
        asyncio.run(runner.bounded(hangs(), "prepare"))
