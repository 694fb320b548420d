"""The soak's ledger (bench/soak_ledger.py), without a server.

The ledger decides whether a soak passed; these tests feed it the
histories a broken server would produce (a lost ack, an ack applied twice, a
lost message, a body never put, one put under two ids) and the ones a
correct server produces under kills (unanswered puts, uncertain acks,
redeliveries), and check that only the first kind fails the verdict.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak_ledger import Ledger, make_body

SIZE = 40


def put(ledger: Ledger, message_id: int) -> int:
    seq = ledger.new_put()
    ledger.put_answered(seq, message_id)
    return seq


def deliver(ledger: Ledger, seq: int, message_id: int) -> None:
    assert ledger.delivered(make_body(seq, SIZE), message_id) == seq


def test_puts_each_acked_once_hold_and_redeliveries_are_only_counted():
    ledger = Ledger(SIZE)
    a, b = put(ledger, 101), put(ledger, 102)
    deliver(ledger, a, 101)
    deliver(ledger, a, 101)  # a consumer died holding it: delivered again
    ledger.ack_refused("LEASE_LOST")  # the dead consumer's late ack
    ledger.ack_confirmed(a)
    deliver(ledger, b, 102)
    ledger.ack_confirmed(b)
    verdict = ledger.verdict()
    assert verdict.holds, verdict.errors
    assert (verdict.answered_puts, verdict.acked_once) == (2, 2)
    assert (verdict.redelivered_messages, verdict.redeliveries) == (1, 1)
    assert verdict.refused_acks == {"LEASE_LOST": 1}


def test_unanswered_puts_and_uncertain_acks_are_reported_not_failed():
    ledger = Ledger(SIZE)
    stored, lost = ledger.new_put(), ledger.new_put()
    ledger.put_unanswered(stored)
    ledger.put_unanswered(lost)
    deliver(ledger, stored, 201)
    ledger.ack_confirmed(stored)
    applied = put(ledger, 202)
    deliver(ledger, applied, 202)
    ledger.ack_uncertain(applied)  # the kill came before the reply; it took effect
    retried = put(ledger, 203)
    deliver(ledger, retried, 203)
    ledger.ack_uncertain(retried)  # it did not take effect: delivered and acked again
    deliver(ledger, retried, 203)
    ledger.ack_confirmed(retried)
    verdict = ledger.verdict()
    assert verdict.holds, verdict.errors
    assert (verdict.unanswered_puts, verdict.unanswered_appeared) == (2, 1)
    assert (verdict.uncertain_applied, verdict.uncertain_not_applied) == (1, 1)
    assert verdict.acked_once == 1  # retried; stored is acked too, but its put was unanswered


def test_a_delivery_after_a_confirmed_ack_is_a_lost_ack():
    ledger = Ledger(SIZE)
    seq = put(ledger, 301)
    deliver(ledger, seq, 301)
    ledger.ack_confirmed(seq)
    deliver(ledger, seq, 301)
    errors = ledger.verdict().errors
    assert list(errors) == ["delivered after its ack was confirmed (a lost ack)"]
    assert errors["delivered after its ack was confirmed (a lost ack)"] == (1, [seq])


def test_a_second_confirmed_ack_fails():
    ledger = Ledger(SIZE)
    seq = put(ledger, 401)
    ledger.ack_confirmed(seq)
    ledger.ack_confirmed(seq)
    assert list(ledger.verdict().errors) == ["acked twice (a second ack answered OK)"]


def test_an_answered_put_never_acked_is_lost():
    ledger = Ledger(SIZE)
    acked, lost = put(ledger, 501), put(ledger, 502)
    ledger.ack_confirmed(acked)
    errors = ledger.verdict().errors
    assert errors == {"an answered put was never acked and is not queued (lost)": (1, [lost])}


def test_bodies_never_put_and_a_put_under_two_ids_fail():
    ledger = Ledger(SIZE)
    seq = put(ledger, 601)
    assert ledger.delivered(b"hello", 700) is None
    assert ledger.delivered(make_body(seq + 1, SIZE), 701) is None  # not put (yet)
    assert ledger.delivered(make_body(seq, SIZE)[:-1] + b"?", 702) is None  # damaged
    deliver(ledger, seq, 699)
    ledger.ack_confirmed(seq)
    errors = ledger.verdict().errors
    assert errors["a body the soak never put was delivered"][0] == 3
    assert errors["one put stored under two ids"] == (1, [seq])


def test_a_refused_put_that_is_delivered_fails():
    ledger = Ledger(SIZE)
    seq = ledger.new_put()
    ledger.put_refused(seq, "STORAGE_ERROR")
    deliver(ledger, seq, 801)
    verdict = ledger.verdict()
    assert "a refused put was delivered" in verdict.errors
    assert verdict.refused_puts == {"STORAGE_ERROR": 1}


def test_backlog_counts_answered_puts_without_an_ack():
    ledger = Ledger(SIZE)
    seqs = [put(ledger, 900 + i) for i in range(3)]
    ledger.ack_confirmed(seqs[0])
    ledger.ack_uncertain(seqs[1])
    ledger.ack_confirmed(seqs[1])  # the same message: counted once
    assert ledger.backlog == 1
