"""Group commit with a journal whose fsync the test holds and lets go of, one at a time."""

from __future__ import annotations

import asyncio
import threading

import pytest

from wonderq_server.group_commit import GroupCommit

TIMEOUT_S = 10.0


class HeldJournal:
    """A journal stand-in: each sync() blocks until the test releases it."""

    def __init__(self, policy: str = "always") -> None:
        self.fsync_policy = policy
        self.size = 100
        self.syncs_started = 0
        self.fail_next = False
        self._gates: list[threading.Event] = []
        self._lock = threading.Lock()
        self.started = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def sync(self) -> None:
        gate = threading.Event()
        with self._lock:
            self._gates.append(gate)
            self.syncs_started += 1
        self._loop.call_soon_threadsafe(self.started.put_nowait, gate)
        gate.wait(TIMEOUT_S)
        if self.fail_next:
            raise OSError(5, "Input/output error")

    def write(self, nbytes: int) -> None:
        self.size += nbytes


class Conn:
    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def send_output(self, output, failed: bool = False) -> None:
        self.log.append((self.name, output, failed))


async def next_sync(journal: HeldJournal) -> threading.Event:
    return await asyncio.wait_for(journal.started.get(), TIMEOUT_S)


async def until(condition) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.001)


async def test_no_fsync_needed_goes_out_at_once():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    gc.submit([(Conn(log, "a"), "r1")], durable=False)
    assert log == [("a", "r1", False)]
    assert journal.syncs_started == 0


async def test_durable_batches_wait_for_the_fsync_that_covers_them():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    conn = Conn(log, "a")
    journal.write(10)
    gc.submit([(conn, "put-1")], durable=True)
    first = await next_sync(journal)
    # While the first fsync runs: another durable batch, then one needing none.
    journal.write(10)
    gc.submit([(conn, "put-2")], durable=True)
    gc.submit([(conn, "receive")], durable=False)
    assert log == []
    first.set()
    await until(lambda: len(log) == 1)
    assert log == [("a", "put-1", False)]
    # The second fsync must start even though the last batch needs none.
    second = await next_sync(journal)
    assert log == [("a", "put-1", False)]
    second.set()
    await until(lambda: len(log) == 3)
    assert [entry[1] for entry in log] == ["put-1", "put-2", "receive"]
    assert journal.syncs_started == 2


async def test_many_batches_share_one_fsync():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    journal.write(10)
    gc.submit([(Conn(log, "a"), 0)], durable=True)
    first = await next_sync(journal)
    for i in range(1, 50):
        journal.write(10)
        gc.submit([(Conn(log, "a"), i)], durable=True)
    first.set()
    (await next_sync(journal)).set()
    await until(lambda: len(log) == 50)
    assert [entry[1] for entry in log] == list(range(50))
    assert journal.syncs_started == 2


async def test_a_failed_write_keeps_its_place_in_line():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    journal.write(10)
    gc.submit([(Conn(log, "a"), "ok")], durable=True)
    gate = await next_sync(journal)
    gc.submit([(Conn(log, "b"), "refused")], durable=True, failed=True)
    assert log == []
    gate.set()
    await until(lambda: len(log) == 2)
    assert log == [("a", "ok", False), ("b", "refused", True)]


async def test_a_failed_fsync_fails_everything_waiting_and_is_fatal():
    journal = HeldJournal()
    log: list = []
    fatal: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=fatal.append)
    journal.write(10)
    gc.submit([(Conn(log, "a"), "put-1")], durable=True)
    gate = await next_sync(journal)
    journal.write(10)
    gc.submit([(Conn(log, "b"), "put-2")], durable=True)
    journal.fail_next = True
    gate.set()
    await until(lambda: fatal)
    assert [(name, failed) for name, _, failed in log] == [("a", True), ("b", True)]
    assert isinstance(fatal[0], OSError)


async def test_everysec_never_holds_replies():
    journal = HeldJournal("everysec")
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    journal.write(10)
    gc.submit([(Conn(log, "a"), "put")], durable=True)
    assert log == [("a", "put", False)]
    gc.stop()


async def test_drain_waits_for_held_batches():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    journal.write(10)
    gc.submit([(Conn(log, "a"), "put")], durable=True)
    gate = await next_sync(journal)
    drained = asyncio.create_task(gc.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    gate.set()
    await asyncio.wait_for(drained, TIMEOUT_S)
    assert log == [("a", "put", False)]


# ------------------------------------------------------------- inline fsync

class InlineJournal:
    """A journal stand-in for the inline mode: sync() runs on the loop and is recorded."""

    def __init__(self) -> None:
        self.fsync_policy = "always"
        self.size = 100
        self.synced_sizes: list[int] = []
        self.fail_next = False

    def sync(self) -> None:
        if self.fail_next:
            raise OSError(5, "Input/output error")
        self.synced_sizes.append(self.size)

    def write(self, nbytes: int) -> None:
        self.size += nbytes


async def test_inline_fsync_releases_a_durable_batch_in_the_same_call():
    journal = InlineJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail, inline=True)
    conn = Conn(log, "a")
    journal.write(10)
    gc.submit([(conn, "put-1")], durable=True)
    assert journal.synced_sizes == [110] and log == [("a", "put-1", False)]
    gc.submit([(conn, "receive")], durable=False)  # nothing written: no fsync
    assert journal.synced_sizes == [110] and log[-1] == ("a", "receive", False)
    journal.write(10)
    gc.submit([(conn, "ack")], durable=True)
    assert journal.synced_sizes == [110, 120]
    assert gc.idle and gc.synced == 120


async def test_inline_fsync_failure_fails_the_batch_and_is_fatal():
    journal = InlineJournal()
    log: list = []
    fatal: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=fatal.append, inline=True)
    journal.write(10)
    journal.fail_next = True
    gc.submit([(Conn(log, "a"), "put")], durable=True)
    assert log == [("a", "put", True)]
    assert len(fatal) == 1 and isinstance(fatal[0], OSError)
    assert gc.broken
