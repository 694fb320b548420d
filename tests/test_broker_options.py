"""Unit tests of the broker's message options and put limits (issue 4), numbers as the clock.

Options a put may give: delay, priority, headers, expiry (each also from the
queue's settings where the spec says so). Limits a put meets: a queue's
max_length, the server's max_memory_bytes and max_queues. Nothing here sleeps:
time passes only by calling `advance` with a later number.
"""

from __future__ import annotations

import pytest
from broker_helpers import (  # the `b` fixture comes from broker_helpers too, via conftest.py
    T0,
    Inbox,
    check_invariants,
    counts,
    error_code,
    first_id,
    ids_of,
    stored,
    zero_counts,
)

from wonderq_server.broker import MESSAGE_OVERHEAD_BYTES, Broker
from wonderq_server.errors import (
    BAD_ARGUMENT,
    FULL,
    LEASE_LOST,
    NOT_FOUND,
    TOO_MANY_QUEUES,
    CommandError,
)
from wonderq_server.message import (
    DELAYED,
    HEADER_ENTRY_BYTES,
    HEADERS_DICT_BYTES,
    LEASED,
    READY,
)

# -------------------------------------------------------------------- delay


def test_put_with_delay_is_ready_exactly_at_its_time(b: Broker) -> None:
    msg_id = b.put("q", b"later", T0, delay=5.0)
    assert counts(b) == zero_counts(delayed=1, put_total=1)
    assert b.queues["q"].messages[msg_id].state == DELAYED
    assert b.next_deadline() == T0 + 5.0
    assert b.receive("q", 1, None, T0 + 1.0) == []
    assert b.advance(T0 + 4.999) == 0
    assert counts(b) == zero_counts(delayed=1, put_total=1)
    assert b.advance(T0 + 5.0) == 1
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert b.next_deadline() is None
    [m] = b.receive("q", 1, None, T0 + 5.0)
    assert (m.id, m.deliveries, m.enqueued_at) == (msg_id, 1, T0)
    check_invariants(b)


def test_delayed_message_goes_to_a_waiter_when_ready(b: Broker) -> None:
    inbox = Inbox()
    msg_id = b.put("q", b"x", T0, delay=3.0)
    b.wait("q", 1, None, T0 + 10.0, inbox, T0 + 1.0)
    assert inbox.calls == []
    b.advance(T0 + 3.0)
    assert inbox.ids == [[msg_id]]
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    check_invariants(b)


def test_queue_default_delay_applies_when_a_put_gives_none(b: Broker) -> None:
    b.create_queue("q", {"delay": 7.0}, T0)
    default = b.put("q", b"a", T0)
    explicit_zero = b.put("q", b"b", T0, delay=0.0)  # 0 is a delay given: none
    own = b.put("q", b"c", T0, delay=2.0)
    assert [stored(b, "q", i).state for i in (default, explicit_zero, own)] == [
        DELAYED, READY, DELAYED]
    assert b.queues["q"].messages[default].deadline_at == T0 + 7.0
    assert b.queues["q"].messages[own].deadline_at == T0 + 2.0
    assert b.next_deadline() == T0 + 2.0
    b.advance(T0 + 2.0)
    assert counts(b) == zero_counts(ready=2, delayed=1, put_total=3)
    b.advance(T0 + 7.0)
    assert ids_of(b.receive("q", 10, None, T0 + 7.0)) == [default, explicit_zero, own]
    check_invariants(b)


def test_put_many_items_get_their_own_delay(b: Broker) -> None:
    ids = b.put_many("q", [{"body": b"a", "delay": 4.0}, {"body": b"b"}, b"c"], T0)
    assert counts(b) == zero_counts(ready=2, delayed=1, put_total=3)
    assert ids_of(b.receive("q", 10, None, T0)) == ids[1:]
    b.advance(T0 + 4.0)
    assert ids_of(b.receive("q", 10, None, T0 + 4.0)) == ids[:1]


# ----------------------------------------------------------------- priority


def test_lower_priority_numbers_are_received_first_fifo_within(b: Broker) -> None:
    p5a = b.put("q", b"5a", T0, priority=5)
    p0a = b.put("q", b"0a", T0)
    neg = b.put("q", b"-3", T0, priority=-3)
    p5b = b.put("q", b"5b", T0, priority=5)
    p0b = b.put("q", b"0b", T0, priority=0)
    lowest = b.put("q", b"min", T0, priority=-2**31)
    highest = b.put("q", b"max", T0, priority=2**31 - 1)
    got = b.receive("q", 10, None, T0)
    assert ids_of(got) == [lowest, neg, p0a, p0b, p5a, p5b, highest]
    assert [m.priority for m in got] == [-2**31, -3, 0, 0, 5, 5, 2**31 - 1]
    check_invariants(b)


def test_priority_order_holds_one_receive_at_a_time(b: Broker) -> None:
    ids = [b.put("q", bytes([i]), T0, priority=p) for i, p in enumerate([3, 1, 2, 1, -1])]
    order = [b.receive("q", 1, None, T0)[0].id for _ in ids]
    assert order == [ids[4], ids[1], ids[3], ids[2], ids[0]]
    assert b.receive("q", 1, None, T0) == []


def test_redelivered_message_keeps_its_priority_and_goes_ahead_of_newer(b: Broker) -> None:
    first = b.put("q", b"1", T0, priority=2)
    assert ids_of(b.receive("q", 1, 10.0, T0)) == [first]
    newer = b.put("q", b"2", T0 + 1.0, priority=2)
    urgent = b.put("q", b"3", T0 + 1.0, priority=1)
    plain = b.put("q", b"4", T0 + 1.0)
    b.advance(T0 + 10.0)  # the lease runs out
    again = b.receive("q", 10, None, T0 + 10.0)
    assert ids_of(again) == [plain, urgent, first, newer]
    assert (again[2].priority, again[2].deliveries) == (2, 2)
    b.nack("q", first, again[2].lease, 0.0, T0 + 11.0)  # nacked: same place again
    b.nack("q", newer, again[3].lease, 0.0, T0 + 11.0)
    assert ids_of(b.receive("q", 10, None, T0 + 11.0)) == [first, newer]
    check_invariants(b)


def test_put_many_items_get_their_own_priority(b: Broker) -> None:
    ids = b.put_many("q", [{"body": b"a", "priority": 9}, {"body": b"b", "priority": None},
                           {"body": b"c", "priority": -9}], T0)
    assert ids_of(b.receive("q", 10, None, T0)) == [ids[2], ids[1], ids[0]]


# ------------------------------------------------------------------ headers


def test_headers_are_kept_on_the_message(b: Broker) -> None:
    headers = {"trace": "abc", "ünï": "çødé", "empty": ""}
    with_headers = b.put("q", b"x", T0, headers=dict(headers))
    empty_map = b.put("q", b"y", T0, headers={})
    without = b.put("q", b"z", T0)
    got = b.receive("q", 10, None, T0)
    assert ids_of(got) == [with_headers, empty_map, without]
    assert [m.headers for m in got] == [headers, None, None]  # an empty map == no headers
    b.advance(T0 + 30.0)
    again = b.receive("q", 10, None, T0 + 30.0)
    assert again[0].headers == headers  # kept through a redelivery


# ------------------------------------------------------------------- expiry


def test_ready_message_is_dropped_at_its_expiry(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0, expiry=10.0)
    keep = b.put("q", b"y", T0)
    assert b.queues["q"].messages[msg_id].expires_at == T0 + 10.0
    assert b.next_deadline() == T0 + 10.0
    assert b.advance(T0 + 9.999) == 0
    assert counts(b) == zero_counts(ready=2, put_total=2)
    assert b.advance(T0 + 10.0) == 1
    assert counts(b) == zero_counts(ready=1, put_total=2, expired_total=1)
    assert msg_id not in b.queues["q"].messages
    assert ids_of(b.receive("q", 10, None, T0 + 10.0)) == [keep]
    assert b.stored_bytes == 1 + MESSAGE_OVERHEAD_BYTES
    check_invariants(b)


def test_delayed_message_is_dropped_at_its_expiry(b: Broker) -> None:
    b.put("q", b"x", T0, delay=20.0, expiry=5.0)
    assert b.next_deadline() == T0 + 5.0
    b.advance(T0 + 5.0)
    assert counts(b) == zero_counts(put_total=1, expired_total=1)
    assert b.next_deadline() is None  # the delay is forgotten too
    assert b.advance(T0 + 20.0) == 0
    check_invariants(b)


def test_nack_with_delay_past_the_expiry_drops_it_at_the_expiry(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0, expiry=5.0)
    [m] = b.receive("q", 1, 2.0, T0)
    lease = m.lease
    b.nack("q", msg_id, lease, 60.0, T0 + 1.0)
    assert counts(b) == zero_counts(delayed=1, put_total=1)
    b.advance(T0 + 5.0)
    assert counts(b) == zero_counts(put_total=1, expired_total=1)
    assert error_code(b.ack, "q", msg_id, lease, T0 + 6.0) == NOT_FOUND


def test_queue_expiry_setting_applies_when_a_put_gives_none(b: Broker) -> None:
    b.create_queue("q", {"expiry": 8.0}, T0)
    default = b.put("q", b"a", T0)
    never = b.put("q", b"b", T0, expiry=0.0)  # 0 given: never expires
    own = b.put("q", b"c", T0, expiry=3.0)
    messages = b.queues["q"].messages
    assert [stored(b, "q", i).expires_at for i in (default, never, own)] == [
        T0 + 8.0, None, T0 + 3.0]
    b.advance(T0 + 3.0)
    assert sorted(messages) == [default, never]
    b.advance(T0 + 8.0)
    assert list(messages) == [never]
    assert counts(b) == zero_counts(ready=1, put_total=3, expired_total=2)
    assert b.advance(T0 + 1e6) == 0
    check_invariants(b)


def test_leased_message_past_its_expiry_can_still_be_acked(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0, expiry=5.0)
    [m] = b.receive("q", 1, 20.0, T0 + 1.0)
    b.advance(T0 + 6.0)  # the expiry passes while leased: not taken from its consumer
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.queues["q"].messages[msg_id].state == LEASED
    b.ack("q", msg_id, m.lease, T0 + 7.0)
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
    assert b.next_deadline() is None
    assert b.stored_bytes == 0
    check_invariants(b)


def test_leased_message_past_its_expiry_is_dropped_when_its_lease_runs_out(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0, expiry=5.0)
    [m] = b.receive("q", 1, 20.0, T0 + 1.0)
    b.advance(T0 + 6.0)
    assert b.next_deadline() == T0 + 21.0
    b.advance(T0 + 21.0)
    assert counts(b) == zero_counts(put_total=1, expired_total=1)
    assert b.receive("q", 1, None, T0 + 21.0) == []
    assert error_code(b.ack, "q", msg_id, m.lease, T0 + 22.0) == NOT_FOUND  # no late ack
    assert b.stored_bytes == 0
    check_invariants(b)


def test_leased_message_past_its_expiry_is_dropped_when_nacked(b: Broker) -> None:
    inbox = Inbox()
    msg_id = b.put("q", b"x", T0, expiry=5.0)
    [m] = b.receive("q", 1, 20.0, T0)
    b.wait("q", 1, None, T0 + 30.0, inbox, T0 + 1.0)
    b.advance(T0 + 5.0)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 6.0)
    assert inbox.calls == []  # nothing to hand the waiter
    assert counts(b) == zero_counts(waiting=1, put_total=1, expired_total=1)
    assert b.next_deadline() == T0 + 30.0  # the lease deadline is gone too
    check_invariants(b)


def test_lease_ending_before_the_expiry_redelivers_then_expiry_drops(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0, expiry=10.0)
    [m] = b.receive("q", 1, 3.0, T0)
    b.advance(T0 + 3.0)
    assert counts(b) == zero_counts(ready=1, put_total=1)
    b.advance(T0 + 10.0)
    assert counts(b) == zero_counts(put_total=1, expired_total=1)
    assert error_code(b.ack, "q", msg_id, m.lease, T0 + 11.0) == NOT_FOUND


# ------------------------------------------------------------------- limits


def test_max_length_full_stores_nothing(b: Broker) -> None:
    b.create_queue("q", {"max_length": 2}, T0)
    a = b.put("q", b"a", T0)
    b.put("q", b"b", T0, delay=9.0)  # every state counts
    assert error_code(b.put, "q", b"c", T0) == FULL
    assert counts(b) == zero_counts(ready=1, delayed=1, put_total=2)
    assert b.stored_bytes == 2 * (1 + MESSAGE_OVERHEAD_BYTES)
    [m] = b.receive("q", 1, None, T0)
    assert error_code(b.put, "q", b"c", T0) == FULL  # leased ones count too
    b.ack("q", a, m.lease, T0)
    assert b.put("q", b"c", T0) == first_id(T0) + 3  # 2 puts, 1 lease: refusals used no id
    assert b.stats(T0)["full_refusals_total"] == 2
    check_invariants(b)


def test_put_many_stores_the_first_items_until_full(b: Broker) -> None:
    inbox = Inbox()
    b.create_queue("q", {"max_length": 3}, T0)
    b.put("q", b"0", T0)
    b.wait("q", 5, None, T0 + 9.0, inbox, T0)  # takes the one stored message
    results = b.put_many("q", [b"1", {"body": b"2"}, b"3", b"4"], T0)
    assert results[:2] == [first_id(T0) + 2, first_id(T0) + 3]  # +1 was the lease
    assert [getattr(r, "code", None) for r in results] == [None, None, FULL, FULL]
    assert counts(b) == zero_counts(ready=2, in_flight=1, put_total=3)
    check_invariants(b)


def test_max_memory_full_and_stored_bytes_going_back_down() -> None:
    cost = 10 + MESSAGE_OVERHEAD_BYTES
    limit = 2 * cost + 5 + MESSAGE_OVERHEAD_BYTES
    broker = Broker(max_memory_bytes=limit)
    a = broker.put("q", b"x" * 10, T0)
    broker.put("other", b"y" * 10, T0)  # the limit is server-wide
    assert broker.stored_bytes == 2 * cost
    assert error_code(broker.put, "q", b"z" * 6, T0) == FULL
    assert broker.stored_bytes == 2 * cost
    assert broker.put("q", b"z" * 5, T0) > a  # exactly at the limit is fine
    assert broker.stored_bytes == limit
    assert broker.stats(T0)["stored_bytes"] == limit
    assert broker.stats(T0)["max_memory"] == limit
    results = broker.put_many("q", [b"", b"w" * 10], T0)
    assert [getattr(r, "code", None) for r in results] == [FULL, FULL]
    [m] = broker.receive("q", 1, None, T0)
    broker.ack("q", a, m.lease, T0)
    assert broker.stored_bytes == limit - cost
    broker.put("q", b"w" * 10, T0)
    assert error_code(broker.put, "q", b"", T0) == FULL
    assert broker.stats(T0)["full_refusals_total"] == 4  # 1 put, 2 put_many items, 1 put
    assert counts(broker) == zero_counts(ready=2, put_total=3, acked_total=1)
    check_invariants(broker)


@pytest.mark.parametrize("options", [{}, {"priority": 1}, {"headers": {"k": "v"}}])
def test_a_put_refused_full_leaves_no_queue_behind(options: dict[str, object]) -> None:
    # A reviewer: each new name a producer put to while the server was full stayed as an
    # empty queue holding a --max-queues place, so after the memory was freed a put to a
    # new name was still TOO_MANY_QUEUES.
    broker = Broker(max_memory_bytes=MESSAGE_OVERHEAD_BYTES + 4000, max_queues=3)
    broker.put("filler", b"x" * 4000, T0)
    for name in ("new0", "new1", "new2"):
        assert error_code(lambda n=name: broker.put(n, b"y", T0, **options)) == FULL
    assert sorted(broker.queues) == ["filler"]
    broker.purge("filler", T0)
    assert broker.put("important", b"z", T0, **options) > 0
    broker.create_queue("configured", {"max_length": 1}, T0)
    broker.put("configured", b"1", T0, **options)
    assert error_code(lambda: broker.put("configured", b"2", T0, **options)) == FULL
    assert sorted(broker.queues) == ["configured", "filler", "important"]  # kept: in use
    check_invariants(broker)


def test_headers_count_against_max_memory() -> None:
    headers = {"kë": "vv"}  # 3 + 2 bytes of UTF-8, and the objects that hold them
    cost = MESSAGE_OVERHEAD_BYTES + 4 + HEADERS_DICT_BYTES + HEADER_ENTRY_BYTES + 5
    broker = Broker(max_memory_bytes=cost)
    assert error_code(lambda: broker.put("q", b"12345", T0, headers=headers)) == FULL
    assert broker.stored_bytes == 0
    broker.put("q", b"1234", T0, headers=headers)
    assert broker.stored_bytes == cost
    [m] = broker.receive("q", 1, 5.0, T0)
    broker.advance(T0 + 5.0)  # a redelivery costs nothing more
    assert broker.stored_bytes == cost
    assert m.headers == headers
    broker.ack("q", m.id, m.lease, T0 + 6.0)
    assert broker.stored_bytes == 0


def test_many_small_headers_count_what_they_take() -> None:
    # 32 empty headers: 86 bytes of UTF-8, but their dict and strings take about 800.
    headers = {f"h{i}": "" for i in range(32)}
    broker = Broker()
    broker.put("q", b"", T0, headers=headers)
    assert broker.stored_bytes == MESSAGE_OVERHEAD_BYTES + HEADERS_DICT_BYTES + 32 * (
        HEADER_ENTRY_BYTES) + sum(len(k) for k in headers)
    assert broker.stored_bytes > 2000


def test_max_queues_refuses_a_new_queue() -> None:
    broker = Broker(max_queues=2)
    broker.put("a", b"1", T0)
    broker.create_queue("b", {}, T0)
    assert error_code(broker.put, "c", b"1", T0) == TOO_MANY_QUEUES
    assert error_code(broker.put_many, "c", [b"1"], T0) == TOO_MANY_QUEUES
    assert error_code(broker.create_queue, "c", {}, T0) == TOO_MANY_QUEUES
    assert broker.receive("c", 1, None, T0) == []  # makes no queue, so needs none
    assert error_code(broker.wait, "c", 1, None, T0 + 1, lambda got: None, T0) == TOO_MANY_QUEUES
    assert sorted(broker.queues) == ["a", "b"]
    stats = broker.stats(T0)  # the four refusals counted; the receive that made none is not
    assert (stats["max_queues"], stats["too_many_queues_total"]) == (2, 4)
    assert broker.put("a", b"2", T0) == first_id(T0) + 1  # existing queues still work
    broker.delete_queue("b", T0)
    broker.put("c", b"1", T0)
    assert sorted(broker.queues) == ["a", "c"]
    check_invariants(broker)


def test_queues_only_waited_on_do_not_keep_producers_out() -> None:
    # A reviewer's client waited on made-up names until --max-queues was reached:
    # every first put to a real queue was then refused TOO_MANY_QUEUES.
    broker = Broker(max_queues=3)
    broker.put("real", b"1", T0)
    answered: list[list] = []
    waits = [broker.wait(f"made-up-{i}", 1, None, T0 + 5, answered.append, T0)
             for i in range(2)]
    assert len(broker.queues) == 3  # the limit, counting the queues waits made
    assert error_code(broker.wait, "made-up-2", 1, None, T0 + 5, answered.append,
                      T0) == TOO_MANY_QUEUES  # a wait counts them all: the table is bounded
    assert broker.put("jobs", b"1", T0) == first_id(T0) + 1  # the second queue in use
    broker.create_queue("more", {}, T0)  # the third
    assert error_code(broker.put, "fourth", b"1", T0) == TOO_MANY_QUEUES  # in use: 3 of 3
    assert error_code(broker.create_queue, "fourth", {}, T0) == TOO_MANY_QUEUES
    assert len(broker.queues) == 5  # at most twice the limit
    broker.put("made-up-0", b"x", T0)  # a queue waited on and then used is in use
    assert [m.body for m in answered[0]] == [b"x"]
    check_invariants(broker)
    for waiter in waits:
        broker.cancel_wait(waiter)
    assert sorted(broker.queues) == ["jobs", "made-up-0", "more", "real"]
    assert broker.stats(T0)["too_many_queues_total"] == 3
    check_invariants(broker)


def test_the_count_of_queues_in_use_follows_every_way_a_queue_is_used_or_goes() -> None:
    # Kept as a count (a walk of the table at the limit cost a redrive 5 s: a reviewer).
    broker = Broker(max_queues=100)
    answered: list[list] = []

    def waited(name: str) -> None:
        broker.wait(name, 1, None, T0 + 5, answered.append, T0)

    for name in ("put", "configured", "deleted", "forgotten", "dead"):
        waited(name)
    assert broker._queues_in_use() == 0
    broker.put("put", b"x", T0)  # used by a put (its waiter took the message)
    broker.create_queue("configured", {"delay": 1.0}, T0)  # made by name
    broker.delete_queue("deleted", T0)  # gone (its waiter answered with nothing)
    broker.cancel_wait(broker.queues["forgotten"].waiters[0])  # forgotten with its waiter
    broker.create_queue("source", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0)
    broker.put("source", b"y", T0)
    assert len(broker.receive("source", 1, 1.0, T0)) == 1
    broker.advance(T0 + 2.0)  # its lease's end moves it into "dead", which now held one
    assert sorted(broker.queues) == ["configured", "dead", "put", "source"]
    assert broker._queues_in_use() == 4 == sum(
        1 for q in broker.queues.values() if q.explicit or q.ever_held)
    check_invariants(broker)


def test_put_many_passes_command_errors_through_and_keeps_going(b: Broker) -> None:
    refused = CommandError(BAD_ARGUMENT, "bad item")
    results = b.put_many("q", [refused, {"body": b"a", "priority": 1, "headers": {"k": "v"},
                                         "delay": None, "expiry": 5.0}, b"b"], T0)
    assert results[0] is refused
    assert results[1:] == [first_id(T0), first_id(T0) + 1]
    got = b.receive("q", 10, None, T0)
    assert ids_of(got) == [results[2], results[1]]
    assert (got[1].headers, got[1].priority, got[1].expires_at) == ({"k": "v"}, 1, T0 + 5.0)
    assert counts(b) == zero_counts(in_flight=2, put_total=2)


def test_put_many_of_only_refused_items_stores_nothing(b: Broker) -> None:
    refused = [CommandError(BAD_ARGUMENT, "a"), CommandError(BAD_ARGUMENT, "b")]
    assert b.put_many("q", list(refused), T0) == refused
    assert b.queues == {}  # the queue made for them is forgotten: it never held a message
    assert b.stored_bytes == 0


@pytest.mark.parametrize("state", ["ready", "delayed"])
def test_old_lease_of_an_expired_message_is_not_found(b: Broker, state: str) -> None:
    msg_id = b.put("q", b"x", T0, expiry=4.0)
    [m] = b.receive("q", 1, 1.0, T0)
    lease = m.lease
    if state == "delayed":
        b.nack("q", msg_id, lease, 10.0, T0)
    b.advance(T0 + 1.0)
    assert counts(b) == zero_counts(put_total=1, **{state: 1})
    b.advance(T0 + 4.0)
    assert counts(b) == zero_counts(put_total=1, expired_total=1)
    assert error_code(b.ack, "q", msg_id, lease, T0 + 5.0) == NOT_FOUND
    assert error_code(b.touch, "q", msg_id, lease, None, T0 + 5.0) == NOT_FOUND
    assert b.next_deadline() is None
    check_invariants(b)


def test_touch_keeps_a_leased_message_past_its_expiry(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0, expiry=4.0)
    [m] = b.receive("q", 1, 2.0, T0)
    b.advance(T0 + 1.0)
    assert b.touch("q", msg_id, m.lease, 10.0, T0 + 1.0) == T0 + 11.0
    b.advance(T0 + 4.0)
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert error_code(b.ack, "q", msg_id, m.lease + 1, T0 + 5.0) == LEASE_LOST
    b.advance(T0 + 11.0)
    assert counts(b) == zero_counts(put_total=1, expired_total=1)
    check_invariants(b)


def test_expiry_at_the_same_instant_as_a_delay_or_lease_end_wins(b: Broker) -> None:
    delayed = b.put("q", b"d", T0, delay=5.0, expiry=5.0)
    leased = b.put("q", b"l", T0, expiry=5.0)
    [m] = b.receive("q", 1, 5.0, T0)
    assert m.id == leased
    b.advance(T0 + 5.0)
    assert counts(b) == zero_counts(put_total=2, expired_total=2)
    assert b.queues["q"].messages == {}
    assert error_code(b.message_info, "q", delayed, T0 + 5.0) == NOT_FOUND
    assert error_code(b.ack, "q", leased, m.lease, T0 + 5.0) == NOT_FOUND
    check_invariants(b)
