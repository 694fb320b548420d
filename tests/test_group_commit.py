"""Group commit with a journal whose fsync the test holds and lets go of, one at a time."""

from __future__ import annotations

import asyncio
import threading

import pytest

from wonderq_server.connection import Output
from wonderq_server.group_commit import GroupCommit

TIMEOUT_S = 10.0


class HeldJournal:
    """A journal stand-in: each sync() blocks until the test releases it."""

    def __init__(self, policy: str = "always") -> None:
        self.fsync_policy = policy
        self.size = 100
        self.newest_put_written = self.moves_written = 0
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

    def send_output(self, output: Output, failed: bool = False) -> None:
        self.log.append((self.name, output.parts[0], failed))


def out(label, newest_shown: int | None = None) -> Output:
    """out: one connection's replies, named by `label`; `newest_shown` as connection.py
    sets it (None: not only receives and peeks)."""
    return Output([label], [], False, newest_shown)


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
    gc.submit([(Conn(log, "a"), out("r1"))], durable=False)
    assert log == [("a", "r1", False)]
    assert journal.syncs_started == 0


async def test_durable_batches_wait_for_the_fsync_that_covers_them():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    conn = Conn(log, "a")
    journal.write(10)
    gc.submit([(conn, out("put-1"))], durable=True)
    first = await next_sync(journal)
    # While the first fsync runs: another durable batch, then one needing none.
    journal.write(10)
    gc.submit([(conn, out("put-2"))], durable=True)
    gc.submit([(conn, out("receive"))], durable=False)
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
    conn = Conn(log, "a")
    journal.write(10)
    gc.submit([(conn, out(0))], durable=True)
    first = await next_sync(journal)
    for i in range(1, 50):
        journal.write(10)
        gc.submit([(conn, out(i))], durable=True)
    first.set()
    (await next_sync(journal)).set()
    await until(lambda: len(log) == 50)
    assert [entry[1] for entry in log] == list(range(50))
    assert journal.syncs_started == 2


async def test_a_failed_write_keeps_its_place_in_line():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    conn = Conn(log, "a")
    journal.write(10)
    gc.submit([(conn, out("ok"))], durable=True)
    gate = await next_sync(journal)
    gc.submit([(conn, out("refused"))], durable=True, failed=True)
    assert log == []
    gate.set()
    await until(lambda: len(log) == 2)
    assert log == [("a", "ok", False), ("a", "refused", True)]


async def test_one_fsync_answers_the_newest_batch_first_and_each_connection_in_order():
    # The clients whose requests came last are answered first (the docstring's
    # release order); a connection goes out with its newest batch, its own
    # replies in their order, each with its own batch's failed flag.
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    a, b, c, d = (Conn(log, name) for name in "abcd")
    journal.write(10)
    gc.submit([(d, out("put-0"))], durable=True)
    first = await next_sync(journal)
    journal.write(10)
    gc.submit([(a, out("put-1")), (b, out("put-1"))], durable=True)
    gc.submit([(c, out("refused"))], durable=True, failed=True)
    journal.write(10)
    gc.submit([(b, out("ack-2")), (a, out("ack-2"))], durable=True)
    first.set()
    await until(lambda: len(log) == 1)
    assert log == [("d", "put-0", False)]
    (await next_sync(journal)).set()
    await until(lambda: len(log) == 6)
    assert log[1:] == [("a", "put-1", False), ("a", "ack-2", False),
                       ("b", "put-1", False), ("b", "ack-2", False), ("c", "refused", True)]
    # Nothing of a's is counted as waiting any more: while d's next put waits for
    # its fsync, a's receive of a message on disk goes out at once.
    journal.write(10)
    gc.submit([(d, out("put-3"))], durable=True)
    third = await next_sync(journal)
    gc.submit([(a, out("receive", newest_shown=0))], durable=False)
    assert log[6:] == [("a", "receive", False)]
    third.set()
    await until(lambda: len(log) == 8)
    assert log[7] == ("d", "put-3", False)


async def test_a_connections_replies_keep_their_order_within_one_batch_too():
    # The server gives a connection one output per batch; should a batch ever hold two,
    # they still go out in their order.
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    a, b = Conn(log, "a"), Conn(log, "b")
    journal.write(10)
    gc.submit([(b, out("put-0"))], durable=True)
    first = await next_sync(journal)
    journal.write(10)
    gc.submit([(a, out("put-1")), (b, out("put-1")), (a, out("put-2"))], durable=True)
    journal.write(10)
    gc.submit([(b, out("ack-3"))], durable=True)
    first.set()
    (await next_sync(journal)).set()
    await until(lambda: len(log) == 5)
    assert log[1:] == [("b", "put-1", False), ("b", "ack-3", False),
                       ("a", "put-1", False), ("a", "put-2", False)]


async def test_a_failed_fsync_fails_everything_waiting_and_is_fatal():
    journal = HeldJournal()
    log: list = []
    fatal: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=fatal.append)
    journal.write(10)
    gc.submit([(Conn(log, "a"), out("put-1"))], durable=True)
    gate = await next_sync(journal)
    journal.write(10)
    gc.submit([(Conn(log, "b"), out("put-2"))], durable=True)
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
    gc.submit([(Conn(log, "a"), out("put"))], durable=True)
    assert log == [("a", "put", False)]
    gc.stop()


async def test_drain_waits_for_held_batches():
    journal = HeldJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    journal.write(10)
    gc.submit([(Conn(log, "a"), out("put"))], durable=True)
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
        self.newest_put_written = 0  # as journal.py keeps them
        self.moves_written = 0
        self.synced_sizes: list[int] = []
        self.fail_next = False
        self.log: list = []  # the test's reply log, to see what went out before an fsync
        self.sent_before_sync: list[int] = []  # len(log) when each fsync ran

    def sync(self) -> None:
        if self.fail_next:
            raise OSError(5, "Input/output error")
        self.synced_sizes.append(self.size)
        self.sent_before_sync.append(len(self.log))

    def write(self, nbytes: int, put_id: int = 0, moves: int = 0) -> None:
        """write: `nbytes` of records, with a PUT of `put_id` and `moves` MOVEs among them."""
        self.size += nbytes
        self.newest_put_written = max(self.newest_put_written, put_id)
        self.moves_written += moves


async def test_inline_fsync_releases_a_durable_batch_in_the_same_call():
    journal = InlineJournal()
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail, inline=True)
    conn = Conn(log, "a")
    journal.write(10)
    gc.submit([(conn, out("put-1"))], durable=True)
    assert journal.synced_sizes == [110] and log == [("a", "put-1", False)]
    gc.submit([(conn, out("receive"))], durable=False)  # nothing written: no fsync
    assert journal.synced_sizes == [110] and log[-1] == ("a", "receive", False)
    journal.write(10)
    gc.submit([(conn, out("ack"))], durable=True)
    assert journal.synced_sizes == [110, 120]
    assert gc.idle and gc.synced == 120


async def test_inline_fsync_failure_fails_the_batch_and_is_fatal():
    journal = InlineJournal()
    log: list = []
    fatal: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=fatal.append, inline=True)
    journal.write(10)
    journal.fail_next = True
    gc.submit([(Conn(log, "a"), out("put"))], durable=True)
    assert log == [("a", "put", True)]
    assert len(fatal) == 1 and isinstance(fatal[0], OSError)
    assert gc.broken


# ------------------------------------------- read-committed replies (inline)

def inline_group_commit(journal: InlineJournal) -> GroupCommit:
    return GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail, inline=True)


def put_7_beside(name: str, label: str, newest_shown: int | None) -> InlineJournal:
    """put_7_beside: one iteration that writes the put of message 7, whose reply is
    submitted together with another connection's `label` reply; returns the journal."""
    journal = InlineJournal()
    gc = inline_group_commit(journal)
    journal.write(10, put_id=7)
    gc.submit([(Conn(journal.log, "producer"), out("put 7")),
               (Conn(journal.log, name), out(label, newest_shown=newest_shown))], durable=True)
    return journal


async def test_a_receive_of_a_message_on_disk_goes_out_before_the_fsync():
    journal = InlineJournal()
    log = journal.log
    gc = inline_group_commit(journal)
    journal.write(10, put_id=7)
    gc.submit([(Conn(log, "producer"), out("put 7"))], durable=True)
    assert gc.durable_put_id == 7
    # Next iteration: message 7 is received while another put is written.
    journal.write(10, put_id=8)
    gc.submit([(Conn(log, "producer"), out("put 8")),
               (Conn(log, "consumer"), out("receive 7", newest_shown=7))], durable=True)
    assert journal.sent_before_sync == [0, 2]  # the receive went out before the 2nd fsync
    assert [entry[1] for entry in log] == ["put 7", "receive 7", "put 8"]
    assert gc.durable_put_id == 8


async def test_a_receive_of_a_message_not_yet_on_disk_waits_for_the_fsync():
    # A waiting receive gets the message put in the same iteration.
    journal = put_7_beside("consumer", "receive 7", newest_shown=7)
    assert journal.sent_before_sync == [0]
    assert [entry[1] for entry in journal.log] == ["put 7", "receive 7"]


async def test_an_empty_receive_goes_out_before_the_fsync():
    journal = put_7_beside("consumer", "receive []", newest_shown=0)
    assert journal.sent_before_sync == [1]
    assert [entry[1] for entry in journal.log] == ["receive []", "put 7"]


async def test_other_replies_wait_for_the_fsync_even_with_nothing_to_show():
    # newest_shown None: a stats, an error, an ack... beside or instead of receives.
    journal = put_7_beside("other", "stats", newest_shown=None)
    assert journal.sent_before_sync == [0]


async def test_nothing_goes_out_early_while_a_move_is_not_on_disk():
    journal = InlineJournal()
    log = journal.log
    gc = inline_group_commit(journal)
    journal.write(10, put_id=7)
    gc.submit([(Conn(log, "producer"), out("put 7"))], durable=True)
    # Message 3 (old id) was dead-lettered in this iteration: its MOVE is being written.
    journal.write(10, moves=1)
    gc.submit([(Conn(log, "consumer"), out("receive 3", newest_shown=3))], durable=True)
    assert journal.sent_before_sync == [0, 1]  # the receive waited for the 2nd fsync
    # Once the MOVE is on disk, receives of old messages go early again.
    journal.write(10, put_id=8)
    gc.submit([(Conn(log, "producer"), out("put 8")),
               (Conn(log, "consumer"), out("receive 3", newest_shown=3))], durable=True)
    assert journal.sent_before_sync == [0, 1, 3]


async def test_a_receive_never_overtakes_an_earlier_reply_on_its_connection():
    journal = HeldJournal()
    journal.newest_put_written = 5  # on disk at the start
    log: list = []
    gc = GroupCommit(asyncio.get_running_loop(), journal, on_fatal=pytest.fail)
    conn = Conn(log, "a")
    journal.write(10)
    journal.newest_put_written = 7
    gc.submit([(conn, out("put 7"))], durable=True)
    first = await next_sync(journal)
    # While that fsync runs, the same connection receives an old message (id 1,
    # on disk long ago) and another put is written: the receive waits its turn.
    journal.write(10)
    gc.submit([(conn, out("receive 1", newest_shown=1))], durable=True)
    assert log == []
    first.set()
    (await next_sync(journal)).set()
    await until(lambda: len(log) == 2)
    assert [entry[1] for entry in log] == ["put 7", "receive 1"]
