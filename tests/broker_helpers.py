"""Fixtures and helpers shared by the broker unit tests, one file per concept:
test_broker.py (put, receive, leases, nack, touch, deadlines), test_broker_waiters.py,
test_broker_stats.py, test_broker_refusals.py, and for issue 4 test_broker_options.py,
test_broker_dead_letters.py and test_broker_admin.py. All of them drive one `Broker` with
numbers as the clock, starting at `T0`. This module holds the `b` fixture (a broker
whose default lease is `VISIBILITY` and whose body limit is `MAX_BYTES`; conftest.py
loads it through `pytest_plugins`), `counts` and `zero_counts` to compare a queue's
stats, `check_invariants` to recount every queue by walking it, `stored` and `bodies`
to read stored messages whether plain or not, `error_code` to catch a CommandError's
code, `Inbox` (a waiter's deliver callback that records its calls), and `ids_of` and
`first_id` for message ids, and BROKER_COMPILED for what differs in the compiled build.
"""

from __future__ import annotations

from typing import Any

import pytest

from wonderq_server.broker import Broker
from wonderq_server.compiled import running_compiled
from wonderq_server.errors import CommandError
from wonderq_server.lease_batch import LeaseBatch
from wonderq_server.message import DELAYED, LEASED, READY, Message, view

T0 = 1_700_000_000.0
VISIBILITY = 30.0
MAX_BYTES = 1024

# The compiled build compiles the broker (compiled.py): its calls then check their
# arguments' types, and its classes cannot be subclassed or patched from Python.
BROKER_COMPILED = "wonderq_server.broker" in running_compiled()


@pytest.fixture
def b() -> Broker:
    return Broker(visibility_timeout_s=VISIBILITY, max_message_bytes=MAX_BYTES)


COUNT_NAMES = ("ready", "in_flight", "delayed", "waiting", "put_total", "acked_total",
               "redelivered_total", "dead_lettered_total", "expired_total")


def counts(broker: Broker, name: str = "q") -> dict[str, int]:
    """counts is a queue's counters from stats (not its ages and rates, which need a clock)."""
    queue_stats = broker.stats(T0)["queues"][name]
    return {key: queue_stats[key] for key in COUNT_NAMES}


def zero_counts(**changes: int) -> dict[str, int]:
    base = dict.fromkeys(COUNT_NAMES, 0)
    base.update(changes)
    return base


def check_invariants(broker: Broker) -> None:
    """check_invariants recounts every queue by walking it, and checks the waiter rule.
    A plain message (a body in the table, message.py) counts as READY, keyed by its id.
    The queues only waited on (broker.queue's count for --max-queues) are in the table,
    with no settings, never a message, and someone waiting."""
    for name in broker._waited_only:
        q = broker.queues[name]
        assert not q.explicit and not q.ever_held and not q.messages, name
    for q in broker.queues.values():
        plain = {i for i, m in q.messages.items() if type(m) is bytes}
        objects = [m for m in q.messages.values() if type(m) is not bytes]
        states = [m.state for m in objects]
        assert q.ready_count == states.count(READY) + len(plain)
        assert q.leased_count == states.count(LEASED)
        assert q.delayed_count == states.count(DELAYED)
        assert len(q.messages) == q.ready_count + q.leased_count + q.delayed_count
        live_waiters = [w for w in q.waiters if not w.done]
        assert q.live_waiters() == len(live_waiters)
        assert not (q.ready_count and live_waiters), "ready messages and a live waiter"
        for i, m in q.messages.items():
            if type(m) is bytes:
                continue
            assert isinstance(m, Message) and m.id == i
            assert (m.deadline_at is not None) == (m.state in (LEASED, DELAYED))
            assert m.queue is q
        # the bound oldest_id keeps (message_table.py) is checked by using it each time
        assert q.messages.oldest_id() == min(q.messages, default=None)
        in_run = set(q.messages.plain_from_oldest())
        assert all(type(body) is bytes for _, body in in_run)
        assert [i for i, _ in q.messages.plain_from_oldest()] == sorted(i for i, _ in in_run)
        ready_keys = {m.ready_key for m in objects if m.state == READY} | plain
        # every ready message can be found in the heap, or in the table's run
        assert ready_keys - {i for i, _ in in_run} <= set(q.ready)
    # every leased or delayed message is due by a live heap entry: its own, or its lease
    # batch's while it is pending there (lease_batch.py)
    # (an own entry of a pending member is stale even at its batch's time: deadlines.py)
    entries = broker.deadlines._entries
    live_entries = [(seq, item) for at, seq, item in entries if item.deadline_at == at
                    and getattr(item, "lease_batch", None) is None]
    live = {id(item) for _, item in live_entries}
    # the heap counts as dead every entry it will skip: the stale ones, and the later
    # live entries of an item that has several (only the first pops as live)
    assert broker.deadlines._dead == len(entries) - len(live), (broker.deadlines._dead,
                                                                len(entries), len(live))
    for q in broker.queues.values():
        for m in q.messages.values():
            if type(m) is bytes or m.deadline_at is None:
                continue
            batch = m.lease_batch
            if batch is None:
                assert id(m) in live, m
            else:
                assert id(batch) in live and batch.members.get(m.id) is m, m
                assert m.state == LEASED and batch.deadline_at == m.deadline_at, m
    for at, _, item in broker.deadlines._entries:  # a batch holds its pending members only
        if isinstance(item, LeaseBatch):
            assert all(m.lease_batch is item for m in item.members.values())
            assert bool(item.members) == (item.deadline_at == at)
    assert broker.stats(T0)["messages"] == sum(len(q.messages) for q in broker.queues.values())
    assert broker.stored_bytes == sum(broker._cost(m) for q in broker.queues.values()
                                      for m in q.messages.values())


def stored(broker: Broker, name: str, message_id: int) -> Message:
    """stored is a stored message as a Message: a plain one (message.py) through `view`,
    a throwaway Message that is not stored, so reading it changes nothing."""
    q = broker.queues[name]
    return view(message_id, q.messages[message_id], q)


def bodies(broker: Broker, name: str) -> list[bytes]:
    """bodies: a queue's stored bodies, in its table's order, plain messages or not."""
    q = broker.queues[name]
    return [view(i, m, q).body for i, m in q.messages.items()]


def assert_empty(broker: Broker) -> None:
    """assert_empty: no queue, no message, nothing accounted."""
    stats = broker.stats(T0)
    assert (stats["messages"], stats["waiting_consumers"], stats["queues"]) == (0, 0, {})
    assert broker.stored_bytes == 0


def error_code(call: Any, *args: Any) -> str:
    with pytest.raises(CommandError) as info:
        call(*args)
    return info.value.code


class Inbox:
    """A waiter's deliver callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[list[Message]] = []

    def __call__(self, messages: list[Message]) -> None:
        self.calls.append(list(messages))

    @property
    def ids(self) -> list[list[int]]:
        return [[m.id for m in call] for call in self.calls]


def ids_of(messages: list[Message]) -> list[int]:
    return [m.id for m in messages]


def first_id(now: float) -> int:
    return int(now * 1000) << 20


def hold_a_lease_end_across_its_expiry(b: Broker, leased: int) -> list[int]:
    """hold_a_lease_end_across_its_expiry: `leased` messages (expiry T0+10) whose leases end
    at T0+5, held (journal writes failing) past the expiry, released at T0+13."""
    ids = [b.put("q", b"x", T0, expiry=10.0) for _ in range(leased)]
    b.receive("q", leased, 5.0, T0)
    b.hold_lease_ends_until = T0 + 7
    b.advance(T0 + 6)
    b.hold_lease_ends_until = T0 + 12  # still failing when the expiry comes
    b.advance(T0 + 11)  # the expiry (T0+10): leased, left be
    b.hold_lease_ends_until = None  # writes work again
    b.advance(T0 + 13)  # the lease ends, judged at T0+5: ready, and then expired
    return ids
