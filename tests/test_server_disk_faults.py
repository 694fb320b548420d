"""Disk faults, injected into a real server running in this process, seen by the real client.

The journal takes its write and fsync functions as parameters (as beanstalkd
takes its allocator), so a test can make the disk "full" and then give the
space back, which a subprocess on a real disk cannot do on demand.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker_helpers import bodies
from polling import EVENT_TIMEOUT_S, until_stats, until_true

from wonderq_client import StorageError, StorageUnavailable, Worker, connect
from wonderq_client import worker as worker_module
from wonderq_server import compaction
from wonderq_server import journal as journal_module
from wonderq_server import server as server_module
from wonderq_server.broker import Broker
from wonderq_server.config import Config
from wonderq_server.journal import Journal, JournalBroken
from wonderq_server.server import Server


class Disk:
    """A write/fsync pair whose failures a test switches on and off."""

    def __init__(self) -> None:
        self.full = False
        self.broken = False
        self.writes = 0
        self.full_for: Callable[[int], bool] | None = None  # set: which files are "full"

    def write(self, fd: int, data: bytes) -> int:
        if self.full_for is not None and self.full_for(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.full:
            # A partial write first, as a real full disk may do, then the error.
            if len(data) > 1 and self.writes % 2 == 0:
                self.writes += 1
                return os.write(fd, bytes(data[: len(data) // 2]))
            self.writes += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.broken:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


async def start_server(data_dir: Path, disk: Disk, **config: Any) -> Server:
    server = Server(Config(port=0, data_dir=data_dir, fsync="always", **config))
    assert server.journal is not None
    server.journal._write = disk.write
    server.journal._fsync = disk.fsync
    server.recover()
    await server.start()
    return server


async def start_retried_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                ) -> tuple[Server, Disk]:
    """start_retried_by_hand: a server on a Disk whose retries of kept records run only
    when the test calls retry_now (RETRY_WRITE_S is an hour)."""
    monkeypatch.setattr(server_module, "RETRY_WRITE_S", 3600.0)
    disk = Disk()
    return await start_server(tmp_path, disk), disk


async def retry_now(server: Server) -> None:
    """retry_now runs the retry of records kept from failed writes (due RETRY_WRITE_S after
    the failure) at once, and waits until it has written them."""
    server._retry_write()
    await until_true(lambda: server.journal is not None and not server.journal.has_pending)


def reopen(data_dir: Path) -> Broker:
    broker = Broker()
    journal = Journal(data_dir)
    journal.open(broker, 0.0)
    journal.close()
    return broker


async def test_disk_full_answers_storage_error_and_recovers(tmp_path):
    disk = Disk()
    server = await start_server(tmp_path, disk)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            kept = await client.put("q", b"before")
            disk.full = True
            with pytest.raises(StorageError) as info:
                await client.put("q", b"lost")
            assert info.value.code == "STORAGE_ERROR"
            # Reads keep working while the disk is full.
            assert await client.ping() == "pong"
            stats = await client.stats()
            assert stats["server"]["journal_write_errors"] == 1
            disk.full = False  # space is back
            await retry_now(server)  # meanwhile puts would be STORAGE_ERROR at once
            after = await client.put("q", b"after")
            assert after > kept
    finally:
        await server.stop()
    # The journal holds nothing half-written, and what memory holds: the refused put's
    # record was kept and went out with the next write ("may or may not take effect").
    broker = reopen(tmp_path)
    assert bodies(broker, "q") == [b"before", b"lost", b"after"]


@pytest.mark.parametrize("space_back", [True, False])
async def test_an_ack_answered_storage_error_is_written_once_writes_work(tmp_path, caplog,
                                                                        space_back):
    disk = Disk()
    server = await start_server(tmp_path, disk)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.put("q", b"job")
            [msg] = await client.receive("q", visibility=60)
            disk.full = True
            with pytest.raises(StorageError):
                await msg.ack()
            disk.full = not space_back
    finally:
        await server.stop()
    broker = reopen(tmp_path)
    if space_back:
        # The ack's record was kept and written at the stop: gone in memory and on disk.
        assert "q" not in broker.queues or bodies(broker, "q") == []
    else:
        # Still failing at the stop: its last write fails too, it says so, and the ack
        # never reached the disk, so the message comes back (at least once).
        assert "were only in memory and are lost with this stop" in caplog.text
        assert bodies(broker, "q") == [b"job"]


async def test_changes_are_refused_not_made_while_writes_fail(tmp_path, monkeypatch):
    # A reviewer: answered STORAGE_ERROR at once but still made, a put a producer retried
    # until OK was stored 20,035 times in 1.5 s. As Redis after an AOF write error, a change
    # is now refused without being made until the journal's kept records are written.
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.put("q", b"first")
            [msg] = await client.receive("q", visibility=60)
            disk.full = True
            with pytest.raises(StorageError) as info:
                await client.put("q", b"in the failed write")
            assert "may or may not take effect" in info.value.message
            assert type(info.value) is StorageError and info.value.code == "STORAGE_ERROR"
            for _ in range(3):
                # A code of its own, so that a client need not read the message to know
                # the change was not made (Redis answers MISCONF).
                with pytest.raises(StorageUnavailable) as info:
                    await client.put("q", b"refused")
                assert info.value.code == "STORAGE_UNAVAILABLE"
                assert "this change was not made" in info.value.message
            with pytest.raises(StorageUnavailable):
                await msg.ack()  # refused too: the message stays leased
            assert (await client.peek("q"))[0].body == b"in the failed write"  # reads go on
            # Text mode says the same, in its own words.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"PUT q typed by hand\r\n")
            line = await asyncio.wait_for(reader.readline(), EVENT_TIMEOUT_S)
            writer.close()
            assert line.startswith(b"ERR STORAGE_UNAVAILABLE "), line
            assert (await client.queue_info("q"))["messages"] == 2
            disk.full = False
            await retry_now(server)
            await msg.ack()
            assert await client.put("q", b"after")
    finally:
        await server.stop()
    assert bodies(reopen(tmp_path), "q") == [b"in the failed write", b"after"]


async def test_receives_and_touches_are_refused_while_writes_fail_and_keep_nothing(
        tmp_path, monkeypatch):
    # A lease is a change the journal keeps. Receives let run while writes failed leased a
    # backlog over and over, each lease and its end a kept record, until the kept records
    # passed journal.MAX_RETAINED_BYTES and the server stopped (20 MB in 3 s here).
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    journal = server.journal
    assert journal is not None
    try:
        async with connect(host, port) as client:
            await client.put_many("q", [b"job %d" % i for i in range(50)])
            [held] = await client.receive("q", visibility=60)
            disk.full = True
            with pytest.raises(StorageError):
                await client.put("q", b"in the failed write")
            kept = list(journal._pending)
            for _ in range(3):
                with pytest.raises(StorageUnavailable) as info:
                    await client.receive("q", max=10, visibility=0.01)
                assert "nothing was received" in info.value.message
            with pytest.raises(StorageUnavailable) as info:
                await held.touch(visibility=120)
            assert "the lease was not renewed" in info.value.message
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET q\r\n")
            line = await asyncio.wait_for(reader.readline(), EVENT_TIMEOUT_S)
            writer.close()
            assert line.startswith(b"ERR STORAGE_UNAVAILABLE "), line
            assert journal._pending == kept  # nothing was leased, so nothing more is kept
            info = await client.queue_info("q")
            assert (info["messages"], info["in_flight"]) == (51, 1)
            disk.full = False
            await retry_now(server)
            got = await client.receive("q", max=100)
            assert len(got) == 50
            assert await client.ack_many("q", [*got, held]) == [None] * 51
    finally:
        await server.stop()
    broker = reopen(tmp_path)
    assert "q" not in broker.queues or bodies(broker, "q") == []


async def test_a_workers_ack_refused_while_writes_fail_is_sent_again(tmp_path, monkeypatch,
                                                                     caplog):
    # A reviewer: a Worker gave up on an ack refused "not made" at once, so the message
    # came back when its lease ran out and its work was done again.
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    handled = asyncio.Event()

    async def handler(msg):
        disk.full = True
        async with connect(host, port) as other:
            with pytest.raises(StorageError):
                await other.put("q", b"in the failed write")
        handled.set()  # returns: the ack that follows is refused, "not made"

    try:
        async with connect(host, port) as client:
            await client.put("q", b"job")
            worker = Worker("q", handler, host=host, port=port, max_messages=1,
                            visibility=60)
            run = asyncio.create_task(worker.run())
            caplog.set_level(logging.DEBUG, logger="wonderq_client.worker")
            await handled.wait()
            await until_true(lambda: "ack refused again" in caplog.text)
            assert caplog.text.count("while its journal writes fail") == 1
            disk.full = False
            await retry_now(server)
            await asyncio.wait_for(run, EVENT_TIMEOUT_S)
            assert (worker.counts.acked, worker.counts.unsettled) == (1, 0)
            info = await client.queue_info("q")
            assert (info["messages"], info["in_flight"]) == (1, 0)  # the other put's
    finally:
        await server.stop()
    assert bodies(reopen(tmp_path), "q") == [b"in the failed write"]


async def test_a_worker_waits_out_refused_receives_and_says_so_once(tmp_path, monkeypatch,
                                                                      caplog):
    monkeypatch.setattr(worker_module, "STORAGE_RETRY_S", 0.01)
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    handled: list[bytes] = []

    async def handler(msg):
        handled.append(msg.body)

    try:
        async with connect(host, port) as client:
            await client.put("q", b"job")
            disk.full = True
            with pytest.raises(StorageError):
                await client.put("q", b"in the failed write")
            caplog.set_level(logging.DEBUG, logger="wonderq_client.worker")
            worker = Worker("q", handler, host=host, port=port, max_messages=2)
            run = asyncio.create_task(worker.run())
            await until_true(lambda: caplog.text.count("receive refused again") >= 3)
            assert handled == []
            disk.full = False
            await retry_now(server)
            await asyncio.wait_for(run, EVENT_TIMEOUT_S)
            assert sorted(handled) == [b"in the failed write", b"job"]
            assert caplog.text.count("while its journal writes fail") == 1
            assert caplog.text.count("takes receives, acks and nacks again") == 1
            # A second run starts with no outage in mind: nothing said of one.
            await client.put("q", b"next")
            worker.max_messages = 1
            await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
            assert caplog.text.count("takes receives, acks and nacks again") == 1
    finally:
        await server.stop()


async def test_a_workers_ack_refused_past_its_lease_is_sent_until_the_outage_ends(
        tmp_path, monkeypatch, caplog):
    # A reviewer: an ack refused while writes failed was given up at its lease's end (plus
    # SETTLE_SLACK_S); touches were refused too, so the lease ran out, and once writes
    # worked again the message was received and its work done a second time. Receives are
    # refused meanwhile, so nobody else can take it, and the server takes a late ack.
    monkeypatch.setattr(worker_module, "STORAGE_RETRY_S", 0.02)
    monkeypatch.setattr(worker_module, "SETTLE_SLACK_S", 0.0)
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    handled: list[bytes] = []

    async def handler(msg):
        handled.append(msg.body)
        disk.full = True
        async with connect(host, port) as other:
            with pytest.raises(StorageError):
                await other.put("q", b"in the failed write")

    try:
        async with connect(host, port) as client:
            await client.put("q", b"job")
            caplog.set_level(logging.DEBUG, logger="wonderq_client.worker")
            worker = Worker("q", handler, host=host, port=port, max_messages=1,
                            visibility=0.3)
            run = asyncio.create_task(worker.run())
            # 30 sends, 0.6 s at 0.02 s each: twice the lease, well past the end of the
            # worker's own reckoning of it (which gave up there before). The server holds
            # the lease that ran out meanwhile (test above).
            await until_true(lambda: caplog.text.count("ack refused again") >= 30)
            assert not run.done()
            disk.full = False
            await retry_now(server)
            await asyncio.wait_for(run, EVENT_TIMEOUT_S)
            assert (worker.counts.acked, worker.counts.unsettled) == (1, 0)
            assert handled == [b"job"]
            info = await client.queue_info("q")
            assert (info["messages"], info["in_flight"]) == (1, 0)  # the other put's
    finally:
        await server.stop()


async def test_leases_that_run_out_while_writes_fail_are_held_until_a_write_works(
        tmp_path, monkeypatch):
    # A reviewer: with receives refused, leases held at the failure still ran out, and on a
    # queue with max_deliveries each became a dead-letter MOVE kept with its whole body
    # (20 leased messages of 64 KiB passed a cap patched to 1 MiB, and the server stopped).
    monkeypatch.setattr(server_module, "HOLD_LEASE_ENDS_S", 0.02)
    monkeypatch.setattr(server_module, "HOLD_GRACE_S", 3600.0)
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    journal = server.journal
    assert journal is not None
    body = b"x" * 65536
    try:
        async with connect(host, port) as client:
            await client.create_queue("jobs", max_deliveries=1, dead_letter_queue="dead")
            await client.put_many("jobs", [body] * 20)
            got = await client.receive("jobs", max=20, visibility=0.5)
            assert len(got) == 20
            lease_ends_at = server.broker.next_deadline()
            assert lease_ends_at is not None
            disk.full = True
            with pytest.raises(StorageError):
                await client.put("jobs", b"in the failed write")
            kept = list(journal._pending)
            # The leases' end comes, and is held again and again, a hold at a time.
            await until_true(lambda: (server.broker.next_deadline() or 0) > lease_ends_at + 0.1)
            assert journal._pending == kept  # no lease end, no move, kept meanwhile
            info = await client.queue_info("jobs")
            assert (info["messages"], info["in_flight"]) == (21, 20)
            held = await client.message_info("jobs", got[7].id)  # a member of the batch
            assert held["state"] == "leased" and held["deadline_at"] > lease_ends_at
            disk.full = False
            await retry_now(server)
            # Held on a while after writes work (HOLD_GRACE_S), for a Worker's ack that is
            # sent again every second: a second review saw another consumer win 1 in 4.
            worked_at = server._writes_worked_at
            await until_true(lambda: (server.broker.next_deadline() or 0) > worked_at + 0.05)
            info = await client.queue_info("jobs")
            assert (info["messages"], info["in_flight"]) == (21, 20)
            assert "dead" not in server.broker.queues
            monkeypatch.setattr(server_module, "HOLD_GRACE_S", 0.0)
            queues = server.broker.queues
            await until_true(lambda: "dead" in queues and len(queues["dead"].messages) == 20)
            # Written at once, not with whichever request comes next (the same review).
            await until_true(lambda: not journal.has_pending)
    finally:
        await server.stop()
    broker = reopen(tmp_path)
    assert bodies(broker, "dead") == [body] * 20
    assert bodies(broker, "jobs") == [b"in the failed write"]


async def test_over_the_cap_at_the_stop_exits_1(tmp_path, monkeypatch):
    # A reviewer: the cap passed by the stop's last write was logged, and the exit was 0.
    monkeypatch.setattr(journal_module, "MAX_RETAINED_BYTES", 100)
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    journal = server.journal
    assert journal is not None
    async with connect(host, port) as client:
        await client.put_many("q", [b"a", b"b", b"c"], expiry=0.3)
        disk.full_for = lambda fd: True
        with pytest.raises(StorageError):
            await client.put("q", b"x" * 60)  # kept: under the cap
        # The three expire; their drops' records join the kept ones, over the cap.
        await until_true(lambda: sum(map(len, journal._pending)) > 100)
    await server.stop()
    assert isinstance(server.fatal_error, JournalBroken)


async def test_a_retry_that_writes_kept_records_fsyncs_them(tmp_path, monkeypatch):
    # A reviewer: a retry's write, with no reply waiting, was never fsynced, so a receive
    # could show a message whose put was not on disk.
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.put("q", b"first")  # the run's first write, and its own fsyncs
            disk.full = True
            with pytest.raises(StorageError):
                await client.put("q", b"job")
            disk.full = False
            before = (await client.stats())["server"]["fsync_count"]
            await retry_now(server)  # a write with no reply to send
            assert (await client.stats())["server"]["fsync_count"] > before
    finally:
        await server.stop()


async def test_a_lease_that_runs_out_while_a_write_fails_is_dead_lettered_on_disk(tmp_path):
    # A reviewer: the MOVE of a message whose lease ran out (nobody's request) was dropped
    # with its failed write, so a restart lost the message; and once writes worked again,
    # an ack of it in the dead-letter queue, answered OK, was undone at the restart.
    disk = Disk()
    server = await start_server(tmp_path, disk)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.create_queue("dlq")
            await client.create_queue("q", max_deliveries=1, dead_letter_queue="dlq")
            await client.put_many("q", [b"job", b"other"])
            [msg] = await client.receive("q", visibility=0.05)
            disk.full_for = lambda fd: True  # every write fails, the timer's MOVE's too
            await until_stats(client, lambda s: s["queues"]["dlq"]["messages"] == 1
                              and s["server"]["journal_write_errors"] >= 1)
            disk.full_for = None
            # Kept, the MOVE goes out within RETRY_WRITE_S, with no request to carry it.
            await until_true(lambda: not server.journal.has_pending)
            [dead] = await client.receive("dlq", visibility=60)
            assert dead.id == msg.id
            await dead.ack()
    finally:
        await server.stop()
    broker = reopen(tmp_path)
    assert "dlq" not in broker.queues or bodies(broker, "dlq") == []
    assert bodies(broker, "q") == [b"other"]


async def test_failed_fsync_stops_the_server(tmp_path):
    disk = Disk()
    server = await start_server(tmp_path, disk)
    host, port = server.address
    async with connect(host, port) as client:
        disk.broken = True
        with pytest.raises(StorageError):
            await client.put("q", b"x")
    await asyncio.wait_for(server.stopped.wait(), 10)
    assert "fsync" in str(server.fatal_error)
    await server.stop()


async def test_a_full_disk_is_logged_once_then_its_recovery(tmp_path, caplog, monkeypatch):
    # One ERROR line per failed write flooded the log (hundreds a second under load).
    server, disk = await start_retried_by_hand(tmp_path, monkeypatch)
    host, port = server.address
    caplog.set_level(logging.INFO, logger="wonderq.server")
    try:
        async with connect(host, port) as client:
            disk.full = True
            for _ in range(5):  # one write fails; the other four are refused, not run
                with pytest.raises(StorageError):
                    await client.put("q", b"lost")
            assert (await client.stats())["server"]["journal_write_errors"] == 1
            disk.full = False
            await retry_now(server)
            await client.put("q", b"kept")
            # A disk at its edge, failing and working by turns: no line per turn (an
            # operator's review saw an ERROR and a WARNING at each).
            for _ in range(5):
                disk.full = True
                with pytest.raises(StorageError):
                    await client.put("q", b"lost")
                disk.full = False
                await retry_now(server)
                await client.put("q", b"kept")
            assert (await client.stats())["server"]["journal_write_errors"] == 6
            # An error line logged after the last recovery line is always followed by
            # one when writes work again: the log never ends on an ERROR (a reviewer).
            monkeypatch.setattr(server_module, "WRITE_ERROR_LOG_INTERVAL_S", 0.0)
            disk.full = True
            with pytest.raises(StorageError):
                await client.put("q", b"lost")
            disk.full = False
            await retry_now(server)
            await client.put("q", b"kept")
    finally:
        await server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "wonderq.server"]
    assert sum("No space left on device" in line for line in lines) == 2
    assert sum("work again" in line for line in lines) == 2
    assert "journal writes work again, after 1 failed in a row" in lines
    written = [line for line in lines if "No space left" in line or "work again" in line]
    assert "work again" in written[-1]
    # At the stop, the operator is told how many failed, and that a later write took them.
    assert "7 journal writes failed since the start: what they carried (answered " \
        "STORAGE_ERROR) was written with a later write" in lines
    # Everything memory holds is on disk: each failed write's put too ("may or may not"),
    # and none of those refused while writes failed.
    assert bodies(reopen(tmp_path), "q") == [b"lost", b"kept"] * 7


async def test_a_compaction_waits_for_records_kept_from_a_failed_write(tmp_path,
                                                                      monkeypatch):
    # A reviewer: a compaction that went on while the live journal's write failed never
    # got the failed records into its new file (its list of messages was taken before),
    # so after its switch a restart lost the message. Kept records now go to both files,
    # in order, once writes work again, and the compaction waits for them.
    disk = Disk()
    server = await start_server(tmp_path, disk)
    journal = server.journal
    assert journal is not None
    started, presynced = compaction.Compaction.start, compaction.Compaction.presync
    may_presync = threading.Event()

    def start_then_fail_live_writes(self):
        started(self)  # the list of live messages is taken here
        disk.full_for = lambda fd: fd == journal.fd

    def presync_when_told(self):
        may_presync.wait(10)  # in the executor's thread: the loop goes on
        presynced(self)

    monkeypatch.setattr(compaction.Compaction, "start", start_then_fail_live_writes)
    monkeypatch.setattr(compaction.Compaction, "presync", presync_when_told)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.put_many("q", [b"x"] * 100)
            journal.compact_requested = True
            await client.ping()  # its turn's flush starts the compaction
            assert server.compaction is not None
            with pytest.raises(StorageError):
                await client.put("q", b"kept")  # after the compaction's start
            assert journal.has_pending and server.compaction is not None
            disk.full_for = None
            may_presync.set()
            await until_stats(client, lambda s: s["server"]["last_compaction_at"] > 0)
            # Kept records still pending at the switch go to the new file, with the retry.
            await until_true(lambda: not journal.has_pending)
    finally:
        await server.stop()
    assert bodies(reopen(tmp_path), "q") == [b"x"] * 100 + [b"kept"]


async def test_a_failed_compaction_is_not_retried_at_once(tmp_path, caplog):
    # A compaction that cannot write its new file restarted after every write: 1,653 of
    # them in 5 s in an operator's review. Now the next one waits (compaction.py).
    disk = Disk()
    server = await start_server(tmp_path, disk, compact_min_bytes=4096)
    journal = server.journal
    assert journal is not None
    disk.full_for = lambda fd: fd != journal.fd  # the new file's disk is full
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.put_many("q", [b"x" * 100] * 10)
            for _ in range(60):  # far past due: about 100 KB of dead records
                await client.ack_many("q", await client.receive("q", max=10))
                await client.put_many("q", [b"x" * 100] * 10)
            info = (await client.stats())["server"]
            assert info["compactions_failed_total"] == 1 and not info["compacting"]
            assert info["journal_write_errors"] == 0  # the live journal is untouched
            assert info["last_compaction_at"] == 0.0
            assert await client.receive("q", max=10)
    finally:
        await server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "wonderq.server"]
    assert "the next compaction waits 60 s (1 failed in a row)" in lines


async def test_a_requested_compaction_that_fails_is_requested_again(tmp_path):
    # After --repair the journal asks for a compaction (compact_requested), to rewrite
    # the file without its damage so that the next start needs no --repair. One that
    # failed used to drop the request: unless the file later grew past the size
    # trigger, neither the retry nor the stop rewrote it.
    disk = Disk()
    server = await start_server(tmp_path, disk)  # the default size trigger: never due here
    journal = server.journal
    assert journal is not None
    disk.full_for = lambda fd: fd != journal.fd  # the new file's disk is full
    journal.compact_requested = True
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.put("q", b"first")  # its write starts the compaction
            await until_stats(client, lambda s: s["server"]["compactions_failed_total"] == 1
                              and not s["server"]["compacting"])
            assert journal.compact_requested  # the request stands
            disk.full_for = None
            server._compaction_retry_at = 0.0  # the retry's wait is over
            await client.put("q", b"second")  # the next write takes the request up again
            info = await until_stats(client, lambda s: s["server"]["last_compaction_at"] > 0)
            assert info["server"]["compactions_failed_total"] == 1
            assert not journal.compact_requested
    finally:
        await server.stop()
    assert bodies(reopen(tmp_path), "q") == [b"first", b"second"]


async def a_requested_compaction_failed(tmp_path: Path, disk: Disk) -> Server:
    """a_requested_compaction_failed starts a server whose compaction's new file finds the
    disk full, requests a compaction (as --repair does), puts b"kept" and waits for the
    compaction to fail. The disk stays full for the new file until the test says."""
    server = await start_server(tmp_path, disk)
    journal = server.journal
    assert journal is not None
    disk.full_for = lambda fd: fd != journal.fd
    journal.compact_requested = True
    host, port = server.address
    async with connect(host, port) as client:
        await client.put("q", b"kept")
        await until_stats(client, lambda s: s["server"]["compactions_failed_total"] == 1
                          and not s["server"]["compacting"])
    return server


async def test_a_requested_compaction_that_failed_runs_at_the_stop(tmp_path):
    disk = Disk()
    server = await a_requested_compaction_failed(tmp_path, disk)
    journal = server.journal
    assert journal is not None
    disk.full_for = None  # space again; the retry's wait (60 s) is far off
    await server.stop()  # finishes the request, as it does for a repaired journal
    assert journal.last_compaction_at
    assert bodies(reopen(tmp_path), "q") == [b"kept"]


async def test_a_compaction_that_fails_at_the_stop_announces_no_next_one(tmp_path, caplog):
    server = await a_requested_compaction_failed(tmp_path, Disk())  # full through the stop
    caplog.clear()
    await server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "wonderq.server"]
    assert "the journal was not rewritten at the stop; it stays as it was" in lines
    assert not any(line.startswith("the next compaction waits") for line in lines)
    assert bodies(reopen(tmp_path), "q") == [b"kept"]


async def test_a_compaction_dropped_during_its_presync_waits_for_that_thread(
        tmp_path, monkeypatch):
    # The pre-sync's fsync runs in a worker thread. A compaction dropped meanwhile (its new
    # file's disk full) leaves the file to that thread, which closes and removes it when
    # done; a next compaction (here the stop's, for the request that stands) has a .tmp of
    # the same name, so it starts only then. Before, the file was closed under the fsync.
    disk = Disk()
    server = await start_server(tmp_path, disk)
    journal = server.journal
    assert journal is not None
    journal.compact_requested = True
    in_presync, finish = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        c = server.compaction
        if c is not None and fd == c.fd and not in_presync.is_set():
            in_presync.set()
            assert finish.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(compaction.os, "fsync", fsync)
    host, port = server.address
    stop: asyncio.Task[None] | None = None
    try:
        async with connect(host, port) as client:
            await client.put("q", b"first")  # its write starts the compaction
            assert await asyncio.to_thread(in_presync.wait, 30)
            disk.full_for = lambda fd: fd != journal.fd
            await client.put("q", b"second")  # its copy to the new file fails: dropped
            await until_stats(client, lambda s: s["server"]["compactions_failed_total"] == 1
                              and not s["server"]["compacting"])
            disk.full_for = None
        stop = asyncio.create_task(server.stop())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not stop.done() and server.compaction is None  # waiting for the thread
        assert [p.name for p in tmp_path.glob("*.tmp")] == ["journal.000002.tmp"]
        finish.set()
        await asyncio.wait_for(stop, 30)
    finally:
        finish.set()
        if stop is None:
            await server.stop()
    assert journal.last_compaction_at  # the stop's compaction went through
    assert not list(tmp_path.glob("*.tmp"))
    assert bodies(reopen(tmp_path), "q") == [b"first", b"second"]
