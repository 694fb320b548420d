"""Unit tests of the broker's whole-queue commands (queue_admin.py, issue 4), numbers as the clock.

create_queue, configure_queue, queue_info, list_queues, peek, purge,
delete_queue, message_info and the stats fields. Nothing here sleeps.
"""

from __future__ import annotations

import random

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

from wonderq_server.broker import DEFAULT_MAX_QUEUES, MESSAGE_OVERHEAD_BYTES, Broker
from wonderq_server.commands import Command
from wonderq_server.errors import (
    BAD_ARGUMENT,
    INVALID_QUEUE_NAME,
    NOT_FOUND,
    QUEUE_EXISTS,
    QUEUE_NOT_FOUND,
)
from wonderq_server.message import HEADER_ENTRY_BYTES, HEADERS_DICT_BYTES, LEASED, READY
from wonderq_server.queue_admin import PEEK_REPLY_BYTES
from wonderq_server.service import BrokerService

DEFAULTS = {"visibility_timeout": 0.0, "max_deliveries": 0, "dead_letter_queue": "",
            "delay": 0.0, "max_length": 0, "expiry": 0.0}
DLQ = {"max_deliveries": 3, "dead_letter_queue": "dlq"}

# --------------------------------------------------------- create, configure


def test_create_queue_with_defaults(b: Broker) -> None:
    assert b.create_queue("q", {}, T0) == DEFAULTS
    assert b.queues["q"].explicit is True
    assert b.list_queues(T0) == [{"queue": "q", "explicit": True, "messages": 0, "ready": 0,
                                  "in_flight": 0, "delayed": 0}]


def test_create_queue_is_idempotent_with_the_same_settings(b: Broker) -> None:
    wanted = {**DEFAULTS, "visibility_timeout": 5.0, "max_length": 10, **DLQ}
    assert b.create_queue("q", {"visibility_timeout": 5.0, "max_length": 10, **DLQ},
                          T0) == wanted
    assert b.create_queue("q", {**DLQ, "max_length": 10, "visibility_timeout": 5.0,
                                "expiry": None}, T0) == wanted
    assert error_code(b.create_queue, "q", {"max_length": 10}, T0) == QUEUE_EXISTS
    assert error_code(b.create_queue, "q", {**DLQ, "visibility_timeout": 5.0, "max_length": 11},
                      T0) == QUEUE_EXISTS
    assert b.queue_info("q", T0)["max_length"] == 10  # unchanged by the refusals


def test_create_queue_on_an_implicit_queue_makes_it_explicit(b: Broker) -> None:
    msg_id = b.put("q", b"x", T0)
    assert b.queues["q"].explicit is False
    assert b.create_queue("q", {"delay": 2.0}, T0) == {**DEFAULTS, "delay": 2.0}
    assert b.queues["q"].explicit is True
    assert list(b.queues["q"].messages) == [msg_id]  # its messages stay
    assert error_code(b.create_queue, "q", {}, T0) == QUEUE_EXISTS


def test_create_queue_refusals(b: Broker) -> None:
    assert error_code(b.create_queue, "bad name", {}, T0) == INVALID_QUEUE_NAME
    assert error_code(b.create_queue, "q", {"max_deliveries": 3}, T0) == BAD_ARGUMENT
    assert error_code(b.create_queue, "q", {"dead_letter_queue": "d"}, T0) == BAD_ARGUMENT
    assert error_code(b.create_queue, "q", {**DLQ, "dead_letter_queue": "q"}, T0) == BAD_ARGUMENT
    assert error_code(b.create_queue, "q", {"colour": "red"}, T0) == BAD_ARGUMENT
    assert b.queues == {}


def test_configure_queue_changes_only_what_is_given(b: Broker) -> None:
    assert error_code(b.configure_queue, "q", {"delay": 1.0}, T0) == QUEUE_NOT_FOUND
    assert "q" not in b.queues
    b.put("q", b"x", T0)  # implicit
    assert b.configure_queue("q", {"delay": 1.0}, T0) == {**DEFAULTS, "delay": 1.0}
    assert b.queues["q"].explicit is True
    assert b.configure_queue("q", {"expiry": 9.0, "delay": None}, T0) == {
        **DEFAULTS, "delay": 1.0, "expiry": 9.0}
    assert b.configure_queue("q", {}, T0) == {**DEFAULTS, "delay": 1.0, "expiry": 9.0}
    assert b.configure_queue("q", {"delay": 0.0}, T0) == {**DEFAULTS, "expiry": 9.0}


def test_configure_queue_dead_letter_settings_go_together(b: Broker) -> None:
    b.create_queue("q", {}, T0)
    assert error_code(b.configure_queue, "q", {"max_deliveries": 2}, T0) == BAD_ARGUMENT
    assert error_code(b.configure_queue, "q", {"dead_letter_queue": "d"}, T0) == BAD_ARGUMENT
    assert error_code(b.configure_queue, "q", {**DLQ, "dead_letter_queue": "q"},
                      T0) == BAD_ARGUMENT
    assert b.configure_queue("q", DLQ, T0) == {**DEFAULTS, **DLQ}
    assert b.configure_queue("q", {"max_deliveries": 5}, T0)["max_deliveries"] == 5
    assert error_code(b.configure_queue, "q", {"max_deliveries": 0}, T0) == BAD_ARGUMENT
    assert error_code(b.configure_queue, "q", {"dead_letter_queue": ""}, T0) == BAD_ARGUMENT
    assert b.configure_queue("q", {"max_deliveries": 0, "dead_letter_queue": ""},
                             T0) == DEFAULTS
    assert "dlq" not in b.queues  # naming a dead-letter queue does not create it


def test_configure_takes_effect_for_what_happens_next(b: Broker) -> None:
    delayed = b.put("q", b"a", T0, delay=5.0)
    b.configure_queue("q", {"visibility_timeout": 3.0, "delay": 50.0}, T0)
    assert b.queues["q"].messages[delayed].deadline_at == T0 + 5.0
    later = b.put("q", b"b", T0)
    assert b.queues["q"].messages[later].deadline_at == T0 + 50.0
    b.advance(T0 + 5.0)
    [m] = b.receive("q", 1, None, T0 + 5.0)
    assert m.deadline_at == T0 + 8.0  # the queue's visibility_timeout


# ----------------------------------------------------------- info, listing


def test_queue_info_fields(b: Broker) -> None:
    assert error_code(b.queue_info, "q", T0) == QUEUE_NOT_FOUND
    b.create_queue("q", {"max_length": 9}, T0)
    b.put("q", b"a", T0)
    b.put("q", b"b", T0 + 1.0, delay=10.0)
    b.put("q", b"c", T0 + 2.0)
    b.receive("q", 1, None, T0 + 3.0)
    assert b.queue_info("q", T0 + 4.0) == {
        "queue": "q", "explicit": True, **DEFAULTS, "max_length": 9,
        "messages": 3, "ready": 1, "in_flight": 1, "delayed": 1, "waiting": 0,
        "put_total": 3, "acked_total": 0, "redelivered_total": 0, "dead_lettered_total": 0,
        "expired_total": 0, "oldest_age_s": 4.0, "put_rate": 0.0, "ack_rate": 0.0,
        "redelivered_rate": 0.0}


def test_list_queues_is_sorted_by_name(b: Broker) -> None:
    b.put("zeta", b"1", T0)
    b.create_queue("Alpha", {}, T0)
    b.put_many("mid", [b"1", b"2"], T0)
    b.put("mid", b"3", T0, delay=1.0)
    b.receive("mid", 1, None, T0)
    b.wait("_w", 1, None, T0 + 5.0, Inbox(), T0)
    assert b.list_queues(T0) == [
        {"queue": "Alpha", "explicit": True, "messages": 0, "ready": 0, "in_flight": 0,
         "delayed": 0},
        {"queue": "_w", "explicit": False, "messages": 0, "ready": 0, "in_flight": 0,
         "delayed": 0},
        {"queue": "mid", "explicit": False, "messages": 3, "ready": 1, "in_flight": 1,
         "delayed": 1},
        {"queue": "zeta", "explicit": False, "messages": 1, "ready": 1, "in_flight": 0,
         "delayed": 0},
    ]


# ------------------------------------------------------------------- peek


def test_peek_shows_receive_order_and_leases_nothing(b: Broker) -> None:
    assert error_code(b.peek, "q", 5) == QUEUE_NOT_FOUND
    ids = [b.put("q", bytes([i]), T0, priority=p) for i, p in enumerate([2, 0, -1, 0, 2])]
    b.put("q", b"delayed", T0, delay=9.0)
    expected = [ids[2], ids[1], ids[3], ids[0], ids[4]]
    assert ids_of(b.peek("q", 10)) == expected
    assert ids_of(b.peek("q", 2)) == expected[:2]
    assert b.peek("q", 0) == []
    assert counts(b) == zero_counts(ready=5, delayed=1, put_total=6)
    assert all(m.state == READY and m.deliveries == 0 for m in b.peek("q", 10))
    assert ids_of(b.receive("q", 10, None, T0)) == expected
    assert b.peek("q", 10) == []
    check_invariants(b)


def test_peek_stops_once_its_bodies_pass_its_byte_bound_but_returns_one(b: Broker) -> None:
    # A peek leases nothing, so one stored backlog could be copied into any number of
    # replies: a reviewer's non-reading peekers held 250 MB each. The bound is 1 MiB.
    assert PEEK_REPLY_BYTES == 1024 * 1024
    b.put_many("q", [b"x" * 300] * 10, T0)
    b.put("q", b"y" * 1000, T0, priority=-1)  # first, and alone over the bound below
    assert [len(m.body) for m in b.peek("q", 10, max_bytes=900)] == [1000]
    b.receive("q", 1, 60.0, T0)
    shown = b.peek("q", 10, max_bytes=1000)
    assert len(shown) == 4  # 3 x 300 is under 1,000 bytes, the 4th passes it
    assert [m.id for m in shown] == [m.id for m in b.peek("q", 4)]
    assert len(b.peek("q", 10)) == 10


def test_peek_counts_headers_toward_its_byte_bound(b: Broker) -> None:
    # Bodies alone: 1,000 one-byte messages with 4 KiB of headers each were all shown, an
    # 11 MB text reply to a 17-byte PEEK (a reviewer).
    headers = {f"k{i:02d}": "v" * 120 for i in range(32)}
    for _ in range(1000):
        b.put("q", b"x", T0, headers=headers)
    each = 1 + b.peek("q", 1)[0].header_bytes()
    shown = b.peek("q", 1000)
    assert len(shown) == -(-PEEK_REPLY_BYTES // each) < 1000  # the one that passes it, last
    assert len(b.peek("q", 10, max_bytes=3 * each)) == 3


def test_peek_skips_stale_entries(b: Broker) -> None:
    ids = b.put_many("q", [b"0", b"1", b"2", b"3", b"4"], T0)
    taken = b.receive("q", 3, 5.0, T0)
    b.ack("q", ids[0], taken[0].lease, T0)
    b.advance(T0 + 5.0)  # ids[1], ids[2] back to ready
    b.ack("q", ids[1], taken[1].lease, T0 + 6.0)  # a late ack: a stale key stays
    b.touch("q", ids[2], taken[2].lease, 5.0, T0 + 6.0)  # a late touch: likewise
    [m] = b.receive("q", 1, 5.0, T0 + 6.0)
    b.nack("q", m.id, m.lease, 0.0, T0 + 6.0)  # a second key for the same message
    assert ids_of(b.peek("q", 10)) == [ids[3], ids[4]]
    assert ids_of(b.peek("q", 1)) == [ids[3]]
    check_invariants(b)


def test_peek_of_a_big_queue_matches_receive() -> None:
    broker = Broker()
    rng = random.Random(4)
    for i in range(5000):
        broker.put("q", i.to_bytes(2, "big"), T0, priority=rng.randint(-3, 3))
    leased = broker.receive("q", 700, 5.0, T0)
    for m in leased[::2]:
        broker.ack("q", m.id, m.lease, T0)
    broker.advance(T0 + 5.0)
    peeked = ids_of(broker.peek("q", 1000))
    assert len(peeked) == 1000
    assert ids_of(broker.receive("q", 1000, None, T0 + 5.0)) == peeked
    check_invariants(broker)


# -------------------------------------------------------- purge, delete


def fill_every_state(b: Broker) -> tuple[list[int], int]:
    """"q" with a ready, a leased, a delayed and an expiring message; returns ids and a lease."""
    ids = [b.put("q", b"leased", T0, expiry=50.0), b.put("q", b"ready", T0),
           b.put("q", b"delayed", T0, delay=20.0)]
    [m] = b.receive("q", 1, 10.0, T0)
    return ids, m.lease


def test_purge_removes_every_state_and_forgets_deadlines(b: Broker) -> None:
    assert error_code(b.purge, "q", T0) == QUEUE_NOT_FOUND
    ids, lease = fill_every_state(b)
    b.put("other", b"kept", T0)
    assert b.purge("q", T0 + 1.0) == 3
    assert counts(b) == zero_counts(put_total=3)
    assert b.queues["q"].messages == {}
    assert error_code(b.ack, "q", ids[0], lease, T0 + 2.0) == NOT_FOUND
    assert error_code(b.touch, "q", ids[0], lease, None, T0 + 2.0) == NOT_FOUND
    assert b.next_deadline() is None
    assert b.advance(T0 + 100.0) == 0
    assert b.stored_bytes == 4 + MESSAGE_OVERHEAD_BYTES  # only "other"'s message
    assert b.purge("q", T0 + 3.0) == 0
    assert b.receive("q", 10, None, T0 + 3.0) == []
    new = b.put("q", b"after", T0 + 4.0)
    assert ids_of(b.receive("q", 10, None, T0 + 4.0)) == [new]
    check_invariants(b)


def test_delete_queue_answers_waiters_and_forgets_the_queue(b: Broker) -> None:
    assert error_code(b.delete_queue, "q", T0) == QUEUE_NOT_FOUND
    b.create_queue("q", {"max_length": 5, "visibility_timeout": 4.0}, T0)
    ids, lease = fill_every_state(b)
    b.receive("q", 10, None, T0 + 1.0)  # leaves none ready, so waiters can park
    inboxes = [Inbox(), Inbox()]
    for inbox in inboxes:
        b.wait("q", 1, None, T0 + 60.0, inbox, T0 + 1.0)
    assert b.delete_queue("q", T0 + 2.0) == 3
    assert [inbox.calls for inbox in inboxes] == [[[]], [[]]]
    assert "q" not in b.queues
    assert b.next_deadline() is None
    assert b.stored_bytes == 0
    assert error_code(b.ack, "q", ids[0], lease, T0 + 3.0) == NOT_FOUND
    assert error_code(b.queue_info, "q", T0 + 3.0) == QUEUE_NOT_FOUND
    new = b.put("q", b"again", T0 + 3.0)  # a later put makes a new, implicit queue
    info = b.queue_info("q", T0 + 3.0)
    assert (info["explicit"], info["visibility_timeout"], info["max_length"]) == (False, 0.0, 0)
    assert (info["ready"], info["put_total"]) == (1, 1)
    assert list(b.queues["q"].messages) == [new]
    b.advance(T0 + 100.0)
    assert [inbox.calls for inbox in inboxes] == [[[]], [[]]]  # answered once only
    check_invariants(b)


# ------------------------------------------------------------ message_info


def test_message_info_fields_per_state(b: Broker) -> None:
    assert error_code(b.message_info, "q", 1, T0) == QUEUE_NOT_FOUND
    a = b.put("q", b"abc", T0, priority=-2, headers={"k": "v"}, expiry=100.0)
    c = b.put("q", b"de", T0 + 1.0, delay=20.0)
    assert error_code(b.message_info, "q", 12345, T0) == NOT_FOUND
    assert b.message_info("q", a, T0) == {
        "id": a, "queue": "q", "state": "ready", "deliveries": 0, "priority": -2,
        "enqueued_at": T0, "deadline_at": None, "expires_at": T0 + 100.0, "body_bytes": 3,
        "headers": {"k": "v"}, "dead_letter": None}
    assert b.message_info("q", c, T0 + 1.0) == {
        "id": c, "queue": "q", "state": "delayed", "deliveries": 0, "priority": 0,
        "enqueued_at": T0 + 1.0, "deadline_at": T0 + 21.0, "expires_at": None,
        "body_bytes": 2, "headers": {}, "dead_letter": None}
    b.receive("q", 1, 7.0, T0 + 2.0)
    info = b.message_info("q", a, T0 + 2.0)
    assert (info["state"], info["deliveries"], info["deadline_at"]) == ("leased", 1, T0 + 9.0)


def test_message_info_of_a_dead_lettered_message(b: Broker) -> None:
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    msg_id = b.put("q", b"x", T0)
    [m] = b.receive("q", 1, 10.0, T0)
    b.nack("q", msg_id, m.lease, 0.0, T0 + 4.0)
    assert error_code(b.message_info, "q", msg_id, T0 + 5.0) == NOT_FOUND
    info = b.message_info("dlq", msg_id, T0 + 5.0)
    assert (info["queue"], info["state"], info["deliveries"], info["dead_letter"]) == (
        "dlq", "ready", 1, ["q", T0 + 4.0])


# ------------------------------------------------------------------- stats


def test_stats_fields(b: Broker) -> None:
    b.put("q", b"abcd", T0, headers={"ab": "c"})
    b.put("q", b"x", T0 + 2.0)
    stats = b.stats(T0 + 10.0)
    assert {k: v for k, v in stats.items() if k != "queues"} == {
        "messages": 2, "waiting_consumers": 0, "queue_count": 1,
        "max_queues": DEFAULT_MAX_QUEUES, "too_many_queues_total": 0,
        "stored_bytes": 4 + 3 + HEADERS_DICT_BYTES + HEADER_ENTRY_BYTES + 1
        + 2 * MESSAGE_OVERHEAD_BYTES, "max_memory": 0,
        "full_refusals_total": 0}
    assert stats["queues"]["q"] == {
        "messages": 2, "ready": 2, "in_flight": 0, "delayed": 0, "waiting": 0,
        "put_total": 2, "acked_total": 0, "redelivered_total": 0, "dead_lettered_total": 0,
        "expired_total": 0, "oldest_age_s": 10.0, "put_rate": 0.0, "ack_rate": 0.0,
        "redelivered_rate": 0.0}


def test_oldest_age_follows_the_oldest_stored_message(b: Broker) -> None:
    b.create_queue("q", {}, T0)
    assert b.queue_info("q", T0 + 5.0)["oldest_age_s"] == 0.0
    first = b.put("q", b"a", T0 + 1.0)
    b.put("q", b"b", T0 + 3.5)
    assert b.queue_info("q", T0 + 4.25)["oldest_age_s"] == 3.25
    [m] = b.receive("q", 1, None, T0 + 5.0)  # leased still counts
    assert b.queue_info("q", T0 + 6.0)["oldest_age_s"] == 5.0
    b.ack("q", first, m.lease, T0 + 6.0)
    assert b.queue_info("q", T0 + 6.0)["oldest_age_s"] == 2.5
    b.purge("q", T0 + 7.0)
    assert b.queue_info("q", T0 + 7.0)["oldest_age_s"] == 0.0


def test_oldest_age_sees_an_older_message_moved_in_later(b: Broker) -> None:
    # oldest_id keeps a bound between calls (message_table.py); a dead-lettered message
    # keeps its id, so the dead-letter queue can take in one older than all it holds.
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    older = b.put("q", b"a", T0)
    newer = b.put("q", b"b", T0 + 2.0)
    [m_older] = b.receive("q", 1, 30.0, T0 + 3.0)  # leased until T0 + 33
    [m_newer] = b.receive("q", 1, 5.0, T0 + 3.0)  # until T0 + 8: dead-lettered first
    assert (m_older.id, m_newer.id) == (older, newer)
    b.advance(T0 + 8.0)
    assert b.queue_info("dlq", T0 + 10.0)["oldest_age_s"] == 8.0  # newer's, put at T0 + 2
    b.advance(T0 + 33.0)
    assert list(b.queues["dlq"].messages) == [older, newer]
    assert b.queue_info("dlq", T0 + 40.0)["oldest_age_s"] == 40.0  # older's, put at T0
    b.ack("dlq", older, b.receive("dlq", 1, None, T0 + 41.0)[0].lease, T0 + 41.0)
    assert b.queue_info("dlq", T0 + 42.0)["oldest_age_s"] == 40.0  # newer's again
    check_invariants(b)


def test_rates_from_samples_at_two_times(b: Broker) -> None:
    b.put("q", b"0", T0)
    assert b.queue_info("q", T0 + 1.0)["put_rate"] == 0.0  # no sample yet
    b.sample_rates(T0)  # the first: a zero sample at T0 - 1 goes before it (rates.py)
    assert b.queue_info("q", T0 - 1.0)["put_rate"] == 0.0  # no time since the oldest
    assert b.queue_info("q", T0)["put_rate"] == 1.0
    b.put_many("q", [b"1"] * 8, T0 + 0.5)
    taken = b.receive("q", 4, 1.0, T0 + 0.5)
    for m in taken[:3]:
        b.ack("q", m.id, m.lease, T0 + 1.0)
    b.sample_rates(T0 + 1.0)
    b.advance(T0 + 1.5)  # one lease runs out
    assert ids_of(b.receive("q", 1, None, T0 + 1.5)) == [taken[3].id]
    info = b.queue_info("q", T0 + 2.0)  # 9 puts, 3 acks, 1 redelivery over 3 s
    assert (info["put_rate"], info["ack_rate"], info["redelivered_rate"]) == (3.0, 1.0, 0.333)
    assert b.stats(T0 + 4.0)["queues"]["q"]["put_rate"] == 1.8


def test_rates_cover_the_last_six_samples(b: Broker) -> None:
    for second in range(8):
        b.sample_rates(T0 + second)
        b.put_many("q", [b"x"] * (second + 1), T0 + second)  # implicit before the 1st
    # Samples kept: T0+2 .. T0+7; puts since T0+2's sample: 3+4+...+8 = 33 over 6 s.
    assert b.queue_info("q", T0 + 8.0)["put_rate"] == 5.5


def test_rates_are_read_by_the_steady_clock_they_are_sampled_by(b: Broker) -> None:
    # The server samples by time.monotonic and gives each request the wall time: a step
    # of the wall clock (an hour on, a day back) must not bend a rate. By the wall time,
    # these were 0.003/s and 0 for the 5 s the samples cover.
    steady = 500.0
    service = BrokerService(b, lambda now: {}, steady_clock=lambda: steady)
    b.create_queue("q", {}, T0)
    b.sample_rates(steady)  # the zero sample at 499 goes before it (rates.py)
    b.put_many("q", [b"x"] * 10, T0)
    steady += 1.0
    b.sample_rates(steady)
    replies: list[dict[str, float]] = []
    for wall in (T0 + 3600.0, T0 - 86400.0):
        assert service.stats(wall)["queues"]["q"]["put_rate"] == 5.0  # 10 puts over 2 s
        service.execute(Command("queue_info", {"queue": "q"}), wall,
                        lambda command, info: replies.append(info))
    assert [info["put_rate"] for info in replies] == [5.0, 5.0]


def test_dead_lettered_and_expired_totals(b: Broker) -> None:
    b.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    b.put("q", b"dies", T0, expiry=1.0)
    b.put_many("q", [b"a", b"b"], T0)
    b.advance(T0 + 2.0)
    taken = b.receive("q", 5, 5.0, T0 + 2.0)
    assert [m.state for m in taken] == [LEASED, LEASED]
    b.advance(T0 + 7.0)
    stats = b.stats(T0 + 7.0)
    assert (stats["queue_count"], stats["messages"]) == (2, 2)
    assert counts(b, "q") == zero_counts(put_total=3, expired_total=1, dead_lettered_total=2)
    assert counts(b, "dlq") == zero_counts(ready=2)
    check_invariants(b)


@pytest.mark.parametrize("name", ["q", "bad name"])
def test_admin_reads_never_create_a_queue(b: Broker, name: str) -> None:
    for call, args in [(b.queue_info, (T0,)), (b.peek, (1,)), (b.purge, (T0,)),
                       (b.delete_queue, (T0,)), (b.redrive, (None, T0)),
                       (b.message_info, (1, T0)), (b.configure_queue, ({}, T0))]:
        assert error_code(call, name, *args) == QUEUE_NOT_FOUND
    assert b.queues == {}
    assert b.list_queues(T0) == []


def test_a_queue_made_again_starts_new_totals_and_rates(b: Broker) -> None:
    b.put("q", b"0", T0)
    b.sample_rates(T0)
    b.put_many("q", [b"x"] * 4, T0)
    b.sample_rates(T0 + 1.0)
    assert b.queue_info("q", T0 + 4.0)["put_rate"] == 1.0  # 5 puts since T0 - 1
    b.delete_queue("q", T0 + 4.0)
    b.put("q", b"y", T0 + 4.0)
    info = b.queue_info("q", T0 + 5.0)
    assert (info["put_total"], info["put_rate"]) == (1, 0.0)
    b.sample_rates(T0 + 5.0)
    assert b.queue_info("q", T0 + 6.0)["put_rate"] == 0.5
