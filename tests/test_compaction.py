"""Tests of journal compaction (wonderq_server/compaction.py), driven by hand.

The server runs a compaction a step at a time between event-loop iterations;
here the test takes those steps itself, with broker operations and journal
writes in between, on a real journal in a temporary directory. A crash is a
copy of the data directory taken at that instant (everything written first),
opened into a fresh broker: it must hold exactly the live broker's state.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from broker_helpers import hold_a_lease_end_across_its_expiry
from durability import (
    T0,
    broker_state,
    journal_files,
    open_broker,
    restored,
    restored_copy,
)

from wonderq_server import compaction
from wonderq_server.broker import Broker
from wonderq_server.compaction import RATIO, Compaction, due
from wonderq_server.errors import LEASE_LOST, CommandError
from wonderq_server.journal import (
    DEFAULT_RESERVE_BYTES,
    PUT_RECORD_OVERHEAD,
    CompactionFailed,
    Journal,
    journal_path,
    live_estimate,
)
from wonderq_server.journal_format import (
    FILE_HEADER,
    PUT,
    PUTS,
    PUTX,
    QUEUE,
    SEQ,
    STATE,
    JournalCorrupt,
    ReadResult,
    encode_record,
    read_records,
)

SLICE = 3
NOW = T0 + 9  # after every operation below, before any lease or delay runs out
BODY = b"x" * 400


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compaction, "SLICE_MESSAGES", SLICE)


def lease_of(broker: Broker, name: str, message_id: int) -> int:
    lease = broker.queues[name].messages[message_id].lease
    assert lease is not None
    return lease


def filled(directory: Path) -> tuple[Journal, Broker, dict[str, list[int]]]:
    """filled: a journal where most messages were acked; 11 live ones in every state."""
    journal, broker, _ = open_broker(directory, T0)
    q = broker.put_many("q", [BODY + b"%d" % i for i in range(100)], T0)
    other = broker.put_many("other", [BODY] * 20, T0)
    broker.put("gone", b"a queue that ends up empty", T0)
    journal.write_pending()
    leased = broker.receive("q", 100, None, T0 + 1)
    for msg in leased[:92]:
        broker.ack("q", msg.id, msg.lease, T0 + 1)
    broker.nack("q", q[92], leased[92].lease, 0, T0 + 1)
    broker.nack("q", q[93], leased[93].lease, 100.0, T0 + 1)
    broker.touch("q", q[94], leased[94].lease, 60.0, T0 + 1)
    journal.write_pending()
    leased = broker.receive("other", 20, None, T0 + 2)
    for msg in leased[:17]:
        broker.ack("other", msg.id, msg.lease, T0 + 2)
    broker.nack("other", other[17], leased[17].lease, 0, T0 + 2)
    [msg] = broker.receive("gone", 1, None, T0 + 2)
    broker.ack("gone", msg.id, msg.lease, T0 + 2)
    journal.write_pending()
    return journal, broker, {"q": q[92:], "other": other[17:]}


Checkpoint = Callable[[str, Journal, Broker], None]


def compact(directory: Path, checkpoint: Checkpoint) -> tuple[Journal, Broker, int]:
    """compact runs one compaction, step by step, with the broker busy all along.

    `checkpoint(stage, ...)` is called at each stage a crash could hit, with
    every record written. Returns the journal, the broker, and the journal's
    size before the compaction.
    """
    journal, broker, live = filled(directory)
    size_before = journal.size
    c = Compaction(journal, broker)
    c.start()
    assert journal.compaction_fd == c.fd >= 0
    assert [m for q in broker.queues.values() for m in q.messages] == live["q"] + live["other"]
    # Slices of 3: [q0 q1 q2] [q3 q4 q5] [q6 q7 other0] [other1 other2]
    q, other = live["q"], live["other"]
    checkpoint("after start", journal, broker)

    def before_slice_1(now: float) -> None:
        broker.put("q", b"put during the compaction", now)
        [msg] = broker.receive("q", 1, None, now)  # q0, not written yet
        assert (msg.id, msg.deliveries) == (q[0], 2)
        broker.ack("q", q[7], lease_of(broker, "q", q[7]), now)  # its slice will skip it
        broker.touch("q", q[6], lease_of(broker, "q", q[6]), 90.0, now)

    def before_slice_2(now: float) -> None:
        broker.ack("q", q[0], lease_of(broker, "q", q[0]), now)  # written already
        broker.touch("q", q[2], lease_of(broker, "q", q[2]), 120.0, now)
        broker.put_many("other", [b"o1", b"o2"], now)
        broker.put("new", b"a queue made during the compaction", now)

    def before_slice_3(now: float) -> None:  # its records are pending when a step is tried
        broker.nack("q", q[6], lease_of(broker, "q", q[6]), 0, now)
        [msg] = broker.receive("q", 1, None, now)
        assert (msg.id, msg.deliveries) == (q[6], 2)
        broker.nack("q", q[4], lease_of(broker, "q", q[4]), 50.0, now)
        broker.ack("other", other[1], lease_of(broker, "other", other[1]), now)

    def before_slice_4(now: float) -> None:
        assert len(broker.receive("other", 5, 45.0, now)) == 3
        broker.touch("other", other[2], lease_of(broker, "other", other[2]), 75.0, now)

    operations = [before_slice_1, before_slice_2, before_slice_3, before_slice_4]
    for index, operation in enumerate(operations):
        operation(T0 + 3 + index)
        if index == 2:  # its records still pending: the slice waits for them (step)
            assert c.step() is False
        journal.write_pending()
        done = c.step()
        journal.write_pending()
        assert done == (index == len(operations) - 1)
        if index == 1:
            checkpoint("after some steps", journal, broker)
    checkpoint("after all steps", journal, broker)

    broker.ack("q", q[5], lease_of(broker, "q", q[5]), T0 + 7)
    broker.put("q", b"after the slices", T0 + 7)
    journal.write_pending()
    c.presync()
    assert c.presynced
    broker.put("q", b"after the presync", T0 + 8)
    broker.nack("q", q[3], lease_of(broker, "q", q[3]), 0, T0 + 8)
    journal.write_pending()
    checkpoint("after presync", journal, broker)
    checkpoint("after rename", journal, broker)
    assert c.switch(NOW) == journal.size
    checkpoint("after switch", journal, broker)
    return journal, broker, size_before


def presynced(journal: Journal, broker: Broker) -> Compaction:
    """presynced: a compaction with every slice written and pre-synced, ready to switch."""
    c = Compaction(journal, broker)
    c.start()
    while not c.step():
        pass
    c.presync()
    return c


def compact_at_once(journal: Journal, broker: Broker, now: float) -> None:
    """compact_at_once runs a whole compaction with nothing happening in between."""
    presynced(journal, broker).switch(now)


def no_crash(stage: str, journal: Journal, broker: Broker) -> None:
    assert not journal.has_pending


def test_compaction_keeps_the_state_and_shrinks_the_journal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal, broker, size_before = compact(data, no_crash)
    assert journal_files(data) == ["journal.000002"]
    assert sorted(os.listdir(data)) == ["LOCK", "journal.000002"]
    path = journal_path(data, 2)
    assert (journal.generation, journal.compaction_fd) == (2, -1)
    assert journal.size == path.stat().st_size
    assert journal.live_bytes == live_estimate(broker)  # as a restart rebuilds it
    assert journal.size * 4 < size_before
    assert journal.last_compaction_at == NOW
    assert not due(journal, 0)

    expected = broker_state(broker)
    # (ready, leased, delayed); "gone" was emptied before the compaction and is not kept.
    assert {name: q["counts"] for name, q in expected["queues"].items()} == {
        "q": (4, 2, 2), "other": (0, 4, 0), "new": (1, 0, 0)}
    broker2, report = restored_copy(data, tmp_path / "copy", NOW)
    assert broker_state(broker2) == expected
    assert broker2.ids.last == broker.ids.last
    assert report.torn_tail_bytes == 0 and report.skipped == []
    # The record count in stats is the count a reader finds in the file.
    assert journal.records == report.records

    # The new file is the live journal: appends go on in it.
    [msg] = broker.receive("q", 1, None, NOW)
    broker.ack("q", msg.id, msg.lease, NOW)
    broker.put("q", b"after the switch", NOW)
    journal.write_pending()
    # ... with space reserved afresh in it (journal.py), which close() cuts off again.
    assert path.stat().st_size == journal.file_end == journal.size + DEFAULT_RESERVE_BYTES
    expected = broker_state(broker)
    journal.close()
    records = journal.records  # close() adds the last SYNCED record
    broker3, report3 = restored(data, NOW)
    assert broker_state(broker3) == expected
    assert report3.records == records
    assert journal_files(data) == ["journal.000002"]


def test_a_second_compaction_after_a_restart(tmp_path: Path) -> None:
    journal, broker, _ = compact(tmp_path, no_crash)
    journal.close()
    journal, broker, _ = open_broker(tmp_path, NOW)
    expected = broker_state(broker)
    compact_at_once(journal, broker, NOW)
    assert journal_files(tmp_path) == ["journal.000003"]
    assert broker_state(broker) == expected
    journal.close()
    assert broker_state(restored(tmp_path, NOW)[0]) == expected


def test_a_message_given_back_unseen_compacts_as_if_never_received(tmp_path: Path) -> None:
    # Its delivery taken back, its lease ended: ready with no deliveries and no lease,
    # which compaction writes as a bare PUT (a reviewer found it once kept a lease
    # there that the compacted file lost).
    journal, broker, _ = open_broker(tmp_path, T0)
    message_id = broker.put("q", b"x", T0)
    [msg] = broker.receive("q", 1, 10.0, T0)
    broker.nack("q", message_id, msg.lease, 0.0, T0 + 1, unseen=True)
    journal.write_pending()  # on disk before: only the compaction can carry it over
    expected = broker_state(broker)
    compact_at_once(journal, broker, T0 + 2)
    journal.close()
    again, _ = restored(tmp_path, T0 + 3)
    assert broker_state(again) == expected
    [back] = again.receive("q", 1, 10.0, T0 + 3)
    assert (back.id, back.deliveries) == (message_id, 1)


STAGES = ["after start", "after some steps", "after all steps", "after presync",
          "after rename", "after switch"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_crash_at_any_stage_finds_the_live_state(tmp_path: Path, stage: str) -> None:
    crashes: list[str] = []

    def crash(at: str, journal: Journal, broker: Broker) -> None:
        assert not journal.has_pending
        if at != stage:
            return
        crashes.append(at)
        copy = tmp_path / "copy"
        shutil.copytree(tmp_path / "data", copy)
        if at == "after rename":  # renamed into place, the old journal not yet deleted
            os.rename(copy / "journal.000002.tmp", copy / "journal.000002")
        before = ["journal.000001", "journal.000002.tmp"]
        assert journal_files(copy) == {"after rename": ["journal.000001", "journal.000002"],
                                       "after switch": ["journal.000002"]}.get(at, before)
        broker2, _ = restored(copy, NOW)
        assert broker_state(broker2) == broker_state(broker)
        assert broker2.ids.last == broker.ids.last
        # Recovery deleted the .tmp file, or the journal the compaction replaced.
        survivor = "journal.000002" if at in ("after rename", "after switch") else \
            "journal.000001"
        assert journal_files(copy) == [survivor]

    journal, _, _ = compact(tmp_path / "data", crash)
    assert crashes == [stage]
    journal.close()


def test_ids_stay_unique_when_only_an_ack_reached_the_new_file(tmp_path: Path) -> None:
    # A message is leased and acked before its slice is written: the new file
    # has its STATE and ACK but never a PUT of it. Its lease, the largest id
    # handed out, must still count after a restart.
    journal, broker, _ = open_broker(tmp_path, T0 + 100)
    ids = broker.put_many("q", [b"a", b"b", b"c", b"d"], T0 + 100)
    journal.write_pending()
    c = Compaction(journal, broker)
    c.start()
    leased = broker.receive("q", 4, None, T0 + 100)
    assert leased[3].id == ids[3]  # in the second slice
    broker.ack("q", ids[3], leased[3].lease, T0 + 100)
    journal.write_pending()
    while not c.step():
        pass
    c.presync()
    c.switch(T0 + 100)
    assert broker.ids.last == leased[3].lease
    journal.close()

    clock_set_back = T0 + 100 - 3600
    journal, broker2, _ = open_broker(tmp_path, clock_set_back)
    assert broker2.ids.last == leased[3].lease
    assert broker2.put("q", b"new", clock_set_back) > leased[3].lease
    journal.close()


def test_a_compaction_with_every_message_acked_keeps_the_id_sequence(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0 + 100)
    broker.put_many("q", [b"a", b"b"], T0 + 100)
    for msg in broker.receive("q", 2, None, T0 + 100):
        broker.ack("q", msg.id, msg.lease, T0 + 100)
    journal.write_pending()
    last = broker.ids.last
    c = Compaction(journal, broker)
    c.start()
    assert c.step()
    c.presync()
    c.switch(T0 + 100)
    journal.close()
    # The new file holds its header and one SEQ record, nothing else.
    path = journal_path(tmp_path, 2)
    assert path.read_bytes() == FILE_HEADER + encode_record([SEQ, last])

    clock_set_back = T0 + 100 - 3600
    journal, broker2, report = open_broker(tmp_path, clock_set_back)
    assert (report.records, report.messages) == (1, 0)
    assert broker2.ids.last == last
    assert broker2.put("q", b"new", clock_set_back) == last + 1
    journal.close()


def test_abandon_leaves_the_live_journal_alone(tmp_path: Path) -> None:
    journal, broker, _ = filled(tmp_path)
    c = Compaction(journal, broker)
    c.start()
    assert not c.step()
    broker.put("q", b"during", T0 + 3)
    journal.write_pending()
    c.abandon("the server is stopping")
    assert journal.compaction_fd == -1
    assert sorted(os.listdir(tmp_path)) == ["LOCK", "journal.000001"]
    broker.put("q", b"after", T0 + 4)
    journal.write_pending()
    expected = broker_state(broker)
    journal.close()
    assert broker_state(restored(tmp_path, NOW)[0]) == expected


def test_a_failed_write_to_the_new_file_only_stops_the_compaction(tmp_path: Path) -> None:
    failing_fd = [-1]

    def write(fd: int, data: bytes) -> int:
        if fd == failing_fd[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    journal, broker, _ = open_broker(tmp_path, T0, write=write)
    broker.put_many("q", [b"a", b"b"], T0)
    journal.write_pending()
    c = Compaction(journal, broker)
    c.start()
    failing_fd[0] = c.fd
    broker.put("q", b"c", T0 + 1)
    assert journal.write_pending() is True  # the live journal took it
    assert journal.compaction_fd == -1
    assert os.strerror(errno.ENOSPC) in journal.compaction_error
    c.abandon(journal.compaction_error)
    expected = broker_state(broker)
    journal.close()
    assert broker_state(restored(tmp_path, T0 + 1)[0]) == expected
    assert journal_files(tmp_path) == ["journal.000001"]


def test_abandon_during_the_presync_leaves_the_file_to_the_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server drops a compaction (a failed write) while the pre-sync's fsync runs in
    # its worker thread: the descriptor is closed when that fsync is done, not under it.
    journal, broker, _ = filled(tmp_path)
    c = Compaction(journal, broker)
    c.start()
    while not c.step():
        pass
    in_fsync, finish = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        assert finish.wait(30)
        real_fsync(fd)  # raises EBADF if the descriptor was closed meanwhile

    monkeypatch.setattr(compaction.os, "fsync", slow_fsync)
    thread_errors: list[BaseException] = []

    def presync() -> None:
        try:
            c.presync()
        except BaseException as exc:  # reported below
            thread_errors.append(exc)

    thread = threading.Thread(target=presync)
    thread.start()
    assert in_fsync.wait(30)
    c.abandon("a write to the new file failed")
    assert journal.compaction_fd == -1  # the live journal stops feeding it at once
    os.fstat(c.fd)  # still open: the thread has it
    assert (tmp_path / "journal.000002.tmp").exists()
    finish.set()
    thread.join(30)
    assert thread_errors == []
    with pytest.raises(OSError):
        os.fstat(c.fd)  # closed by the thread, once done
    assert journal_files(tmp_path) == ["journal.000001"]
    assert not (tmp_path / "journal.000002.tmp").exists()


def ready_to_switch(directory: Path) -> tuple[Journal, Broker, Compaction]:
    """ready_to_switch: a compaction of `filled` with every slice written and pre-synced."""
    journal, broker, _ = filled(directory)
    return journal, broker, presynced(journal, broker)


def test_a_compaction_stays_in_the_directory_it_locked_when_the_path_is_replaced(
        tmp_path: Path) -> None:
    # A reviewer moved a running server's data directory aside, made a new one at its
    # path and started a second server there (allowed: the first one's lock is on the
    # moved directory). The first one's compaction, working by path, wrote its new file
    # into the second's directory and deleted the second's live journal.
    data, moved = tmp_path / "data", tmp_path / "data.old"
    journal, broker, _ = filled(data)
    data.rename(moved)
    data.mkdir()
    others = journal_path(data, 1)
    others.write_bytes(b"another server's live journal")
    compact_at_once(journal, broker, NOW)
    broker.put("q", b"after the switch", T0 + 4)
    journal.write_pending()
    expected = broker_state(broker)
    journal.close()
    assert sorted(p.name for p in data.iterdir()) == ["journal.000001"]
    assert others.read_bytes() == b"another server's live journal"
    assert journal_files(moved) == ["journal.000002"]
    assert broker_state(restored(moved, NOW)[0]) == expected


@pytest.mark.parametrize("failing", ["fsync", "rename"])
def test_a_switch_that_cannot_make_the_new_file_durable_only_stops_the_compaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    # Before the rename nothing but the .tmp file changed: the live journal goes on (it
    # stopped the server before).
    journal, broker, c = ready_to_switch(tmp_path)
    broker.put("q", b"after the presync", T0 + 3)
    journal.write_pending()
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        if failing == "fsync" and fd == c.fd:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    def rename(source: str | Path, target: str | Path, **dir_fds: int) -> None:
        if failing == "rename":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_rename(source, target, **dir_fds)

    monkeypatch.setattr(compaction.os, "fsync", fsync)
    monkeypatch.setattr(compaction.os, "rename", rename)
    with pytest.raises(CompactionFailed, match="could not be made durable"):
        c.switch(NOW)
    monkeypatch.undo()
    c.abandon("the switch failed")
    assert journal_files(tmp_path) == ["journal.000001"]
    broker.put("q", b"after the failed switch", T0 + 4)
    journal.write_pending()
    expected = broker_state(broker)
    journal.close()
    assert broker_state(restored(tmp_path, NOW)[0]) == expected
    assert journal_files(tmp_path) == ["journal.000001"]


def test_a_failed_directory_fsync_after_the_rename_keeps_the_new_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # journal.N+1 is in place and is what a start reads: it must not be deleted, and what
    # is written until the compaction is dropped (the server stops) goes to both files.
    journal, broker, c = ready_to_switch(tmp_path)

    def fails() -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(journal, "_fsync_directory", fails)
    with pytest.raises(OSError):
        c.switch(NOW)
    assert c.renamed
    broker.put("q", b"written while the server stops", T0 + 4)
    journal.write_pending()
    c.abandon("the directory's fsync failed")
    assert journal_files(tmp_path) == ["journal.000001", "journal.000002"]
    expected = broker_state(broker)
    journal.close()
    assert broker_state(restored(tmp_path, NOW)[0]) == expected
    assert journal_files(tmp_path) == ["journal.000002"]


# ------------------------------------------------------------------------ due

def test_due_needs_both_size_and_dead_weight(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.size, journal.live_bytes = 1000, 499
    assert due(journal, 999)
    assert not due(journal, 1000)  # not over the minimum
    journal.live_bytes = 500  # exactly RATIO times: not more than
    assert RATIO == 2.0
    assert not due(journal, 999)
    journal.live_bytes = 0
    assert due(journal, 0)


def test_due_follows_puts_and_acks(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put_many("q", [BODY] * 50, T0)
    journal.write_pending()
    assert not due(journal, 0)  # every message is live
    for msg in broker.receive("q", 40, None, T0):
        broker.ack("q", msg.id, msg.lease, T0)
    journal.write_pending()
    assert due(journal, 0)
    assert not due(journal, journal.size)
    journal.close()
    journal, broker, _ = open_broker(tmp_path, T0)  # the estimate is rebuilt on open
    assert due(journal, 0)
    assert journal.live_bytes == 10 * (len(BODY) + PUT_RECORD_OVERHEAD)
    journal.close()


def test_a_backlog_compacted_while_puts_go_on_is_restored_into_the_run(tmp_path: Path) -> None:
    """The new file holds the puts made during the compaction before the snapshot's older
    ids, so replay meets its PUTs out of id order: they must still end up in the
    table's run (message_table.py), not one dict entry and heap slot each."""
    journal, broker, _ = open_broker(tmp_path, T0)
    backlog = broker.put_many("q", [BODY] * 20, T0)
    journal.write_pending()
    c = Compaction(journal, broker)
    c.start()
    during = []
    while True:
        during.append(broker.put("q", b"put during the compaction", T0 + 1))
        journal.write_pending()
        if c.step():
            break
    c.presync()
    c.switch(T0 + 1)
    journal.close()
    again, _ = restored(tmp_path, T0 + 2)
    q = again.queues["q"]
    assert (q.messages.run_count, q.messages.others, q.ready) == (len(backlog + during), {}, [])
    taken = again.receive("q", 100, None, T0 + 2)
    assert [m.id for m in taken] == backlog + during  # oldest first, as ever


def test_plain_messages_are_written_as_puts_records_a_slice_at_a_time(
        tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put_many("q", [b"q%d" % i for i in range(7)], T0)
    broker.put_many("r", [b"r%d" % i for i in range(2)], T0)
    [first] = broker.receive("q", 1, None, T0)  # q0: a Message, leased
    broker.create_queue("explicit", {}, T0)
    journal.write_pending()
    expected = broker_state(broker)
    compact_at_once(journal, broker, T0 + 1)
    journal.close()
    path = journal_path(tmp_path, 2)
    records = list(read_records(path.read_bytes(), ReadResult(), False))
    # Slices of 3 messages: [q0 q1 q2] [q3 q4 q5] [q6 r0 r1]; q0 is not plain.
    assert [r[0] for r in records] == [SEQ, QUEUE, PUT, STATE, PUTS, PUTS, PUTS, PUTS]
    assert [(r[1], len(r[2])) for r in records if r[0] == PUTS] == [
        ("q", 2), ("q", 3), ("q", 1), ("r", 2)]
    assert PUTX not in [r[0] for r in records] and records[2][2] == first.id
    broker2, _ = restored(tmp_path, T0 + 1)
    assert broker_state(broker2) == expected
    assert broker2.queues["q"].messages.run_count == 6


def test_acks_after_a_compaction_do_not_make_the_next_one_early(tmp_path: Path) -> None:
    """A compacted file holds plain messages as PUTS records, far smaller than the PUTs
    an ack used to take back: `live_bytes` must not start from the file's size."""
    journal, broker, _ = open_broker(tmp_path, T0)
    for _ in range(20):
        broker.put_many("q", [b"0123456789"] * 100, T0)
    journal.write_pending()
    compact_at_once(journal, broker, T0)
    assert journal.live_bytes == live_estimate(broker)
    for msg in broker.receive("q", 250, None, T0):  # an eighth leased and acked
        broker.ack("q", msg.id, msg.lease, T0)
    journal.write_pending()
    assert journal.live_bytes == live_estimate(broker)
    probe = Compaction(journal, broker)  # what a compaction would write now
    probe.start()
    while not probe.step():
        pass
    probe.abandon("only measuring")
    assert journal.size < RATIO * probe.written  # so compacting now would be early
    assert not due(journal, 0)
    journal.close()


def test_a_compacted_journal_is_not_due_again_until_it_has_doubled(tmp_path: Path) -> None:
    # Headers are not in the live estimate, so a compacted journal of messages with big
    # headers is already over twice the estimate: the reviewer's server compacted again
    # after almost every flush.
    journal, broker, _ = open_broker(tmp_path, T0)
    for _ in range(300):
        broker.put("q", b"x", T0, headers={"h": "v" * 1000})
    journal.write_pending()
    compact_at_once(journal, broker, T0 + 1)
    compacted = journal.size
    assert journal.compacted_size == compacted
    assert compacted > RATIO * journal.live_bytes  # the estimate alone would say: due
    assert not due(journal, 0)
    while journal.size <= RATIO * compacted:  # dead records double the file: then it is due
        assert not due(journal, 0)
        broker.put("other", b"y" * 1000, T0 + 2)
        [msg] = broker.receive("other", 1, None, T0 + 2)
        broker.ack("other", msg.id, msg.lease, T0 + 2)
        journal.write_pending()
    assert due(journal, 0)
    assert not due(journal, journal.size)  # and --compact-min-bytes still applies
    journal.close()


def test_a_start_removes_an_older_journal_only_once_the_newest_is_read(tmp_path: Path) -> None:
    # A reviewer's case: a good journal.000001 beside an empty journal.000002 (a bad
    # copy or restore; the server's own switch fsyncs the new file before the rename).
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put("q", b"keep", T0)
    journal.write_pending()
    journal.close()
    good = (tmp_path / "journal.000001").read_bytes()
    (tmp_path / "journal.000002").write_bytes(b"")
    with pytest.raises(JournalCorrupt):
        open_broker(tmp_path, T0 + 1)
    assert journal_files(tmp_path) == ["journal.000001", "journal.000002"]
    assert (tmp_path / "journal.000001").read_bytes() == good


def test_after_a_failed_compaction_the_next_waits_longer_each_time() -> None:
    from wonderq_server.compaction import RETRY_MAX_S, RETRY_MIN_S, retry_delay_s
    assert [retry_delay_s(n) for n in (1, 2, 3)] == [RETRY_MIN_S, 2 * RETRY_MIN_S,
                                                     4 * RETRY_MIN_S]
    assert retry_delay_s(7) == RETRY_MAX_S == retry_delay_s(10_000)


def test_a_lease_a_nack_kept_aside_survives_restarts_and_a_compaction(tmp_path: Path) -> None:
    # The lease a nack ended can still ack (a late ack) and nothing else (a touch would
    # take back what was given back): so after a restart, and after a compaction's
    # snapshot, the STATE record's kept lease (journal format 4).
    journal, broker, _ = open_broker(tmp_path, T0)
    a, b, c = broker.put_many("q", [b"a", b"b", b"c"], T0)
    leases = {m.id: m.lease for m in broker.receive("q", 3, 60.0, T0)}
    broker.nack("q", a, leases[a], 0.0, T0 + 1)
    broker.nack("q", b, leases[b], 30.0, T0 + 1)
    broker.nack("q", c, leases[c], 0.0, T0 + 1)
    assert {m.id for m in broker.receive("q", 2, 60.0, T0 + 2)} == {a, c}  # a again, c again
    [again] = [m for m in broker.queues["q"].messages.values() if m.id == a]
    leases[a] = again.lease
    broker.nack("q", a, leases[a], 0.0, T0 + 3)  # the kept lease is now this one
    expected = broker_state(broker)
    journal.close()
    for step in ("restart", "compaction"):
        journal, broker, _ = open_broker(tmp_path, NOW)
        assert broker_state(broker) == expected, step
        messages = broker.queues["q"].messages
        assert (messages[a].lease, messages[a].kept_lease) == (None, leases[a])
        assert (messages[b].lease, messages[b].kept_lease) == (None, leases[b])
        assert messages[c].lease is not None and messages[c].kept_lease is None
        if step == "compaction":
            compact_at_once(journal, broker, NOW)
        journal.close()
    broker, _ = restored(tmp_path, NOW)
    assert broker_state(broker) == expected
    for call, args in ((broker.touch, (None,)), (broker.nack, (0.0,))):
        with pytest.raises(CommandError) as refused:
            call("q", b, leases[b], *args, NOW)
        assert refused.value.code == LEASE_LOST
    with pytest.raises(CommandError) as refused:
        broker.ack("q", c, leases[c], NOW)  # delivered again since
    assert refused.value.code == LEASE_LOST
    broker.ack("q", a, leases[a], NOW)
    broker.ack("q", b, leases[b], NOW)
    assert list(broker.queues["q"].messages) == [c]


def test_a_step_waits_for_pending_records_so_a_move_back_is_not_made_twice(
        tmp_path: Path) -> None:
    # A reviewer's differential: a step taken while a MOVE was still pending found the
    # message back in the queue its list had it in (a redrive), wrote it there, and the
    # MOVE written after made it a second time at replay; the counts drifted.
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    message_id = broker.put("q", b"x", T0, priority=1)
    journal.write_pending()
    c = Compaction(journal, broker)
    c.start()  # its list: (q, message_id)
    [m] = broker.receive("q", 1, 10.0, T0 + 1)
    broker.nack("q", message_id, m.lease, 0.0, T0 + 1)  # dead-lettered: q -> dlq
    journal.write_pending()
    assert broker.redrive("dlq", None, T0 + 2) == 1  # dlq -> q, its MOVE pending
    assert c.step() is False  # waits: nothing is written while records are pending
    journal.write_pending()
    while not c.step():
        journal.write_pending()
    journal.write_pending()
    c.presync()
    c.switch(T0 + 3)
    expected = broker_state(broker)
    journal.close()
    assert broker_state(restored(tmp_path, T0 + 3)[0]) == expected


def test_a_restart_after_a_lease_end_held_across_its_expiry_changes_nothing(
        tmp_path: Path) -> None:
    journal, b, _ = open_broker(tmp_path, T0)
    hold_a_lease_end_across_its_expiry(b, 1)
    b.advance(T0 + 100)
    journal.write_pending()
    expected = broker_state(b)
    journal.close()
    again, _ = restored(tmp_path, T0 + 100)
    assert broker_state(again) == expected


@pytest.mark.parametrize("leased", [1, 2])  # a lone lease, and a lease batch
def test_a_compaction_during_a_hold_keeps_each_leases_own_end(
        tmp_path: Path, leased: int) -> None:
    # Compaction wrote the hold's time as the lease's deadline: a restart from the
    # compacted journal ended a last delivery (T0+5) at the hold's (T0+12), after the
    # message's expiry (T0+10), and dropped it as expired, where it belongs in the
    # dead-letter queue, stamped T0+5 (a reviewer).
    journal, b, _ = open_broker(tmp_path, T0)
    b.create_queue("a", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, T0)
    ids = [b.put("a", b"x", T0, expiry=10.0) for _ in range(leased)]
    b.receive("a", leased, 5.0, T0)
    journal.write_pending()
    b.hold_lease_ends_until = T0 + 12
    b.advance(T0 + 6)  # held to T0+12
    compact_at_once(journal, b, T0 + 6)
    journal.write_pending()
    journal.close()  # the process dies here
    again, _ = restored(tmp_path, T0 + 20)
    for message_id in ids:
        assert again.message_info("dlq", message_id, T0 + 20)["dead_letter"] == ["a", T0 + 5]
