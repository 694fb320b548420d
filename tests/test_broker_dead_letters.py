"""Unit tests of dead-lettering and redrive in the broker (issue 4), numbers as the clock.

A queue with max_deliveries and a dead_letter_queue moves a message there the
moment a delivery at the limit ends without an ack (its lease runs out, or a
nack); redrive moves such messages back. Nothing here sleeps: time passes
only by calling `advance` with a later number.
"""

from __future__ import annotations

import heapq

import pytest
from broker_helpers import (  # the `b` fixture comes from broker_helpers too, via conftest.py
    T0,
    Inbox,
    check_invariants,
    counts,
    error_code,
    ids_of,
    zero_counts,
)

from wonderq_server.broker import MESSAGE_OVERHEAD_BYTES, Broker
from wonderq_server.errors import (
    LEASE_LOST,
    NOT_FOUND,
    QUEUE_NOT_FOUND,
    REDRIVE_RUNNING,
    CommandError,
)
from wonderq_server.message import (
    DELAYED,
    HEADER_ENTRY_BYTES,
    HEADERS_DICT_BYTES,
    ID_MASK,
    LEASED,
    READY,
    Message,
)

HEADERS = {"h": "v"}


def dead_letter_setup(b: Broker, max_deliveries: int = 2, **dlq_settings: float) -> int:
    """A queue "q" dead-lettering to "dlq" after `max_deliveries`; returns a message put at T0."""
    b.create_queue("q", {"max_deliveries": max_deliveries, "dead_letter_queue": "dlq"}, T0)
    if dlq_settings:
        b.create_queue("dlq", dict(dlq_settings), T0)
    return b.put("q", b"body", T0, priority=3, headers=dict(HEADERS))


def deliver_and_time_out(b: Broker, times: int, start: float = T0) -> list[Message]:
    """Receive the message `times` times, letting each 10 s lease run out."""
    taken = []
    for i in range(times):
        now = start + 10.0 * i
        [m] = b.receive("q", 1, 10.0, now)
        taken.append(m)
        b.advance(now + 10.0)
    return taken


def dead_lettered_with_kept_lease(b: Broker) -> tuple[int, int]:
    """The message of dead_letter_setup, dead-lettered when its second lease ran out (at
    T0 + 20); returns its id and the lease kept aside for a late ack."""
    msg_id = dead_letter_setup(b)
    [last] = deliver_and_time_out(b, 2)[-1:]
    assert last.kept_lease is not None
    return msg_id, last.kept_lease


def assert_dead_lettered(b: Broker, msg_id: int, deliveries: int, moved_at: float) -> Message:
    assert msg_id not in b.queues["q"].messages
    m = b.queues["dlq"].messages[msg_id]
    assert (m.id, m.body, m.headers, m.priority) == (msg_id, b"body", HEADERS, 3)
    assert (m.deliveries, m.origin, m.state, m.lease) == (deliveries, ("q", moved_at), READY,
                                                          None)
    assert m.kept_lease is not None  # its last delivery's: for a late ack only
    assert m.enqueued_at == T0
    assert m.queue is b.queues["dlq"]
    return m


def test_moved_when_the_last_allowed_lease_runs_out(b: Broker) -> None:
    msg_id = dead_letter_setup(b)
    deliver_and_time_out(b, 1)
    assert counts(b, "q") == zero_counts(ready=1, put_total=1)  # one delivery: not yet
    assert "dlq" not in b.queues
    [m] = b.receive("q", 1, 10.0, T0 + 10.0)
    lease = m.lease
    assert b.advance(T0 + 19.999) == 0
    assert b.advance(T0 + 20.0) == 1
    assert_dead_lettered(b, msg_id, 2, T0 + 20.0)
    assert counts(b, "q") == zero_counts(put_total=1, redelivered_total=1,
                                         dead_lettered_total=1)
    assert counts(b, "dlq") == zero_counts(ready=1)
    assert b.queues["dlq"].explicit is False  # made implicitly
    assert b.next_deadline() is None
    assert b.stored_bytes == 4 + 2 + HEADERS_DICT_BYTES + HEADER_ENTRY_BYTES \
        + MESSAGE_OVERHEAD_BYTES  # a move costs nothing more
    # The lease cannot touch or nack it, naming either queue (a reviewer: naming the
    # dead-letter queue, the kept lease re-leased or delayed a dead letter); a late ack:
    # below.
    assert m.kept_lease == lease
    for call, args in ((b.touch, (None,)), (b.nack, (0.0,))):
        with pytest.raises(CommandError) as refused:
            call("q", msg_id, lease, *args, T0 + 21.0)
        # Saying where it went: a heartbeat told only "not found" gave up on a late ack.
        assert refused.value.code == NOT_FOUND
        assert "it was dead-lettered to 'dlq'" in refused.value.message
        assert "an ack with this lease still deletes it" in refused.value.message
    assert error_code(b.touch, "dlq", msg_id, lease, 30.0, T0 + 21.0) == LEASE_LOST
    assert error_code(b.nack, "dlq", msg_id, lease, 100.0, T0 + 21.0) == LEASE_LOST
    assert counts(b, "dlq") == zero_counts(ready=1)
    check_invariants(b)


def test_a_late_ack_of_the_last_delivery_finds_it_in_the_dead_letter_queue(b: Broker) -> None:
    # A user's review: a handler that succeeded just past its lease had its work
    # dead-lettered on the last delivery (NOT_FOUND), though a late ack succeeds on every
    # earlier one. The move keeps the lease; the ack names the queue it came from.
    msg_id = dead_letter_setup(b)
    [first] = b.receive("q", 1, 10.0, T0)
    first_lease = first.lease
    b.advance(T0 + 10.0)
    [last] = b.receive("q", 1, 10.0, T0 + 10.0)
    b.advance(T0 + 20.0)
    assert_dead_lettered(b, msg_id, 2, T0 + 20.0)
    last_lease = last.kept_lease
    assert error_code(b.ack, "q", msg_id, first_lease, T0 + 21.0) == LEASE_LOST
    assert error_code(b.ack, "dlq", msg_id, first_lease, T0 + 21.0) == LEASE_LOST
    b.ack("q", msg_id, last_lease, T0 + 21.0)
    assert counts(b, "dlq") == zero_counts(acked_total=1)
    assert counts(b, "q")["dead_lettered_total"] == 1
    assert b.stored_bytes == 0
    check_invariants(b)


def test_a_late_ack_cannot_take_a_dead_letter_back_from_its_consumer(b: Broker) -> None:
    msg_id, last_lease = dead_lettered_with_kept_lease(b)
    [taken] = b.receive("dlq", 1, 10.0, T0 + 21.0)
    assert error_code(b.ack, "q", msg_id, last_lease, T0 + 22.0) == LEASE_LOST
    b.ack("dlq", msg_id, taken.lease, T0 + 22.0)
    # Gone (or never dead-lettered from here): NOT_FOUND, as before.
    assert error_code(b.ack, "q", msg_id, last_lease, T0 + 23.0) == NOT_FOUND
    check_invariants(b)


def test_a_dead_letter_given_back_unseen_is_not_the_old_lease_s_again(b: Broker) -> None:
    msg_id, last_lease = dead_lettered_with_kept_lease(b)
    [taken] = b.receive("dlq", 1, 10.0, T0 + 21.0)
    b.nack("dlq", msg_id, taken.lease, 0.0, T0 + 22.0, unseen=True)
    assert error_code(b.ack, "q", msg_id, last_lease, T0 + 23.0) == LEASE_LOST
    check_invariants(b)


def test_a_chain_of_dead_letter_queues_keeps_each_last_lease_for_its_own_queue(
        b: Broker) -> None:
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    b.create_queue("dlq", {"max_deliveries": 2, "dead_letter_queue": "dlq2"}, T0)
    msg_id = b.put("q", b"body", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    q_lease = m.lease
    b.advance(T0 + 10.0)  # to dlq: 1 delivery; dlq allows 2
    [m] = b.receive("dlq", 1, 10.0, T0 + 11.0)
    dlq_lease = m.lease
    b.advance(T0 + 21.0)  # its second delivery ended: on to dlq2
    assert msg_id in b.queues["dlq2"].messages
    assert error_code(b.ack, "q", msg_id, q_lease, T0 + 22.0) == NOT_FOUND  # moved on
    assert error_code(b.touch, "dlq2", msg_id, dlq_lease, None, T0 + 22.0) == LEASE_LOST
    b.ack("dlq", msg_id, dlq_lease, T0 + 22.0)
    assert b.stored_bytes == 0
    check_invariants(b)


def test_a_late_ack_of_a_redriven_message_is_refused(b: Broker) -> None:
    msg_id, last_lease = dead_lettered_with_kept_lease(b)
    assert b.redrive("dlq", None, T0 + 21.0) == 1
    assert error_code(b.ack, "q", msg_id, last_lease, T0 + 22.0) == LEASE_LOST
    check_invariants(b)


def test_moved_at_once_when_nacked_at_the_limit(b: Broker) -> None:
    msg_id = dead_letter_setup(b)
    [m1] = b.receive("q", 1, 10.0, T0)
    b.nack("q", msg_id, m1.lease, 0.0, T0 + 1.0)
    assert counts(b, "q") == zero_counts(ready=1, put_total=1)
    [m2] = b.receive("q", 1, 10.0, T0 + 2.0)
    lease = m2.lease
    b.nack("q", msg_id, lease, 0.0, T0 + 3.0)
    assert assert_dead_lettered(b, msg_id, 2, T0 + 3.0).kept_lease == lease  # the nack's
    assert counts(b, "q")["dead_lettered_total"] == 1
    assert error_code(b.nack, "q", msg_id, lease, 0.0, T0 + 4.0) == NOT_FOUND
    assert error_code(b.touch, "dlq", msg_id, lease, None, T0 + 4.0) == LEASE_LOST
    assert b.next_deadline() is None
    b.ack("q", msg_id, lease, T0 + 5.0)  # a late ack, after the nack that moved it
    assert counts(b, "dlq") == zero_counts(acked_total=1)
    check_invariants(b)


def test_nack_with_delay_at_the_limit_moves_at_once(b: Broker) -> None:
    msg_id = dead_letter_setup(b, max_deliveries=1)
    [m] = b.receive("q", 1, 10.0, T0)
    b.nack("q", msg_id, m.lease, 60.0, T0 + 1.0)
    assert_dead_lettered(b, msg_id, 1, T0 + 1.0)
    assert counts(b, "dlq") == zero_counts(ready=1)
    assert b.next_deadline() is None
    check_invariants(b)


def test_nack_many_moves_each_at_the_limit(b: Broker) -> None:
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    ids = b.put_many("q", [b"a", b"b"], T0)
    taken = b.receive("q", 2, 10.0, T0)
    results = b.nack_many("q", [(m.id, m.lease) for m in taken] + [(ids[0], taken[0].lease)],
                          5.0, T0 + 1.0)
    assert results[:2] == [None, None]
    assert results[2] is not None and results[2].code == NOT_FOUND
    assert sorted(b.queues["dlq"].messages) == ids
    assert counts(b, "q") == zero_counts(put_total=2, dead_lettered_total=2)


def test_dead_letter_queue_waiters_are_served_at_once(b: Broker) -> None:
    msg_id = dead_letter_setup(b, max_deliveries=1)
    inbox = Inbox()
    b.wait("dlq", 5, 7.0, T0 + 100.0, inbox, T0)
    [m] = b.receive("q", 1, 10.0, T0)
    old_lease = m.lease
    b.advance(T0 + 10.0)
    assert inbox.ids == [[msg_id]]
    got = inbox.calls[0][0]
    assert (got.state, got.deliveries, got.origin, got.deadline_at) == (
        LEASED, 2, ("q", T0 + 10.0), T0 + 17.0)
    assert got.lease not in (None, old_lease)
    assert counts(b, "dlq")["in_flight"] == 1
    b.ack("dlq", msg_id, got.lease, T0 + 11.0)
    assert counts(b, "dlq")["acked_total"] == 1
    assert b.stored_bytes == 0
    check_invariants(b)


def test_a_late_timer_serves_dead_letter_waiters_at_its_own_now(b: Broker) -> None:
    # The timer fires (or the server starts) long after the lease ended: the move is
    # judged at the lease's time, but the waiter is served when advance runs, after
    # every deadline due, as for any freed message. Served at the lease's time, it got
    # a lease already over, which the same advance then ended: the message was ready
    # for the next consumer while the first still held it.
    msg_id = dead_letter_setup(b, max_deliveries=1)
    inbox = Inbox()
    b.wait("dlq", 5, 3.0, T0 + 100.0, inbox, T0)
    b.receive("q", 1, 1.0, T0)
    assert b.advance(T0 + 10.0) == 1
    assert inbox.ids == [[msg_id]]
    got = inbox.calls[0][0]
    assert (got.state, got.origin, got.deadline_at) == (LEASED, ("q", T0 + 1.0), T0 + 13.0)
    assert counts(b, "dlq") == zero_counts(in_flight=1, redelivered_total=1)
    assert b.next_deadline() == T0 + 13.0
    check_invariants(b)


def test_dead_letter_queue_expiry_applies_from_the_move(b: Broker) -> None:
    msg_id = dead_letter_setup(b, max_deliveries=1, expiry=5.0)
    [m] = b.receive("q", 1, 10.0, T0 + 1.0)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 3.0)
    assert b.queues["dlq"].messages[msg_id].expires_at == T0 + 8.0
    assert b.next_deadline() == T0 + 8.0
    b.advance(T0 + 7.999)
    assert counts(b, "dlq") == zero_counts(ready=1)
    b.advance(T0 + 8.0)
    assert counts(b, "dlq") == zero_counts(expired_total=1)
    assert b.stored_bytes == 0
    check_invariants(b)


def test_move_replaces_the_source_expiry_with_the_dead_letter_queues(b: Broker) -> None:
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    msg_id = b.put("q", b"x", T0, expiry=50.0)
    [m] = b.receive("q", 1, 10.0, T0)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 1.0)
    assert b.queues["dlq"].messages[msg_id].expires_at is None  # the DLQ's expiry is 0
    assert b.next_deadline() is None
    assert b.advance(T0 + 100.0) == 0
    assert counts(b, "dlq") == zero_counts(ready=1)


def test_expired_at_the_end_of_its_last_delivery_is_dropped_not_moved(b: Broker) -> None:
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    b.put("q", b"x", T0, expiry=5.0)
    b.receive("q", 1, 10.0, T0)
    b.advance(T0 + 10.0)
    assert counts(b, "q") == zero_counts(put_total=1, expired_total=1)
    assert "dlq" not in b.queues


def test_dead_lettering_ignores_the_dead_letter_queues_max_length(b: Broker) -> None:
    msg_id = dead_letter_setup(b, max_deliveries=1, max_length=1)
    b.put("dlq", b"filler", T0)
    b.receive("q", 1, 10.0, T0)
    b.advance(T0 + 10.0)
    assert msg_id in b.queues["dlq"].messages
    assert counts(b, "dlq") == zero_counts(ready=2, put_total=1)
    check_invariants(b)


def test_dead_lettering_into_a_new_queue_ignores_max_queues() -> None:
    broker = Broker(max_queues=1)
    broker.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    msg_id = broker.put("q", b"x", T0)
    broker.receive("q", 1, 10.0, T0)
    broker.advance(T0 + 10.0)  # never drops the message for want of a queue
    assert list(broker.queues["dlq"].messages) == [msg_id]


def test_ack_of_the_last_allowed_delivery_keeps_it_out_of_the_dlq(b: Broker) -> None:
    msg_id = dead_letter_setup(b, max_deliveries=1)
    [m] = b.receive("q", 1, 10.0, T0)
    b.ack("q", msg_id, m.lease, T0 + 1.0)
    b.advance(T0 + 10.0)
    assert "dlq" not in b.queues
    assert counts(b, "q") == zero_counts(put_total=1, acked_total=1)


# ------------------------------------------------------------------- redrive


def dead_letter_three(b: Broker) -> list[int]:
    """Three messages put in "q" at T0, T0+1, T0+2, dead-lettered to "dlq" at T0+5."""
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    ids = [b.put("q", bytes([65 + i]), T0 + i) for i in range(3)]
    for m in b.receive("q", 3, 10.0, T0 + 3.0):
        b.nack("q", m.id, m.lease, 0.0, T0 + 5.0)
    return ids


def test_redrive_moves_back_to_the_origin_and_resets(b: Broker) -> None:
    ids = dead_letter_three(b)
    inbox = Inbox()
    b.wait("q", 1, None, T0 + 100.0, inbox, T0 + 6.0)
    assert b.redrive("dlq", None, T0 + 7.0) == 3
    assert inbox.ids == [[ids[0]]]  # a waiter on the origin is served at once
    assert counts(b, "dlq") == zero_counts()
    rest = b.receive("q", 10, None, T0 + 7.0)
    assert ids_of(rest) == ids[1:]
    assert [(m.deliveries, m.origin) for m in rest] == [(1, None), (1, None)]
    assert [m.enqueued_at for m in rest] == [T0 + 1, T0 + 2]
    assert counts(b, "q") == zero_counts(in_flight=3, put_total=3, redelivered_total=0,
                                         dead_lettered_total=3)
    check_invariants(b)


def test_redrive_gives_the_origin_queues_expiry_from_the_redrive(b: Broker) -> None:
    ids = dead_letter_three(b)
    b.configure_queue("q", {"expiry": 20.0}, T0 + 6.0)
    b.redrive("dlq", 1, T0 + 7.0)
    m = b.queues["q"].messages[ids[0]]
    assert (m.deliveries, m.origin, m.expires_at, m.state) == (0, None, T0 + 27.0, READY)
    b.advance(T0 + 27.0)
    assert counts(b, "q")["expired_total"] == 1


def test_redrive_max_moves_the_oldest_first(b: Broker) -> None:
    ids = dead_letter_three(b)
    assert b.redrive("dlq", 2, T0 + 6.0) == 2
    assert sorted(b.queues["q"].messages) == ids[:2]
    assert list(b.queues["dlq"].messages) == ids[2:]
    assert b.redrive("dlq", 0, T0 + 6.0) == 0
    assert b.redrive("dlq", 5, T0 + 6.0) == 1
    assert b.redrive("dlq", None, T0 + 6.0) == 0
    check_invariants(b)


def test_redrive_skips_messages_with_no_origin(b: Broker) -> None:
    ids = dead_letter_three(b)
    plain = b.put("dlq", b"put here", T0 + 6.0)
    first_in_line = b.put("dlq", b"urgent", T0 + 6.0, priority=-1)
    assert b.redrive("dlq", 1, T0 + 7.0) == 1  # the skipped ones do not use up `max`
    assert b.redrive("dlq", None, T0 + 7.0) == 2
    assert ids_of(b.receive("dlq", 10, None, T0 + 7.0)) == [first_in_line, plain]
    assert sorted(b.queues["q"].messages) == ids
    check_invariants(b)


def test_redrive_skips_when_the_origin_queue_is_full(b: Broker) -> None:
    ids = dead_letter_three(b)
    b.configure_queue("q", {"max_length": 2}, T0 + 6.0)
    b.put("q", b"new", T0 + 6.0)
    assert b.redrive("dlq", None, T0 + 7.0) == 1
    assert list(b.queues["dlq"].messages) == ids[1:]
    assert b.redrive("dlq", None, T0 + 7.0) == 0
    got = b.receive("dlq", 10, None, T0 + 8.0)  # still there, still receivable
    assert ids_of(got) == ids[1:]
    assert [m.deliveries for m in got] == [2, 2]
    check_invariants(b)


def test_redrive_leaves_leased_and_delayed_messages(b: Broker) -> None:
    ids = dead_letter_three(b)
    [m] = b.receive("dlq", 1, 10.0, T0 + 6.0)
    assert m.id == ids[0]
    [m2] = b.receive("dlq", 1, 10.0, T0 + 6.0)
    b.nack("dlq", m2.id, m2.lease, 30.0, T0 + 6.0)
    assert b.redrive("dlq", None, T0 + 7.0) == 1
    assert list(b.queues["q"].messages) == ids[2:]
    b.ack("dlq", m.id, m.lease, T0 + 8.0)  # its consumer still holds it
    assert counts(b, "dlq") == zero_counts(delayed=1, acked_total=1, redelivered_total=2)
    check_invariants(b)


def test_redrive_to_a_deleted_origin_makes_it_again(b: Broker) -> None:
    ids = dead_letter_three(b)
    b.delete_queue("q", T0 + 6.0)
    assert b.redrive("dlq", None, T0 + 7.0) == 3
    assert b.queues["q"].explicit is False
    assert b.queues["q"].settings.max_deliveries == 0
    assert list(b.queues["q"].messages) == ids


def test_redrive_of_a_missing_queue_is_queue_not_found(b: Broker) -> None:
    assert error_code(b.redrive, "nope", None, T0) == QUEUE_NOT_FOUND
    assert "nope" not in b.queues


@pytest.mark.parametrize("stale", [0, 10, 200])
def test_redrive_with_stale_ready_entries_moves_every_one(b: Broker, stale: int) -> None:
    ids = dead_letter_three(b)
    kept = b.put("dlq", b"no origin", T0 + 5.0)
    for _ in range(stale):  # expired messages leave stale keys in the ready heap
        b.put("dlq", b"s", T0 + 5.0, expiry=1.0)
    b.advance(T0 + 6.0)
    assert b.redrive("dlq", None, T0 + 7.0) == 3
    assert sorted(b.queues["q"].messages) == ids
    assert ids_of(b.receive("dlq", 10, None, T0 + 7.0)) == [kept]
    check_invariants(b)


def test_redrive_counts_a_kept_message_with_two_heap_entries_once(b: Broker) -> None:
    """A reviewer's: a late nack leaves a second ready-heap entry for a message still ready
    (broker.py's rules). One that had to stay (its origin full) was counted twice as kept,
    so redrive stopped before a message that could go back: 0 moved, every time."""
    dlq = {"max_deliveries": 1, "dead_letter_queue": "dlq"}
    b.create_queue("a", {**dlq, "max_length": 1}, T0)
    b.create_queue("b", dlq, T0)
    x = b.put("a", b"x", T0)
    [m] = b.receive("a", 1, None, T0)
    b.nack("a", x, m.lease, 0.0, T0)  # its last delivery: x moves to dlq
    y = b.put("b", b"y", T0)
    [m] = b.receive("b", 1, None, T0)
    b.nack("b", y, m.lease, 0.0, T0)  # y moves to dlq, after x
    [m] = b.receive("dlq", 1, 10.0, T0 + 1.0)  # an operator looks at x ...
    assert m.id == x
    b.advance(T0 + 12.0)  # ... its lease runs out: x is ready again ...
    b.nack("dlq", x, m.lease, 0.0, T0 + 13.0)  # ... and the late nack pushes x again
    b.put("a", b"filler", T0 + 13.0)  # a is at its max_length: x must stay
    assert b.queue_info("dlq", T0 + 14.0)["ready"] == 2
    assert b.redrive("dlq", None, T0 + 14.0) == 1
    assert list(b.queues["b"].messages) == [y]
    assert list(b.queues["dlq"].messages) == [x]
    assert b.redrive("dlq", None, T0 + 15.0) == 0  # x still cannot go back ...
    assert ids_of(b.receive("dlq", 10, None, T0 + 16.0)) == [x]  # ... and is delivered once
    check_invariants(b)


def test_redrive_keeps_a_message_whose_origin_cannot_be_made_again() -> None:
    broker = Broker(max_queues=2)
    broker.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    msg_id = broker.put("q", b"x", T0)
    [m] = broker.receive("q", 1, 10.0, T0)
    broker.nack("q", msg_id, m.lease, 0.0, T0 + 1.0)
    broker.delete_queue("q", T0 + 2.0)
    broker.create_queue("other", {}, T0 + 2.0)  # the server is at --max-queues again
    assert broker.redrive("dlq", None, T0 + 3.0) == 0
    assert broker.stats(T0 + 3.0)["too_many_queues_total"] == 1
    assert list(broker.queues["dlq"].messages) == [msg_id]
    assert ids_of(broker.peek("dlq", 5)) == [msg_id]
    check_invariants(broker)


def test_an_unseen_nack_takes_its_delivery_back(b: Broker) -> None:
    # A client gives back what came for a receive nobody awaited any more: without
    # `unseen`, each such nack counted, and enough dead-lettered an unseen message.
    msg_id = dead_letter_setup(b, max_deliveries=2)
    for i in range(5):
        [m] = b.receive("q", 1, 10.0, T0 + i)
        assert m.deliveries == 1
        b.nack("q", msg_id, m.lease, 0.0, T0 + i, unseen=True)
    assert (m.state, m.deliveries, b.queues["q"].redelivered_total) == (READY, 0, 0)
    [m] = b.receive("q", 1, 10.0, T0 + 10)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 10)  # seen: counts
    [m] = b.receive("q", 1, 10.0, T0 + 11)
    assert (m.deliveries, b.queues["q"].redelivered_total) == (2, 1)
    b.nack_many("q", [(msg_id, m.lease)], 0.0, T0 + 12, True)  # the second delivery back
    [m] = b.receive("q", 1, 10.0, T0 + 13)
    assert m.deliveries == 2
    b.nack("q", msg_id, m.lease, 0.0, T0 + 14)  # a seen second delivery: dead-lettered
    assert_dead_lettered(b, msg_id, 2, T0 + 14)
    check_invariants(b)


def test_one_delivery_is_taken_back_once_and_only_while_it_runs(b: Broker) -> None:
    # A nack leaves the lease in place (a late ack still works), so the same lease
    # could be nacked unseen again and again: a reviewer took a message from 2
    # deliveries to 0 that way and dodged max_deliveries.
    msg_id = dead_letter_setup(b, max_deliveries=3)
    [m] = b.receive("q", 1, 10.0, T0)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 1)  # seen
    [m] = b.receive("q", 1, 10.0, T0 + 2)
    assert m.deliveries == 2
    lease = m.lease
    b.nack("q", msg_id, lease, 0.0, T0 + 3, unseen=True)
    assert (m.deliveries, m.lease) == (1, None)  # taken back, and that lease is over
    # A late touch would have made it LEASED again, and a nack taken it back again.
    assert error_code(b.nack, "q", msg_id, lease, 0.0, T0 + 4, True) == LEASE_LOST
    assert error_code(b.touch, "q", msg_id, lease, None, T0 + 4) == LEASE_LOST
    assert error_code(b.ack, "q", msg_id, lease, T0 + 4) == LEASE_LOST
    assert b.nack_many("q", [(msg_id, lease)] * 2, 0.0, T0 + 5, True)[0].code == LEASE_LOST
    assert m.deliveries == 1
    [m] = b.receive("q", 1, 10.0, T0 + 6)
    b.advance(T0 + 16)  # the lease runs out: that delivery counted
    lease = m.lease
    b.nack("q", msg_id, lease, 5.0, T0 + 17, unseen=True)  # too late to take it back
    assert (m.deliveries, m.state, m.lease, m.kept_lease) == (2, DELAYED, None, lease)
    # A plain nack's: the lease is kept aside for a late ack, and can do nothing else.
    assert error_code(b.nack, "q", msg_id, lease, 0.0, T0 + 18, True) == LEASE_LOST
    assert error_code(b.nack, "q", msg_id, lease, 0.0, T0 + 18) == LEASE_LOST
    assert (m.deliveries, m.state) == (2, DELAYED)
    b.ack("q", msg_id, lease, T0 + 19)
    assert counts(b, "q")["acked_total"] == 1
    check_invariants(b)


def test_lowering_max_deliveries_applies_when_the_running_delivery_ends(b: Broker) -> None:
    msg_id = dead_letter_setup(b, max_deliveries=5)
    deliver_and_time_out(b, 2)
    [m] = b.receive("q", 1, 10.0, T0 + 20.0)
    b.configure_queue("q", {"max_deliveries": 2}, T0 + 21.0)
    assert m.state == LEASED  # not taken from its consumer
    b.advance(T0 + 30.0)
    assert_dead_lettered(b, msg_id, 3, T0 + 30.0)


@pytest.mark.parametrize("delay", [0.0, 10.0])
def test_a_dead_letter_consumer_s_nacked_lease_acks_naming_either_queue(
        b: Broker, delay: float) -> None:
    # PROTOCOL.md (ack): the lease a dead-letter queue's consumer kept by a nack acks, for
    # a dead letter nobody has received since, naming the queue it was dead-lettered from
    # too. A reviewer's nack with a delay left it DELAYED, and such an ack was refused.
    msg_id, _ = dead_lettered_with_kept_lease(b)
    [taken] = b.receive("dlq", 1, 10.0, T0 + 21.0)
    lease = taken.lease
    b.nack("dlq", msg_id, lease, delay, T0 + 22.0)
    b.ack("q", msg_id, lease, T0 + 23.0)
    assert counts(b, "dlq")["acked_total"] == 1
    assert msg_id not in b.queues["dlq"].messages
    assert b.next_deadline() is None or b.advance(T0 + 40.0) == 0
    check_invariants(b)


def test_a_late_ack_through_a_dead_letter_setting_set_back_still_finds_it(b: Broker) -> None:
    # PROTOCOL.md (ack): the late ack goes through the queue's dead_letter_queue as it is
    # at the ack's time; a reviewer read "changed before the late ack" as never found.
    msg_id, lease = dead_lettered_with_kept_lease(b)
    b.configure_queue("q", {"dead_letter_queue": "other"}, T0 + 21.0)
    assert error_code(b.ack, "q", msg_id, lease, T0 + 22.0) == NOT_FOUND
    b.configure_queue("q", {"dead_letter_queue": "dlq"}, T0 + 23.0)
    b.ack("q", msg_id, lease, T0 + 24.0)
    assert counts(b, "dlq")["acked_total"] == 1
    check_invariants(b)


# ------------------------------------------- a step at a time (advance's and redrive's bounds)

def lease_out(b: Broker, n: int, body: bytes = b"x", one_by_one: bool = True) -> list[int]:
    """`n` messages put in "q" (max_deliveries 1, dead-lettering to "dlq") at T0 and leased
    for 10 s: their leases all end at T0 + 10, one entry each or one lease batch."""
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    ids = [b.put("q", body, T0) for _ in range(n)]
    if one_by_one:
        for _ in range(n):
            b.receive("q", 1, 10.0, T0)
    else:
        assert len(b.receive("q", n, 10.0, T0)) == n
    return ids


def test_advance_with_max_steps_leaves_the_rest_due_for_the_next_call(b: Broker) -> None:
    ids = lease_out(b, 25)
    assert b.advance(T0 + 10.0, max_steps=10) == 10
    assert len(b.queues["dlq"].messages) == 10
    assert b.next_deadline() <= T0 + 10.0  # the rest are still due: the caller calls again
    assert b.advance(T0 + 10.0, max_steps=10) == 10
    assert b.advance(T0 + 10.0, max_steps=10) == 5
    assert b.advance(T0 + 10.0, max_steps=10) == 0
    assert sorted(b.queues["dlq"].messages) == ids
    assert b.next_deadline() is None
    check_invariants(b)


def test_advance_in_steps_ends_where_one_advance_does() -> None:
    whole, stepped = Broker(), Broker()
    for broker in (whole, stepped):
        lease_out(broker, 30)
        broker.put("q", b"late", T0 + 1.0)
        broker.receive("q", 1, 4.0, T0 + 1.0)  # due at T0 + 5, before the others
        broker.create_queue("w", {}, T0)
    inbox = Inbox()
    whole.wait("w", 1, None, T0 + 8.0, inbox, T0)
    stepped.wait("w", 1, None, T0 + 8.0, Inbox(), T0)
    assert whole.advance(T0 + 10.0) == 32
    handled = [stepped.advance(T0 + 10.0, max_steps=7) for _ in range(6)]
    assert handled == [7, 7, 7, 7, 4, 0]
    for name in ("q", "dlq", "w"):
        assert counts(stepped, name) == counts(whole, name)
        assert list(stepped.queues[name].messages) == list(whole.queues[name].messages)
    check_invariants(stepped)


def test_advance_ends_a_lease_batch_a_step_of_members_at_a_time(b: Broker) -> None:
    # Whole, one receive of 1,000 messages of 256 KiB dead-lettered 256 MiB in one step
    # and one journal write (a reviewer).
    ids = lease_out(b, 40, one_by_one=False)  # one lease batch of 40, ending at T0 + 10
    assert b.advance(T0 + 30.0, max_steps=15) == 15
    assert b.next_deadline() == T0 + 10.0  # the rest: due again, at the batch's time
    assert b.advance(T0 + 30.0, max_steps=15) == 15
    assert b.advance(T0 + 30.0, max_steps=15) == 10
    assert b.next_deadline() is None
    dead = b.queues["dlq"].messages
    assert list(dead) == ids  # in lease order
    assert {dead[i].origin for i in ids} == {("q", T0 + 10.0)}  # judged at its own time
    check_invariants(b)


def test_advance_ends_a_lease_batch_a_step_of_bytes_at_a_time(b: Broker) -> None:
    lease_out(b, 10, body=b"x" * 1000, one_by_one=False)
    cost = 1000 + MESSAGE_OVERHEAD_BYTES
    assert b.advance(T0 + 10.0, max_steps=1000, max_moved_bytes=3 * cost) == 3
    assert b.advance(T0 + 10.0, max_steps=1000, max_moved_bytes=2 * cost + 1) == 3
    assert b.advance(T0 + 10.0, max_steps=1000, max_moved_bytes=10 * cost) == 4
    assert len(b.queues["dlq"].messages) == 10
    check_invariants(b)


def test_a_lease_batch_cut_by_a_step_can_still_be_acked_between_steps(b: Broker) -> None:
    lease_out(b, 4, one_by_one=False)
    leased = [m for m in b.queues["q"].messages.values() if type(m) is not bytes]
    assert b.advance(T0 + 10.0, max_steps=1) == 1
    for msg in leased[1:]:  # late acks of the rest (their last delivery): found and done
        b.ack("q", msg.id, msg.lease, T0 + 10.5)
    assert b.advance(T0 + 11.0, max_steps=10) == 0
    assert b.next_deadline() is None
    assert len(b.queues["dlq"].messages) == 1
    check_invariants(b)


def test_advance_stops_after_moves_of_max_moved_bytes(b: Broker) -> None:
    lease_out(b, 10, body=b"x" * 1000)
    cost = 1000 + MESSAGE_OVERHEAD_BYTES
    moved_before = b.moved_bytes
    assert b.advance(T0 + 10.0, max_steps=1000, max_moved_bytes=3 * cost) == 3
    assert b.moved_bytes - moved_before == 3 * cost
    assert b.advance(T0 + 10.0, max_steps=1000, max_moved_bytes=2 * cost + 1) == 3
    assert b.advance(T0 + 10.0, max_steps=1000, max_moved_bytes=10 * cost) == 4
    assert len(b.queues["dlq"].messages) == 10
    check_invariants(b)


def test_redrive_steps_stop_at_their_bounds_and_fixed_total(b: Broker) -> None:
    ids = lease_out(b, 10, body=b"x" * 1000)
    b.advance(T0 + 10.0)
    cost = 1000 + MESSAGE_OVERHEAD_BYTES
    run = b.redrive_start("dlq", None)
    assert not b.redrive_step(run, T0 + 11.0, max_bytes=2 * cost + 1)
    assert run.moved == 3
    assert not b.redrive_step(run, T0 + 11.0, max_moves=2)
    assert not b.redrive_step(run, T0 + 11.0, max_bytes=1)  # at least one
    assert run.moved == 6
    # Dead-lettered after it began: not part of it.
    b.create_queue("q2", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    b.put("q2", b"late", T0 + 11.0)
    [late] = b.receive("q2", 1, 10.0, T0 + 11.0)
    b.nack("q2", late.id, late.lease, 0.0, T0 + 11.0)
    assert b.redrive_step(run, T0 + 11.0, max_moves=100)
    assert run.moved == 10
    assert sorted(b.queues["q"].messages) == ids
    assert list(b.queues["dlq"].messages) == [late.id]
    check_invariants(b)


def test_a_redrive_step_looks_at_max_looks_keys_however_many_stay(b: Broker) -> None:
    # Messages that cannot go back (origin full) are looked at once, and stay in the
    # queue's heap for its consumers: popped and pushed back by every step, a reviewer's
    # 20,000 of them ahead of 1,024 movable cost 35-45 ms a step.
    b.create_queue("full", {"max_deliveries": 1, "dead_letter_queue": "dlq",
                            "max_length": 50}, T0)
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    for name, count in (("full", 50), ("q", 30)):
        for _ in range(count):
            b.put(name, b"m", T0)
        for msg in b.receive(name, count, 10.0, T0):
            b.nack(name, msg.id, msg.lease, 0.0, T0)
    for _ in range(50):
        b.put("full", b"again", T0 + 1.0)  # full again: its dead letters must stay
    run = b.redrive_start("dlq", None)
    looked = []
    while True:
        before = len(run.keys)
        done = b.redrive_step(run, T0 + 2.0, max_moves=8, max_looks=16)
        looked.append(before - len(run.keys))
        if done:
            break
        # Meanwhile the ones that stay are ready in the dead-letter queue, for its consumers.
        assert b.queues["dlq"].ready_count == 80 - run.moved
    assert max(looked) <= 16
    assert sum(looked) == 80  # each key once
    assert run.moved == 30
    assert len(b.queues["dlq"].messages) == 50
    assert len(b.receive("dlq", 100, 10.0, T0 + 2.0)) == 50
    check_invariants(b)


def test_a_wait_that_ends_with_a_lease_gets_its_message_across_a_step_boundary(
        b: Broker) -> None:
    # A wait and a lease ending at the same time, the step ending between them: the
    # waiter must still get the message the lease frees, as in one advance (a reviewer).
    b.create_queue("q", {}, T0)
    for _ in range(9):
        b.put("other", b"d", T0, delay=4.0)  # 9 deadlines before theirs
    b.put("q", b"m", T0)
    [msg] = b.receive("q", 1, 100.0, T0)
    inbox = Inbox()
    b.wait("q", 1, 30.0, T0 + 5.0, inbox, T0)  # ends at T0 + 5
    b.touch("q", msg.id, msg.lease, 5.0, T0)  # and so does the lease now, due after it
    while b.next_deadline() is not None and b.next_deadline() <= T0 + 5.0:
        b.advance(T0 + 5.0, max_steps=10)
    assert inbox.ids == [[msg.id]]
    check_invariants(b)


def test_a_redrive_leaves_no_stale_entries_at_the_top_of_the_queues_heap(b: Broker) -> None:
    # Left there, PEEK walked past all of them: 100 ms a call after a redrive of 50,000
    # (a reviewer).
    lease_out(b, 300)
    b.advance(T0 + 10.0)
    assert b.redrive("dlq", 150, T0 + 11.0) == 150
    dlq = b.queues["dlq"]
    assert len(dlq.ready) == 150
    assert dlq.messages[dlq.ready[0] & ID_MASK].state == READY
    check_invariants(b)


def test_a_key_twice_in_the_copy_moves_its_message_once(b: Broker) -> None:
    # A message whose key the copy holds twice, moved at the first and failed back before
    # the second, went again and used up the place of one that was there (a reviewer).
    first, second = lease_out(b, 2)
    b.advance(T0 + 10.0)
    dlq = b.queues["dlq"]
    heapq.heappush(dlq.ready, dlq.messages[first].ready_key)  # a second entry (a late nack)
    run = b.redrive_start("dlq", None)
    assert not b.redrive_step(run, T0 + 11.0, max_looks=1)  # moves `first`
    [again] = b.receive("q", 1, 10.0, T0 + 11.0)  # and it fails back at once
    assert again.id == first
    b.nack("q", first, again.lease, 0.0, T0 + 11.0)
    assert b.redrive_step(run, T0 + 11.0)
    assert run.moved == 2
    assert list(b.queues["q"].messages) == [second]
    assert list(dlq.messages) == [first]  # came back after the start: for the next one
    check_invariants(b)


def test_one_redrive_of_a_queue_at_a_time(b: Broker) -> None:
    lease_out(b, 10)
    b.advance(T0 + 10.0)
    run = b.redrive_start("dlq", None)
    assert not b.redrive_step(run, T0 + 11.0, max_moves=2)
    assert error_code(b.redrive_start, "dlq", None) == REDRIVE_RUNNING
    assert b.redrive_step(run, T0 + 11.0)
    assert b.redrive("dlq", None, T0 + 11.0) == 0  # ended: another may begin
    lease_out_again = b.put("q", b"y", T0 + 12.0)
    [msg] = b.receive("q", 1, 10.0, T0 + 12.0)
    b.nack("q", msg.id, msg.lease, 0.0, T0 + 12.0)
    dropped = b.redrive_start("dlq", None)
    del dropped  # a run dropped mid-way (its client gone, a stop) holds nothing
    assert b.redrive("dlq", None, T0 + 13.0) >= 1
    assert lease_out_again in b.queues["q"].messages
    check_invariants(b)


def test_a_held_lease_batch_cut_by_a_step_keeps_its_own_end(b: Broker) -> None:
    # Its members showed the hold's time, so message_info, and a compaction meanwhile
    # (own_deadline), gave the wrong end for the rest of a batch a step cut.
    lease_out(b, 4, one_by_one=False)  # their leases end at T0 + 10
    b.hold_lease_ends_until = T0 + 20.0  # journal writes failing: held until then
    assert b.advance(T0 + 10.0) == 0
    b.hold_lease_ends_until = None
    assert b.advance(T0 + 20.0, max_steps=1) == 1
    rest = [m for m in b.queues["q"].messages.values()
            if type(m) is not bytes and m.state == LEASED]
    assert len(rest) == 3
    assert {m.deadline_at for m in rest} == {b.own_deadline(m) for m in rest} == {T0 + 10.0}
    assert b.advance(T0 + 20.0, max_steps=10) == 3
    assert {m.origin for m in b.queues["dlq"].messages.values()} == {("q", T0 + 10.0)}
    check_invariants(b)


@pytest.mark.parametrize("as_batch", [False, True])
def test_leases_ending_together_end_in_lease_order_however_the_steps_cut(
        b: Broker, as_batch: bool) -> None:
    # The rest of a batch a step cut was pushed again behind a lease taken after it, due
    # at the same instant: the waiting consumers got 0, 3, 1, 2 (a reviewer).
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    b.create_queue("dlq", {}, T0)
    ids = [b.put("q", b"x", T0) for _ in range(4)]
    if as_batch:
        assert len(b.receive("q", 3, 10.0, T0)) == 3  # one lease batch: ids 0-2
    else:
        for _ in range(3):
            b.receive("q", 1, 10.0, T0)
    b.receive("q", 1, 10.0, T0)  # the last, leased after them, due at the same instant
    inbox = Inbox()
    for _ in range(4):  # consumers of the dead-letter queue, one message each
        b.wait("dlq", 1, 30.0, T0 + 60.0, inbox, T0)
    while b.next_deadline() is not None and b.next_deadline() <= T0 + 10.0:
        b.advance(T0 + 10.0, max_steps=1)
    assert inbox.ids == [[ids[0]], [ids[1]], [ids[2]], [ids[3]]]
    check_invariants(b)
