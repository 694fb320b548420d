"""Unit tests of the deadline heap (wonderq_server/deadlines.py), numbers as the clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wonderq_server.deadlines import COMPACT_DEAD_FRACTION, COMPACT_MIN_SIZE, DeadlineHeap

# The rebuild rule is tested on heaps of a few hundred entries: with the minimum
# size the rule has below it made small here (the server's is COMPACT_MIN_SIZE).
SMALL_MIN_SIZE = 64


def small_heap() -> DeadlineHeap:
    return DeadlineHeap(compact_min_size=SMALL_MIN_SIZE)


class Item:
    """A timed thing that is deliberately not comparable, like a Message or a Waiter."""

    __slots__ = ("deadline_at", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.deadline_at: float | None = None

    def __repr__(self) -> str:
        return f"Item({self.name!r}, {self.deadline_at!r})"


def schedule(heap: DeadlineHeap, item: Item, at: float) -> Item:
    """schedule does what an owner does: set item.deadline_at, then push."""
    item.deadline_at = at
    heap.push(at, item)
    return item


def cancel(heap: DeadlineHeap, item: Item) -> None:
    """cancel does what an owner does: clear item.deadline_at, then forget."""
    item.deadline_at = None
    heap.forget()


def drain(heap: DeadlineHeap, now: float) -> list[Item]:
    """drain pops every due item, clearing deadline_at as an owner does."""
    out = []
    while (item := heap.pop_due(now)) is not None:
        item.deadline_at = None
        out.append(item)
    return out


def names(items: list[Item]) -> list[str]:
    return [item.name for item in items]


# ---------------------------------------------------------------- basics

def test_empty_heap_has_nothing_due() -> None:
    heap = small_heap()
    assert len(heap) == 0
    assert heap.next_at() is None
    assert heap.pop_due(1e18) is None


def test_constants_are_what_the_docstring_says() -> None:
    assert COMPACT_MIN_SIZE == 1024
    assert COMPACT_DEAD_FRACTION == 0.5


def test_pops_in_deadline_order_regardless_of_push_order() -> None:
    heap = small_heap()
    for name, at in [("e", 50.0), ("a", 10.0), ("d", 40.0), ("b", 20.0), ("c", 30.0)]:
        schedule(heap, Item(name), at)
    assert len(heap) == 5
    assert heap.next_at() == 10.0
    assert names(drain(heap, 100.0)) == ["a", "b", "c", "d", "e"]
    assert len(heap) == 0
    assert heap.next_at() is None


def test_pop_due_only_returns_items_due_at_or_before_now() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 10.0)
    b = schedule(heap, Item("b"), 20.0)
    assert heap.pop_due(9.999) is None
    assert len(heap) == 2
    assert heap.pop_due(10.0) is a  # the boundary is inclusive
    assert heap.pop_due(19.0) is None
    assert heap.next_at() == 20.0
    assert heap.pop_due(25.0) is b
    assert heap.pop_due(25.0) is None


def test_pop_due_leaves_deadline_at_to_the_caller() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 10.0)
    assert heap.pop_due(10.0) is a
    assert a.deadline_at == 10.0
    assert len(heap) == 0


def test_next_at_does_not_remove_a_live_entry() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 10.0)
    assert heap.next_at() == 10.0
    assert heap.next_at() == 10.0
    assert len(heap) == 1
    assert heap.pop_due(10.0) is a


def test_ties_pop_in_push_order() -> None:
    heap = small_heap()
    for i in range(20):
        schedule(heap, Item(f"t{i}"), 5.0)
    assert names(drain(heap, 5.0)) == [f"t{i}" for i in range(20)]


def test_ties_interleaved_with_other_deadlines_keep_push_order() -> None:
    heap = small_heap()
    plan = [("x1", 2.0), ("y1", 1.0), ("x2", 2.0), ("z1", 3.0), ("y2", 1.0), ("x3", 2.0),
            ("z2", 3.0), ("y3", 1.0)]
    for name, at in plan:
        schedule(heap, Item(name), at)
    assert names(drain(heap, 3.0)) == ["y1", "y2", "y3", "x1", "x2", "x3", "z1", "z2"]


def test_items_need_not_be_comparable() -> None:
    heap = small_heap()
    a, b = Item("a"), Item("b")
    with pytest.raises(TypeError):
        _ = a < b  # type: ignore[operator]
    schedule(heap, a, 1.0)
    schedule(heap, b, 1.0)
    assert drain(heap, 1.0) == [a, b]


def test_integer_deadlines_work_as_well_as_floats() -> None:
    heap = small_heap()
    schedule(heap, Item("b"), 2)
    schedule(heap, Item("a"), 1.5)
    assert heap.next_at() == 1.5
    assert names(drain(heap, 2)) == ["a", "b"]


# --------------------------------------------------------- lazy deletion

def test_cancelled_entry_is_skipped_by_pop_due_and_next_at() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 1.0)
    b = schedule(heap, Item("b"), 2.0)
    cancel(heap, a)
    assert len(heap) == 2  # nothing is removed from the middle
    assert heap.next_at() == 2.0
    assert len(heap) == 1  # next_at threw the stale top away
    assert drain(heap, 10.0) == [b]


def test_pop_due_skips_a_stale_top_and_stops_at_an_undue_live_entry() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 1.0)
    schedule(heap, Item("b"), 5.0)
    cancel(heap, a)
    assert heap.pop_due(3.0) is None
    assert len(heap) == 1
    assert heap.next_at() == 5.0


def test_next_at_skips_several_stale_entries() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(10)]
    for item in items[:7]:
        cancel(heap, item)
    assert heap.next_at() == 7.0
    assert len(heap) == 3


def test_next_at_is_none_when_every_entry_is_stale() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(5)]
    for item in items:
        cancel(heap, item)
    assert heap.next_at() is None
    assert len(heap) == 0
    assert heap.pop_due(100.0) is None


def test_moved_deadline_fires_only_at_its_new_time_and_once() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 1.0)
    b = schedule(heap, Item("b"), 3.0)
    # Move a later: the old entry goes stale.
    a.deadline_at = None
    heap.forget()
    schedule(heap, a, 5.0)
    assert heap.next_at() == 3.0
    assert drain(heap, 4.0) == [b]
    assert heap.next_at() == 5.0
    assert drain(heap, 5.0) == [a]
    assert drain(heap, 100.0) == []


def test_moved_deadline_earlier_fires_at_its_new_time_and_once() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 10.0)
    a.deadline_at = None
    heap.forget()
    schedule(heap, a, 2.0)
    assert heap.next_at() == 2.0
    assert drain(heap, 2.0) == [a]
    assert heap.next_at() is None  # the old entry at 10.0 is stale
    assert drain(heap, 100.0) == []


def test_entry_is_live_only_while_deadline_at_matches() -> None:
    heap = small_heap()
    a = Item("a")
    heap.push(4.0, a)  # the owner has not set deadline_at: the entry is not live
    assert heap.next_at() is None
    a.deadline_at = 4.0
    heap.push(4.0, a)
    assert heap.next_at() == 4.0


def test_moving_back_to_an_old_deadline_revives_the_old_entry_but_pops_once() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 5.0)
    b = schedule(heap, Item("b"), 5.0)
    cancel(heap, a)
    schedule(heap, a, 5.0)  # the first entry matches again, so a keeps its old place
    assert len(heap) == 3
    assert drain(heap, 5.0) == [a, b]  # the owner clears deadline_at, so a pops once
    assert len(heap) == 0


# ------------------------------------------------------------- compaction

def test_small_heap_is_never_rebuilt() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(SMALL_MIN_SIZE)]
    for item in items:
        cancel(heap, item)
    assert len(heap) == SMALL_MIN_SIZE  # all dead, but the heap is not big enough
    assert heap.next_at() is None
    assert len(heap) == 0


def test_forget_rebuilds_when_more_than_half_is_dead() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(100)]
    # Cancel every other one, from the end, so the dead are not all at the top.
    doomed = items[::-2]
    for item in doomed:
        cancel(heap, item)
    assert len(heap) == 100  # 50 dead of 100 is not more than half
    cancel(heap, items[0])
    assert len(heap) == 49  # 51 dead: rebuilt from the live entries only
    assert all(item.deadline_at == at for at, _, item in heap._entries)
    live = [item for item in items if item.deadline_at is not None]
    assert drain(heap, 1000.0) == live
    assert [item.name for item in live] == [str(i) for i in range(2, 100, 2)]


def test_rebuild_keeps_the_tie_order() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), 7.0) for i in range(200)]
    for item in items[1::2]:
        cancel(heap, item)
    cancel(heap, items[0])  # 101 dead of 200: rebuilt
    assert len(heap) == 99
    assert drain(heap, 7.0) == items[2::2]


def test_rebuild_keeps_the_new_entry_of_a_moved_item() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(100)]
    for item in items[:50]:
        cancel(heap, item)
    mover = items[99]
    mover.deadline_at = None
    heap.forget()  # 51 dead: rebuilt before the new entry is pushed
    assert len(heap) == 49
    schedule(heap, mover, 0.5)
    assert heap.next_at() == 0.5
    assert drain(heap, 1000.0) == [mover, *items[50:99]]


def test_dead_entries_thrown_away_by_next_at_are_no_longer_counted() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(200)]
    for item in items[:60]:
        cancel(heap, item)
    assert heap.next_at() == 60.0
    assert len(heap) == 140  # the 60 dead were at the top and are gone, so 0 are dead
    for item in items[60:130]:
        cancel(heap, item)
    assert len(heap) == 140  # 70 dead of 140: not more than half
    cancel(heap, items[130])
    assert len(heap) == 69  # 71 dead of 140: rebuilt


def test_dead_entries_thrown_away_by_pop_due_are_no_longer_counted() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(200)]
    for item in items[:60]:
        cancel(heap, item)
    assert drain(heap, 60.0) == [items[60]]
    assert len(heap) == 139
    for item in items[61:130]:
        cancel(heap, item)
    assert len(heap) == 139  # 69 dead of 139: not more than half
    cancel(heap, items[130])
    assert len(heap) == 69  # 70 dead of 139: rebuilt


def test_constant_rescheduling_keeps_the_heap_bounded() -> None:
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), float(i)) for i in range(10)]
    at = 100.0
    for _ in range(10_000):
        for item in items:
            at += 1.0
            item.deadline_at = None
            heap.forget()
            schedule(heap, item, at)
        assert len(heap) <= 2 * SMALL_MIN_SIZE + len(items)
    assert heap.next_at() == at - 9.0
    assert drain(heap, at) == items


def test_rebuild_keeps_the_pop_order_of_a_revived_entry() -> None:
    heap = small_heap()
    a = schedule(heap, Item("a"), 5.0)
    b = schedule(heap, Item("b"), 5.0)
    cancel(heap, a)
    schedule(heap, a, 5.0)  # a now has two live entries, before and after b
    others = [schedule(heap, Item(str(i)), 1.0) for i in range(100)]
    for item in others[:50]:
        cancel(heap, item)
    # 51 counted dead (a's first cancel counts, though its entry came back to life).
    assert len(heap) == 103
    cancel(heap, others[50])  # 52 counted dead of 103: rebuilt, one entry per live item
    assert len(heap) == 49 + 2
    assert drain(heap, 1.0) == others[51:]
    assert drain(heap, 5.0) == [a, b]
    assert len(heap) == 0


def test_rescheduling_at_the_same_instant_does_not_pile_up() -> None:
    """The rebuild runs inside forget, while the moved item's deadline_at is cleared."""
    heap = small_heap()
    items = [schedule(heap, Item(str(i)), 9.0) for i in range(3)]
    for _ in range(10_000):
        for item in items:
            cancel(heap, item)
            schedule(heap, item, 9.0)
        assert len(heap) <= 2 * SMALL_MIN_SIZE + len(items)
    assert drain(heap, 9.0) == items
    assert len(heap) == 0


# -------------------------------------------------------- property: model

operation = st.one_of(
    st.tuples(st.just("push"), st.integers(0, 30)),
    st.tuples(st.just("cancel"), st.integers(0, 200)),
    st.tuples(st.just("move"), st.integers(0, 200), st.integers(0, 30)),
    st.tuples(st.just("pop"), st.integers(0, 30)),
    st.tuples(st.just("peek")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(operation, max_size=250))
def test_heap_agrees_with_a_sorted_list(ops: list[tuple]) -> None:
    """Every live deadline pops once, in deadline order, whatever was cancelled or moved.

    Ties pop in push order, except after an item was moved back to a deadline
    it had before: its older entry is live again (test_moving_back_to_an_old_
    deadline...), so the model checks the exact order only in runs without that.
    """
    heap = small_heap()
    items: list[Item] = []
    model: dict[int, tuple[float, int]] = {}  # index of item -> (at, push number)
    history: dict[int, set[float]] = {}  # index of item -> every deadline it was given
    pushes = 0
    exact_ties = True

    def check_drain(now: float) -> None:
        got = [int(item.name) for item in drain(heap, now)]
        want = [i for i, (at, _) in sorted(model.items(), key=lambda kv: kv[1]) if at <= now]
        if exact_ties:
            assert got == want
        else:
            assert sorted(got) == sorted(want)
            assert [model[i][0] for i in got] == [model[i][0] for i in want]
        for index in want:
            del model[index]

    for op in ops:
        if op[0] == "push":
            pushes += 1
            index = len(items)
            items.append(schedule(heap, Item(str(index)), float(op[1])))
            model[index] = (float(op[1]), pushes)
            history[index] = {float(op[1])}
        elif op[0] in ("cancel", "move") and items:
            index = op[1] % len(items)
            if index not in model:
                continue
            cancel(heap, items[index])
            del model[index]
            if op[0] == "move":
                pushes += 1
                at = float(op[2])
                exact_ties = exact_ties and at not in history[index]
                history[index].add(at)
                schedule(heap, items[index], at)
                model[index] = (at, pushes)
        elif op[0] == "pop":
            check_drain(float(op[1]))
        elif op[0] == "peek":
            want_at = min((at for at, _ in model.values()), default=None)
            assert heap.next_at() == want_at
        assert len(heap) >= len(model)
        assert len(heap) <= 2 * max(SMALL_MIN_SIZE, len(model)) + 2
    check_drain(1000.0)
    assert heap.next_at() is None
    assert len(heap) == 0


def test_push_first_goes_ahead_of_those_due_at_the_same_time_only() -> None:
    heap = DeadlineHeap()
    early = schedule(heap, Item("early"), 5.0)
    later = schedule(heap, Item("later"), 20.0)
    same = schedule(heap, Item("same"), 10.0)
    again = Item("again")  # handled in part, due again at 10 (a cut lease batch)
    again.deadline_at = 10.0
    heap.push_first(10.0, again)
    assert [heap.pop_due(30.0) for _ in range(4)] == [early, again, same, later]
