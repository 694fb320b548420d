"""A receive of many messages leases them under one heap entry (wonderq_server/lease_batch.py).

Numbers as the clock; the broker's own deadline heap is inspected, since what is
under test is how many entries a batch costs and when they go stale.
"""

from __future__ import annotations

import pytest
from broker_helpers import T0, check_invariants, counts, zero_counts

from wonderq_server.broker import Broker
from wonderq_server.deadlines import DeadlineHeap
from wonderq_server.errors import LEASE_LOST, NOT_FOUND, CommandError
from wonderq_server.journal import Journal
from wonderq_server.journal_format import FILE_HEADER, STATE, ReadResult, read_records
from wonderq_server.lease_batch import LeaseBatch
from wonderq_server.message import LEASED, READY, Message

VIS = 30.0


def backlog(b: Broker, n: int, name: str = "q") -> None:
    b.put_many(name, [b"m%d" % i for i in range(n)], T0)


def live_entries(b: Broker) -> list[object]:
    """live_entries: the heap's items by its rules, a pending member's own entries not
    among them (deadlines.py)."""
    return [item for at, _, item in b.deadlines._entries if item.deadline_at == at
            and getattr(item, "lease_batch", None) is None]


def test_a_batch_receive_pushes_one_entry_and_a_lone_one_its_own(b: Broker) -> None:
    backlog(b, 101)
    taken = b.receive("q", 100, VIS, T0 + 1)
    assert len(b.deadlines) == 1
    (batch,) = live_entries(b)
    assert isinstance(batch, LeaseBatch) and list(batch.members.values()) == taken
    assert all(m.lease_batch is batch and m.deadline_at == T0 + 1 + VIS for m in taken)
    (lone,) = b.receive("q", 1, VIS, T0 + 2)
    assert lone.lease_batch is None and lone in live_entries(b)
    check_invariants(b)


def test_acking_the_whole_batch_leaves_one_stale_entry(b: Broker) -> None:
    backlog(b, 100)
    taken = b.receive("q", 100, VIS, T0 + 1)
    results = b.ack_many("q", [(m.id, m.lease) for m in taken], T0 + 2)
    assert results == [None] * 100
    assert live_entries(b) == [] and len(b.deadlines) == 1  # one entry to pop, not 100
    assert b.deadlines._dead == 1
    assert b.next_deadline() is None and len(b.deadlines) == 0
    assert all(m.lease_batch is None for m in taken)
    check_invariants(b)


def test_the_batch_deadline_redelivers_only_what_is_still_pending(b: Broker) -> None:
    backlog(b, 10)
    taken = b.receive("q", 10, VIS, T0 + 1)
    for m in taken[:6]:
        b.ack("q", m.id, m.lease, T0 + 2)
    b.touch("q", taken[6].id, taken[6].lease, 100.0, T0 + 2)  # leaves the batch
    b.nack("q", taken[7].id, taken[7].lease, 0.0, T0 + 2)  # ready again at once
    assert counts(b) == zero_counts(ready=1, in_flight=3, acked_total=6, put_total=10)
    assert b.next_deadline() == T0 + 1 + VIS
    assert b.advance(T0 + 1 + VIS - 0.001) == 0
    assert b.advance(T0 + 1 + VIS) == 2  # the two still pending, not the whole batch
    assert [m.state for m in taken[6:]] == [LEASED, READY, READY, READY]
    assert taken[8].lease_batch is None and taken[8].deadline_at is None
    assert b.next_deadline() == T0 + 2 + 100.0  # the touched one, on its own entry
    check_invariants(b)
    again = b.receive("q", 10, VIS, T0 + 40)
    assert sorted(m.id for m in again) == sorted(m.id for m in taken[7:])
    assert all(m.deliveries == 2 for m in again if m is not taken[7]) and taken[7].deliveries == 2
    check_invariants(b)


def test_members_that_left_are_let_go(b: Broker) -> None:
    backlog(b, 32)
    taken = b.receive("q", 32, VIS, T0 + 1)
    (batch,) = live_entries(b)
    for k, m in enumerate(taken[:-1]):
        b.ack("q", m.id, m.lease, T0 + 2)
        # One slow consumer's message must not keep the acked ones alive until the deadline.
        assert list(batch.members.values()) == taken[k + 1:]
    b.ack("q", taken[-1].id, taken[-1].lease, T0 + 3)
    assert batch.members == {} and batch.deadline_at is None
    check_invariants(b)


def test_ack_many_answers_each_item_as_ack_does(b: Broker) -> None:
    backlog(b, 3)
    first, second, third = b.receive("q", 3, VIS, T0 + 1)
    b.restore_puts("q", [third.id + 100, third.id + 50], [b"p", b"o"])  # one plain, out of order
    items = [(first.id, first.lease), [second.id, second.lease], (first.id, first.lease),
             (third.id, third.lease + 1), (third.id + 50, 1), (12345, 1)]
    results = b.ack_many("q", items, T0 + 2)
    assert results[:2] == [None, None]
    assert [r.code for r in results[2:]] == [NOT_FOUND, LEASE_LOST, LEASE_LOST, NOT_FOUND]
    assert counts(b)["acked_total"] == 2
    assert [r.code for r in b.ack_many("nowhere", [(first.id, 1)], T0)] == [NOT_FOUND]
    check_invariants(b)


def test_purge_and_delete_make_the_batch_stale(b: Broker) -> None:
    backlog(b, 5, "p")
    backlog(b, 5, "d")
    b.receive("p", 5, VIS, T0 + 1)
    b.receive("d", 5, VIS, T0 + 1)
    assert len(live_entries(b)) == 2
    assert b.purge("p", T0 + 2) == 5
    assert b.delete_queue("d", T0 + 2) == 5
    assert live_entries(b) == [] and b.deadlines._dead == 2
    assert b.advance(T0 + 100) == 0
    check_invariants(b)


def test_many_batches_acked_keep_the_heap_small(b: Broker) -> None:
    """A batch consumer's heap holds about one entry per batch in flight."""
    backlog(b, 100 * 50)
    for k in range(50):
        taken = b.receive("q", 100, VIS, T0 + k)
        b.ack_many("q", [(m.id, m.lease) for m in taken], T0 + k)
        b.next_deadline()  # as the server's timer does after each request
        assert len(b.deadlines) <= 1
    assert counts(b) == zero_counts(acked_total=5000, put_total=5000)


def test_a_batch_ends_in_lease_order_with_its_records(tmp_path) -> None:
    b = Broker(visibility_timeout_s=VIS)
    journal = Journal(tmp_path, fsync="never")
    journal.open(b, T0)
    try:
        backlog(b, 4)
        taken = b.receive("q", 4, VIS, T0 + 1)
        journal.write_pending()
        assert b.advance(T0 + 1 + VIS) == 4
        records = list(read_records(FILE_HEADER + b"".join(journal._pending), ReadResult(),
                                    False))
        assert [(r[0], r[2]) for r in records] == [(STATE, m.id) for m in taken]
        assert [m.state for m in taken] == [READY] * 4
        again = b.receive("q", 4, VIS, T0 + 40)
        assert [m.id for m in again] == [m.id for m in taken]  # ready by age again
        check_invariants(b)
    finally:
        journal.close()


class FailsToRecordOne:
    """A journal (broker.ChangeLog) that fails to record the end of one lease: a planted
    bug, planted in data rather than by patching the broker, which a compiled build
    compiles (compiled.py) and Python cannot patch."""

    def __init__(self, failing: Message) -> None:
        self.failing = failing
        self.ended: list[int] = []

    def lease_ended(self, msg: Message) -> None:
        if msg is self.failing:
            raise RuntimeError("planted")
        self.ended.append(msg.id)


def test_a_member_whose_ending_fails_does_not_strand_the_others(b: Broker) -> None:
    """The batch's entry is popped before its members end: if ending one raises (a bug),
    the others still end, and the error still reaches the caller (the server logs it)."""
    backlog(b, 5)
    taken = b.receive("q", 5, VIS, T0 + 1)
    b.journal = journal = FailsToRecordOne(taken[1])
    with pytest.raises(RuntimeError, match="planted"):
        b.advance(T0 + 1 + VIS)
    assert journal.ended == [m.id for m in taken if m is not taken[1]]
    assert [m.state for m in taken] == [READY] * 5
    assert b.next_deadline() is None  # no member left behind in the heap


def _state(b: Broker, journal: Journal) -> tuple:
    records = list(read_records(FILE_HEADER + b"".join(journal._pending), ReadResult(), False))
    q = b.queues["q"]
    return (journal.live_bytes, q.acked_total, q.leased_count, q.ready_count, q.body_bytes,
            b.stored_bytes, sorted(q.messages.others), b.deadlines._dead, len(b.deadlines),
            b.next_deadline(), [tuple(r[:3]) for r in records])


def test_ack_many_of_batch_members_ends_as_acks_one_by_one(tmp_path) -> None:
    """ack_many acks a batch member inline; it must leave the broker, its counts, the
    heap and the journal exactly as `ack` of each item does, whichever members went
    their own way first (touched out of the batch, nacked, acked alone)."""
    brokers = []
    for name in ("inline", "one_by_one"):
        b = Broker(visibility_timeout_s=VIS)
        journal = Journal(tmp_path / name, fsync="never")
        journal.open(b, T0)
        backlog(b, 12)
        journal.write_pending()
        taken = b.receive("q", 8, VIS, T0 + 1)
        b.touch("q", taken[1].id, taken[1].lease, 100.0, T0 + 2)  # leaves the batch
        b.nack("q", taken[2].id, taken[2].lease, 0.0, T0 + 2)  # ready again
        b.ack("q", taken[3].id, taken[3].lease, T0 + 2)
        items = [(m.id, m.lease) for m in taken if m is not taken[2]]
        if name == "inline":
            results = b.ack_many("q", items, T0 + 3)
        else:
            results = []
            for message_id, lease in items:
                try:
                    b.ack("q", message_id, lease, T0 + 3)
                    results.append(None)
                except CommandError as exc:
                    results.append(exc.code)
        brokers.append(([r if r is None else getattr(r, "code", r) for r in results],
                        _state(b, journal)))
        check_invariants(b)
        journal.close()
    assert brokers[0] == brokers[1]
    assert brokers[0][0] == [None, None, NOT_FOUND, None, None, None, None]


def test_a_take_of_several_ready_messages_is_one_batch(b: Broker) -> None:
    """Redelivered and prioritised messages come off the ready heap one at a time
    (`_take_each`); a receive of several still costs one heap entry."""
    b.put("q", b"urgent", T0, priority=-1)
    backlog(b, 3)
    taken = b.receive("q", 3, VIS, T0 + 1)
    assert [m.body for m in taken] == [b"urgent", b"m0", b"m1"]
    (batch,) = live_entries(b)
    assert isinstance(batch, LeaseBatch) and list(batch.members.values()) == taken
    assert len(b.deadlines) == 1
    check_invariants(b)


def own_entry_at_the_batchs_time(b: Broker) -> tuple[list[Message], object]:
    """A message leased alone, given back, then leased again in a batch due at the very
    time its own first entry still in the heap is: returns the batch's messages and
    that old entry's item."""
    backlog(b, 2)
    (first,) = b.receive("q", 1, 10.0, T0)  # its own entry, due at T0 + 10
    b.nack("q", first.id, first.lease, 0.0, T0 + 1)  # that entry goes stale
    taken = b.receive("q", 2, 5.0, T0 + 5)  # due at T0 + 10 again, in a batch
    assert taken[0] is first and first.lease_batch is not None
    old = [item for at, _, item in b.deadlines._entries if item is first]
    assert old == [first] and first.deadline_at == T0 + 10  # its time, yet stale
    assert live_entries(b) == [first.lease_batch]
    return taken, first


def test_a_members_own_entry_at_its_batchs_time_is_stale_and_the_lease_ends_once(
        b: Broker) -> None:
    """The old entry pops first (it was pushed first); the broker skips it, and the
    lease ends with the batch, as the lease it has now says."""
    taken, _ = own_entry_at_the_batchs_time(b)
    check_invariants(b)  # the heap counts that entry dead
    assert b.advance(T0 + 10) == 2
    assert [m.state for m in taken] == [READY, READY]
    assert [m.deliveries for m in taken] == [2, 1]
    assert b.stats(T0 + 10)["queues"]["q"]["redelivered_total"] == 1
    assert b.deadlines._dead == 0 and len(b.deadlines) == 0
    check_invariants(b)


def test_a_rebuild_drops_a_members_own_entry_at_its_batchs_time(b: Broker) -> None:
    """A rebuild keeps live entries only; the member's old entry is not one, so the dead
    count stays exact and the next rebuild comes on time."""
    b.deadlines = DeadlineHeap(compact_min_size=2)
    b.next_deadline = b.deadlines.next_at
    taken, first = own_entry_at_the_batchs_time(b)
    waiter = b.wait("x", 1, None, T0 + 50, lambda messages: None, T0 + 5)
    b.cancel_wait(waiter)  # the third entry goes stale: more than half, a rebuild
    assert [item for _, _, item in b.deadlines._entries] == [first.lease_batch]
    assert b.deadlines._dead == 0
    check_invariants(b)
    assert b.advance(T0 + 10) == 2
    assert [m.state for m in taken] == [READY, READY]
    check_invariants(b)


class FailingJournal:
    """A journal whose `state` raises at its `fail_at`-th call: a bug met in the middle of
    a take. Every other report is ignored."""

    def __init__(self, fail_at: int) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def state(self, msg: Message) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("a bug")

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


@pytest.mark.parametrize("fail_at", [1, 2, 5])
@pytest.mark.parametrize("source", ["backlog", "prioritised"])
def test_a_take_that_raises_midway_loses_nothing_and_strands_no_lease(
        b: Broker, source: str, fail_at: int) -> None:
    """Whatever a take leased before the step that raised is leased with a heap entry;
    the rest is still stored and ready. Both ways a receive leases: a slice of the run
    (_take_from_run) and one by one off the ready heap (_take_each)."""
    if source == "backlog":
        backlog(b, 40)
    else:
        for i in range(40):
            b.put("q", b"m%d" % i, T0, priority=1 + i % 2)
    b.journal = FailingJournal(fail_at)  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        b.receive("q", 32, 5.0, T0)
    b.journal = None
    check_invariants(b)
    q = b.queues["q"]
    assert (len(q.messages), q.leased_count, q.ready_count) == (40, fail_at, 40 - fail_at)
    assert len(b.receive("q", 100, 5.0, T0 + 1)) == 40 - fail_at  # still there, in order
    assert b.advance(T0 + 6) == 40
    assert (q.leased_count, q.ready_count) == (0, 40)
    check_invariants(b)
