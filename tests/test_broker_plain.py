"""Plain messages (issue 6): a put with nothing but a body stores the body alone.

message.py's design decision: a plain message is a `bytes` value in its
queue's table, READY and never delivered, and becomes a Message only when
something must change it. These tests pin down which operations keep a
message plain, which materialize it, that both forms answer every command
the same, and that a backlog of plain messages takes no object per message.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from broker_helpers import (  # the `b` fixture comes from broker_helpers too, via conftest.py
    T0,
    check_invariants,
    counts,
    error_code,
    ids_of,
    stored,
    zero_counts,
)

from wonderq_server.broker import READY_HEAP_SLACK, Broker
from wonderq_server.errors import FULL, LEASE_LOST
from wonderq_server.ids import id_time
from wonderq_server.message import LEASED, MESSAGE_OVERHEAD_BYTES, READY, Message


def kind(b: Broker, message_id: int, name: str = "q") -> type:
    return type(b.queues[name].messages[message_id])


# ------------------------------------------------------------ what is plain

def test_a_put_with_only_a_body_stores_the_body_itself(b: Broker) -> None:
    body = b"hello"
    msg_id = b.put("q", body, T0)
    assert b.queues["q"].messages[msg_id] is body  # no Message, not even a copy
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert b.stored_bytes == len(body) + MESSAGE_OVERHEAD_BYTES
    # in the table's run (message_table.py), which is its ready order: not on the heap
    assert b.queues["q"].ready == []
    assert list(b.queues["q"].messages.plain_from_oldest()) == [(msg_id, body)]
    check_invariants(b)


@pytest.mark.parametrize("options", [{"priority": 1}, {"priority": -1},
                                     {"headers": {"k": "v"}}, {"delay": 5.0},
                                     {"expiry": 60.0}])
def test_a_put_with_an_option_stores_a_message(b: Broker, options: dict) -> None:
    msg_id = b.put("q", b"x", T0, **options)
    assert kind(b, msg_id) is Message
    check_invariants(b)


@pytest.mark.parametrize("options", [{"priority": 0}, {"headers": {}}, {"delay": 0.0},
                                     {"expiry": 0.0}])
def test_options_at_their_defaults_keep_a_put_plain(b: Broker, options: dict) -> None:
    assert kind(b, b.put("q", b"x", T0, **options)) is bytes


@pytest.mark.parametrize("setting", [{"delay": 5.0}, {"expiry": 60.0}])
def test_a_queue_default_delay_or_expiry_makes_a_message(b: Broker, setting: dict) -> None:
    b.create_queue("q", setting, T0)
    assert kind(b, b.put("q", b"x", T0)) is Message


def test_put_many_stores_plain_and_optioned_items_side_by_side(b: Broker) -> None:
    plain, urgent = b.put_many("q", [b"a", {"body": b"b", "priority": -1}], T0)
    assert (kind(b, plain), kind(b, urgent)) == (bytes, Message)
    assert ids_of(b.receive("q", 2, None, T0)) == [urgent, plain]
    check_invariants(b)


def test_a_body_that_is_not_exactly_bytes_is_stored_as_bytes(b: Broker) -> None:
    msg_id = b.put("q", bytearray(b"abc"), T0)  # type: ignore[arg-type]
    assert b.queues["q"].messages[msg_id] == b"abc" and kind(b, msg_id) is bytes


def test_enqueued_at_is_the_time_in_the_id_to_the_millisecond(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0 + 1.0004)
    assert stored(b, "q", msg_id).enqueued_at == T0 + 1.0 == id_time(msg_id)
    [m] = b.receive("q", 1, None, T0 + 2)
    assert m.enqueued_at == T0 + 1.0


# ------------------------------------------------------- materializing once

def test_receive_materializes_a_plain_message_in_place(b: Broker) -> None:
    first, second = b.put_many("q", [b"one", b"two"], T0)
    [m] = b.receive("q", 1, None, T0 + 1)
    assert m.id == first and b.queues["q"].messages[first] is m
    assert (m.state, m.deliveries, m.body, m.priority, m.headers) == (LEASED, 1, b"one", 0, None)
    assert list(b.queues["q"].messages) == [first, second]  # the table keeps its order
    assert kind(b, second) is bytes
    assert b.stored_bytes == 2 * (3 + MESSAGE_OVERHEAD_BYTES)  # materializing costs nothing
    check_invariants(b)


def test_a_materialized_message_stays_the_same_object(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 5.0, T0)
    b.advance(T0 + 5)  # the lease runs out: ready again, still a Message
    assert b.queues["q"].messages[msg_id] is m and m.state == READY
    [again] = b.receive("q", 1, None, T0 + 6)
    assert again is m and m.deliveries == 2
    check_invariants(b)


@pytest.mark.parametrize("call", ["ack", "nack", "touch"])
def test_a_lease_naming_a_plain_message_is_lost_and_keeps_it_plain(b: Broker,
                                                                   call: str) -> None:
    msg_id = b.put("q", b"x", T0)
    args = {"ack": (), "nack": (0.0,), "touch": (None,)}[call]
    assert error_code(getattr(b, call), "q", msg_id, msg_id + 1, *args, T0) == LEASE_LOST
    assert kind(b, msg_id) is bytes
    assert counts(b) == zero_counts(ready=1, put_total=1)


def test_peek_shows_plain_messages_without_storing_or_leasing_them(b: Broker) -> None:
    plain = b.put("q", b"plain", T0)
    urgent = b.put("q", b"urgent", T0, priority=-1)
    peeked = b.peek("q", 10)
    assert ids_of(peeked) == [urgent, plain]
    view = peeked[1]
    assert (view.body, view.lease, view.deliveries, view.state, view.enqueued_at) == (
        b"plain", None, 0, READY, T0)
    assert view is not b.queues["q"].messages[plain] and kind(b, plain) is bytes
    assert peeked[0] is b.queues["q"].messages[urgent]
    check_invariants(b)


def test_message_info_of_a_plain_message(b: Broker) -> None:
    msg_id = b.put("q", b"abc", T0 + 0.5)
    assert b.message_info("q", msg_id, T0 + 1) == {
        "id": msg_id, "queue": "q", "state": "ready", "deliveries": 0, "priority": 0,
        "enqueued_at": T0 + 0.5, "deadline_at": None, "expires_at": None, "body_bytes": 3,
        "headers": {}, "dead_letter": None}
    assert kind(b, msg_id) is bytes


def test_oldest_age_comes_from_the_first_id(b: Broker) -> None:
    b.put("q", b"x", T0 + 2)
    assert b.stats(T0 + 12.5)["queues"]["q"]["oldest_age_s"] == 10.5


# ------------------------------------------------ removing plain messages

def test_purge_and_delete_uncount_plain_and_materialized_messages(b: Broker) -> None:
    b.put_many("q", [b"a", b"b", b"c"], T0)
    b.put("q", b"d", T0, priority=2)
    b.receive("q", 1, None, T0)  # "d" goes first: leased
    assert b.purge("q", T0) == 4
    assert counts(b) == zero_counts(put_total=4) and b.stored_bytes == 0
    b.put_many("q", [b"e", b"f"], T0)
    b.receive("q", 1, None, T0)
    assert b.delete_queue("q", T0) == 2
    assert b.stored_bytes == 0 and b.queues == {} and b.next_deadline() is None


def test_acking_the_materialized_message_frees_its_accounting(b: Broker) -> None:
    b.put_many("q", [b"a", b"bb"], T0)
    for m in b.receive("q", 2, None, T0):
        b.ack("q", m.id, m.lease, T0)
    assert b.stored_bytes == 0 and b.queues["q"].body_bytes == 0
    check_invariants(b)


def test_max_memory_counts_plain_messages_like_messages() -> None:
    b = Broker(max_memory_bytes=2 * (10 + MESSAGE_OVERHEAD_BYTES))
    b.put("q", b"0123456789", T0)
    b.put("q", b"0123456789", T0, priority=1)
    assert error_code(b.put, "q", b"x", T0) == FULL
    assert len(b.queues["q"].messages) == 2


def test_the_ready_heap_stays_bounded_with_plain_messages_waiting(b: Broker) -> None:
    plain = b.put_many("q", [b"p"] * 10, T0)
    b.put_many("q", [b"x"] * (READY_HEAP_SLACK * 2), T0)
    for m in b.receive("q", 10, 1.0, T0):  # the oldest: the plain ten
        b.nack("q", m.id, m.lease, 0.0, T0)
    for m in b.receive("q", 10, 1.0, T0):  # the same ten again
        b.nack("q", m.id, m.lease, 0.0, T0)
    q = b.queues["q"]
    assert len(q.ready) <= 2 * q.ready_count + READY_HEAP_SLACK
    assert ids_of(b.peek("q", 10)) == plain
    check_invariants(b)


def test_the_heap_is_bounded_by_its_own_messages_not_by_the_run(b: Broker) -> None:
    """A long backlog in the run must not let stale heap entries pile up: the heap is
    rebuilt against the ready messages it holds (the run holds the rest)."""
    b.put_many("q", [b"p"] * (READY_HEAP_SLACK * 20), T0)
    [m] = b.receive("q", 1, 1.0, T0)
    now = T0
    for _ in range(READY_HEAP_SLACK * 4):
        now += 1.0
        b.advance(now)  # the lease runs out: ready again, pushed on the heap
        b.touch("q", m.id, m.lease, 1.0, now)  # a late touch takes it back: a stale entry
        q = b.queues["q"]
        # The bound is kept as the heap grows, when it held this one ready message.
        assert len(q.ready) <= 2 * 1 + READY_HEAP_SLACK
    check_invariants(b)


# ------------------------------------------------------------------ memory

def test_a_backlog_of_plain_messages_takes_no_object_per_message() -> None:
    """Python memory per queued 100-byte message, as tracemalloc counts it: the body
    (133 bytes) and its two slots in the table's run (8 for the id in an array, 8 for
    the body's pointer, plus their growth slack). No id object (36 bytes), no dict
    entry, no heap slot: with those, as before the run, it was about 230; a Message
    per message would add about 120 more. (Issue 6's S5 target is 240 bytes of
    resident memory, which also pays the allocator's rounding.)"""
    b = Broker()
    n = 20_000
    b.put("q", b"first", T0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            b.put("q", i.to_bytes(100, "big"), T0 + i / 1000)
        per_message = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert 133 + 16 <= per_message < 133 + 36, per_message


# ------------------------------------------------------------ put_many's batch path

def test_a_batch_of_bare_bodies_is_stored_in_one_step_like_item_by_item(b: Broker) -> None:
    """put_many of bare bodies on a plain queue takes one id range and one extension of
    the run (broker._store_plain_batch): the same ids, counts and order as one by one."""
    one_by_one = Broker()
    bodies = [b"a", b"", b"c" * 50]
    expected = [one_by_one.put("q", body, T0) for body in bodies]
    assert b.put_many("q", bodies, T0) == expected
    q = b.queues["q"]
    assert list(q.messages.plain_from_oldest()) == list(zip(expected, bodies, strict=True))
    assert counts(b) == counts(one_by_one) == zero_counts(ready=3, put_total=3)
    assert b.stored_bytes == one_by_one.stored_bytes
    assert b.put("q", b"next", T0) == expected[-1] + 1  # the sequence went on past the range
    check_invariants(b)


def test_a_batch_that_would_pass_max_memory_stores_what_fits(b: Broker) -> None:
    broker = Broker(max_memory_bytes=2 * (1 + MESSAGE_OVERHEAD_BYTES))
    results = broker.put_many("q", [b"a", b"b", b"c"], T0)
    assert [getattr(r, "code", None) for r in results] == [None, None, FULL]
    assert counts(broker) == zero_counts(ready=2, put_total=2)
    check_invariants(broker)


def test_a_batch_serves_a_waiting_consumer(b: Broker) -> None:
    delivered: list[list[Message]] = []
    b.wait("q", 2, None, T0 + 9.0, delivered.append, T0)
    ids = b.put_many("q", [b"a", b"b", b"c"], T0)
    assert [[m.id for m in batch] for batch in delivered] == [ids[:2]]
    assert counts(b) == zero_counts(ready=1, in_flight=2, put_total=3)
    check_invariants(b)


def test_an_empty_batch_stores_nothing_and_makes_no_queue(b: Broker) -> None:
    assert b.put_many("q", [], T0) == []
    assert "q" not in b.queues
