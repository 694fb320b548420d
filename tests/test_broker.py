"""Unit tests of the broker core (wonderq_server/broker.py), numbers as the clock.

Nothing here sleeps: every broker call is given `now`, and time passes only by
calling `advance` with a later number.
"""

from __future__ import annotations

from typing import Any

import pytest

from wonderq_server.broker import DEFAULT_VISIBILITY_TIMEOUT_S, READY_HEAP_SLACK, Broker
from wonderq_server.errors import (
    BODY_TOO_LARGE,
    INVALID_QUEUE_NAME,
    LEASE_LOST,
    NOT_FOUND,
    CommandError,
)
from wonderq_server.message import DELAYED, LEASED, READY, Message
from wonderq_server.queues import Waiter

T0 = 1_700_000_000.0
VISIBILITY = 30.0
MAX_BYTES = 1024


@pytest.fixture
def b() -> Broker:
    return Broker(visibility_timeout_s=VISIBILITY, max_message_bytes=MAX_BYTES)


def counts(broker: Broker, name: str = "q") -> dict[str, int]:
    return broker.stats(T0)["queues"][name]


def zero_counts(**changes: int) -> dict[str, int]:
    base = {"ready": 0, "in_flight": 0, "delayed": 0, "waiting": 0, "put_total": 0,
            "acked_total": 0, "redelivered_total": 0}
    base.update(changes)
    return base


def check_invariants(broker: Broker) -> None:
    """check_invariants recounts every queue by walking it, and checks the waiter rule."""
    for q in broker.queues.values():
        states = [m.state for m in q.messages.values()]
        assert q.ready_count == states.count(READY)
        assert q.leased_count == states.count(LEASED)
        assert q.delayed_count == states.count(DELAYED)
        assert len(states) == q.ready_count + q.leased_count + q.delayed_count
        live_waiters = [w for w in q.waiters if not w.done]
        assert q.live_waiters() == len(live_waiters)
        assert not (q.ready_count and live_waiters), "ready messages and a live waiter"
        for m in q.messages.values():
            assert (m.deadline_at is not None) == (m.state in (LEASED, DELAYED))
        ready_ids = {m.id for m in q.messages.values() if m.state == READY}
        assert ready_ids <= set(q.ready)  # every ready message can be found in the heap
    assert broker.stats(T0)["messages"] == sum(len(q.messages) for q in broker.queues.values())


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


# -------------------------------------------------------------- put, receive

def test_fresh_broker_is_empty(b: Broker) -> None:
    assert b.stats(T0) == {"messages": 0, "waiting_consumers": 0, "queues": {}}
    assert b.next_deadline() is None
    assert b.advance(T0 + 1e6) == 0


def test_default_visibility_timeout() -> None:
    assert DEFAULT_VISIBILITY_TIMEOUT_S == 30.0
    broker = Broker()
    broker.put("q", b"x", T0)
    [m] = broker.receive("q", 1, None, T0)
    assert m.deadline_at == T0 + 30.0


def test_put_returns_increasing_ids_from_the_clock(b: Broker) -> None:
    a = b.put("q", b"a", T0)
    c = b.put("q", b"c", T0)
    d = b.put("other", b"d", T0 - 5.0)  # one sequence serves every queue; clock went back
    e = b.put("q", b"e", T0 + 1.0)
    assert a == first_id(T0)
    assert c == a + 1
    assert d == a + 2
    assert e == first_id(T0 + 1.0)


def test_put_then_receive_leases_the_message(b: Broker) -> None:
    msg_id = b.put("q", b"hello", T0)
    assert counts(b) == zero_counts(ready=1, put_total=1)
    [m] = b.receive("q", 10, 12.5, T0 + 1.0)
    assert m.id == msg_id
    assert m.body == b"hello"
    assert m.enqueued_at == T0
    assert m.state == LEASED
    assert m.deliveries == 1
    assert m.deadline_at == T0 + 13.5
    assert m.lease == first_id(T0 + 1.0)  # leases come from the same sequence as ids
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.stats(T0)["messages"] == 1
    assert b.next_deadline() == T0 + 13.5
    check_invariants(b)


def test_receive_with_no_visibility_uses_the_broker_default(b: Broker) -> None:
    b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0 + 2.0)
    assert m.deadline_at == T0 + 2.0 + VISIBILITY


def test_receive_from_an_empty_queue_returns_nothing(b: Broker) -> None:
    assert b.receive("q", 5, None, T0) == []
    assert counts(b) == zero_counts()
    assert b.next_deadline() is None


def test_receive_returns_oldest_first_up_to_max(b: Broker) -> None:
    ids = b.put_many("q", [b"1", b"2", b"3", b"4", b"5"], T0)
    assert ids_of(b.receive("q", 2, None, T0)) == ids[:2]
    assert ids_of(b.receive("q", 1, None, T0)) == ids[2:3]
    assert ids_of(b.receive("q", 10, None, T0)) == ids[3:]
    assert b.receive("q", 10, None, T0) == []
    assert counts(b) == zero_counts(in_flight=5, put_total=5)


def test_each_delivery_gets_its_own_increasing_lease(b: Broker) -> None:
    b.put_many("q", [b"1", b"2", b"3"], T0)
    taken = b.receive("q", 3, None, T0)
    leases = [m.lease for m in taken]
    assert leases == sorted(leases)
    assert len(set(leases)) == 3
    assert all(m.lease > max(ids_of(taken)) for m in taken)


def test_queues_are_separate(b: Broker) -> None:
    a = b.put("a", b"x", T0)
    c = b.put("c", b"y", T0)
    assert ids_of(b.receive("c", 5, None, T0)) == [c]
    assert ids_of(b.receive("a", 5, None, T0)) == [a]
    assert counts(b, "a") == zero_counts(in_flight=1, put_total=1)
    assert counts(b, "c") == zero_counts(in_flight=1, put_total=1)


def test_ack_removes_the_message(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    b.ack("q", msg_id, m.lease, T0 + 1.0)
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
    assert b.stats(T0)["messages"] == 0
    assert b.next_deadline() is None
    assert b.advance(T0 + 1000.0) == 0
    assert b.receive("q", 1, None, T0 + 1000.0) == []
    check_invariants(b)


def test_empty_body_is_a_message(b: Broker) -> None:
    b.put("q", b"", T0)
    [m] = b.receive("q", 1, None, T0)
    assert m.body == b""


# ------------------------------------------------------------- visibility

def test_lease_expiry_redelivers_with_delivery_count_increased(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [first] = b.receive("q", 1, 10.0, T0)
    old_lease = first.lease
    assert b.advance(T0 + 9.999) == 0
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.receive("q", 1, None, T0 + 9.999) == []
    assert b.advance(T0 + 10.0) == 1
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert b.next_deadline() is None
    [again] = b.receive("q", 1, 10.0, T0 + 11.0)
    assert again.id == msg_id
    assert again.deliveries == 2
    assert again.lease != old_lease
    assert again.lease > old_lease
    assert counts(b) == zero_counts(in_flight=1, put_total=1, redelivered_total=1)
    check_invariants(b)


def test_advance_counts_every_deadline_it_handles(b: Broker) -> None:
    b.put_many("q", [b"1", b"2", b"3"], T0)
    b.receive("q", 2, 5.0, T0)
    b.wait("w", 1, None, T0 + 3.0, Inbox(), T0)
    assert b.advance(T0 + 4.0) == 1  # the wait
    assert b.advance(T0 + 5.0) == 2  # the two leases
    assert b.advance(T0 + 5.0) == 0


def test_delivery_count_grows_with_every_redelivery(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    now = T0
    for expected in range(1, 6):
        [m] = b.receive("q", 1, 1.0, now)
        assert (m.id, m.deliveries) == (msg_id, expected)
        now += 1.0
        assert b.advance(now) == 1
    assert counts(b) == zero_counts(ready=1, put_total=1, redelivered_total=4)


def test_expired_message_goes_back_ahead_of_newer_ones(b: Broker) -> None:
    old = b.put("q", b"old", T0)
    assert ids_of(b.receive("q", 1, 5.0, T0)) == [old]
    new1 = b.put("q", b"new1", T0 + 1.0)
    new2 = b.put("q", b"new2", T0 + 2.0)
    b.advance(T0 + 5.0)
    taken = b.receive("q", 3, None, T0 + 6.0)
    assert ids_of(taken) == [old, new1, new2]
    assert [t.deliveries for t in taken] == [2, 1, 1]


def test_messages_come_back_in_id_order_whatever_their_deadlines(b: Broker) -> None:
    ids = b.put_many("q", [b"1", b"2", b"3", b"4"], T0)
    taken = b.receive("q", 4, 10.0, T0)
    # Make the deadlines run in the reverse of id order.
    for i, m in enumerate(taken):
        assert b.touch("q", m.id, m.lease, 10.0 - i, T0) == T0 + 10.0 - i
    assert b.next_deadline() == T0 + 7.0
    assert b.advance(T0 + 10.0) == 4
    assert ids_of(b.receive("q", 4, None, T0 + 10.0)) == ids


def test_ten_thousand_leases_running_out_at_once_all_come_back_in_id_order() -> None:
    broker = Broker(visibility_timeout_s=30.0)
    n = 10_000
    ids = broker.put_many("q", [str(i).encode() for i in range(n)], T0)
    assert len(ids) == n and ids == sorted(ids) and len(set(ids)) == n
    # Received in batches at different times, but all with the same deadline.
    for k in range(10):
        taken = broker.receive("q", 1000, 30.0 - k, T0 + k)
        assert ids_of(taken) == ids[k * 1000:(k + 1) * 1000]
    assert counts(broker) == zero_counts(in_flight=n, put_total=n)
    assert broker.next_deadline() == T0 + 30.0
    assert broker.advance(T0 + 30.0) == n
    assert counts(broker) == zero_counts(ready=n, put_total=n)
    assert broker.next_deadline() is None
    again = broker.receive("q", n, None, T0 + 31.0)
    assert ids_of(again) == ids
    assert [m.body for m in again[:3]] == [b"0", b"1", b"2"]
    assert {m.deliveries for m in again} == {2}
    assert counts(broker) == zero_counts(in_flight=n, put_total=n, redelivered_total=n)
    check_invariants(broker)


def test_zero_visibility_expires_at_the_next_advance(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 0.0, T0)
    assert m.deadline_at == T0
    assert b.next_deadline() == T0
    assert b.advance(T0) == 1
    assert ids_of(b.receive("q", 1, None, T0)) == [msg_id]


# --------------------------------------------------------------- late ack

def test_late_ack_before_the_timer_fires_succeeds(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    b.ack("q", msg_id, m.lease, T0 + 50.0)  # lease ran out, advance not yet called
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
    assert b.next_deadline() is None
    assert b.advance(T0 + 50.0) == 0
    assert b.receive("q", 1, None, T0 + 50.0) == []


def test_late_ack_after_the_message_went_back_succeeds(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    b.advance(T0 + 10.0)
    assert counts(b) == zero_counts(ready=1, put_total=1)
    b.ack("q", msg_id, m.lease, T0 + 11.0)
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
    assert b.stats(T0)["messages"] == 0
    assert b.receive("q", 1, None, T0 + 12.0) == []
    check_invariants(b)


def test_late_ack_of_a_ready_message_does_not_disturb_the_others(b: Broker) -> None:
    ids = b.put_many("q", [b"1", b"2", b"3"], T0)
    taken = b.receive("q", 3, 10.0, T0)
    b.advance(T0 + 10.0)
    b.ack("q", ids[1], taken[1].lease, T0 + 11.0)
    assert ids_of(b.receive("q", 3, None, T0 + 11.0)) == [ids[0], ids[2]]
    assert counts(b) == zero_counts(in_flight=2, put_total=3, acked_total=1,
                                    redelivered_total=2)


def test_stale_lease_after_redelivery_is_refused_and_changes_nothing(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    stale = m.lease
    b.advance(T0 + 10.0)
    [m2] = b.receive("q", 1, 20.0, T0 + 11.0)
    fresh = m2.lease
    before = b.stats(T0)
    assert error_code(b.ack, "q", msg_id, stale, T0 + 12.0) == LEASE_LOST
    assert error_code(b.nack, "q", msg_id, stale, 0.0, T0 + 12.0) == LEASE_LOST
    assert error_code(b.nack, "q", msg_id, stale, 5.0, T0 + 12.0) == LEASE_LOST
    assert error_code(b.touch, "q", msg_id, stale, 100.0, T0 + 12.0) == LEASE_LOST
    assert b.stats(T0) == before
    assert (m2.state, m2.lease, m2.deadline_at, m2.deliveries) == (LEASED, fresh, T0 + 31.0, 2)
    assert b.next_deadline() == T0 + 31.0
    b.ack("q", msg_id, fresh, T0 + 13.0)  # the latest lease still works
    assert counts(b) == zero_counts(put_total=1, acked_total=1, redelivered_total=1)


def test_stale_lease_is_refused_even_when_the_new_lease_ran_out(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 1.0, T0)
    stale = m.lease
    b.advance(T0 + 1.0)
    [m2] = b.receive("q", 1, 1.0, T0 + 1.0)
    b.advance(T0 + 2.0)  # back in ready, still held by m2's lease for a late ack
    assert error_code(b.ack, "q", msg_id, stale, T0 + 3.0) == LEASE_LOST
    assert counts(b) == zero_counts(ready=1, put_total=1, redelivered_total=1)
    b.ack("q", msg_id, m2.lease, T0 + 3.0)
    assert counts(b) == zero_counts(put_total=1, acked_total=1, redelivered_total=1)


def test_a_message_never_delivered_has_no_lease_to_match(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    assert error_code(b.ack, "q", msg_id, msg_id, T0) == LEASE_LOST
    assert error_code(b.ack, "q", msg_id, 0, T0) == LEASE_LOST
    assert error_code(b.touch, "q", msg_id, 0, None, T0) == LEASE_LOST
    assert counts(b) == zero_counts(ready=1, put_total=1)


def test_unknown_message_is_not_found(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    for call, extra in [(b.ack, ()), (b.nack, (0.0,)), (b.touch, (None,))]:
        assert error_code(call, "q", msg_id + 1000, m.lease, *extra, T0) == NOT_FOUND
        assert error_code(call, "nosuchqueue", msg_id, m.lease, *extra, T0) == NOT_FOUND
        assert error_code(call, "q", m.lease, m.lease, *extra, T0) == NOT_FOUND
    assert "nosuchqueue" not in b.queues  # looking does not create the queue
    assert counts(b) == zero_counts(in_flight=1, put_total=1)


def test_message_is_found_only_in_its_own_queue(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    b.put("other", b"y", T0)
    [m] = b.receive("q", 1, None, T0)
    assert error_code(b.ack, "other", msg_id, m.lease, T0) == NOT_FOUND
    b.ack("q", msg_id, m.lease, T0)


def test_already_acked_message_is_not_found(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    b.ack("q", msg_id, m.lease, T0)
    assert error_code(b.ack, "q", msg_id, m.lease, T0) == NOT_FOUND
    assert error_code(b.nack, "q", msg_id, m.lease, 0.0, T0) == NOT_FOUND
    assert error_code(b.touch, "q", msg_id, m.lease, None, T0) == NOT_FOUND
    assert counts(b) == zero_counts(put_total=1, acked_total=1)


def test_error_codes_are_command_errors_that_keep_the_connection(b: Broker) -> None:
    with pytest.raises(CommandError) as info:
        b.ack("q", 1, 2, T0)
    assert info.value.code == NOT_FOUND
    assert info.value.closes_connection is False


# ------------------------------------------------------------------- nack

def test_nack_without_delay_makes_the_message_ready_at_once(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 1.0)
    assert m.state == READY
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert b.next_deadline() is None  # the lease's deadline is gone
    assert b.advance(T0 + 100.0) == 0
    [again] = b.receive("q", 1, None, T0 + 2.0)
    assert (again.id, again.deliveries) == (msg_id, 2)
    assert counts(b) == zero_counts(in_flight=1, put_total=1, redelivered_total=1)


def test_nacked_message_goes_back_by_its_id(b: Broker) -> None:
    first, second = b.put_many("q", [b"1", b"2"], T0)
    [m] = b.receive("q", 1, None, T0)
    assert m.id == first
    b.nack("q", first, m.lease, 0.0, T0 + 1.0)
    assert ids_of(b.receive("q", 2, None, T0 + 1.0)) == [first, second]


def test_nack_with_delay_hides_the_message_until_the_delay_passes(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    b.nack("q", msg_id, m.lease, 5.0, T0 + 1.0)
    assert m.state == DELAYED
    assert counts(b) == zero_counts(delayed=1, put_total=1)
    assert b.next_deadline() == T0 + 6.0
    assert b.receive("q", 1, None, T0 + 5.9) == []
    assert b.advance(T0 + 5.999) == 0
    assert b.receive("q", 1, None, T0 + 5.999) == []
    # The lease's old deadline (T0 + 10) is no longer live, so it cannot fire.
    assert b.advance(T0 + 6.0) == 1
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert b.next_deadline() is None
    assert b.advance(T0 + 10.0) == 0
    [again] = b.receive("q", 1, None, T0 + 10.0)
    assert (again.id, again.deliveries) == (msg_id, 2)
    assert counts(b) == zero_counts(in_flight=1, put_total=1, redelivered_total=1)


def test_delayed_message_comes_back_ahead_of_newer_ones(b: Broker) -> None:
    old = b.put("q", b"old", T0)
    [m] = b.receive("q", 1, None, T0)
    b.nack("q", old, m.lease, 3.0, T0)
    new = b.put("q", b"new", T0 + 1.0)
    b.advance(T0 + 3.0)
    assert ids_of(b.receive("q", 2, None, T0 + 3.0)) == [old, new]


def test_late_nack_with_delay_hides_a_message_that_went_back(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 1.0, T0)
    b.advance(T0 + 1.0)
    assert counts(b) == zero_counts(ready=1, put_total=1)
    b.nack("q", msg_id, m.lease, 4.0, T0 + 2.0)
    assert counts(b) == zero_counts(delayed=1, put_total=1)
    assert b.receive("q", 1, None, T0 + 2.0) == []
    b.advance(T0 + 6.0)
    assert ids_of(b.receive("q", 1, None, T0 + 6.0)) == [msg_id]
    check_invariants(b)


def test_the_delaying_lease_can_still_ack(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    b.nack("q", msg_id, m.lease, 5.0, T0)
    b.ack("q", msg_id, m.lease, T0 + 1.0)
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
    assert b.next_deadline() is None
    assert b.advance(T0 + 5.0) == 0


# ------------------------------------------------------------------ touch

def test_touch_extends_a_lease(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    assert b.touch("q", msg_id, m.lease, 10.0, T0 + 8.0) == T0 + 18.0
    assert m.deadline_at == T0 + 18.0
    assert b.next_deadline() == T0 + 18.0
    assert b.advance(T0 + 10.0) == 0  # the old deadline is stale
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.advance(T0 + 17.999) == 0
    assert b.advance(T0 + 18.0) == 1
    assert counts(b) == zero_counts(ready=1, put_total=1)


def test_touch_without_visibility_uses_the_default(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 5.0, T0)
    assert b.touch("q", msg_id, m.lease, None, T0 + 1.0) == T0 + 1.0 + VISIBILITY


def test_touch_can_shorten_a_lease(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 100.0, T0)
    assert b.touch("q", msg_id, m.lease, 1.0, T0) == T0 + 1.0
    assert b.next_deadline() == T0 + 1.0
    assert b.advance(T0 + 1.0) == 1


def test_touch_keeps_the_lease_and_delivery_count(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    lease = m.lease
    b.touch("q", msg_id, lease, 10.0, T0 + 5.0)
    assert (m.lease, m.deliveries) == (lease, 1)
    b.ack("q", msg_id, lease, T0 + 6.0)
    assert counts(b) == zero_counts(put_total=1, acked_total=1)


def test_late_touch_before_the_timer_fires_renews_the_lease(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    assert b.touch("q", msg_id, m.lease, 10.0, T0 + 12.0) == T0 + 22.0
    assert b.advance(T0 + 12.0) == 0  # nothing went back
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.next_deadline() == T0 + 22.0


def test_late_touch_after_the_message_went_back_takes_it_again(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    b.advance(T0 + 10.0)
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert b.touch("q", msg_id, m.lease, 10.0, T0 + 15.0) == T0 + 25.0
    assert (m.state, m.deliveries) == (LEASED, 1)
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.receive("q", 1, None, T0 + 16.0) == []
    b.ack("q", msg_id, m.lease, T0 + 17.0)
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
    check_invariants(b)


def test_touch_of_a_delayed_message_leases_it_again(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    b.nack("q", msg_id, m.lease, 50.0, T0)
    assert b.touch("q", msg_id, m.lease, 5.0, T0 + 1.0) == T0 + 6.0
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.next_deadline() == T0 + 6.0


def test_many_touches_keep_the_deadline_heap_bounded(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    for i in range(10_000):
        b.touch("q", msg_id, m.lease, 10.0, T0 + i)
        assert len(b.deadlines) <= 2 * 64 + 1
    assert b.next_deadline() == T0 + 9_999 + 10.0
    assert b.advance(T0 + 10_008.0) == 0
    assert b.advance(T0 + 10_009.0) == 1


def test_touching_many_messages_to_the_same_instant_keeps_the_heap_bounded(b: Broker) -> None:
    """Every touch below moves a lease to the deadline it already has (same now, same
    visibility), which makes the older heap entries live again; they must not pile up."""
    ids = b.put_many("q", [b"1", b"2", b"3", b"4", b"5"], T0)
    taken = b.receive("q", 5, 10.0, T0)
    for _ in range(4_000):
        for m in taken:
            assert b.touch("q", m.id, m.lease, 10.0, T0 + 2.0) == T0 + 12.0
        assert len(b.deadlines) <= 2 * 64 + len(taken)
    assert b.next_deadline() == T0 + 12.0
    assert b.advance(T0 + 12.0) == 5  # each message handled once
    assert b.next_deadline() is None
    assert len(b.deadlines) == 0
    assert counts(b) == zero_counts(ready=5, put_total=5)
    assert ids_of(b.receive("q", 10, None, T0 + 12.0)) == ids


# ---------------------------------------------------------------- waiters

def test_wait_parks_until_a_put_serves_it(b: Broker) -> None:
    inbox = Inbox()
    waiter = b.wait("q", 5, 7.0, T0 + 20.0, inbox, T0)
    assert isinstance(waiter, Waiter)
    assert inbox.calls == []
    assert counts(b) == zero_counts(waiting=1)
    assert b.stats(T0)["waiting_consumers"] == 1
    assert b.next_deadline() == T0 + 20.0
    msg_id = b.put("q", b"x", T0 + 3.0)
    assert inbox.ids == [[msg_id]]
    [m] = inbox.calls[0]
    assert (m.state, m.deliveries, m.deadline_at) == (LEASED, 1, T0 + 10.0)
    assert waiter.done
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.stats(T0)["waiting_consumers"] == 0
    assert b.next_deadline() == T0 + 10.0  # the wait's own deadline is forgotten
    assert b.advance(T0 + 20.0) == 1  # only the lease
    assert inbox.ids == [[msg_id]]  # deliver was called exactly once
    check_invariants(b)


def test_waiter_without_visibility_uses_the_default(b: Broker) -> None:
    inbox = Inbox()
    b.wait("q", 1, None, T0 + 20.0, inbox, T0)
    b.put("q", b"x", T0 + 1.0)
    assert inbox.calls[0][0].deadline_at == T0 + 1.0 + VISIBILITY


def test_wait_on_a_queue_with_ready_messages_is_served_at_once(b: Broker) -> None:
    ids = b.put_many("q", [b"1", b"2", b"3"], T0)
    inbox = Inbox()
    waiter = b.wait("q", 2, 5.0, T0 + 20.0, inbox, T0 + 1.0)
    assert inbox.ids == [ids[:2]]
    assert waiter.done
    assert counts(b) == zero_counts(ready=1, in_flight=2, put_total=3)
    assert b.next_deadline() == T0 + 6.0
    check_invariants(b)


def test_waiters_are_served_first_come_first_served(b: Broker) -> None:
    inboxes = [Inbox() for _ in range(4)]
    for i, inbox in enumerate(inboxes):
        b.wait("q", 1, None, T0 + 100.0 - i, inbox, T0 + i)
    first = b.put("q", b"a", T0 + 10.0)
    assert [x.ids for x in inboxes] == [[[first]], [], [], []]
    second, third = b.put_many("q", [b"b", b"c"], T0 + 11.0)
    assert [x.ids for x in inboxes] == [[[first]], [[second]], [[third]], []]
    assert counts(b) == zero_counts(in_flight=3, waiting=1, put_total=3)
    check_invariants(b)


def test_waiter_takes_up_to_its_max_and_leaves_the_rest_ready(b: Broker) -> None:
    inbox = Inbox()
    b.wait("q", 3, None, T0 + 10.0, inbox, T0)
    ids = b.put_many("q", [b"1", b"2", b"3", b"4", b"5"], T0 + 1.0)
    assert inbox.ids == [ids[:3]]  # one delivery, with all it could take
    assert counts(b) == zero_counts(ready=2, in_flight=3, put_total=5)
    check_invariants(b)


def test_waiters_share_a_batch_in_order(b: Broker) -> None:
    a, c = Inbox(), Inbox()
    b.wait("q", 2, None, T0 + 10.0, a, T0)
    b.wait("q", 2, None, T0 + 10.0, c, T0)
    ids = b.put_many("q", [b"1", b"2", b"3"], T0 + 1.0)
    assert a.ids == [ids[:2]]
    assert c.ids == [ids[2:]]
    assert counts(b) == zero_counts(in_flight=3, put_total=3)


def test_wait_that_runs_out_gets_an_empty_list(b: Broker) -> None:
    inbox = Inbox()
    waiter = b.wait("q", 1, None, T0 + 5.0, inbox, T0)
    assert b.advance(T0 + 4.999) == 0
    assert inbox.calls == []
    assert b.advance(T0 + 5.0) == 1
    assert inbox.calls == [[]]
    assert waiter.done
    assert counts(b) == zero_counts()
    assert b.next_deadline() is None
    msg_id = b.put("q", b"x", T0 + 6.0)
    assert inbox.calls == [[]]  # never called twice
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert ids_of(b.receive("q", 1, None, T0 + 6.0)) == [msg_id]


def test_expired_waiter_is_skipped_and_the_next_one_served(b: Broker) -> None:
    early, late = Inbox(), Inbox()
    b.wait("q", 1, None, T0 + 5.0, early, T0)
    b.wait("q", 1, None, T0 + 50.0, late, T0)
    b.advance(T0 + 5.0)
    msg_id = b.put("q", b"x", T0 + 6.0)
    assert early.calls == [[]]
    assert late.ids == [[msg_id]]


def test_cancelled_waiter_never_takes_a_message(b: Broker) -> None:
    inbox = Inbox()
    waiter = b.wait("q", 1, None, T0 + 10.0, inbox, T0)
    b.cancel_wait(waiter)
    assert waiter.done
    assert counts(b) == zero_counts()
    assert b.next_deadline() is None
    b.put("q", b"x", T0 + 1.0)
    assert b.advance(T0 + 10.0) == 0
    assert inbox.calls == []
    assert counts(b) == zero_counts(ready=1, put_total=1)
    b.cancel_wait(waiter)  # idempotent
    assert inbox.calls == []
    check_invariants(b)


def test_cancelled_waiter_is_skipped_in_line(b: Broker) -> None:
    first, second = Inbox(), Inbox()
    w1 = b.wait("q", 1, None, T0 + 10.0, first, T0)
    b.wait("q", 1, None, T0 + 10.0, second, T0)
    b.cancel_wait(w1)
    assert counts(b) == zero_counts(waiting=1)
    msg_id = b.put("q", b"x", T0 + 1.0)
    assert first.calls == []
    assert second.ids == [[msg_id]]


def test_cancel_after_being_served_or_timed_out_changes_nothing(b: Broker) -> None:
    served, timed_out = Inbox(), Inbox()
    w1 = b.wait("q", 1, None, T0 + 10.0, served, T0)
    b.put("q", b"x", T0)
    w2 = b.wait("q", 1, None, T0 + 10.0, timed_out, T0)
    b.advance(T0 + 10.0)
    before = b.stats(T0)
    b.cancel_wait(w1)
    b.cancel_wait(w2)
    assert b.stats(T0) == before
    assert len(served.calls) == 1 and timed_out.calls == [[]]
    inbox = Inbox()
    b.wait("q", 1, None, T0 + 20.0, inbox, T0 + 11.0)
    assert counts(b)["waiting"] == 1


def test_waiter_is_served_by_nack(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    inbox = Inbox()
    b.wait("q", 1, 4.0, T0 + 10.0, inbox, T0)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 1.0)
    assert inbox.ids == [[msg_id]]
    [again] = inbox.calls[0]
    assert (again.deliveries, again.deadline_at) == (2, T0 + 5.0)
    assert counts(b) == zero_counts(in_flight=1, put_total=1, redelivered_total=1)


def test_waiter_is_served_when_a_nack_delay_ends(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    b.nack("q", msg_id, m.lease, 3.0, T0)
    inbox = Inbox()
    b.wait("q", 1, None, T0 + 10.0, inbox, T0 + 1.0)
    assert inbox.calls == []
    assert b.next_deadline() == T0 + 3.0
    assert b.advance(T0 + 3.0) == 1
    assert inbox.ids == [[msg_id]]
    assert b.next_deadline() == T0 + 3.0 + VISIBILITY


def test_waiter_is_served_when_a_lease_runs_out(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    b.receive("q", 1, 5.0, T0)
    inbox = Inbox()
    b.wait("q", 1, 2.0, T0 + 10.0, inbox, T0 + 1.0)
    assert b.advance(T0 + 5.0) == 1
    assert inbox.ids == [[msg_id]]
    assert inbox.calls[0][0].deliveries == 2
    assert inbox.calls[0][0].deadline_at == T0 + 7.0
    assert counts(b) == zero_counts(in_flight=1, put_total=1, redelivered_total=1)
    check_invariants(b)


def test_message_freed_as_a_wait_ends_reaches_the_waiter(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    b.receive("q", 1, 10.0, T0)
    inbox = Inbox()
    b.wait("q", 1, None, T0 + 10.0, inbox, T0)
    assert b.advance(T0 + 10.0) == 2
    assert inbox.ids == [[msg_id]]  # not []
    assert counts(b) == zero_counts(in_flight=1, put_total=1, redelivered_total=1)
    check_invariants(b)


def test_expiring_waiters_are_answered_in_deadline_order(b: Broker) -> None:
    order: list[str] = []
    b.wait("q", 1, None, T0 + 3.0, lambda got: order.append("c"), T0)
    b.wait("q", 1, None, T0 + 1.0, lambda got: order.append("a"), T0)
    b.wait("r", 1, None, T0 + 2.0, lambda got: order.append("b"), T0)
    assert b.next_deadline() == T0 + 1.0
    assert b.advance(T0 + 3.0) == 3
    assert order == ["a", "b", "c"]
    assert b.stats(T0)["waiting_consumers"] == 0


def test_waiters_on_other_queues_are_not_served(b: Broker) -> None:
    inbox = Inbox()
    b.wait("a", 1, None, T0 + 10.0, inbox, T0)
    b.put("c", b"x", T0)
    assert inbox.calls == []
    assert counts(b, "a") == zero_counts(waiting=1)
    assert counts(b, "c") == zero_counts(ready=1, put_total=1)


def test_many_timed_out_or_cancelled_waiters_do_not_pile_up(b: Broker) -> None:
    now = T0
    for i in range(5_000):
        waiter = b.wait("q", 1, None, now + 1.0, Inbox(), now)
        if i % 2:
            b.cancel_wait(waiter)
        else:
            now += 1.0
            b.advance(now)
        assert len(b.queues["q"].waiters) <= 2
    assert counts(b) == zero_counts()
    assert len(b.deadlines) <= 2 * 64 + 1


def test_queue_never_has_ready_messages_and_a_live_waiter(b: Broker) -> None:
    """A scripted tour of every way a message becomes ready, checking after each step."""
    inboxes = [Inbox() for _ in range(6)]
    check_invariants(b)
    b.wait("q", 1, 5.0, T0 + 100.0, inboxes[0], T0)
    b.wait("q", 2, 5.0, T0 + 100.0, inboxes[1], T0)
    check_invariants(b)
    ids = b.put_many("q", [b"1", b"2", b"3", b"4"], T0 + 1.0)
    check_invariants(b)
    assert inboxes[0].ids == [ids[:1]] and inboxes[1].ids == [ids[1:3]]
    assert counts(b)["ready"] == 1
    b.wait("q", 5, 5.0, T0 + 100.0, inboxes[2], T0 + 2.0)
    check_invariants(b)
    assert inboxes[2].ids == [ids[3:]]
    b.wait("q", 1, 5.0, T0 + 100.0, inboxes[3], T0 + 2.0)
    b.wait("q", 1, 5.0, T0 + 100.0, inboxes[4], T0 + 2.0)
    b.wait("q", 1, 5.0, T0 + 100.0, inboxes[5], T0 + 2.0)
    check_invariants(b)
    [m0] = inboxes[0].calls[0]
    b.nack("q", m0.id, m0.lease, 0.0, T0 + 3.0)
    check_invariants(b)
    assert inboxes[3].ids == [[ids[0]]]
    m1, _ = inboxes[1].calls[0]
    b.nack("q", m1.id, m1.lease, 1.0, T0 + 3.0)
    check_invariants(b)
    b.advance(T0 + 4.0)
    check_invariants(b)
    assert inboxes[4].ids == [[ids[1]]]
    b.advance(T0 + 7.0)  # m2 (T0 + 6) and m3's lease (T0 + 7) run out
    check_invariants(b)
    assert inboxes[5].ids == [[ids[2]]]
    assert counts(b) == zero_counts(ready=1, in_flight=3, put_total=4, redelivered_total=3)


# ---------------------------------------------------------------- stats

def test_stats_stay_consistent_through_every_operation(b: Broker) -> None:
    ids = b.put_many("q", [b"1", b"2", b"3", b"4", b"5"], T0)
    assert counts(b) == zero_counts(ready=5, put_total=5)
    taken = b.receive("q", 4, 10.0, T0)
    assert counts(b) == zero_counts(ready=1, in_flight=4, put_total=5)
    b.ack("q", ids[0], taken[0].lease, T0 + 1.0)
    assert counts(b) == zero_counts(ready=1, in_flight=3, put_total=5, acked_total=1)
    b.nack("q", ids[1], taken[1].lease, 0.0, T0 + 1.0)
    assert counts(b) == zero_counts(ready=2, in_flight=2, put_total=5, acked_total=1)
    b.nack("q", ids[2], taken[2].lease, 5.0, T0 + 1.0)
    assert counts(b) == zero_counts(ready=2, in_flight=1, delayed=1, put_total=5,
                                    acked_total=1)
    b.touch("q", ids[3], taken[3].lease, 20.0, T0 + 1.0)
    assert counts(b) == zero_counts(ready=2, in_flight=1, delayed=1, put_total=5,
                                    acked_total=1)
    b.advance(T0 + 6.0)  # the delay ends
    assert counts(b) == zero_counts(ready=3, in_flight=1, put_total=5, acked_total=1)
    again = b.receive("q", 10, 10.0, T0 + 6.0)
    assert ids_of(again) == [ids[1], ids[2], ids[4]]
    assert [m.deliveries for m in again] == [2, 2, 1]
    assert counts(b) == zero_counts(in_flight=4, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.wait("q", 1, None, T0 + 7.0, Inbox(), T0 + 6.0)
    assert counts(b) == zero_counts(in_flight=4, waiting=1, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.advance(T0 + 7.0)
    assert counts(b) == zero_counts(in_flight=4, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.advance(T0 + 16.0)  # three leases run out
    assert counts(b) == zero_counts(ready=3, in_flight=1, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.advance(T0 + 21.0)  # the touched one too
    assert counts(b) == zero_counts(ready=4, put_total=5, acked_total=1,
                                    redelivered_total=2)
    everything = b.receive("q", 10, None, T0 + 21.0)
    for m in everything:
        b.ack("q", m.id, m.lease, T0 + 22.0)
    assert counts(b) == zero_counts(put_total=5, acked_total=5, redelivered_total=6)
    assert b.stats(T0) == {
        "messages": 0,
        "waiting_consumers": 0,
        "queues": {"q": zero_counts(put_total=5, acked_total=5, redelivered_total=6)},
    }
    check_invariants(b)


def test_stats_totals_over_several_queues(b: Broker) -> None:
    b.put_many("a", [b"1", b"2"], T0)
    b.put("c", b"3", T0)
    b.wait("w", 1, None, T0 + 9.0, Inbox(), T0)
    b.wait("w", 1, None, T0 + 9.0, Inbox(), T0)
    stats = b.stats(T0)
    assert stats["messages"] == 3
    assert stats["waiting_consumers"] == 2
    assert stats["queues"] == {
        "a": zero_counts(ready=2, put_total=2),
        "c": zero_counts(ready=1, put_total=1),
        "w": zero_counts(waiting=2),
    }


# --------------------------------------------------------------- refusals

def test_body_at_the_limit_is_accepted(b: Broker) -> None:
    b.put("q", b"x" * MAX_BYTES, T0)
    [m] = b.receive("q", 1, None, T0)
    assert len(m.body) == MAX_BYTES


def test_body_too_large_is_refused_and_stores_nothing(b: Broker) -> None:
    inbox = Inbox()
    b.wait("w", 1, None, T0 + 10.0, inbox, T0)
    assert error_code(b.put, "q", b"x" * (MAX_BYTES + 1), T0) == BODY_TOO_LARGE
    assert error_code(b.put, "w", b"x" * (MAX_BYTES + 1), T0) == BODY_TOO_LARGE
    assert "q" not in b.queues
    assert counts(b, "w") == zero_counts(waiting=1)
    assert inbox.calls == []
    assert b.stats(T0)["messages"] == 0
    assert b.put("q", b"ok", T0) == first_id(T0)  # not even an id was used


def test_put_many_stores_all_or_none(b: Broker) -> None:
    inbox = Inbox()
    b.wait("q", 10, None, T0 + 10.0, inbox, T0)
    bodies = [b"a", b"b", b"x" * (MAX_BYTES + 1), b"d"]
    assert error_code(b.put_many, "q", bodies, T0) == BODY_TOO_LARGE
    assert counts(b) == zero_counts(waiting=1)
    assert inbox.calls == []
    assert b.stats(T0)["messages"] == 0
    ids = b.put_many("q", [b"a", b"b", b"c"], T0)
    assert ids == [first_id(T0), first_id(T0) + 1, first_id(T0) + 2]
    assert inbox.ids == [ids]  # all three in one delivery, after all were stored


def test_put_many_with_a_bad_queue_name_stores_nothing(b: Broker) -> None:
    assert error_code(b.put_many, "bad name", [b"a"], T0) == INVALID_QUEUE_NAME
    assert b.stats(T0) == {"messages": 0, "waiting_consumers": 0, "queues": {}}


VALID_128 = ("AZaz09_-." * 15)[:128]


@pytest.mark.parametrize("name", [
    "q", "Q", "0", "_", "-", ".", "..", "a.b-c_D9", VALID_128,
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.",
])
def test_valid_queue_names_are_accepted(b: Broker, name: str) -> None:
    assert len(name) <= 128
    msg_id = b.put(name, b"x", T0)
    assert ids_of(b.receive(name, 1, None, T0)) == [msg_id]
    assert list(b.queues) == [name]


@pytest.mark.parametrize("name", [
    "", VALID_128 + "a", "a" * 129, "a" * 1000, " ", "a b", "a/b", "/", "a\\b", "a\n",
    "\na", "a\tb", "a:b", "a*", "é", "ü", "q\x00", "\u0661", "\uff51",
    None, 5, 5.0, b"q", ["q"], ("q",), {"q": 1},
])
def test_invalid_queue_names_are_refused(b: Broker, name: Any) -> None:
    assert error_code(b.put, name, b"x", T0) == INVALID_QUEUE_NAME
    assert error_code(b.put_many, name, [b"x"], T0) == INVALID_QUEUE_NAME
    assert error_code(b.receive, name, 1, None, T0) == INVALID_QUEUE_NAME
    assert error_code(b.wait, name, 1, None, T0 + 1.0, Inbox(), T0) == INVALID_QUEUE_NAME
    assert b.stats(T0) == {"messages": 0, "waiting_consumers": 0, "queues": {}}
    assert b.next_deadline() is None


# ---------------------------------------------------------- next deadline

def test_next_deadline_is_the_earliest_live_one(b: Broker) -> None:
    assert b.next_deadline() is None
    ids = b.put_many("q", [b"1", b"2", b"3"], T0)
    assert b.next_deadline() is None  # ready messages have no deadline
    lease_a, lease_b, lease_c = b.receive("q", 3, 20.0, T0)  # all due at T0 + 20
    assert b.next_deadline() == T0 + 20.0
    b.touch("q", ids[0], lease_a.lease, 30.0, T0)  # a: T0 + 30
    b.nack("q", ids[1], lease_b.lease, 8.0, T0)  # b: delayed until T0 + 8
    assert b.next_deadline() == T0 + 8.0
    waiter = b.wait("w", 1, None, T0 + 5.0, Inbox(), T0)
    assert b.next_deadline() == T0 + 5.0
    b.cancel_wait(waiter)
    assert b.next_deadline() == T0 + 8.0
    b.ack("q", ids[1], lease_b.lease, T0 + 1.0)
    assert b.next_deadline() == T0 + 20.0  # c's lease
    b.ack("q", ids[2], lease_c.lease, T0 + 1.0)
    assert b.next_deadline() == T0 + 30.0  # a's touched lease, not its old T0 + 20
    assert b.advance(T0 + 29.0) == 0
    assert b.advance(T0 + 30.0) == 1
    assert b.next_deadline() is None


def test_next_deadline_after_a_waiter_is_served(b: Broker) -> None:
    b.wait("q", 1, 50.0, T0 + 5.0, Inbox(), T0)
    b.put("q", b"x", T0 + 1.0)
    assert b.next_deadline() == T0 + 51.0


# ---------------------------------------------------- ready-heap compaction

def test_ready_heap_compaction_after_many_late_acks(b: Broker) -> None:
    n, keep = 300, 50
    ids = b.put_many("q", [str(i).encode() for i in range(n)], T0)
    taken = b.receive("q", n, 1.0, T0)
    b.advance(T0 + 1.0)  # all back in ready; the heap holds n entries again
    q = b.queues["q"]
    kept = set(ids[::6][:keep])
    for m in taken:
        if m.id not in kept:
            b.ack("q", m.id, m.lease, T0 + 2.0)
            assert len(q.ready) <= 2 * q.ready_count + READY_HEAP_SLACK
    assert len(q.ready) < n  # it was rebuilt at least once
    assert counts(b) == zero_counts(ready=keep, put_total=n, acked_total=n - keep)
    check_invariants(b)
    again = b.receive("q", n, None, T0 + 3.0)
    assert ids_of(again) == sorted(kept)
    assert {m.deliveries for m in again} == {2}
    for m in again:
        b.ack("q", m.id, m.lease, T0 + 4.0)
    assert counts(b) == zero_counts(put_total=n, acked_total=n, redelivered_total=keep)


def test_ready_heap_compaction_keeps_order_for_later_puts(b: Broker) -> None:
    ids = b.put_many("q", [b"m"] * 200, T0)
    taken = b.receive("q", 200, 1.0, T0)
    b.advance(T0 + 1.0)
    for m in taken[:-1]:
        b.ack("q", m.id, m.lease, T0 + 2.0)
    newer = b.put_many("q", [b"n1", b"n2"], T0 + 3.0)
    assert ids_of(b.receive("q", 10, None, T0 + 3.0)) == [ids[-1], *newer]


def test_ready_heap_compaction_drops_messages_taken_back_by_late_touches(b: Broker) -> None:
    n = 300
    ids = b.put_many("q", [b"m"] * n, T0)
    taken = b.receive("q", n, 1.0, T0)
    b.advance(T0 + 1.0)  # all back in ready: n entries
    q = b.queues["q"]
    for m in taken[1:]:
        b.touch("q", m.id, m.lease, 5.0, T0 + 2.0)  # late touch: leased again, entry stale
    assert counts(b) == zero_counts(ready=1, in_flight=n - 1, put_total=n)
    assert len(q.ready) == n  # nothing has been rebuilt yet
    b.ack("q", ids[0], taken[0].lease, T0 + 2.0)  # rebuilt: no message is ready
    assert len(q.ready) == 0
    assert b.receive("q", n, None, T0 + 2.0) == []
    assert b.advance(T0 + 7.0) == n - 1
    assert ids_of(b.receive("q", n, None, T0 + 7.0)) == ids[1:]


def test_repeated_nacks_of_one_message_keep_the_ready_heap_bounded(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    q = b.queues["q"]
    for i in range(10_000):
        b.nack("q", msg_id, m.lease, 0.0, T0 + i)  # the lease stays the latest one
        assert len(q.ready) <= 2 * q.ready_count + READY_HEAP_SLACK + 1
    assert counts(b) == zero_counts(ready=1, put_total=1)
    assert ids_of(b.receive("q", 5, None, T0 + 10_000.0)) == [msg_id]
    assert b.receive("q", 5, None, T0 + 10_000.0) == []


def test_late_touch_cycles_keep_the_ready_heap_bounded(b: Broker) -> None:
    oldest = b.put("q", b"oldest", T0)  # stays ready the whole time, at the top
    msg_id = b.put("q", b"x", T0)
    q = b.queues["q"]
    [m] = [x for x in b.receive("q", 2, 1.0, T0) if x.id == msg_id]
    b.nack("q", oldest, b.queues["q"].messages[oldest].lease, 0.0, T0)
    now = T0
    for _ in range(5_000):
        now += 1.0
        b.advance(now)  # the lease runs out: back in ready
        b.touch("q", msg_id, m.lease, 1.0, now)  # late touch: taken again
        assert len(q.ready) <= 2 * len(q.messages) + READY_HEAP_SLACK + 1
    assert counts(b) == zero_counts(ready=1, in_flight=1, put_total=2)
    check_invariants(b)
    assert ids_of(b.receive("q", 5, None, now)) == [oldest]
