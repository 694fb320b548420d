"""Differential check: Broker's takes (a slice of the run; lease batches) against one
message at a time with one heap entry each.

Two brokers get the same random operations; `Reference` takes every message with
`_take_each`. After each step, return values, broker_state, check_invariants, stats,
ids.last, ready heaps, live deadline entries and the journal records each broker's real
journal was handed must agree, and every record must fit its kind (journal_format.misfit).
(A reviewer's harness for da13d92.)
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from broker_helpers import BROKER_COMPILED, check_invariants
from durability import broker_state

from wonderq_server import message_table
from wonderq_server.broker import Broker
from wonderq_server.errors import CommandError
from wonderq_server.journal import Journal
from wonderq_server.journal_format import FILE_HEADER, ReadResult, misfit, read_records
from wonderq_server.lease_batch import LeaseBatch
from wonderq_server.message import Message
from wonderq_server.queues import Queue, Waiter

T0 = 1_700_000_000.0

# Reference is a subclass of Broker, which a compiled build compiles (compiled.py) and
# Python cannot subclass then; both brokers run the same source, which the pure run
# of the suite checks.
pytestmark = pytest.mark.skipif(BROKER_COMPILED, reason="subclasses Broker: pure build only")


class Reference(Broker):
    """Takes one message at a time, whatever the queue holds, and gives each lease its
    own heap entry (no LeaseBatch)."""

    def _take(self, q: Queue, max_messages: int, visibility_s: float,
              now: float) -> list[Message]:
        return self._take_each(q, max_messages, visibility_s, now)

    def _push_leases(self, taken: list[Message], deadline_at: float) -> None:
        for msg in taken:
            self.deadlines.push(deadline_at, msg)


def written(journal: Journal) -> list[Any]:
    """written is the records `journal` was handed since the last call, decoded; each must
    fit its kind. They are then written, as the server's flush would."""
    data = FILE_HEADER + b"".join(journal._pending)
    records = list(read_records(data, ReadResult(), False))
    for record in records:
        assert misfit(record) is None, (misfit(record), record)
    journal.write_pending()
    return records


def live_deadlines(b: Broker) -> list[tuple[float, str, Any]]:
    """live_deadlines: what is due when, from the live heap entries, a lease batch's
    pending members in its place (lease_batch.py), so one batch entry compares equal to
    the entries of the same messages pushed one by one.

    A set, sorted: an item moved back to a deadline it had may have two live entries
    (deadlines.py), where a batch member that moves leaves its batch and has one; and
    items due at the same instant may pop in another order (their order among
    themselves means nothing)."""
    live: set[tuple[float, str, Any]] = set()
    for at, _, item in b.deadlines._entries:
        if item.deadline_at != at:
            continue
        if isinstance(item, LeaseBatch):
            live.update((at, "Message", m.id) for m in item.members.values())
        else:
            live.add((at, type(item).__name__, getattr(item, "id", None)))
    return sorted(live)


def snapshot(b: Broker, now: float, call: str = "") -> Any:
    check_invariants(b)
    live = live_deadlines(b)
    records = written(b.journal)
    if call == "advance":
        # Deadlines due at the same instant may be handled in another order: a member
        # that left a lease batch and was leased again for the same instant is ended
        # by its new entry, where one entry each ends it at its first one
        # (deadlines.py). The records are the same, and each message's own must stay
        # in their order: a stable sort by the message they are about.
        records = sorted(records, key=lambda record: repr(record[1:3]))
    return (broker_state(b), b.stats(now), b.ids.last, live, records,
            {n: (sorted(q.ready), q.redelivered_total) for n, q in b.queues.items()})


def summary(result: Any) -> Any:
    if isinstance(result, list):
        return [summary(r) for r in result]
    if isinstance(result, Message):
        return (result.id, result.lease, result.deliveries, result.queue.name, result.body)
    if isinstance(result, CommandError):
        return ("error", result.code)
    if isinstance(result, Waiter):
        return "waiter"
    return result


def run(seed: int, steps: int, directory: Path) -> None:
    rnd = random.Random(seed)
    saved = message_table.RUN_COMPACT_MIN_DEAD
    message_table.RUN_COMPACT_MIN_DEAD = rnd.choice([1024, 4, 16])
    brokers = [Broker(visibility_timeout_s=30.0), Reference(visibility_timeout_s=30.0)]
    journals = [Journal(directory / f"{seed}-{k}", fsync="never") for k in range(2)]
    try:
        for b, journal in zip(brokers, journals, strict=True):
            journal.open(b, T0)
        _run(rnd, seed, steps, brokers)
    finally:
        message_table.RUN_COMPACT_MIN_DEAD = saved
        for journal in journals:
            journal.close()


def _run(rnd: random.Random, seed: int, steps: int, brokers: list[Broker]) -> None:
    inboxes: list[list[Any]] = [[], []]
    waiters: list[list[Waiter]] = [[], []]
    leases: list[tuple[str, int, int]] = []
    now = T0
    queues = ["q", "q", "q", "r", "d"]
    for step in range(steps):
        now += rnd.choice([0, 0, 0.0005, 0.001, 0.5, 5, 31, 100])
        op = rnd.randrange(19)
        name = rnd.choice(queues)
        n = rnd.choice([1, 1, 2, 3, 10, 20, 50]) if rnd.random() < 0.97 else 1100
        args: tuple[Any, ...] = ()
        if op == 0:
            kw = rnd.choice([{}, {}, {"priority": rnd.randint(-3, 3)},
                             {"delay": rnd.choice([1, 40])}, {"expiry": rnd.choice([2, 60])},
                             {"headers": {"h": "v"}}])
            call, args = "put", (name, b"p%d" % step, now)
            args = (args, kw)
        elif op in (1, 2):
            call, args = "put_many", ((name, [b"m%d.%d" % (step, i) for i in range(n)], now), {})
        elif op == 3:
            items = [rnd.choice([b"x%d" % i, {"body": b"y", "priority": 1},
                                 {"body": b"z", "delay": 3}])
                     for i in range(rnd.randint(1, 6))]
            call, args = "put_many", ((name, items, now), {})
        elif op in (4, 5, 6):
            call, args = "receive", ((name, rnd.choice([1, 2, 5, 10, 100, 1000]),
                                      rnd.choice([None, 1.0, 30.0]), now), {})
        elif op == 7:
            call = "wait"
        elif op in (8, 9) and leases:
            call = rnd.choice(["ack", "nack", "touch"])
        elif op == 10:
            call, args = "advance", ((now,), {})
        elif op == 11:
            changes = rnd.choice([{"max_deliveries": 2, "dead_letter_queue": "d"},
                                  {"max_deliveries": 0, "dead_letter_queue": ""},
                                  {"expiry": 5.0}, {"expiry": 0.0}, {"delay": 2.0}, {"delay": 0.0},
                                  {"max_length": 50}, {"max_length": 0},
                                  {"visibility_timeout": 2.0}])
            call, args = "create_queue", (("q", {}, now), {})
            if "q" in brokers[0].queues and brokers[0].queues["q"].explicit:
                call, args = "configure_queue", (("q", changes, now), {})
        elif op == 12:
            call, args = "redrive", (("d", rnd.choice([None, 1, 3]), now), {})
        elif op == 13 and rnd.random() < 0.2:
            call, args = rnd.choice(["purge", "delete_queue"]), ((name, now), {})
        elif op == 14 and waiters[0]:
            call = "cancel_wait"
        elif op == 15:
            call, args = "peek", ((name, rnd.choice([1, 5, 50])), {})
        elif op == 16:
            picked = [held[1:] for held in rnd.sample(leases, min(len(leases), 5))
                      if held[0] == name]
            call, args = "ack_many", ((name, picked or [(1, 1)], now), {})
        elif op in (17, 18):  # what replay does to a plain message in the run: a hole
            run = [i for i, _ in brokers[0].queues[name].messages.plain_from_oldest()] \
                if name in brokers[0].queues else []
            if not run:
                continue
            victim = rnd.choice(run)
            call, args = ("restore_ack", ((name, victim), {})) if op == 17 else (
                "restore_state", ((name, victim, 2, now + 3, 0, None, now), {}))
        else:
            continue
        results = []
        if call == "wait":
            until = now + rnd.choice([0.5, 10, 100])
            nm, vis = rnd.randint(1, 20), rnd.choice([None, 3.0])
            for k, b in enumerate(brokers):
                w = b.wait(name, nm, vis, until,
                           lambda ms, k=k: inboxes[k].append(summary(ms)), now)
                waiters[k].append(w)
                results.append(w.done)
        elif call == "cancel_wait":
            index = rnd.randrange(len(waiters[0]))
            for k, b in enumerate(brokers):
                results.append(b.cancel_wait(waiters[k][index]))
        elif call in ("ack", "nack", "touch"):
            qn, mid, lease = rnd.choice(leases)
            delay, vis = rnd.choice([0.0, 0.0, 4.0]), rnd.choice([None, 0.5])
            for b in brokers:
                try:
                    if call == "ack":
                        results.append(b.ack(qn, mid, lease, now))
                    elif call == "nack":
                        results.append(b.nack(qn, mid, lease, delay, now))
                    else:
                        results.append(b.touch(qn, mid, lease, vis, now))
                except CommandError as exc:
                    results.append(("error", exc.code))
        else:
            state = rnd.getstate()
            for b in brokers:
                rnd.setstate(state)
                try:
                    results.append(summary(getattr(b, call)(*args[0], **args[1])))
                except CommandError as exc:
                    results.append(("error", exc.code))
        assert results[0] == results[1], (seed, step, call, results)
        for r in [results[0], *inboxes[0][-3:]]:
            if isinstance(r, list):
                leases.extend((m[3], m[0], m[1]) for m in r
                              if isinstance(m, tuple) and len(m) == 5 and m[1])
        if len(leases) > 400:
            del leases[:200]
        assert inboxes[0] == inboxes[1], (seed, step, call)
        a, ref = snapshot(brokers[0], now, call), snapshot(brokers[1], now, call)
        if a != ref:
            parts = ("state", "stats", "ids", "deadlines", "journal records", "heaps")
            for part, x, y in zip(parts, a, ref, strict=True):
                if x != y:
                    print("differs:", part)
            raise AssertionError((seed, step, call))


def test_a_take_of_none_uses_no_id() -> None:
    broker = Broker()
    broker.put("q", b"x", T0)
    last = broker.ids.last
    assert broker.receive("q", 0, None, T0 + 10) == []
    assert broker.ids.last == last  # else a put after the clock steps back gets a later id


def test_take_from_run_is_the_one_at_a_time_loop(tmp_path: Path) -> None:
    for seed in range(4):
        run(seed, 250, tmp_path)


if __name__ == "__main__":  # PYTHONPATH=.:tests python tests/test_take_differential.py 0 300 300
    first, count, steps = (int(v) for v in sys.argv[1:4])
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first, first + count):
            run(seed, steps, Path(tmp))
    print("ok", first, count, steps)
