"""Tests of the journal (wonderq_server/journal.py) with a real broker in a temporary directory.

Everything runs in this process: the broker is driven with numbers as the
clock, `write_pending` stands in for the server's flush, and a restart is a
fresh Journal and Broker opened on the same directory. Disk faults are
injected through the journal's replaceable `write` and `fsync_file`.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from broker_helpers import bodies
from durability import (
    T0,
    broker_state,
    journal_files,
    open_broker,
    record_offsets,
    restored,
)

from wonderq_server import journal as journal_module
from wonderq_server.broker import Broker
from wonderq_server.errors import LEASE_LOST, NOT_FOUND, CommandError
from wonderq_server.journal import (
    PUT_RUN_MAX_MESSAGES,
    DataDirLocked,
    Journal,
    JournalBroken,
    JournalError,
    journal_path,
)
from wonderq_server.journal_format import (
    ACK,
    DROP,
    FILE_HEADER,
    MOVE,
    PURGE,
    PUT,
    PUTS,
    PUTX,
    QUEUE,
    RECORD_HEADER_BYTES,
    SEQ,
    STATE,
    SYNCED,
    VERSION,
    JournalCorrupt,
    ReadResult,
    encode_record,
    first_misfit,
    read_records,
)
from wonderq_server.message import DELAYED, LEASED, READY
from wonderq_server.message_table import MessageTable


def error_code(call, *args) -> str:
    with pytest.raises(CommandError) as info:
        call(*args)
    return info.value.code


def journal_file(directory: Path) -> Path:
    [name] = journal_files(directory)
    return directory / name


# ---------------------------------------------------------- a fresh directory

def test_a_relative_data_directory_is_named_by_its_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An operator's review: under systemd ./wonderq-data is under /, and the log said
    # "started a new journal at wonderq-data/journal.000001".
    monkeypatch.chdir(tmp_path)
    journal, _, report = open_broker(Path("relative"), T0)
    assert report.path == str(tmp_path / "relative" / "journal.000001")
    journal.close()


def test_a_new_directory_gets_an_empty_journal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal, _, report = open_broker(data, T0)
    assert (report.records, report.messages, report.queues, report.torn_tail_bytes,
            report.skipped) == (0, 0, 0, 0, [])
    assert report.path == str(journal_path(data, 1))
    assert sorted(os.listdir(data)) == ["LOCK", "journal.000001"]
    assert (data / "journal.000001").read_bytes() == FILE_HEADER
    assert journal.size == len(FILE_HEADER)
    journal.close()
    broker2, report2 = restored(data, T0)
    assert broker2.queues == {}
    assert report2.records == 0


def test_a_crash_while_creating_the_journal_does_not_block_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first journal is created, and then the process dies before its
    # header is written. The next start must not find a headerless journal.
    real_write = os.write

    def crash_on_header(fd: int, data: bytes) -> int:
        if bytes(data) == FILE_HEADER:
            raise OSError(errno.EIO, "the machine went down")
        return real_write(fd, data)

    journal = Journal(tmp_path)
    monkeypatch.setattr(os, "write", crash_on_header)
    with pytest.raises(OSError):
        journal.open(Broker(), T0)
    monkeypatch.undo()
    journal.close()  # the dead process' lock goes with it
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put("q", b"after", T0)
    journal.close()
    assert bodies(restored(tmp_path, T0)[0], "q") == [b"after"]


# ------------------------------------------------------------ the round trip

def busy_broker(directory: Path) -> tuple[Journal, Broker, dict[str, int]]:
    """busy_broker: messages in every state, in two queues, all written; returns their ids."""
    journal, broker, _ = open_broker(directory, T0)
    ids = {"acked": broker.put("q", b"acked", T0)}
    ids.update(zip(["nacked", "delayed", "touched", "leased", "ready"],
                   broker.put_many("q", [b"nacked", b"delayed", b"touched", b"leased",
                                         b"\x00ready\xff" * 100], T0 + 1), strict=True))
    ids["other"] = broker.put("other", b"in another queue", T0 + 2)
    journal.write_pending()
    leased = broker.receive("q", 5, None, T0 + 3)
    assert [m.id for m in leased] == [ids[k] for k in ("acked", "nacked", "delayed",
                                                         "touched", "leased")]
    broker.ack("q", ids["acked"], leased[0].lease, T0 + 4)
    broker.nack("q", ids["nacked"], leased[1].lease, 0, T0 + 4)
    broker.nack("q", ids["delayed"], leased[2].lease, 100.0, T0 + 4)
    broker.touch("q", ids["touched"], leased[3].lease, 300.0, T0 + 5)
    journal.write_pending()
    [again] = broker.receive("q", 1, 10.0, T0 + 6)  # the nacked one, its second delivery
    assert again.id == ids["nacked"]
    broker.receive("other", 1, 60.0, T0 + 6)
    broker.nack("other", ids["other"], broker.queues["other"].messages[ids["other"]].lease,
                0, T0 + 7)
    journal.write_pending()
    return journal, broker, ids


def test_reopening_restores_every_message_exactly(tmp_path: Path) -> None:
    journal, broker, ids = busy_broker(tmp_path)
    expected = broker_state(broker)
    journal.close()
    size = journal.size
    restart = T0 + 8  # before any deadline
    broker2, report = restored(tmp_path, restart)
    assert broker_state(broker2) == expected
    q = expected["queues"]["q"]["messages"]
    assert q[ids["nacked"]][1:4] == (LEASED, 2, q[ids["nacked"]][3])
    assert q[ids["delayed"]][1:3] == (DELAYED, 1)
    assert q[ids["touched"]][1:3] == (LEASED, 1) and q[ids["touched"]][4] == T0 + 305
    assert q[ids["ready"]][1:5] == (READY, 0, None, None)
    assert ids["acked"] not in q
    assert expected["queues"]["other"]["messages"][ids["other"]][1:3] == (READY, 1)
    assert (report.messages, report.queues, report.torn_tail_bytes) == (6, 2, 0)
    assert report.file_bytes == size == journal_file(tmp_path).stat().st_size
    # Replay wrote nothing: the broker gets its journal only after the replay.
    assert journal_file(tmp_path).stat().st_size == size


def test_a_queue_made_by_use_and_emptied_is_gone_after_a_restart(tmp_path: Path) -> None:
    # PROTOCOL.md: a queue made by use is not journaled, so an empty one is gone after
    # a restart, whether or not the journal still holds the PUTs of its old messages.
    journal, broker, _ = open_broker(tmp_path, T0)
    gone = broker.put("emptied", b"x", T0)
    [msg] = broker.receive("emptied", 1, None, T0)
    broker.ack("emptied", gone, msg.lease, T0)
    broker.put("kept", b"y", T0)
    broker.create_queue("explicit", {}, T0)
    journal.close()
    broker2, report = restored(tmp_path, T0 + 1)
    assert sorted(broker2.queues) == ["explicit", "kept"]
    assert report.queues == 2


def test_a_lease_current_at_restart_holds_until_its_deadline(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    first, second = broker.put_many("q", [b"one", b"two"], T0)
    leases = {m.id: m.lease for m in broker.receive("q", 2, 20.0, T0 + 1)}
    journal.close()
    deadline = T0 + 21

    journal, broker, _ = open_broker(tmp_path, T0 + 10)
    for message_id in (first, second):
        msg = broker.queues["q"].messages[message_id]
        assert (msg.state, msg.deadline_at, msg.lease, msg.deliveries) == (
            LEASED, deadline, leases[message_id], 1)
    assert broker.next_deadline() == deadline
    assert broker.receive("q", 10, None, T0 + 10) == []
    broker.ack("q", first, leases[first], T0 + 11)  # the lease from before the restart
    assert broker.advance(deadline - 0.001) == 0
    assert broker.advance(deadline) == 1
    [redelivered] = broker.receive("q", 10, None, deadline)
    assert (redelivered.id, redelivered.deliveries) == (second, 2)
    assert error_code(broker.ack, "q", second, leases[second], deadline) == LEASE_LOST
    journal.close()
    assert error_code(restored(tmp_path, deadline)[0].ack, "q", first, leases[first],
                      deadline) == NOT_FOUND


def test_a_lease_that_ran_out_before_restart_comes_back_ready(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    late, lost = broker.put_many("q", [b"late", b"lost"], T0)
    leases = {m.id: m.lease for m in broker.receive("q", 2, 20.0, T0 + 1)}
    journal.close()

    restart = T0 + 21  # the deadline itself: the lease has run out
    journal, broker, _ = open_broker(tmp_path, restart)
    for message_id in (late, lost):
        msg = broker.queues["q"].messages[message_id]
        assert (msg.state, msg.deadline_at, msg.lease, msg.deliveries) == (
            READY, None, leases[message_id], 1)
    assert broker.next_deadline() is None
    broker.ack("q", late, leases[late], restart)  # a late ack with the old lease
    [again] = broker.receive("q", 10, None, restart)
    assert (again.id, again.deliveries) == (lost, 2)
    assert error_code(broker.ack, "q", lost, leases[lost], restart) == LEASE_LOST
    expected = broker_state(broker)
    journal.close()
    assert broker_state(restored(tmp_path, restart + 1)[0]) == expected


def test_delayed_messages_stay_delayed_until_their_deadline(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    message_id = broker.put("q", b"later", T0)
    [msg] = broker.receive("q", 1, None, T0)
    broker.nack("q", message_id, msg.lease, 50.0, T0 + 1)
    journal.close()

    broker2, _ = restored(tmp_path, T0 + 20)
    msg2 = broker2.queues["q"].messages[message_id]
    assert (msg2.state, msg2.deadline_at, msg2.deliveries, msg2.lease) == (
        DELAYED, T0 + 51, 1, msg.lease)
    assert broker2.receive("q", 1, None, T0 + 20) == []
    assert broker2.advance(T0 + 51) == 1
    assert [m.id for m in broker2.receive("q", 1, None, T0 + 51)] == [message_id]

    broker3, _ = restored(tmp_path, T0 + 51)  # the delay ended while the server was down
    msg3 = broker3.queues["q"].messages[message_id]
    assert (msg3.state, msg3.deadline_at, msg3.deliveries) == (READY, None, 1)


def test_ids_after_reopening_are_larger_than_every_id_before(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    seen = broker.put_many("q", [b"a", b"b", b"c"], T0 + 100)
    for msg in broker.receive("q", 3, None, T0 + 100):
        seen.append(msg.lease)
        broker.ack("q", msg.id, msg.lease, T0 + 100)
    assert broker.queues["q"].messages == {}
    journal.close()

    # The clock went back an hour while the server was down.
    journal, broker, _ = open_broker(tmp_path, T0 + 100 - 3600)
    assert broker.ids.last == max(seen)
    new_id = broker.put("q", b"new", T0 + 100 - 3600)
    [msg] = broker.receive("q", 1, None, T0 + 100 - 3600)
    assert max(seen) < new_id < msg.lease
    journal.close()


# ------------------------------------------------------------------ the lock

def test_one_journal_per_directory(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put("q", b"x", T0)
    second = Journal(tmp_path)
    with pytest.raises(DataDirLocked):
        second.open(Broker(), T0)
    with pytest.raises(DataDirLocked) as refused:  # still, on every try
        second.open(Broker(), T0)
    assert f"another wonderq-server, pid {os.getpid()} (it holds" in str(refused.value)
    assert (tmp_path / "LOCK").read_text() == f"{os.getpid()}\n"
    (tmp_path / "LOCK").unlink()  # an operator's review: then a second server started
    with pytest.raises(DataDirLocked) as refused:
        second.open(Broker(), T0)
    assert "another wonderq-server (it holds" in str(refused.value)  # no pid to give
    assert not (tmp_path / "LOCK").exists()  # the refused one made no empty LOCK
    journal.close()
    broker2 = Broker()
    second.open(broker2, T0)
    assert len(broker2.queues["q"].messages) == 1
    second.close()


def test_a_version_1_journal_is_marked_with_this_version_before_anything_is_appended(
        tmp_path: Path) -> None:
    """A version-1 server calls a PUTS record damage and offers --repair, which would
    drop its messages: a journal this server appends to must be refused by it whole."""
    old_header = FILE_HEADER[:6] + b"\x01\n"
    path = journal_path(tmp_path, 1)
    path.write_bytes(old_header + encode_record([PUT, "q", 7, b"old", T0]))
    journal, broker, _ = open_broker(tmp_path, T0)
    assert path.read_bytes()[:len(FILE_HEADER)] == FILE_HEADER and FILE_HEADER[6] == VERSION
    broker.put_many("q", [b"a", b"b"], T0)
    journal.close()
    assert bodies(restored(tmp_path, T0)[0], "q") == [b"old", b"a", b"b"]


def kinds_in(path: Path) -> list[int]:
    return [record[0] for record in records_in(path)]


def records_in(path: Path) -> list[list[Any]]:
    """records_in: the file's records but SYNCED ones (which change nothing)."""
    return [record for record in all_records_in(path) if record[0] != SYNCED]


def all_records_in(path: Path) -> list[list[Any]]:
    return list(read_records(path.read_bytes(), ReadResult(), False))


def test_a_put_many_of_bare_bodies_is_one_puts_record(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    ids = broker.put_many("q", [b"one", b"two", b"three"], T0)
    journal.write_pending()
    broker.put_many("q", [b"four", {"body": b"five", "priority": 1}], T0)  # not all bare
    journal.close()
    assert kinds_in(journal_file(tmp_path)) == [PUTS, PUT, PUTX]
    expected = broker_state(broker)

    broker2, report = restored(tmp_path, T0 + 1)
    assert broker_state(broker2) == expected
    assert report.records == len(all_records_in(journal_file(tmp_path)))
    assert [m.id for m in broker2.receive("q", 3, None, T0 + 1)] == ids
    assert broker2.queues["q"].messages.run_count == 1  # b"four"; five is a Message


def test_plain_puts_of_one_write_to_one_queue_are_one_puts_record(tmp_path: Path) -> None:
    # Single puts pipelined, or from several producers, in one loop iteration: one record,
    # one checksum, and a start replays them as fast as a batch (journal.py, the put run).
    journal, broker, _ = open_broker(tmp_path, T0)
    ids = [broker.put("q", b"m%d" % i, T0) for i in range(5)]
    ids += broker.put_many("q", [b"m5", b"m6"], T0)  # a batch joins the run too
    journal.write_pending()
    journal.close()
    assert records_in(journal_file(tmp_path)) == [
        [PUTS, "q", ids, [b"m%d" % i for i in range(7)]]]
    expected = broker_state(broker)
    broker2, report = restored(tmp_path, T0 + 1)
    assert broker_state(broker2) == expected
    assert report.records == len(all_records_in(journal_file(tmp_path)))
    assert broker2.queues["q"].messages.run_count == 7


def test_any_other_record_ends_the_put_run_so_the_order_holds(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    a = broker.put("q", b"a", T0)
    b = broker.put("q", b"b", T0)
    other = broker.put("r", b"other queue", T0)
    c = broker.put("q", b"c", T0)
    [leased] = broker.receive("q", 1, None, T0)  # a STATE: a's lease
    d = broker.put("q", b"d", T0)
    broker.ack("q", leased.id, leased.lease, T0)
    e = broker.put("q", b"e", T0, priority=3)  # a Message: PUTX
    f = broker.put("q", b"f", T0)
    journal.close()  # close writes what is pending
    records = records_in(journal_file(tmp_path))
    assert [r[0] for r in records] == [PUTS, PUT, PUT, STATE, PUT, ACK, PUTX, PUT]
    assert records[0][2] == [a, b] and records[1][2] == other and records[2][2] == c
    assert records[3][2] == a == leased.id and records[4][2] == d
    assert (records[6][2], records[7][2]) == (e, f)
    expected = broker_state(broker)
    assert broker_state(restored(tmp_path, T0 + 1)[0]) == expected


def test_a_put_run_is_cut_at_its_limit(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    for i in range(PUT_RUN_MAX_MESSAGES + 10):
        broker.put("q", b"%d" % i, T0)
    big = broker.put_many("q", [b"x"] * (PUT_RUN_MAX_MESSAGES + 1), T0)  # longer than a run
    broker.put_many("q", [b"y"] * 5, T0)
    journal.close()
    records = records_in(journal_file(tmp_path))
    assert [len(r[2]) for r in records] == [PUT_RUN_MAX_MESSAGES, 10, len(big), 5]
    assert records[2][2] == big
    expected = broker_state(broker)
    assert broker_state(restored(tmp_path, T0 + 1)[0]) == expected


# Each a journal written as PUTS records, replayed against the same journal with one
# PUT per (id, body) instead: the two must give the same broker.
PUTS_CASES = {
    "in order": [[PUTS, "q", [10, 11, 12], [b"a", b"b", b"c"]]],
    "below the run": [[PUTS, "q", [10, 11], [b"a", b"b"]], [PUTS, "q", [5, 6], [b"c", b"d"]]],
    "interleaved": [[PUTS, "q", [10, 12], [b"a", b"b"]], [PUTS, "q", [11, 13], [b"c", b"d"]]],
    "an id again": [[PUTS, "q", [10, 11], [b"a", b"b"]],
                    [STATE, "q", 11, LEASED, T0 + 50, 1, 77],
                    [PUTS, "q", [11, 12], [b"b again", b"c"]]],
    "an id again, above the run": [[PUTS, "q", [10], [b"a"]],
                                   [PUTX, "q", 11, b"b", T0, {"priority": 1}],
                                   [PUTS, "q", [11, 12], [b"b again", b"c"]]],
    "not rising within a record": [[PUTS, "q", [12, 10, 11], [b"a", b"b", b"c"]]],
    "an id twice in a record": [[PUTS, "q", [10, 11, 11], [b"a", b"b", b"b again"]]],
    "two queues": [[PUTS, "q", [10], [b"a"]], [PUTS, "r", [11, 12], [b"b", b"c"]],
                   [PUTS, "q", [13], [b"d"]]],
}


def as_single_puts(record: list) -> list[list]:
    """as_single_puts: a PUTS as its PUTs, each alone (a SEQ of 0, which observes
    nothing, after each ends replay's run), so none goes through restore_puts' run."""
    if record[0] != PUTS:
        return [record]
    return [r for i, body in zip(record[2], record[3], strict=True)
            for r in ([PUT, record[1], i, body, T0], [SEQ, 0])]


def replayed(directory: Path, records: list[list]) -> tuple:
    """replayed: what a start from `records` gives, counters and ids included (taken
    before anything else uses an id), and the ready order of every queue."""
    directory.mkdir()
    journal_path(directory, 1).write_bytes(
        FILE_HEADER + b"".join(encode_record(r) for r in records))
    broker, _ = restored(directory, T0 + 1)
    counts = {name: (q.body_bytes, q.ready_count, q.messages.run_count)
              for name, q in broker.queues.items()}
    state = (broker_state(broker), counts, broker.stored_bytes, broker.ids.last)
    order = {name: [m.id for m in broker.receive(name, 100, None, T0 + 1)]
             for name in sorted(broker.queues)}
    return state, order


@pytest.mark.parametrize("case", PUTS_CASES)
def test_a_puts_record_replays_as_its_puts_would(
        tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    records = PUTS_CASES[case]
    as_written = replayed(tmp_path / "puts", records)
    # The reference takes the per-message path: one PUT at a time, no run appended whole.
    monkeypatch.setattr(MessageTable, "extend_run_if_in_order", lambda *args: False)
    one_by_one = replayed(tmp_path / "single",
                          [r for record in records for r in as_single_puts(record)])
    assert as_written == one_by_one


# ------------------------------------------------- torn tails and damage

def test_a_torn_tail_is_cut_off_and_appends_continue(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put_many("q", [b"one", b"two"], T0)
    journal.close()
    path = journal_file(tmp_path)
    good = path.read_bytes()
    torn = encode_record([PUT, "q", 99, b"never answered", T0])[:13]
    path.write_bytes(good + torn)

    journal, broker, report = open_broker(tmp_path, T0 + 1)
    assert (report.torn_tail_bytes, report.file_bytes) == (13, len(good) + 13)
    assert report.records == len(read_all_records(good))  # the put_many is one PUTS record
    assert path.read_bytes() == good  # cut off on disk, not only skipped
    assert journal.size == len(good)
    broker.put("q", b"three", T0 + 1)
    expected = broker_state(broker)
    journal.close()

    broker2, report2 = restored(tmp_path, T0 + 1)
    assert broker_state(broker2) == expected
    assert bodies(broker2, "q") == [b"one", b"two", b"three"]
    assert report2.torn_tail_bytes == 0
    assert [r[0] for r in records_in(journal_file(tmp_path))] == [PUTS, PUT]


def test_replay_maps_the_file_and_unmaps_it_before_serving(tmp_path: Path,
                                                           monkeypatch) -> None:
    # Read whole, a 206 MB journal took a start to 260 MiB resident against 61 running,
    # and a restart inside a container's limit was OOM-killed; mapped, its pages are the
    # page cache's. The mapping must be gone once replay is done.
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put_many("q", [b"one", b"two"], T0)
    journal.close()
    mapped: list[Any] = []  # what replay mapped, by the real function
    original = journal_module._map_whole_file
    monkeypatch.setattr(journal_module, "_map_whole_file",
                        lambda path: mapped.append(original(path)) or mapped[-1])
    journal, broker, report = open_broker(tmp_path, T0 + 1)
    assert report.messages == 2
    [data] = mapped
    assert isinstance(data, mmap.mmap) and data.closed
    with open("/proc/self/maps") as maps:
        assert str(journal_file(tmp_path)) not in maps.read()
    journal.close()


def test_an_empty_journal_file_is_refused_as_before(tmp_path: Path) -> None:
    journal, _, _ = open_broker(tmp_path, T0)
    journal.close()
    journal_file(tmp_path).write_bytes(b"")  # cannot be mapped
    with pytest.raises(JournalCorrupt) as info:
        open_broker(tmp_path, T0)
    assert "not a WonderQ journal" in str(info.value) and not info.value.repairable


def test_damage_in_the_middle_stops_the_start_unless_repair(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    kept = broker.put("q", b"kept", T0)
    journal.write_pending()  # a record of its own: each write ends the put run
    lost = broker.put("q", b"lost to damage", T0)
    journal.write_pending()
    expected = broker_state(broker)
    del expected["queues"]["q"]["messages"][lost]
    expected["queues"]["q"]["counts"] = (2, 0, 0)
    later = broker.put("q", b"written later", T0)
    expected["queues"]["q"]["messages"][later] = (b"written later", READY, 0, None, None, T0,
                                                  0, None, None, None, None)
    journal.close()
    path = journal_file(tmp_path)
    data = bytearray(path.read_bytes())
    bad = offset_of(bytes(data), b"lost to damage")
    data[bad + 5] ^= 0xFF  # the second PUT's checksum
    path.write_bytes(bytes(data))

    journal = Journal(tmp_path)
    with pytest.raises(JournalCorrupt) as info:
        journal.open(Broker(), T0)
    assert info.value.offset == bad
    assert str(path) in info.value.reason and "checksum mismatch" in info.value.reason
    journal.close()  # lets go of the lock, as the exiting server would
    assert path.read_bytes() == bytes(data)  # a refused start changes nothing

    caplog.set_level("ERROR", "wonderq.journal")
    journal, broker, report = open_broker(tmp_path, T0, repair=True)
    assert report.skipped == [(bad, "checksum mismatch")]
    # One line per stretch said "its change is lost" when a stretch can hold many: a
    # summary says how much was skipped (an operator's review counted 27 lost messages).
    summary = re.search(r"--repair skipped (\d+) bytes in 1 damaged stretch\(es\); every "
                        r"change recorded in them is lost", caplog.text)
    assert summary and len(b"lost to damage") < int(summary.group(1)) < 100  # that record
    # All but the damaged one.
    assert report.records == len(list(read_records(path.read_bytes(), ReadResult(), True)))
    assert broker_state(broker) == expected
    assert kept in broker.queues["q"].messages
    # The damaged file is kept, as journal.N.damaged, before anything can delete it (a
    # reviewer: renamed only at the compaction's end, a crash between lost it).
    damaged = path.with_name(path.name + ".damaged")
    assert damaged.read_bytes() == bytes(data)
    broker.put("q", b"after the repair", T0 + 1)
    journal.close()
    assert len(restored(tmp_path, T0 + 1, repair=True)[0].queues["q"].messages) == 3
    assert damaged.read_bytes() == bytes(data)  # a copy: as it was, whatever came after


@pytest.mark.parametrize("bad_record", [
    [PUT, "q", 2**63 + 5, b"an id the run's array cannot hold", T0],
    [PUT, "q", "not an id", b"x", T0],
    [PUT, "q", 7],  # fields missing
    [PUTS, "q", [7, 8], [b"one body for two ids"]],
])
def test_a_record_that_passed_its_checksum_but_does_not_fit_stops_the_start(
        tmp_path: Path, bad_record: list) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.put("q", b"good", T0)
    journal.close()
    path = journal_file(tmp_path)
    bad = path.stat().st_size
    # Good PUTs after it: replay applies the run of PUTs only after reading them, but the
    # error must still name the bad record, not the last one read.
    after = [encode_record([PUT, "q", (1 << 61) + i, b"later", T0]) for i in range(3)]
    path.write_bytes(path.read_bytes() + encode_record(bad_record) + b"".join(after))
    before = path.read_bytes()

    for repair in (False, True):  # repair cannot skip it either: it is no checksum failure
        journal = Journal(tmp_path, repair=repair)
        with pytest.raises(JournalCorrupt) as info:
            journal.open(Broker(), T0)
        journal.close()
        assert info.value.offset == bad
        assert str(path) in info.value.reason and "does not fit its kind" in info.value.reason
    assert path.read_bytes() == before  # a refused start changes nothing


def test_every_record_the_server_writes_fits_its_kind(tmp_path: Path) -> None:
    """The field checks that name a bad record (journal_format.misfit) accept everything
    a running broker writes: every kind, with its optional fields given and not."""
    journal, broker, _ = open_broker(tmp_path, T0)
    broker.create_queue("dead", {}, T0)
    broker.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dead"}, T0)
    broker.put("q", b"plain", T0)
    broker.put_many("q", [b"a", b"b"], T0)
    broker.put("q", b"options", T0, priority=-3, headers={"k": "v"}, expiry=600.0)
    broker.put("q", b"delayed", T0, delay=5.0)
    urgent, plain, a = broker.receive("q", 3, None, T0 + 1)
    broker.touch("q", plain.id, plain.lease, 60.0, T0 + 1)
    broker.ack("q", a.id, a.lease, T0 + 1)
    broker.nack("q", urgent.id, urgent.lease, 0, T0 + 1)  # max_deliveries 1: a MOVE
    broker.redrive("dead", None, T0 + 2)  # another MOVE
    broker.purge("q", T0 + 3)
    broker.put("gone", b"x", T0 + 3)
    broker.delete_queue("gone", T0 + 3)
    journal.write_pending()
    journal.close()
    data = journal_file(tmp_path).read_bytes()
    assert first_misfit(data, repair=False) is None
    kinds = set(kinds_in(journal_file(tmp_path)))
    assert kinds >= {PUT, PUTS, PUTX, STATE, ACK, MOVE, QUEUE, PURGE, DROP}


# ------------------------------------------------------------- disk faults

class FlakyWriter:
    """A `write` for the journal that fails with ENOSPC once `budget` bytes are used up."""

    def __init__(self) -> None:
        self.budget: int | None = None  # None: write everything

    def __call__(self, fd: int, data: bytes) -> int:
        if self.budget is None:
            return os.write(fd, data)
        if self.budget == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, data[:self.budget])
        self.budget -= written
        return written


@pytest.mark.parametrize("reserve", [0, 4096])
def test_a_failed_write_is_cut_back_and_the_journal_stays_whole(tmp_path: Path,
                                                                reserve: int) -> None:
    data = tmp_path / "data"
    writer = FlakyWriter()
    journal, broker, _ = open_broker(data, T0, write=writer, reserve_bytes=reserve)
    first = broker.put("q", b"before", T0)
    [msg] = broker.receive("q", 1, None, T0)
    assert journal.write_pending() is True
    before = broker_state(broker)
    size = journal.size
    path = journal_file(data)
    assert path.stat().st_size == journal.file_end == size + reserve

    writer.budget = 30  # part of the write reaches the file, then the disk is full
    second = broker.put("q", b"x" * 100, T0 + 1)
    broker.ack("q", first, msg.lease, T0 + 1)
    with pytest.raises(JournalError) as info:
        journal.write_pending()
    assert not isinstance(info.value, JournalBroken)
    assert os.strerror(errno.ENOSPC) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert path.stat().st_size == journal.size == size
    # Those records stay pending, for the next write: memory holds their changes already
    # (a reviewer: a dropped MOVE of a lease that ran out lost the message at a restart).
    assert journal.has_pending and journal.durable_pending

    shutil.copytree(data, tmp_path / "copy")  # the directory as a crash now would leave it
    broker_copy, report = restored(tmp_path / "copy", T0 + 1)
    assert broker_state(broker_copy) == before
    assert report.torn_tail_bytes == 0

    writer.budget = None  # space again
    third = broker.put("q", b"after", T0 + 2)
    assert journal.write_pending() is True
    assert path.stat().st_size == journal.file_end == journal.size + reserve > size + reserve
    journal.close()
    broker2, report2 = restored(data, T0 + 2)
    assert report2.torn_tail_bytes == 0
    # The failed records went out with the next write, in order: the ack of `first` and
    # the put of `second` count, as they did in memory.
    assert sorted(broker2.queues["q"].messages) == sorted(broker.queues["q"].messages) \
        == [second, third]


def test_failed_records_over_the_cap_break_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk failing for long: what is kept for a later write is bounded. Past it the
    # journal is broken (the server stops): dropping them would leave a gap in the file,
    # and a reviewer lost a message to a compaction that way.
    monkeypatch.setattr(journal_module, "MAX_RETAINED_BYTES", 100)
    writer = FlakyWriter()
    journal, broker, _ = open_broker(tmp_path, T0, write=writer)
    writer.budget = 0
    broker.put("q", b"x" * 40, T0)
    with pytest.raises(JournalError) as info:
        journal.write_pending()
    assert not isinstance(info.value, JournalBroken)
    assert journal.has_pending and journal.kept_from_failure  # kept: under the cap
    broker.put("q", b"y" * 80, T0)
    with pytest.raises(JournalBroken, match="journal writes have failed for too long"):
        journal.write_pending()
    assert journal.has_pending  # nothing dropped: the file stays a prefix of the changes
    with pytest.raises(JournalBroken):  # its last write fails too: released all the same
        journal.close()
    assert journal.lost_at_close > 120
    assert "q" not in restored(tmp_path, T0)[0].queues


def test_a_failed_fsync_breaks_the_journal(tmp_path: Path) -> None:
    failing = [True]

    def fsync_file(fd: int) -> None:
        if failing[0]:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    # Without reserved space: its first write would sync its first SYNCED record, and fail.
    journal, broker, _ = open_broker(tmp_path, T0, fsync_file=fsync_file, reserve_bytes=0)
    broker.put("q", b"x", T0)
    journal.write_pending()
    with pytest.raises(JournalBroken) as info:
        journal.sync()
    assert isinstance(info.value, JournalError)
    assert info.value.__cause__.errno == errno.EIO
    assert journal.fsync_count == 0
    failing[0] = False
    journal.sync()
    assert journal.fsync_count == 1
    journal.close()


# `always` fsyncs three times (journal.py's reserved space): the run's first SYNCED record
# before the write, the write, and the last SYNCED record.
@pytest.mark.parametrize("policy, fsyncs", [("always", 3), ("everysec", 1), ("never", 0)])
def test_close_writes_what_is_pending_and_fsyncs_unless_never(
        tmp_path: Path, policy: str, fsyncs: int) -> None:
    synced: list[int] = []

    def fsync_file(fd: int) -> None:
        synced.append(fd)
        os.fsync(fd)

    journal, broker, _ = open_broker(tmp_path, T0, fsync=policy, fsync_file=fsync_file)
    assert journal.fsync_policy == policy
    broker.put("q", b"pending at close", T0)
    expected = broker_state(broker)
    journal.close()
    assert len(synced) == fsyncs == journal.fsync_count
    assert broker_state(restored(tmp_path, T0)[0]) == expected


def test_an_unknown_fsync_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Journal(tmp_path, "sometimes")


# ------------------------------------------------------------ durable_pending

def test_only_puts_acks_and_nacks_are_durable(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    assert journal.write_pending() is False  # nothing to write

    def written(expected_durable: bool) -> None:
        assert journal.has_pending
        assert journal.durable_pending is expected_durable
        size = journal.size
        assert journal.write_pending() is expected_durable
        assert journal.size > size
        assert not journal.has_pending and not journal.durable_pending

    first = broker.put("q", b"a", T0)
    written(True)
    broker.put_many("q", [b"b", b"c", b"d"], T0)
    written(True)
    a, b, c = broker.receive("q", 3, None, T0)
    written(False)  # a lease
    broker.touch("q", a.id, a.lease, 60.0, T0 + 1)
    written(False)  # a touch
    broker.nack("q", b.id, b.lease, 0, T0 + 1)
    written(True)
    broker.nack("q", c.id, c.lease, 30.0, T0 + 1)
    written(True)  # a nack with a delay
    broker.ack("q", first, a.lease, T0 + 2)
    written(True)
    [again] = broker.receive("q", 1, None, T0 + 2)
    broker.touch("q", again.id, again.lease, None, T0 + 3)
    written(False)
    broker.ack("q", again.id, again.lease, T0 + 3)
    broker.receive("q", 1, None, T0 + 3)
    written(True)  # a lease after an ack in the same write
    journal.close()


def test_a_nack_served_straight_to_a_waiter_is_durable(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    message_id = broker.put("q", b"a", T0)
    [msg] = broker.receive("q", 1, None, T0)
    journal.write_pending()
    got: list[list[int]] = []
    broker.wait("q", 1, None, T0 + 100, lambda ms: got.append([m.id for m in ms]), T0)
    broker.nack("q", message_id, msg.lease, 0, T0 + 1)
    assert got == [[message_id]]
    assert journal.durable_pending
    expected = broker_state(broker)
    journal.close()
    broker2, _ = restored(tmp_path, T0 + 2)
    assert broker_state(broker2) == expected
    assert broker2.queues["q"].messages[message_id].deliveries == 2


# ------------------------------------------- review2: naming the record to blame

def _journal_of(tmp_path: Path, *records: list, tail: bytes = b"") -> Path:
    path = tmp_path / "journal.000001"
    path.write_bytes(FILE_HEADER + b"".join(map(encode_record, records)) + tail)
    return path


def _start_error(tmp_path: Path, repair: bool = False) -> JournalCorrupt:
    journal = Journal(tmp_path, repair=repair)
    with pytest.raises(JournalCorrupt) as info:
        journal.open(Broker(), T0)
    journal.close()
    return info.value


FITS_BUT_FAILS = [PUTX, "q", (1 << 61) + 1, b"b", T0, {"headers": 5}]  # options unchecked


def test_a_misfit_after_the_record_replay_failed_at_is_not_blamed(tmp_path: Path) -> None:
    later = [[PUT, "q", (1 << 61) + i, b"c", T0] for i in range(2, 5)]
    _journal_of(tmp_path, FITS_BUT_FAILS, *later, [PUT, "q", "not an id", b"d", T0])
    error = _start_error(tmp_path)
    assert error.offset == len(FILE_HEADER) and "bug in the server" in error.reason


def test_damage_after_the_record_replay_failed_at_is_not_reported(tmp_path: Path) -> None:
    good = encode_record([PUT, "q", (1 << 61) + 9, b"z", T0])
    damaged = good[:-1] + bytes([good[-1] ^ 0xFF])
    path = _journal_of(tmp_path, FITS_BUT_FAILS, tail=damaged + good)
    error = _start_error(tmp_path)
    assert error.offset == len(FILE_HEADER) and str(path) in error.reason


def test_a_deeply_nested_misfit_is_named_not_a_crash(tmp_path: Path) -> None:
    deep: list = []
    inner = deep
    for _ in range(1000):
        inner.append([])
        inner = inner[0]
    _journal_of(tmp_path, [PUT, "q", deep, b"a", T0])
    error = _start_error(tmp_path)
    assert error.offset == len(FILE_HEADER) and "PUT field 2 is" in error.reason


def test_a_move_as_version_1_wrote_it_before_a2807bf_is_replayed(tmp_path: Path) -> None:
    message_id, lease = (1 << 61) + 1, (1 << 61) + 2
    _journal_of(tmp_path, [PUTX, "q", message_id, b"a", T0, {}],
                [STATE, "q", message_id, 0, 0.0, 2, lease],
                [MOVE, "q", message_id, "dead", 2, ["q", T0 + 1], None],  # 6 fields
                [MOVE, "gone", message_id + 5, "dead", 0, None, None])  # nothing to make
    broker = Broker()
    journal = Journal(tmp_path)
    journal.open(broker, T0 + 2)
    journal.close()
    assert "q" not in broker.queues
    msg = broker.queues["dead"].messages[message_id]
    assert (msg.body, msg.deliveries, msg.origin) == (b"a", 2, ("q", T0 + 1))
    assert len(broker.queues["dead"].messages) == 1


# ----------------------------------------------------------- reserved space

def test_under_always_the_file_holds_zeros_past_the_records_and_close_cuts_them(
        tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0, reserve_bytes=1000)
    path = journal_file(tmp_path)
    ids = [broker.put("q", b"x" * 100, T0) for _ in range(3)]
    journal.write_pending()
    first_end = journal.file_end
    assert path.stat().st_size == first_end == journal.size + 1000
    data = path.read_bytes()
    assert not any(data[journal.size:])
    # Writes land inside the zeros: the file keeps its size until they run out.
    while journal.size + 200 <= first_end:
        broker.put("q", b"y" * 100, T0)
        journal.write_pending()
        assert path.stat().st_size == journal.file_end == first_end
    broker.put("q", b"z" * 300, T0)
    journal.write_pending()
    assert path.stat().st_size == journal.file_end == journal.size + 1000
    expected = broker_state(broker)

    shutil.copytree(tmp_path, tmp_path / "crashed")  # as a SIGKILL now would leave it
    (tmp_path / "crashed" / "LOCK").unlink()
    crashed, report = restored(tmp_path / "crashed", T0)
    assert broker_state(crashed) == expected
    assert report.torn_tail_bytes == 0  # zeros are the end, not a torn record
    assert sorted(crashed.queues["q"].messages)[:3] == ids

    journal.close()
    size = journal.size
    assert path.stat().st_size == size  # a clean close cuts the zeros off
    broker2, report2 = restored(tmp_path, T0)
    assert broker_state(broker2) == expected
    assert report2.file_bytes == size


@pytest.mark.parametrize("policy", ["everysec", "never"])
def test_only_always_reserves_space(tmp_path: Path, policy: str) -> None:
    journal, broker, _ = open_broker(tmp_path, T0, fsync=policy, reserve_bytes=1000)
    broker.put("q", b"x", T0)
    journal.write_pending()
    assert journal_file(tmp_path).stat().st_size == journal.size == journal.file_end
    journal.close()


def test_a_reservation_the_disk_refuses_is_logged_and_the_journal_appends(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tries: list[int] = []

    def disk_full(fd: int, data: Any, offset: int) -> int:
        tries.append(offset)
        if len(tries) == 2:  # the second call: some zeros reach the disk, then no more
            return os.pwrite(fd, bytes(10), offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    journal, broker, _ = open_broker(tmp_path, T0, reserve_bytes=1000, pwrite=disk_full)
    path = journal_file(tmp_path)
    broker.put("q", b"x" * 100, T0)
    journal.write_pending()
    assert len(tries) == 1 and "could not reserve 1000 bytes" in caplog.text
    assert path.stat().st_size == journal.size == journal.file_end  # appended, whole
    # No new try with every write: only once the records grew by a chunk.
    while journal.size < tries[0] + 900:
        broker.put("q", b"x" * 100, T0)
        journal.write_pending()
    assert len(tries) == 1
    while len(tries) < 3:
        broker.put("q", b"x" * 100, T0)
        journal.write_pending()
        assert path.stat().st_size == journal.file_end >= journal.size
    expected = broker_state(broker)
    journal.close()
    assert path.stat().st_size == journal.size
    assert broker_state(restored(tmp_path, T0)[0]) == expected


def test_a_start_after_a_crash_cuts_the_zeros_and_reserves_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal, broker, _ = open_broker(tmp_path, T0, reserve_bytes=1000)
    broker.put("q", b"kept", T0)
    journal.write_pending()
    expected = broker_state(broker)
    os.close(journal.fd)  # a crash: no close(), the zeros stay
    journal._unlock()
    caplog.set_level("INFO", "wonderq.journal")
    journal2, broker2, report = open_broker(tmp_path, T0, reserve_bytes=1000)
    assert broker_state(broker2) == expected
    assert report.torn_tail_bytes == 0 and "torn" not in caplog.text
    assert "1000 bytes of reserved space after the last record" in caplog.text
    path = journal_file(tmp_path)
    assert path.stat().st_size == journal2.size == journal2.file_end
    broker2.put("q", b"after", T0)
    journal2.write_pending()
    assert path.stat().st_size == journal2.size + 1000
    journal2.close()



def read_all_records(data: bytes) -> list[list[Any]]:
    return list(read_records(data, ReadResult(), False))


def offset_of(data: bytes, body: bytes) -> int:
    """offset_of is where the record holding `body` starts in a journal file."""
    for offset in record_offsets(data):
        if body in data[offset:offset + RECORD_HEADER_BYTES + int.from_bytes(
                data[offset:offset + 4], "big")]:
            return offset
    raise AssertionError(f"no record holds {body!r}")


@pytest.mark.parametrize("policy", ["everysec", "never"])
def test_a_file_with_synced_records_reopened_without_reserved_space_keeps_damage_damage(
        tmp_path: Path, policy: str) -> None:
    # Once read by its SYNCED records, a record that fails is damage only if a later
    # SYNCED record says it was on disk: a server that goes on writing the file must go on
    # writing them, or damage in what it wrote would read as a torn tail and be cut off.
    journal, broker, _ = open_broker(tmp_path, T0, reserve_bytes=1000)
    broker.put("q", b"first run", T0)
    journal.write_pending()
    journal.sync()
    journal.close()
    journal, broker, _ = open_broker(tmp_path, T0, fsync=policy, reserve_bytes=1000)
    assert journal.reserve_bytes == 0
    assert journal.synced_records == (policy != "never")  # `never` has no fsyncs to name
    assert journal.compact_requested == (policy == "never")  # no fsyncs: rewrite it
    broker.put("q", b"second run, damaged later", T0)
    journal.write_pending()
    if policy != "never":
        journal.sync()
    broker.put("q", b"second run, after it", T0)
    journal.close()
    path = journal_file(tmp_path)
    data = bytearray(path.read_bytes())
    bad = offset_of(bytes(data), b"second run, damaged later")
    data[bad + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    if policy == "never":
        # Nothing proves it reached the disk: a torn tail, as journal_format.py's rules say
        # (and why the file is compacted at once under `never`).
        _, report = restored(tmp_path, T0)
        assert report.torn_tail_bytes > 0
        return
    with pytest.raises(JournalCorrupt) as info:
        Journal(tmp_path, policy).open(Broker(), T0)
    assert info.value.offset == bad


def test_a_lost_first_page_of_a_new_files_first_write_is_a_torn_tail(tmp_path: Path) -> None:
    # The reviewer's A: a write into reserved space whose first page a power cut lost,
    # in a file that had no SYNCED record before it. The run's first SYNCED record is
    # appended and synced before anything goes into the zeros, so it survives the cut.
    journal, broker, _ = open_broker(tmp_path, T0, reserve_bytes=65536)
    path = journal_file(tmp_path)
    for i in range(40):
        broker.put("q", b"%03d" % i + b"x" * 200, T0)  # never synced: never answered
    journal.write_pending()
    assert all_records_in(path)[0][:2] == [SYNCED, len(FILE_HEADER)]
    unsynced_from = journal._synced_to  # the first byte no fsync covered
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    data = bytearray(path.read_bytes())
    data[unsynced_from:unsynced_from + 4096] = bytes(4096)  # the page lost, later ones kept
    (crashed / path.name).write_bytes(bytes(data))
    broker2, report = restored(crashed, T0)
    assert report.torn_tail_bytes > 0 and not report.skipped
    assert "q" not in broker2.queues or not broker2.queues["q"].messages
    journal.close()


def puts_damaged_second(count: int) -> list[bytearray]:
    """puts_damaged_second: `count` PUT records ("body 0", ...), the second one damaged."""
    encoded = [bytearray(encode_record([PUT, "q", (1 << 61) + i, b"body %d" % i, T0]))
               for i in range(count)]
    encoded[1][-1] ^= 0xFF
    return encoded


def test_repair_keeps_a_copy_of_the_journal_as_it_was_torn_tail_and_all(
        tmp_path: Path) -> None:
    # A reviewer: linked after the torn tail was cut, the kept file had lost the last
    # record, which in a file without SYNCED records may be damage, not a torn write.
    encoded = puts_damaged_second(4)  # damage in the middle: --repair skips it
    encoded[3][-1] ^= 0xFF  # and in the last record: read as a torn tail, and cut
    path = _journal_of(tmp_path, tail=b"".join(encoded))
    original = path.read_bytes()
    journal, broker, _ = open_broker(tmp_path, T0, repair=True)
    assert bodies(broker, "q") == [b"body 0", b"body 2"]
    assert path.stat().st_size < len(original)  # the tail was cut from the live file
    assert path.with_name(path.name + ".damaged").read_bytes() == original
    journal.close()


def test_repair_copy_leaves_out_the_reserved_zeros_but_keeps_a_torn_tail(
        tmp_path: Path) -> None:
    # The copy took the reserved space too: with --journal-reserve, zeros were most of
    # its time and size (a reviewer: about 3.7 s per GiB of journal).
    encoded = puts_damaged_second(4)  # damage in the middle: --repair skips it
    # The last record, torn, or whole and damaged with zeros at its end (an id's low
    # bytes: a reviewer found those cut from the copy as if they were reserved space).
    last_ack = bytearray(encode_record([ACK, "q", 0x1A22C32FC8400000]))
    last_ack[10] ^= 0xFF
    cut = bytes(encoded[3][:-5])
    # (what the tail holds, the bytes the report counts, the bytes the copy keeps of it:
    # a record cut short keeps the zeros its length frames, as they may be its own)
    for tail, counted, kept in ((cut, len(cut), cut + bytes(5)),
                                (bytes(last_ack), len(last_ack) - 2, bytes(last_ack))):
        directory = tmp_path / str(len(tail))
        directory.mkdir()
        records_part = b"".join(map(bytes, encoded[:3]))
        path = _journal_of(directory, tail=records_part + tail + bytes(1 << 16))
        journal, broker, report = open_broker(directory, T0, repair=True)
        assert bodies(broker, "q") == [b"body 0", b"body 2"]
        assert report.torn_tail_bytes == counted
        assert path.with_name(path.name + ".damaged").read_bytes() == \
            FILE_HEADER + records_part + kept
        journal.close()


def damaged_in_the_middle(directory: Path) -> Path:
    """damaged_in_the_middle writes a journal of three puts whose second is damaged."""
    return _journal_of(directory, tail=b"".join(puts_damaged_second(3)))


def test_repair_on_a_full_disk_keeps_a_link_to_the_damaged_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # A reviewer: where the copy could not be written (a full disk, where journals get
    # damaged), the compaction that follows deleted the only one there was.
    path = damaged_in_the_middle(tmp_path)
    original = path.read_bytes()

    def disk_full(source: int, target: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_module, "_copy", disk_full)
    journal, _, _ = open_broker(tmp_path, T0, repair=True)
    kept = path.with_name(path.name + ".damaged")
    assert os.path.samefile(kept, path) and kept.read_bytes() == original
    assert not path.with_name(path.name + ".damaged.tmp").exists()
    assert "(a copy failed: No space left on device) a link to" in caplog.text
    journal.close()


def test_a_repair_copy_cut_short_is_removed_not_taken_for_one(tmp_path: Path) -> None:
    # A reviewer: a crash mid-copy left a part, which the next start kept as "the copy".
    path = damaged_in_the_middle(tmp_path)
    cut_short = path.with_name(path.name + ".damaged.tmp")
    cut_short.write_bytes(path.read_bytes()[:10])
    journal, _, _ = open_broker(tmp_path, T0, repair=True)
    assert not cut_short.exists()
    assert path.with_name(path.name + ".damaged").read_bytes() == path.read_bytes()
    journal.close()
