"""The soak's memory-growth check (bench/soak_memory.py), with samples given as numbers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak_memory import MIB, WARMUP_S, Sample, by_incarnation

TOLERANCE = 4 * MIB
READY_AT = 100.0


def samples(rss_mib: list[float]) -> list[Sample]:
    """samples: one every 5 s of incarnation 1, the first within the warm-up."""
    return [Sample(READY_AT + WARMUP_S / 2 + 5.0 * i, 1, int(mib * MIB), 0, 0, 0, 0)
            for i, mib in enumerate(rss_mib)]


def check(rss_mib: list[float]):
    return by_incarnation(samples(rss_mib), {1: READY_AT}, TOLERANCE)[0]


def test_a_flat_incarnation_is_steady():
    row = check([30, 31, 31, 30.5, 31, 31])
    assert row.checked and not row.flagged and row.growth == 0


def test_growth_above_the_tolerance_is_flagged():
    row = check([20, 31, 33, 35, 37, 39])
    assert row.checked and row.flagged
    # The first sample is in the warm-up; of the other five, the first half is [31, 33].
    assert (row.first_half_max, row.second_half_max) == (33 * MIB, 39 * MIB)


def test_growth_within_the_tolerance_is_steady():
    assert not check([30, 30, 31, 32, 33, 34]).flagged  # 34 - 31 = 3 MiB < 4 MiB


def test_an_incarnation_too_short_is_not_checked():
    row = check([30, 60, 90, 120])  # three samples after the warm-up
    assert not row.checked and not row.flagged
    assert (row.samples, row.rss_max) == (4, 120 * MIB)
