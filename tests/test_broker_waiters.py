"""Unit tests of the broker's long-poll waiters: Broker.wait and cancel_wait.

A waiter is a receive that found nothing and parks until a message becomes
ready (by put, nack, a nack's delay ending or a lease running out) or its own
deadline passes; the broker serves waiters first come first served and never
leaves a queue with ready messages and a live waiter at once. Numbers are the
clock, as in test_broker.py.
"""

from __future__ import annotations

from broker_helpers import (  # the `b` fixture comes from broker_helpers too, via conftest.py
    T0,
    VISIBILITY,
    Inbox,
    check_invariants,
    counts,
    ids_of,
    zero_counts,
)

from wonderq_server.broker import Broker
from wonderq_server.message import LEASED
from wonderq_server.queues import Waiter


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


def test_a_waiter_gets_the_queues_visibility_as_set_when_it_is_served(b: Broker) -> None:
    # A receive parked before configure_queue (or before create_queue made the queue it
    # waits on) is leased for the setting in force when a message comes, not at its start:
    # the setting applies "from then on", and this lease starts after it.
    b.create_queue("q", {"visibility_timeout": 600.0}, T0)
    parked, made_later = Inbox(), Inbox()
    b.wait("q", 1, None, T0 + 100.0, parked, T0)
    b.wait("later", 1, None, T0 + 100.0, made_later, T0)
    b.configure_queue("q", {"visibility_timeout": 1.0}, T0 + 1.0)
    b.create_queue("later", {"visibility_timeout": 5.0}, T0 + 1.0)
    b.put("q", b"x", T0 + 2.0)
    b.put("later", b"y", T0 + 2.0)
    assert parked.calls[0][0].deadline_at == T0 + 2.0 + 1.0
    assert made_later.calls[0][0].deadline_at == T0 + 2.0 + 5.0
    check_invariants(b)


def test_a_waiters_own_visibility_wins_over_a_later_setting(b: Broker) -> None:
    b.create_queue("q", {"visibility_timeout": 600.0}, T0)
    inbox = Inbox()
    b.wait("q", 1, 7.0, T0 + 100.0, inbox, T0)
    b.configure_queue("q", {"visibility_timeout": 1.0}, T0 + 1.0)
    b.put("q", b"x", T0 + 2.0)
    assert inbox.calls[0][0].deadline_at == T0 + 2.0 + 7.0


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
    assert b.queues == {}  # made for the wait, never held a message: forgotten
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
    assert b.queues == {}
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


def test_a_waiter_whose_consumer_has_gone_gets_nothing_and_the_next_one_the_message(
        b: Broker) -> None:
    # `gone` is the connection's check of its socket (peer_state.py): asked just before
    # a lease, so a consumer that went away unnoticed never takes a message with it.
    gone_inbox, alive_inbox = Inbox(), Inbox()
    asked: list[str] = []
    gone = b.wait("q", 1, None, T0 + 10.0, gone_inbox, T0)
    alive = b.wait("q", 1, None, T0 + 10.0, alive_inbox, T0)
    gone.gone = lambda: asked.append("gone") or True
    alive.gone = lambda: asked.append("alive") or False
    msg_id = b.put("q", b"x", T0 + 1.0)
    assert asked == ["gone", "alive"]
    assert gone_inbox.calls == [[]] and gone.done
    assert alive_inbox.ids == [[msg_id]]
    [m] = alive_inbox.calls[0]
    assert m.deliveries == 1  # the gone waiter's turn counted no delivery
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    assert b.next_deadline() == T0 + 1.0 + VISIBILITY  # neither wait's deadline is left
    b.cancel_wait(gone)  # the connection withdraws it later: changes nothing
    assert counts(b) == zero_counts(in_flight=1, put_total=1)
    check_invariants(b)


def test_a_gone_waiter_leaves_the_message_ready_when_nobody_else_waits(b: Broker) -> None:
    inbox = Inbox()
    waiter = b.wait("q", 3, None, T0 + 10.0, inbox, T0)
    waiter.gone = lambda: True
    b.put_many("q", [b"1", b"2"], T0 + 1.0)
    assert inbox.calls == [[]]
    assert counts(b) == zero_counts(ready=2, put_total=2)
    assert b.advance(T0 + 10.0) == 0  # its wait is over: nothing left to time out
    check_invariants(b)


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
    b.create_queue("q", {}, T0)  # explicit, so it stays while nobody waits
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


def test_a_queue_that_held_messages_stays_when_its_waiters_go(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, None, T0)
    b.ack("q", msg_id, m.lease, T0)
    waiter = b.wait("q", 1, None, T0 + 5.0, Inbox(), T0)
    b.cancel_wait(waiter)
    assert counts(b) == zero_counts(put_total=1, acked_total=1)  # its totals stay visible

