"""MessageTable (message_table.py): a dict of id -> value, with plain bodies put in order
kept in a run. Checked against a plain dict under random operations, plus the rules the
broker leans on: the run's ready order, where a plain message goes, and bounded size."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wonderq_server.message_table import RUN_COMPACT_MIN_DEAD, MessageTable


class Obj:
    """Stands for a Message: any value that is not bytes."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Obj({self.n})"


def check(table: MessageTable, model: dict[int, Any], run: list[int]) -> None:
    assert len(table) == len(model)
    assert bool(table) == bool(model)
    assert list(table.items()) == sorted(model.items())
    assert list(table) == sorted(model)
    assert list(table.values()) == [model[k] for k in sorted(model)]
    assert table.run_count == len(run)
    assert [i for i, _ in table.plain_from_oldest()] == run
    assert table.first_plain_id() == (run[0] if run else None)
    assert table.oldest_id() == (min(model) if model else None)
    for key in list(model)[:20]:
        assert table.get(key) is model[key] and table[key] is model[key] and key in table


operations = st.lists(st.tuples(
    st.sampled_from(["append", "append_old", "set", "move_in", "extend_old", "delete", "take",
                     "get_missing", "rebuild"]),
    st.integers(min_value=0, max_value=10_000)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_table_behaves_like_a_dict(ops: list[tuple[str, int]]) -> None:
    table, model = MessageTable(), {}
    run: list[int] = []  # ids the table keeps in its run, in order
    next_id = 1_000_000
    for op, n in ops:
        if op == "append":  # a put: a new id, above every other
            next_id += 1 + n % 3
            body = n.to_bytes(2, "big")
            assert table.append_plain(next_id, body) is True
            model[next_id] = body
            run.append(next_id)
        elif op == "append_old":  # a replayed plain put below the run's last id
            key = n
            if key in model:
                continue
            body = b"old"
            in_run = table.append_plain(key, body)
            if in_run:  # only above every id in the run (dead ones may still count)
                assert not run or key > run[-1]
            model[key] = body
            if in_run:
                run.append(key)
        elif op == "set" and model:  # materialize, or a Message moved in
            key = sorted(model)[n % len(model)]
            model[key] = table_value = Obj(n)
            table[key] = table_value
            if key in run:
                run.remove(key)
        elif op == "move_in":  # a Message moved in from another queue: any id, old or not
            if n in model:
                continue
            model[n] = table[n] = Obj(n)
        elif op == "extend_old":  # a replayed run of PUTs, in one step if they fit the run
            ids = [n, n + 1]
            if table.extend_run_if_in_order(ids, [b"r", b"r"]):
                assert not run or n > run[-1]
                model.update(dict.fromkeys(ids, b"r"))
                run += ids
        elif op == "delete" and model:
            key = sorted(model)[n % len(model)]
            del table[key], model[key]
            if key in run:
                run.remove(key)
        elif op == "take" and run:
            assert table.take_first_plain() == (run[0], model[run[0]])
            del model[run.pop(0)]
        elif op == "get_missing":
            assert table.get(-n - 1) is None and -n - 1 not in table  # ids are >= 0
        elif op == "rebuild":  # the end of a replay: every plain message into the run
            moved = table.rebuild_run()
            plain = sorted(k for k, v in model.items() if type(v) is bytes)
            assert moved == (plain != run)
            run = plain
            assert not any(type(v) is bytes for v in table.others.values())
        check(table, model, run)


def test_a_put_below_the_runs_last_id_goes_to_others() -> None:
    table = MessageTable()
    assert table.append_plain(10, b"a") and table.append_plain(20, b"b")
    assert table.append_plain(15, b"c") is False  # the caller pushes it on the ready heap
    assert table.others == {15: b"c"} and table.run_count == 2
    assert list(table) == [10, 15, 20]
    assert table.append_to_run(15, b"d") is False and table[15] == b"c"  # nothing stored


def test_materializing_takes_the_message_out_of_the_run() -> None:
    table = MessageTable()
    for i in range(1, 4):
        table.append_plain(i, b"x")
    marker = Obj(2)
    table[2] = marker
    assert [i for i, _ in table.plain_from_oldest()] == [1, 3]
    assert table.others == {2: marker} and table[2] is marker and len(table) == 3


def test_a_drained_run_is_compacted_so_its_size_stays_bounded() -> None:
    table = MessageTable()
    n = 10 * RUN_COMPACT_MIN_DEAD
    for i in range(n):
        table.append_plain(i + 1, b"x")
    for _ in range(n - 10):
        table.take_first_plain()
        # holes never outnumber live entries by more than the compaction threshold
        assert len(table._run_ids) <= 2 * table.run_count + RUN_COMPACT_MIN_DEAD
    assert len(table._run_ids) < RUN_COMPACT_MIN_DEAD + 10
    assert [i for i, _ in table.plain_from_oldest()] == list(range(n - 9, n + 1))


def test_holes_in_the_middle_are_compacted_too() -> None:
    table = MessageTable()
    n = 4 * RUN_COMPACT_MIN_DEAD
    for i in range(n):
        table.append_plain(i + 1, b"x")
    for i in range(0, n, 2):  # every other one, e.g. acked after a replayed STATE
        del table[i + 1]
    assert table.run_count == n // 2
    assert len(table._run_ids) <= 2 * table.run_count + RUN_COMPACT_MIN_DEAD
    assert list(table) == list(range(2, n + 1, 2))


def test_rebuilding_the_run_merges_the_plain_messages_of_others_in_id_order() -> None:
    table = MessageTable()
    for i in (10, 20, 30, 40):
        table.append_plain(i, b"%d" % i)
    del table[30]  # a hole in the middle
    marker = Obj(25)
    table[25] = marker
    for i in (5, 35, 15, 50):  # replayed below the run's last id: into others
        assert table.append_plain(i, b"%d" % i) is (i == 50)
    assert table.rebuild_run() is True
    assert list(table.plain_from_oldest()) == [
        (i, b"%d" % i) for i in (5, 10, 15, 20, 35, 40, 50)]
    assert table.others == {25: marker} and len(table) == 8
    assert table.rebuild_run() is False  # nothing left to move


def test_ids_in_order_is_a_snapshot_taken_at_once() -> None:
    """Compaction walks it a slice at a time while the table goes on changing: it must
    give the ids of the moment it was taken, in id order (a reader skips those gone)."""
    table = MessageTable()
    for i in range(1, 6):
        table.append_plain(i, b"x")
    table[3] = Obj(3)  # into `others`: merged back into its place by id
    table.take_first_plain()  # 1 is gone before the snapshot
    snapshot = table.ids_in_order()
    table.append_plain(6, b"x")
    del table[2]
    table[4] = Obj(4)
    assert list(snapshot) == [2, 3, 4, 5]
    assert list(table) == [3, 4, 5, 6]


def test_extend_run_appends_fresh_ids_and_refuses_old_ones() -> None:
    table = MessageTable()
    table.extend_run(range(10, 13), [b"a", b"b", b"c"])
    assert list(table.items()) == [(10, b"a"), (11, b"b"), (12, b"c")]
    assert table.run_count == 3
    with pytest.raises(ValueError):
        table.extend_run(range(12, 14), [b"d", b"e"])  # 12 is not above the run's last
    assert len(table) == 3


def test_extend_run_if_in_order_takes_only_rising_fresh_ids() -> None:
    table = MessageTable()
    assert table.extend_run_if_in_order([10, 11, 13], [b"a", b"b", b"c"])
    assert list(table.items()) == [(10, b"a"), (11, b"b"), (13, b"c")]
    table[20] = Obj(20)  # into `others`
    refused = {
        "not rising": ([15, 14], [b"x", b"y"]),
        "not above the run's last": ([13, 14], [b"x", b"y"]),
        "an id of others": ([19, 20], [b"x", b"y"]),
        "one body short": ([30, 31], [b"x"]),
        "nothing": ([], []),
    }
    for ids, bodies in refused.values():
        assert not table.extend_run_if_in_order(ids, bodies)
    assert list(table) == [10, 11, 13, 20] and table.run_count == 3  # nothing stored
    assert table.extend_run_if_in_order([21, 22], [b"d", b"e"])  # above others' too: fine
    assert list(table) == [10, 11, 13, 20, 21, 22] and table.run_count == 5


def test_take_first_plain_many_takes_the_oldest_with_or_without_holes() -> None:
    table = MessageTable()
    table.extend_run(range(1, 11), [b"%d" % i for i in range(1, 11)])
    assert table.take_first_plain_many(3) == ([1, 2, 3], [b"1", b"2", b"3"])
    del table[5]  # a hole ahead
    table[6] = Obj(6)  # materialized: out of the run, another hole
    assert table.take_first_plain_many(3) == ([4, 7, 8], [b"4", b"7", b"8"])
    assert table.take_first_plain_many(10) == ([9, 10], [b"9", b"10"])  # all there is
    assert table.take_first_plain_many(5) == ([], [])
    assert table.run_count == 0 and list(table) == [6]


def test_take_first_plain_many_compacts_a_drained_run() -> None:
    table = MessageTable()
    n = RUN_COMPACT_MIN_DEAD * 3
    table.extend_run(range(n), [b"x"] * n)
    taken = []
    while table.run_count:
        taken += table.take_first_plain_many(100)[0]
    assert taken == list(range(n))
    assert len(table._run_ids) < RUN_COMPACT_MIN_DEAD + 100  # cut as it drained
