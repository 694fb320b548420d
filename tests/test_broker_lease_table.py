"""PROTOCOL.md's table of what a lease can still do (under `ack`), cell by cell.

Each row is a way the delivery a lease began can have ended; each column is
ack, touch or nack with that lease. Every cell starts from a fresh broker
(the clock is numbers), applies the one command, and checks both the answer
and what it did to the message, so the table in PROTOCOL.md and the broker
cannot drift apart unseen. The broker's other unit tests check the same
rules one situation at a time; this file is the table's own.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from broker_helpers import T0, check_invariants, error_code

from wonderq_server.broker import Broker
from wonderq_server.errors import LEASE_LOST, NOT_FOUND
from wonderq_server.message import DELAYED, LEASED, READY

VISIBILITY = 10.0
# A lease's delivery, ended in one of the table's ways: (broker, message id, lease, now).
Ended = tuple[Broker, int, int, float]


def _delivered(max_deliveries: int = 0) -> Ended:
    b = Broker(visibility_timeout_s=VISIBILITY, max_message_bytes=1024)
    if max_deliveries:
        b.create_queue("q", {"max_deliveries": max_deliveries, "dead_letter_queue": "dlq"}, T0)
    msg_id = b.put("q", b"body", T0)
    [m] = b.receive("q", 1, None, T0)
    return b, msg_id, m.lease, T0 + 1.0


def still_running() -> Ended:
    return _delivered()


def ran_out() -> Ended:
    b, msg_id, lease, _ = _delivered()
    b.advance(T0 + VISIBILITY)
    return b, msg_id, lease, T0 + VISIBILITY + 1.0


def plain_nack() -> Ended:
    b, msg_id, lease, now = _delivered()
    b.nack("q", msg_id, lease, 0.0, now)
    return b, msg_id, lease, now + 1.0


def unseen_nack() -> Ended:
    b, msg_id, lease, now = _delivered()
    b.nack("q", msg_id, lease, 0.0, now, unseen=True)
    return b, msg_id, lease, now + 1.0


def dead_lettered_by_running_out() -> Ended:
    b, msg_id, lease, _ = _delivered(max_deliveries=1)
    b.advance(T0 + VISIBILITY)
    return b, msg_id, lease, T0 + VISIBILITY + 1.0


def dead_lettered_by_a_nack() -> Ended:
    b, msg_id, lease, now = _delivered(max_deliveries=1)
    b.nack("q", msg_id, lease, 0.0, now)
    return b, msg_id, lease, now + 1.0


def delivered_again() -> Ended:
    b, msg_id, lease, now = ran_out()
    b.receive("q", 1, None, now)
    return b, msg_id, lease, now + 1.0


def dead_letter_delivered_again() -> Ended:
    b, msg_id, lease, now = dead_lettered_by_running_out()
    b.receive("dlq", 1, None, now)
    return b, msg_id, lease, now + 1.0


def acked() -> Ended:
    b, msg_id, lease, now = _delivered()
    b.ack("q", msg_id, lease, now)
    return b, msg_id, lease, now + 1.0


def dead_letter_queue_changed() -> Ended:
    b, msg_id, lease, now = dead_lettered_by_running_out()
    b.configure_queue("q", {"max_deliveries": 1, "dead_letter_queue": "elsewhere"}, now)
    return b, msg_id, lease, now


def redriven() -> Ended:
    b, msg_id, lease, now = dead_lettered_by_running_out()
    assert b.redrive("dlq", None, now) == 1
    return b, msg_id, lease, now + 1.0


def purged() -> Ended:
    b, msg_id, lease, now = ran_out()
    assert b.purge("q", now) == 1
    return b, msg_id, lease, now + 1.0


def never_its() -> Ended:
    """Another message's lease (a client mixing up the leases of one batch)."""
    b, msg_id, _, now = _delivered()
    b.put("q", b"other", now)
    [other] = b.receive("q", 1, None, now)
    return b, msg_id, other.lease, now + 1.0


def ack(e: Ended, queue: str) -> None:
    b, msg_id, lease, now = e
    b.ack(queue, msg_id, lease, now)


def touch(e: Ended, queue: str) -> None:
    b, msg_id, lease, now = e
    b.touch(queue, msg_id, lease, None, now)


def nack(e: Ended, queue: str) -> None:
    b, msg_id, lease, now = e
    b.nack(queue, msg_id, lease, 5.0, now)


def gone(e: Ended, queue: str) -> None:
    b, msg_id, _, _ = e
    assert all(msg_id not in q.messages for q in b.queues.values())


def leased_by_it(e: Ended, queue: str) -> None:
    b, msg_id, lease, now = e
    m = b.queues[queue].messages[msg_id]
    assert (m.state, m.lease, m.deadline_at) == (LEASED, lease, now + VISIBILITY)


def given_back(e: Ended, queue: str) -> None:
    b, msg_id, lease, _ = e
    m = b.queues[queue].messages[msg_id]
    assert (m.state, m.lease, m.kept_lease) == (DELAYED, None, lease)


Effect = Callable[[Ended, str], None]
DELETES: Effect = gone
# (row, queue the command names) -> (ack, touch, nack): an effect, or the error code
TABLE: dict[tuple[Callable[[], Ended], str], tuple[Effect | str, Effect | str, Effect | str]] = {
    (still_running, "q"): (DELETES, leased_by_it, given_back),
    (ran_out, "q"): (DELETES, leased_by_it, given_back),
    (plain_nack, "q"): (DELETES, LEASE_LOST, LEASE_LOST),
    (unseen_nack, "q"): (LEASE_LOST, LEASE_LOST, LEASE_LOST),
    (dead_lettered_by_running_out, "q"): (DELETES, NOT_FOUND, NOT_FOUND),
    (dead_lettered_by_running_out, "dlq"): (DELETES, LEASE_LOST, LEASE_LOST),
    (dead_lettered_by_a_nack, "q"): (DELETES, NOT_FOUND, NOT_FOUND),
    (dead_lettered_by_a_nack, "dlq"): (DELETES, LEASE_LOST, LEASE_LOST),
    (delivered_again, "q"): (LEASE_LOST, LEASE_LOST, LEASE_LOST),
    (dead_letter_delivered_again, "q"): (LEASE_LOST, LEASE_LOST, LEASE_LOST),
    (dead_letter_delivered_again, "dlq"): (LEASE_LOST, LEASE_LOST, LEASE_LOST),
    (acked, "q"): (NOT_FOUND, NOT_FOUND, NOT_FOUND),
    (dead_letter_queue_changed, "q"): (NOT_FOUND, NOT_FOUND, NOT_FOUND),
    (dead_letter_queue_changed, "dlq"): (DELETES, LEASE_LOST, LEASE_LOST),
    (redriven, "q"): (LEASE_LOST, LEASE_LOST, LEASE_LOST),
    (purged, "q"): (NOT_FOUND, NOT_FOUND, NOT_FOUND),
    (never_its, "q"): (LEASE_LOST, LEASE_LOST, LEASE_LOST),
}
CELLS = [(row, queue, verb, expected)
         for (row, queue), answers in TABLE.items()
         for verb, expected in zip((ack, touch, nack), answers, strict=True)]


@pytest.mark.parametrize(("row", "queue", "verb", "expected"), CELLS,
                         ids=[f"{r.__name__}-{v.__name__}-{q}" for r, q, v, _ in CELLS])
def test_each_cell_of_the_lease_table(row: Callable[[], Ended], queue: str,
                                      verb: Callable[[Ended, str], None],
                                      expected: Effect | str) -> None:
    ended = row()
    b = ended[0]
    before = _every_message(b)
    if isinstance(expected, str):
        assert error_code(verb, ended, queue) == expected
        assert _every_message(b) == before  # an error changes nothing
    else:
        verb(ended, queue)
        expected(ended, queue)
    check_invariants(b)


def _every_message(b: Broker) -> dict[tuple[str, int], tuple[object, ...]]:
    """_every_message: where each message is and its lease state, as a comparable value."""
    every = {}
    for name, q in b.queues.items():
        for msg_id in sorted(q.messages):
            m = q.messages[msg_id]  # a Message, or the body of one never delivered
            every[name, msg_id] = (m,) if type(m) is bytes else (
                m.state, m.lease, m.kept_lease, m.deadline_at, m.deliveries)
    return every


def test_the_rows_start_where_they_say() -> None:
    """A guard on the table's own set-up: a lease that ran out left its message ready."""
    b, msg_id, _, _ = ran_out()
    assert b.queues["q"].messages[msg_id].state == READY
    b, msg_id, _, _ = dead_lettered_by_running_out()
    assert b.queues["dlq"].messages[msg_id].state == READY
