"""Unit tests of the broker core (wonderq_server/broker.py), numbers as the clock.

Nothing here sleeps: every broker call is given `now`, and time passes only by
calling `advance` with a later number.
"""

from __future__ import annotations

import pytest
from broker_helpers import (  # the `b` fixture comes from broker_helpers too, via conftest.py
    T0,
    VISIBILITY,
    Inbox,
    check_invariants,
    counts,
    error_code,
    first_id,
    hold_a_lease_end_across_its_expiry,
    ids_of,
    zero_counts,
)

from wonderq_server.broker import (
    DEFAULT_MAX_QUEUES,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    READY_HEAP_SLACK,
    Broker,
)
from wonderq_server.deadlines import COMPACT_MIN_SIZE
from wonderq_server.errors import LEASE_LOST, NOT_FOUND, CommandError
from wonderq_server.message import DELAYED, LEASED, READY

# -------------------------------------------------------------- put, receive

def test_fresh_broker_is_empty(b: Broker) -> None:
    assert b.stats(T0) == {"messages": 0, "waiting_consumers": 0, "queue_count": 0,
                           "max_queues": DEFAULT_MAX_QUEUES, "too_many_queues_total": 0,
                           "stored_bytes": 0, "max_memory": 0, "full_refusals_total": 0,
                           "queues": {}}
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
    assert b.queues == {}  # a receive that finds no queue makes none
    b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    b.ack("q", m.id, m.lease, T0)
    assert b.receive("q", 5, None, T0) == []
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
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


@pytest.mark.parametrize("leased", [1, 3])  # a lone lease, and a lease batch
def test_held_lease_ends_come_again_at_the_hold_and_end_once_released(
        b: Broker, leased: int) -> None:
    # The server holds lease ends while its journal writes fail (hold_lease_ends_until):
    # each would be a record the journal cannot take yet.
    b.put_many("q", [b"1", b"2", b"3"], T0)
    b.wait("w", 1, None, T0 + 3.0, Inbox(), T0)  # other deadlines go on meanwhile
    taken = b.receive("q", leased, 5.0, T0)
    b.hold_lease_ends_until = T0 + 6.0
    assert b.advance(T0 + 5.5) == 1  # the wait only
    assert counts(b)["in_flight"] == leased
    assert b.next_deadline() == T0 + 6.0
    assert {b.message_info("q", m.id, T0)["deadline_at"] for m in taken} == {T0 + 6.0}
    b.hold_lease_ends_until = T0 + 7.0
    assert b.advance(T0 + 6.0) == 0  # due again, held again
    assert b.next_deadline() == T0 + 7.0
    b.hold_lease_ends_until = None
    assert b.advance(T0 + 7.0) == leased
    assert counts(b)["in_flight"] == 0 and counts(b)["ready"] == 3
    assert [m.deliveries for m in b.receive("q", 3, 5.0, T0 + 8.0)] == \
        [2] * leased + [1] * (3 - leased)
    check_invariants(b)


@pytest.mark.parametrize("leased", [1, 2])  # a lone lease, and a lease batch
def test_a_held_lease_end_is_judged_at_its_own_time(leased: int) -> None:
    # A deadline is judged at its own time (PROTOCOL.md, Decisions). A reviewer's held
    # lease end was judged at the hold's: a last delivery that ended at T0+5, before the
    # message's expiry at T0+10, had the message dropped as expired at T0+12, where it
    # belongs in the dead-letter queue (whose own expiry, none, then holds), stamped T0+5.
    b = Broker(visibility_timeout_s=5.0)
    b.create_queue("a", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    ids = [b.put("a", b"x", T0, expiry=10.0) for _ in range(leased)]
    b.receive("a", leased, 5.0, T0)
    b.hold_lease_ends_until = T0 + 6
    b.advance(T0 + 5)  # held: due again at T0+6
    b.hold_lease_ends_until = T0 + 12  # writes still failing at T0+6
    b.advance(T0 + 6)
    b.hold_lease_ends_until = None  # writes work again
    b.advance(T0 + 12)  # the expiry (T0+10) first, which leaves a leased message be
    assert b.stats(T0 + 12)["queues"]["a"]["expired_total"] == 0
    for message_id in ids:
        info = b.message_info("dlq", message_id, T0 + 12)
        assert info["dead_letter"] == ["a", T0 + 5]
    assert not b._held_lease_ends
    check_invariants(b)


@pytest.mark.parametrize("leased", [1, 2])  # a lone lease, and a lease batch
def test_a_message_whose_held_lease_ended_before_its_expiry_still_expires(
        b: Broker, leased: int) -> None:
    # Its expiry fired while it was leased (held), and left it be; made ready at its own
    # lease end, it had no expiry to come: it lived on for good, was received again, and a
    # restart's replay dropped it (a reviewer).
    ids = hold_a_lease_end_across_its_expiry(b, leased)
    assert b.stats(T0 + 13)["queues"]["q"]["expired_total"] == leased
    for message_id in ids:
        assert error_code(b.message_info, "q", message_id, T0 + 13) == NOT_FOUND
    assert b.receive("q", 5, 5.0, T0 + 13) == []
    check_invariants(b)


def test_a_held_lease_acked_once_writes_work_is_forgotten(b: Broker) -> None:
    # An ack after the writes work again, before the held end comes, leaves no own end
    # behind for a later lease of the message to be judged by.
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 5.0, T0)
    b.hold_lease_ends_until = T0 + 8
    b.advance(T0 + 5)
    b.hold_lease_ends_until = None
    b.ack("q", msg_id, m.lease, T0 + 6)
    b.advance(T0 + 6)
    assert not b._held_lease_ends
    check_invariants(b)


@pytest.mark.parametrize("leased", [1, 3])  # a lone lease, and a lease batch
def test_held_lease_ends_all_settled_are_forgotten_with_no_deadline_to_come(
        b: Broker, leased: int) -> None:
    # Every held lease acked during the hold: nothing is left in the heap, so no timer
    # comes to run advance, and on an idle server each entry kept its message (and body)
    # for good. The server's once-a-second tick forgets them.
    b.put_many("q", [b"x" * 1000] * leased, T0)
    taken = b.receive("q", leased, 5.0, T0)
    b.hold_lease_ends_until = T0 + 8
    b.advance(T0 + 5)
    assert len(b._held_lease_ends) == 1
    b.ack_many("q", [(m.id, m.lease) for m in taken], T0 + 6)
    assert b.next_deadline() is None
    b.forget_settled_holds()
    assert not b._held_lease_ends
    check_invariants(b)


def test_forgetting_settled_holds_keeps_the_ones_still_held(b: Broker) -> None:
    b.put_many("q", [b"1", b"2"], T0)
    [first] = b.receive("q", 1, 5.0, T0)
    [second] = b.receive("q", 1, 5.0, T0)
    b.hold_lease_ends_until = T0 + 8
    b.advance(T0 + 5)
    b.ack("q", first.id, first.lease, T0 + 6)
    b.forget_settled_holds()
    assert len(b._held_lease_ends) == 1  # the second's own end, still to be judged at
    b.hold_lease_ends_until = None
    assert b.advance(T0 + 8) == 1
    assert b.message_info("q", second.id, T0 + 8)["deliveries"] == 1
    check_invariants(b)


def test_a_hold_already_over_holds_nothing(b: Broker) -> None:
    # Pushed back to a time already due, a lease popped again for ever (a reviewer).
    b.put("q", b"x", T0)
    b.receive("q", 1, 1.0, T0)
    b.hold_lease_ends_until = T0 + 1.5
    assert b.advance(T0 + 2.0) == 1
    assert counts(b)["ready"] == 1
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


def test_a_lease_that_was_never_the_messages_is_refused_and_said_so(b: Broker) -> None:
    # The leases of one batch mixed up: the error must not tell of a redelivery that did
    # not happen (each message was delivered once, and nobody else holds it).
    first, second = b.put_many("q", [b"a", b"b"], T0)
    m1, m2 = b.receive("q", 2, 10.0, T0)
    # A lease above the message's latest, or not above its id, cannot have been its.
    for message_id, lease in ((first, m2.lease), (second, first), (first, first)):
        with pytest.raises(CommandError) as refused:
            b.ack("q", message_id, lease, T0 + 1.0)
        assert refused.value.code == LEASE_LOST
        assert str(refused.value).endswith("that lease was never this message's")
    # Between the two, the broker cannot tell (it keeps no history): it says both.
    with pytest.raises(CommandError) as between:
        b.ack("q", second, m1.lease, T0 + 1.0)
    assert str(between.value).endswith(
        "it has been delivered again since (or that lease was never its)")
    b.ack("q", first, m1.lease, T0 + 2.0)
    b.ack("q", second, m2.lease, T0 + 2.0)


def test_a_lease_after_an_unseen_nack_is_lost_and_the_error_says_no_lease_holds_it(
        b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    lease = m.lease
    b.nack("q", msg_id, lease, 0.0, T0 + 1.0, unseen=True)  # ends the lease for good
    with pytest.raises(CommandError) as given_back:
        b.ack("q", msg_id, lease, T0 + 2.0)
    assert given_back.value.code == LEASE_LOST
    assert "no lease holds it now" in str(given_back.value)
    [again] = b.receive("q", 1, 10.0, T0 + 3.0)
    with pytest.raises(CommandError) as delivered:
        b.ack("q", msg_id, lease, T0 + 4.0)
    assert "delivered again since" in str(delivered.value)
    b.ack("q", msg_id, again.lease, T0 + 5.0)
    # Never delivered, but a Message (a priority): no lease holds it either.
    other = b.put("q", b"y", T0, priority=1)
    with pytest.raises(CommandError) as never:
        b.ack("q", other, lease, T0 + 6.0)
    assert "no lease holds it now (never delivered" in str(never.value)


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


def test_a_nacked_lease_can_still_ack_but_not_touch_or_nack_again(b: Broker) -> None:
    # A reviewer's heartbeat touched a message its consumer had nacked: the touch leased
    # it again, hidden from everyone for an hour by a consumer that had given it back.
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    lease = m.lease
    b.nack("q", msg_id, lease, 0.0, T0 + 1.0)
    assert (m.state, m.lease, m.kept_lease) == (READY, None, lease)
    with pytest.raises(CommandError) as refused:
        b.touch("q", msg_id, lease, 3600.0, T0 + 2.0)
    assert refused.value.code == LEASE_LOST
    assert "ended by a nack" in refused.value.message and "still ack" in refused.value.message
    assert error_code(b.nack, "q", msg_id, lease, 60.0, T0 + 2.0) == LEASE_LOST
    assert error_code(b.nack, "q", msg_id, lease, 0.0, T0 + 2.0, True) == LEASE_LOST
    assert (m.state, m.deliveries) == (READY, 1)  # neither changed anything
    assert counts(b) == zero_counts(ready=1, put_total=1)
    b.ack("q", msg_id, lease, T0 + 3.0)  # a late ack, while nobody else has it
    assert counts(b) == zero_counts(put_total=1, acked_total=1)
    check_invariants(b)


def test_a_nacked_lease_is_lost_once_the_message_is_delivered_again(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    lease = m.lease
    b.nack("q", msg_id, lease, 0.0, T0 + 1.0)
    [again] = b.receive("q", 1, 10.0, T0 + 2.0)
    for call, args in ((b.ack, ()), (b.touch, (None,)), (b.nack, (0.0,))):
        assert error_code(call, "q", msg_id, lease, *args, T0 + 3.0) == LEASE_LOST
    assert (again.state, again.deliveries) == (LEASED, 2)
    b.ack("q", msg_id, again.lease, T0 + 4.0)
    check_invariants(b)


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
    lease = m.lease
    b.nack("q", msg_id, lease, 5.0, T0)
    b.ack("q", msg_id, lease, T0 + 1.0)
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


def test_touch_of_a_nacked_delayed_message_is_refused_and_the_delay_stays(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    lease = m.lease
    b.nack("q", msg_id, lease, 50.0, T0)
    assert error_code(b.touch, "q", msg_id, lease, 5.0, T0 + 1.0) == LEASE_LOST
    assert counts(b) == zero_counts(delayed=1, put_total=1)
    assert b.next_deadline() == T0 + 50.0


def test_many_touches_keep_the_deadline_heap_bounded(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    for i in range(10_000):
        b.touch("q", msg_id, m.lease, 10.0, T0 + i)
        assert len(b.deadlines) <= 2 * COMPACT_MIN_SIZE + 1
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
        assert len(b.deadlines) <= 2 * COMPACT_MIN_SIZE + len(taken)
    assert b.next_deadline() == T0 + 12.0
    assert b.advance(T0 + 12.0) == 5  # each message handled once
    assert b.next_deadline() is None
    assert len(b.deadlines) == 0
    assert counts(b) == zero_counts(ready=5, put_total=5)
    assert ids_of(b.receive("q", 10, None, T0 + 12.0)) == ids


# ---------------------------------------------------------- next deadline

def test_next_deadline_is_the_earliest_live_one(b: Broker) -> None:
    assert b.next_deadline() is None
    ids = b.put_many("q", [b"1", b"2", b"3"], T0)
    assert b.next_deadline() is None  # ready messages have no deadline
    lease_a, lease_b, lease_c = b.receive("q", 3, 20.0, T0)  # all due at T0 + 20
    assert b.next_deadline() == T0 + 20.0
    b.touch("q", ids[0], lease_a.lease, 30.0, T0)  # a: T0 + 30
    b_lease = lease_b.lease
    b.nack("q", ids[1], b_lease, 8.0, T0)  # b: delayed until T0 + 8
    assert b.next_deadline() == T0 + 8.0
    waiter = b.wait("w", 1, None, T0 + 5.0, Inbox(), T0)
    assert b.next_deadline() == T0 + 5.0
    b.cancel_wait(waiter)
    assert b.next_deadline() == T0 + 8.0
    b.ack("q", ids[1], b_lease, T0 + 1.0)  # a late ack of the nacked b
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
        b.nack("q", msg_id, m.lease, 0.0, T0 + i)
        assert len(q.ready) <= 2 * q.ready_count + READY_HEAP_SLACK + 1
        [m] = b.receive("q", 1, None, T0 + i)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 10_000.0)
    assert counts(b) == zero_counts(ready=1, put_total=1, redelivered_total=10_000)
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
