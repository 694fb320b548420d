"""Issue 4's features through the journal: what each new record kind replays to.

Like test_journal.py, everything runs in this process with numbers as the
clock: `write_pending` stands in for the server's flush, and a restart is a
fresh Journal and Broker on the same directory. `broker_state` compares
every message's options (priority, headers, origin, expiry) and every
explicit queue's settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from broker_helpers import bodies, error_code
from durability import T0, broker_state, open_broker, restored

from wonderq_server.broker import Broker
from wonderq_server.compaction import Compaction
from wonderq_server.errors import LEASE_LOST
from wonderq_server.journal import Journal
from wonderq_server.journal_format import (
    DROP,
    FILE_HEADER,
    MOVE,
    PURGE,
    PUTX,
    QUEUE,
    SEQ,
    SYNCED,
    ReadResult,
    encode_record,
    read_records,
)
from wonderq_server.message import DELAYED, LEASED, READY, Message


def kinds(directory: Path) -> list[int]:
    [path] = [p for p in directory.iterdir() if p.name.startswith("journal.")]
    return [record[0] for record in read_records(path.read_bytes(), ReadResult())]


def reopened_equal(directory: Path, journal: Journal, broker: Broker, now: float) -> Broker:
    """reopened_equal writes, closes, reopens at `now` and checks nothing changed."""
    journal.write_pending()
    expected = broker_state(broker)
    journal.close()
    again, _ = restored(directory, now)
    assert broker_state(again) == expected
    return again


def test_put_options_survive_a_restart(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put("q", b"plain", T0)
    urgent = broker.put("q", b"urgent", T0, priority=-5, headers={"trace": "a b", "k": ""})
    later = broker.put("q", b"later", T0, delay=50.0, expiry=100.0)
    broker.put("q", b"low", T0, priority=7)
    again = reopened_equal(tmp_path, journal, broker, T0 + 1)
    assert kinds(tmp_path).count(PUTX) == 3
    q = again.queues["q"]
    assert q.messages[later].state == DELAYED and q.messages[later].deadline_at == T0 + 50
    assert q.messages[later].expires_at == T0 + 100
    assert q.messages[urgent].headers == {"trace": "a b", "k": ""}
    assert [m.body for m in again.receive("q", 5, 1000.0, T0 + 1)] == [b"urgent", b"plain", b"low"]
    again.advance(T0 + 60)
    assert [m.body for m in again.receive("q", 5, None, T0 + 60)] == [b"later"]


def test_queue_settings_purge_and_delete_replay(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("jobs", {"max_deliveries": 3, "dead_letter_queue": "dead",
                                 "visibility_timeout": 5.0}, T0)
    broker.configure_queue("jobs", {"max_length": 10}, T0)
    broker.create_queue("empty", {}, T0)
    broker.put_many("jobs", [b"1", b"2"], T0)
    broker.receive("jobs", 1, None, T0)
    broker.put("gone", b"x", T0)
    broker.create_queue("gone", {"delay": 1.0}, T0)
    broker.put_many("purged", [b"a", b"b"], T0)
    broker.receive("purged", 1, None, T0)
    assert broker.purge("purged", T0) == 2
    broker.put("purged", b"after the purge", T0)
    assert broker.delete_queue("gone", T0) == 1
    again = reopened_equal(tmp_path, journal, broker, T0 + 1)
    assert {QUEUE, PURGE, DROP} <= set(kinds(tmp_path))
    assert again.queues["jobs"].settings.max_length == 10
    assert again.queues["jobs"].settings.visibility_timeout == 5.0
    assert again.queues["empty"].explicit and not again.queues["empty"].messages
    assert "gone" not in again.queues
    assert bodies(again, "purged") == [b"after the purge"]


def dead_lettering_broker(directory: Path) -> tuple[Journal, Broker, int]:
    journal, broker, _ = open_broker(directory, T0)
    broker.create_queue("jobs", {"max_deliveries": 2, "dead_letter_queue": "dead"}, T0)
    msg_id = broker.put("jobs", b"poison", T0, headers={"h": "v"}, priority=3)
    return journal, broker, msg_id


def test_a_dead_lettered_message_stays_dead_lettered(tmp_path: Path) -> None:
    journal, broker, msg_id = dead_lettering_broker(tmp_path)
    [m] = broker.receive("jobs", 1, 10.0, T0)
    broker.nack("jobs", m.id, m.lease, 0.0, T0 + 1)
    broker.receive("jobs", 1, 10.0, T0 + 1)
    broker.advance(T0 + 11)  # the second lease runs out: moved at once
    assert msg_id in broker.queues["dead"].messages
    again = reopened_equal(tmp_path, journal, broker, T0 + 12)
    assert MOVE in kinds(tmp_path)
    moved = again.queues["dead"].messages[msg_id]
    assert (moved.deliveries, moved.origin, moved.headers, moved.priority) == (
        2, ("jobs", T0 + 11), {"h": "v"}, 3)
    assert not again.queues["jobs"].messages


def test_a_lease_that_ran_out_while_down_dead_letters_at_start(tmp_path: Path) -> None:
    journal, broker, msg_id = dead_lettering_broker(tmp_path)
    for at in (T0, T0 + 20):
        broker.advance(at)
        [m] = broker.receive("jobs", 1, 10.0, at)
    journal.write_pending()
    journal.close()  # down with the second (last allowed) lease running until T0 + 30

    journal, broker, _ = open_broker(tmp_path, T0 + 100)
    moved = broker.queues["dead"].messages[msg_id]
    # Judged when the lease ended (T0 + 30), as the running server would have.
    assert (moved.state, moved.deliveries, moved.origin) == (READY, 2, ("jobs", T0 + 30))
    assert broker.stats(T0 + 100)["queues"]["jobs"]["dead_lettered_total"] == 1
    assert journal.has_pending  # the move is logged, not just recomputed at each start
    # The last lease is kept by the move: its late ack, naming the queue it came from,
    # finds it in the dead-letter queue (a handler that ended while the server was down),
    # and sticks.
    broker.ack("jobs", msg_id, m.lease, T0 + 100)
    again = reopened_equal(tmp_path, journal, broker, T0 + 200)
    assert "dead" not in again.queues  # made by the move, left empty: not kept
    assert msg_id not in again.queues["jobs"].messages


def test_a_dead_letter_given_back_unseen_keeps_no_lease_across_a_restart(
        tmp_path: Path) -> None:
    # A reviewer: the unseen give-back cleared the kept lease, but replay brought it back
    # from the MOVE, and the old lease's late ack then deleted the dead letter.
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("jobs", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0)
    msg_id = broker.put("jobs", b"x", T0)
    [m] = broker.receive("jobs", 1, 10.0, T0)
    last_lease = m.lease
    broker.advance(T0 + 10)  # dead-lettered, its lease kept aside
    [taken] = broker.receive("dead", 1, 10.0, T0 + 11)
    broker.nack("dead", msg_id, taken.lease, 0.0, T0 + 12, unseen=True)
    assert broker.queues["dead"].messages[msg_id].kept_lease is None
    again = reopened_equal(tmp_path, journal, broker, T0 + 13)
    assert error_code(again.ack, "jobs", msg_id, last_lease, T0 + 13) == LEASE_LOST


def test_a_move_by_an_unseen_nack_keeps_no_lease_across_a_restart(tmp_path: Path) -> None:
    # A reviewer: a cycle a -> d -> a whose third delivery is given back unseen moves on
    # with no lease kept; replay kept the given-back lease, which could then ack.
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("a", {"max_deliveries": 1, "dead_letter_queue": "d"}, T0)
    broker.create_queue("d", {"max_deliveries": 1, "dead_letter_queue": "a"}, T0)
    msg_id = broker.put("a", b"x", T0)
    broker.receive("a", 1, 10.0, T0)
    broker.advance(T0 + 10)  # a -> d
    broker.receive("d", 1, 10.0, T0 + 11)
    broker.advance(T0 + 21)  # d -> a
    [m] = broker.receive("a", 1, 10.0, T0 + 22)
    given_back = m.lease
    broker.nack("a", msg_id, given_back, 0.0, T0 + 23, unseen=True)  # still over: to d
    assert broker.queues["d"].messages[msg_id].kept_lease is None
    again = reopened_equal(tmp_path, journal, broker, T0 + 24)
    assert error_code(again.ack, "a", msg_id, given_back, T0 + 24) == LEASE_LOST


def test_an_expiry_that_passed_while_down_drops_the_message_at_start(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    leased = broker.put("q", b"leased past its expiry", T0, expiry=10.0)
    kept = broker.put("q", b"kept", T0)
    short_lived = broker.put("q", b"short-lived", T0, expiry=10.0)
    broker.receive("q", 1, None, T0)  # the first one, leased until T0 + 30
    journal.write_pending()
    journal.close()

    journal, broker, _ = open_broker(tmp_path, T0 + 20)
    q = broker.queues["q"]
    assert set(q.messages) == {leased, kept} and q.expired_total == 1
    assert short_lived not in q.messages
    broker.advance(T0 + 31)  # the lease ends unacked, past its expiry
    assert set(q.messages) == {kept} and q.expired_total == 2
    reopened_equal(tmp_path, journal, broker, T0 + 40)


def test_redrive_survives_a_restart(tmp_path: Path) -> None:
    journal, broker, msg_id = dead_lettering_broker(tmp_path)
    broker.create_queue("jobs", {"max_deliveries": 2, "dead_letter_queue": "dead"}, T0)
    for at in (T0, T0 + 20):
        broker.advance(at)
        broker.receive("jobs", 1, 10.0, at)
    broker.advance(T0 + 40)
    assert broker.redrive("dead", None, T0 + 41) == 1
    again = reopened_equal(tmp_path, journal, broker, T0 + 42)
    back = again.queues["jobs"].messages[msg_id]
    assert (back.state, back.deliveries, back.origin) == (READY, 0, None)


def test_the_journal_counts_what_its_writes_made_visible(tmp_path: Path) -> None:
    # Group commit's read-committed replies rely on these (group_commit.py).
    journal, broker, msg_id = dead_lettering_broker(tmp_path)
    plain_id = broker.put("jobs", b"plain", T0)
    assert (journal.newest_put_written, journal.moves_written) == (0, 0)  # not written yet
    journal.write_pending()
    assert (journal.newest_put_written, journal.moves_written) == (plain_id, 0)
    for at in (T0, T0 + 20):
        broker.advance(at)
        broker.receive("jobs", 1, 10.0, at)
    broker.advance(T0 + 40)  # the poison message moves to "dead"
    assert journal.moves_written == 0
    journal.write_pending()
    assert (journal.newest_put_written, journal.moves_written) == (plain_id, 1)
    assert msg_id < plain_id  # a move keeps its old id: hence the separate count
    journal.close()
    journal, broker, _ = open_broker(tmp_path, T0 + 50)
    assert journal.newest_put_written == broker.ids.last  # all replayed PUTs are on disk
    journal.close()


def test_a_compaction_finds_messages_moved_while_it_runs(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from wonderq_server import compaction
    monkeypatch.setattr(compaction, "SLICE_MESSAGES", 2)
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("jobs", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0)
    ids = broker.put_many("jobs", [b"%d" % i for i in range(6)], T0)
    broker.receive("jobs", 2, 10.0, T0)  # the first two, leased
    journal.write_pending()
    c = Compaction(journal, broker)
    c.start()
    c.step()  # writes ids 0 and 1 (leased) into the new file
    broker.advance(T0 + 11)  # both dead-lettered after their snapshot: MOVE records follow
    [last] = broker.receive("jobs", 1, 1.0, T0 + 11)  # id 2 ...
    broker.nack("jobs", last.id, last.lease, 0.0, T0 + 11)  # ... dead-lettered before its slice
    broker.configure_queue("jobs", {"max_length": 100}, T0 + 11)
    journal.write_pending()
    while not c.step():
        journal.write_pending()
    journal.write_pending()
    c.presync()
    c.switch(T0 + 12)
    assert set(broker.queues["dead"].messages) == set(ids[:3])
    again = reopened_equal(tmp_path, journal, broker, T0 + 12)
    assert set(again.queues["dead"].messages) == set(ids[:3])
    assert again.queues["jobs"].settings.max_length == 100


def test_a_leased_message_keeps_its_lease_state_across_a_restart(tmp_path: Path) -> None:
    journal, broker, msg_id = dead_lettering_broker(tmp_path)
    broker.receive("jobs", 1, 10.0, T0)
    again = reopened_equal(tmp_path, journal, broker, T0 + 5)
    assert again.queues["jobs"].messages[msg_id].state == LEASED


def test_an_unseen_nack_keeps_its_lower_count_across_a_restart(tmp_path: Path) -> None:
    journal, broker, msg_id = dead_lettering_broker(tmp_path)
    [m] = broker.receive("jobs", 1, 10.0, T0)
    broker.nack("jobs", msg_id, m.lease, 0.0, T0 + 1, unseen=True)
    again = reopened_equal(tmp_path, journal, broker, T0 + 2)
    assert again.queues["jobs"].messages[msg_id].deliveries == 0


def test_settings_changed_after_a_lease_ran_out_do_not_change_the_past(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    msg_id = broker.put("jobs", b"x", T0)
    broker.receive("jobs", 1, 10.0, T0)
    broker.advance(T0 + 10)  # the lease ends: ready again (and journaled as such)
    broker.create_queue("jobs", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0 + 11)
    again = reopened_equal(tmp_path, journal, broker, T0 + 12)
    assert again.queues["jobs"].messages[msg_id].state == READY
    assert "dead" not in again.queues


def test_deadlines_passed_while_down_are_judged_in_their_own_order(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("jobs", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0)
    msg_id = broker.put("jobs", b"x", T0, expiry=150.0)
    broker.receive("jobs", 1, 100.0, T0)
    journal.write_pending()
    journal.close()  # down from T0 until T0 + 200: the lease ended (T0 + 100) before expiry
    journal, broker, _ = open_broker(tmp_path, T0 + 200)
    assert broker.queues["dead"].messages[msg_id].origin == ("jobs", T0 + 100)
    reopened_equal(tmp_path, journal, broker, T0 + 201)


def test_priorities_keep_their_order_across_a_restart(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    first = broker.put("q", b"first", T0)
    low = broker.put("q", b"low", T0, priority=5)
    rest = [broker.put("q", b"%d" % i, T0) for i in range(8)]
    again = reopened_equal(tmp_path, journal, broker, T0 + 1)
    want = [first, *rest, low]
    assert [m.id for m in again.peek("q", 20)] == want
    assert [m.id for m in again.receive("q", 20, None, T0 + 1)] == want



def rewritten_without_puts(directory: Path, message_id: int) -> None:
    """rewritten_without_puts rewrites the journal without the records about `message_id`
    that come before its first MOVE, as a compacted journal may be (compaction.py)."""
    [path] = [p for p in directory.iterdir() if p.name.startswith("journal.")]
    records = [r for r in read_records(path.read_bytes(), ReadResult()) if r[0] != SYNCED]
    first_move = next(i for i, r in enumerate(records) if r[0] == MOVE and r[2] == message_id)
    kept = [r for i, r in enumerate(records)
            if i >= first_move or r[0] in (QUEUE, SEQ) or r[2] != message_id]
    path.write_bytes(FILE_HEADER + b"".join(encode_record(r) for r in kept))


def test_a_move_replayed_without_its_message_makes_it_whole(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("jobs", {"max_deliveries": 1, "dead_letter_queue": "dead",
                                 "expiry": 500.0}, T0)
    broker.create_queue("dead", {"expiry": 1000.0}, T0)
    msg_id = broker.put("jobs", b"poison", T0, headers={"h": "v"}, priority=-3)
    broker.put("jobs", b"bystander", T0)
    [m] = broker.receive("jobs", 1, 10.0, T0)
    broker.nack("jobs", m.id, m.lease, 0.0, T0 + 1)  # dead-lettered at once
    [dead] = broker.receive("dead", 1, 10.0, T0 + 2)  # and leased there
    journal.write_pending()
    expected = broker_state(broker)
    journal.close()
    rewritten_without_puts(tmp_path, msg_id)
    again, _ = restored(tmp_path, T0 + 3)
    assert broker_state(again) == expected
    moved = again.queues["dead"].messages[msg_id]
    assert isinstance(moved, Message)
    assert (moved.body, moved.headers, moved.priority, moved.deliveries, moved.origin,
            moved.expires_at, moved.lease, moved.state) == (
        b"poison", {"h": "v"}, -3, 2, ("jobs", T0 + 1), T0 + 1001, dead.lease, LEASED)
    assert moved.enqueued_at == T0


def test_a_redrive_replayed_without_its_message_makes_it_plain_or_not(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("jobs", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0)
    msg_id = broker.put("jobs", b"back again", T0)
    [m] = broker.receive("jobs", 1, 10.0, T0)
    broker.nack("jobs", m.id, m.lease, 0.0, T0 + 1)
    assert broker.redrive("dead", None, T0 + 2) == 1
    journal.write_pending()
    expected = broker_state(broker)
    journal.close()
    rewritten_without_puts(tmp_path, msg_id)  # the dead-lettering MOVE stays, then the redrive
    again, _ = restored(tmp_path, T0 + 3)
    assert broker_state(again) == expected
    assert [m.body for m in again.receive("jobs", 5, None, T0 + 3)] == [b"back again"]


def test_a_compaction_finds_messages_redriven_while_it_runs(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from wonderq_server import compaction
    monkeypatch.setattr(compaction, "SLICE_MESSAGES", 2)
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("jobs", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0)
    ids = broker.put_many("jobs", [b"%d" % i for i in range(4)], T0)
    for m in broker.receive("jobs", 4, 10.0, T0):
        broker.nack("jobs", m.id, m.lease, 0.0, T0)  # all four in "dead" now
    broker.put_many("jobs", [b"plain %d" % i for i in range(4)], T0)
    journal.write_pending()
    c = Compaction(journal, broker)
    c.start()
    c.step()  # two of the plain messages in "jobs"; "dead" comes after
    assert broker.redrive("dead", 3, T0 + 1) == 3  # moved away before the slice of "dead"
    journal.write_pending()
    while not c.step():
        journal.write_pending()
    journal.write_pending()
    c.presync()
    c.switch(T0 + 2)
    again = reopened_equal(tmp_path, journal, broker, T0 + 3)
    assert set(again.queues["jobs"].messages) >= set(ids[:3])
    assert set(again.queues["dead"].messages) == {ids[3]}
