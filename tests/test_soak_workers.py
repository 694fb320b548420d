"""The soak's gates (bench/soak_workers.py), without a server: once the load has ended,
nothing closes them again, so no worker can be left waiting at one.

A soak run in CI failed with "4 workers did not stop within 30 s": after `end`, a
worker's last ack moved the backlog below the floor and `update_room` closed the
consumers' gate, at which consumers then waited for ever.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak_ledger import Ledger
from soak_workers import Load, next_turn

SIZE = 40


def make_load(backlog: int) -> Load:
    ledger = Ledger(SIZE)
    for seq in range(backlog):
        ledger.put_answered(ledger.new_put(), 1000 + seq)
    return Load(server=None, ledger=ledger, visibility_s=1.0,  # type: ignore[arg-type]
                die_chance=0.0, min_backlog=10, max_backlog=20, body_size=SIZE)


def test_the_gates_follow_the_backlog_while_the_load_runs() -> None:
    load = make_load(5)
    load.update_room()
    assert load.room.is_set() and not load.work.is_set()  # below the floor
    load = make_load(25)
    load.update_room()
    assert not load.room.is_set() and load.work.is_set()  # above the ceiling


def test_after_end_the_gates_stay_open_whatever_the_backlog() -> None:
    for backlog in (5, 25):
        load = make_load(backlog)
        load.end()
        load.update_room()  # a worker's last ack or put, answered after the end
        assert load.room.is_set() and load.work.is_set()


def test_a_worker_that_comes_to_a_gate_after_end_stops() -> None:
    async def scenario() -> None:
        load = make_load(5)  # below the floor: the consumers' gate would be closed
        load.end()
        load.update_room()
        turn = await asyncio.wait_for(next_turn(load, load.work, None, None), 1.0)  # type: ignore[arg-type]
        assert turn is None

    asyncio.run(scenario())
