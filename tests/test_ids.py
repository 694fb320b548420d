"""Unit tests of message ids and lease tokens (wonderq_server/ids.py), numbers as the clock."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from wonderq_server.ids import MILLISECOND_SHIFT, IdSequence, id_time

T0 = 1_700_000_000.25  # exact in binary, and T0 * 1000 is a whole number
T0_ID = 1_700_000_000_250 << 20


def test_shift_is_twenty_bits() -> None:
    assert MILLISECOND_SHIFT == 20


def test_first_id_is_the_millisecond_shifted_left() -> None:
    seq = IdSequence()
    assert seq.next(T0) == T0_ID
    assert seq.last == T0_ID


def test_fraction_of_a_millisecond_is_cut_off() -> None:
    assert IdSequence().next(T0 + 0.0004) == T0_ID
    assert IdSequence().next(2.0009) == 2_000 << 20


def test_ids_grow_with_the_clock() -> None:
    seq = IdSequence()
    assert seq.next(T0) == T0_ID
    assert seq.next(T0 + 1.0) == (1_700_000_001_250 << 20)
    assert seq.next(T0 + 2.5) == (1_700_000_002_750 << 20)


def test_clock_standing_still_bumps_by_one() -> None:
    seq = IdSequence()
    ids = [seq.next(T0) for _ in range(5)]
    assert ids == [T0_ID, T0_ID + 1, T0_ID + 2, T0_ID + 3, T0_ID + 4]


def test_clock_going_back_bumps_by_one() -> None:
    seq = IdSequence()
    assert seq.next(T0) == T0_ID
    assert seq.next(T0 - 3600.0) == T0_ID + 1
    assert seq.next(0.0) == T0_ID + 2
    # Once the clock has caught up and passed the last id, ids follow it again.
    assert seq.next(T0 + 0.001) == T0_ID + (1 << 20)


def test_more_than_a_millisecond_worth_of_ids_spill_into_the_next() -> None:
    seq = IdSequence(last=T0_ID + (1 << 20) - 1)
    assert seq.next(T0) == T0_ID + (1 << 20)
    # The next millisecond's own candidate is not larger than the last id any more.
    assert seq.next(T0 + 0.001) == T0_ID + (1 << 20) + 1
    assert seq.next(T0 + 0.002) == T0_ID + (2 << 20)


def test_starting_from_a_restored_last_id() -> None:
    seq = IdSequence(last=T0_ID + 7)
    assert seq.next(T0) == T0_ID + 8
    assert seq.next(T0 - 10.0) == T0_ID + 9


def test_observe_a_larger_id_moves_the_sequence_past_it() -> None:
    seq = IdSequence()
    seq.observe(T0_ID + 41)
    assert seq.last == T0_ID + 41
    assert seq.next(T0) == T0_ID + 42
    assert seq.next(T0 - 1.0) == T0_ID + 43


def test_observe_a_smaller_or_equal_id_changes_nothing() -> None:
    seq = IdSequence()
    assert seq.next(T0) == T0_ID
    seq.observe(T0_ID - 1)
    seq.observe(T0_ID)
    seq.observe(0)
    assert seq.last == T0_ID
    assert seq.next(T0) == T0_ID + 1


def test_observe_from_the_future_beats_the_clock() -> None:
    seq = IdSequence()
    future = (1_800_000_000_000 << 20) + 3
    seq.observe(future)
    assert seq.next(T0) == future + 1


def test_id_time_reads_back_the_millisecond() -> None:
    seq = IdSequence()
    assert id_time(seq.next(T0)) == T0
    assert id_time(seq.next(T0)) == T0  # a bumped id still reads as its millisecond
    assert id_time(T0_ID + (1 << 20)) == T0 + 0.001
    assert id_time(0) == 0.0


def test_ids_fit_in_a_signed_64_bit_integer_until_2248() -> None:
    end_2247 = datetime(2248, 1, 1, tzinfo=UTC).timestamp()
    assert IdSequence().next(end_2247) < 2**63
    end_2248 = datetime(2249, 1, 1, tzinfo=UTC).timestamp()
    assert IdSequence().next(end_2248) >= 2**63


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.floats(min_value=0.0, max_value=4e9, allow_nan=False),
    st.tuples(st.just("observe"), st.integers(0, 2**62)),
), max_size=100))
def test_ids_strictly_increase_whatever_the_clock_does(steps: list) -> None:
    seq = IdSequence()
    floor = 0  # every later id must be larger than this
    for step in steps:
        if isinstance(step, tuple):
            seq.observe(step[1])
            floor = max(floor, step[1])
            continue
        new = seq.next(step)
        assert new > floor
        candidate = int(step * 1000) << MILLISECOND_SHIFT
        assert new == (candidate if candidate > floor else floor + 1)
        floor = new


def test_next_range_is_what_as_many_calls_of_next_give() -> None:
    ranged, one_by_one = IdSequence(), IdSequence()
    for now in (T0, T0, T0 + 0.5):
        assert list(ranged.next_range(now, 3)) == [one_by_one.next(now) for _ in range(3)]
        assert ranged.last == one_by_one.last
