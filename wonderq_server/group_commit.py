"""Group commit: replies wait for the fsync that makes their records durable.

Design decision: the server hands over, once per event-loop iteration, the
replies that iteration produced (a Batch) and whether the journal write
before them held a durable record. Under `--fsync always` such a batch is
held until an fsync that started after its write has finished, and every
request that arrives while one fsync runs shares the next. That is what
keeps `always` cheap when many producers write at once.

Where the fsync runs (`inline`): the server runs `always`'s fsync on the
event loop itself, at the end of the iteration that wrote the records, as
Redis does for `appendfsync always`. Measured on this project's machine, a
worker-thread fsync took 0.43 ms on average under load against 0.08 ms for
the fsync itself: the thread's hand-off and its wait for the GIL after the
system call cost more than the disk, and the server spent about 260 us of
CPU per message. Inline, requests that arrive during the fsync wait in the
kernel and are read, together, by the next iteration: the same grouping,
without the hand-off. The price: a disk whose fsync is slow stalls the whole
loop for that long. The worker thread remains for `everysec` (whose fsync
no reply waits for) and when `inline` is off.

Read-committed replies (issue 6, S6): a receive needs no fsync of its own;
what must not happen is a consumer getting a message whose PUT could still
be lost. So when an iteration's batch must wait for an fsync, a
connection's output that holds only receives and peeks (Output.newest_shown)
of messages whose PUT is already on disk goes out at once, before the
fsync, unless a reply of that connection is still waiting; everything else
waits as before. Per connection, not only when nothing waits at all: while
a group waits for its fsync (commit_wait.py) the consumers' receives are
answered, and their acks join the group. Measured with
bench/probes/durable_mix.py, about 9 in 10 receive replies had waited for
an fsync they did not need, and the consumer's ack behind each one then
missed that fsync: sending them first cut fsyncs from about 1.0 to 0.75
(slow disk) - 0.85 (fast disk) per message. Not adopted, because they
measured no better:
* delaying the inline fsync by an iteration or two to gather more records
  (the clients, not the server, hold most requests in flight, so the extra
  iterations found little and doubled the flushes);
* fdatasync alone (the file grows with every write, so it syncs the same
  metadata; with reserved space, below, it is what makes the difference);
* a helper process that runs the fsync while the loop goes on (a process,
  not a thread, so no wait for the GIL): side by side, 5,679 against 3,965
  msgs/s. On two cores the helper, the pipe's two system calls and the
  extra wake-ups of the loop cost more than the overlap won, and fsyncs per
  message rose 9% here too;
* the worker thread again, with the interpreter's switch interval cut from
  5 ms to 0.1 ms so the thread gets the GIL back sooner: 5,429 against
  2,902 msgs/s (medians of 5 alternating rounds), its fsyncs averaging
  0.123 ms against 0.078 ms inline.
* a commit delay by time (PostgreSQL's commit_delay, MySQL's
  binlog_group_commit_sync_delay), since an iteration is shorter than a
  client's turn-around: the loop kept iterating (call_soon, reading and
  writing what came) for a fixed time before the inline fsync. uvloop's
  timers count whole milliseconds, too coarse for this. durable_mix.py
  8000 on fresh servers, 3 alternating rounds, 2026-11-29: none 4,054
  msgs/s; 100 us 3,542; 250 us 3,229; 500 us 2,387 (medians), the server's
  CPU per message rising from about 150 to 295 us: time spun on a 2-core
  machine whose other core the clients need, for groups that grew too
  little to pay for it.
* the fsync off the loop with no thread and no process: Linux's kernel AIO
  (io_submit of IOCB_CMD_FDSYNC through ctypes, its completion signalled on
  an eventfd the loop watches), so the loop reads and writes the next group
  while the disk syncs, with no GIL to wait for. Alone it cost 105-165 us a
  sync against 95 inline, the process's CPU 32 against 46 us. Under S6's
  load (durable_mix.py 20000, fresh servers, 3 alternating rounds,
  2026-11-30): 4,127-4,555 msgs/s against 4,599-5,034 inline, fsyncs per
  message 0.87 against 0.71. The loop, free during the sync, starts the
  next one as soon as it ends, with what little came meanwhile; blocked,
  it gathers a bigger group in the kernel's socket buffers.
* a commit delay that leaves the CPU to the clients: before writing
  records that need an fsync, the flush slept (time.sleep, not a spin)
  and ran once more on the next iteration, after the loop had read what
  came meanwhile. Groups grew and throughput fell, p99 rose:
  `WQ_COMMIT_SLEEP_US=US python bench/probes/durable_ab.py 8000 3 MAIN EXP`
  (EXP: this tree with the sleep, read from that variable; medians of 3,
  2026-12-01): 20 us, 5,718 -> 4,752 msgs/s, 0.742 -> 0.499 fsyncs a
  message, p99 7.35 -> 8.22 ms; 100 us, 5,512 -> 3,934, 0.749 -> 0.499,
  7.60 -> 10.68 ms. The clients' one process answers a bigger group's
  replies one by one, and `time.sleep` overshoots by the kernel's 50 us
  timer slack and more (20 us slept 94 on this VM, 100 us slept 175;
  medians of 2,000).

Release order (issue 6, S6): the outputs one fsync releases go out newest
first, each connection's own in their order (a connection goes out where
its newest output stands). The clients whose requests came last in a group
are, as a rule, the ones with the most to do before the next: in S6 a
producer's put comes in one round trip after its reply, a consumer's ack
two (a receive, answered before the fsync, then the ack), so the acks
stand last in line. Answered first, the consumers start their receives
while the server is still writing the producers' replies, and the commit
wait's round, which lasts until the slowest client's request is in, ends
sooner. Measured side by side (`python bench/probes/durable_ab.py 8000 7
BEFORE AFTER`, BEFORE a worktree of the tree before, 2026-12-01): 6,836 ->
7,931 msgs/s (medians of 7), the server's CPU 113.8 -> 103.8 us a message,
at the same 0.251 fsyncs a message. Replies of different connections never
had an order to keep: a receive released before the fsync already
overtakes another connection's put reply.

Reserved journal space (journal.py, `--journal-reserve`), adopted: under
`always` the journal writes zeros ahead of its records, a chunk at a time,
so a write does not change the file's size and the fsync is an fdatasync
of the data alone, with no inode update for ext4 to commit.
bench/probes/fsync_cost.py alone on the disk: 196 us per fsync appending,
130 us into zeroed space, on the VM of 2026-11-29 (63 against 42 us on an
earlier one, where a first trial under load measured no gain: 5,573
against 5,531 msgs/s). Under S6's load on the later VM (durable_mix.py
8000, 7 alternating rounds, side-by-side servers, with the SYNCED records
below): 3,193 -> 3,856 msgs/s (medians), the server's CPU per message
187.5 -> 160 us, the average fsync 0.238 -> 0.163 ms at the same 0.65
fsyncs per message. A first version (9769f7d) was reverted after a review
on real servers: writing over zeros gives up the order appending keeps,
so a power cut can keep any of an unsynced write's pages and lose others,
and a write cut short in the zeros no longer runs past the end of the
file; the reader took both for damage and the start stopped. The journal
now writes a SYNCED record after each fsync, naming what it covered, and
the reader tells damage from a torn tail by them (journal_format.py).

Rules:
* Batches leave the line strictly in order (a batch that needs no fsync
  still waits behind one that does); the outputs of the batches one fsync
  releases go out newest first (above), each connection's own in their
  order, so a connection's replies never overtake each other.
* `synced` is the journal offset known to be on disk; a batch waits for
  `synced >= batch.offset`.
* Read-committed, exactly: "on disk" is `durable_put_id`, the newest PUT id
  covered by a finished fsync (ids grow with every put, ids.py, so every
  older PUT is on disk too). A moved message keeps its old id, so while a
  MOVE is written but not yet synced (`durable_moves`) nothing leaves early.
  An output with any other reply (a stats count, an error, a put) waits:
  it could reveal a change that is not yet durable. An output goes early
  only when no output of its connection is waiting (`_held` counts them),
  so it never overtakes an earlier reply on its connection.
* Before an inline fsync, `commit_wait.hold()` may put it off while the
  clients the last fsync answered send their next requests (commit_wait.py);
  the server's flush asks again (`resume`) after the loop has read them.
* A failed write releases its batch at once with failed=True: the
  connections turn replies to durable commands into STORAGE_ERROR.
* A failed fsync is fatal (journal.JournalBroken): waiting batches are
  released as failed and `on_fatal` stops the server, because replies that
  promised durability can no longer be given.
* `everysec` and `never` release every batch at once; `everysec` runs an
  fsync in the worker thread at most once a second while data is unsynced.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .commit_wait import CommitWait
    from .connection import Connection, Output
    from .journal import Journal

logger = logging.getLogger("wonderq.journal")

EVERYSEC_INTERVAL_S = 1.0


class Batch:
    __slots__ = ("failed", "offset", "outputs")

    def __init__(self, outputs: list[tuple[Connection, Output]], offset: int,
                 failed: bool) -> None:
        self.outputs = outputs
        self.offset = offset  # journal size this batch needs on disk; 0 for none
        self.failed = failed


class GroupCommit:
    def __init__(self, loop: asyncio.AbstractEventLoop, journal: Journal | None,
                 on_fatal: Callable[[BaseException], None],
                 on_synced: Callable[[], None] = lambda: None, inline: bool = False,
                 commit_wait: CommitWait | None = None,
                 wake: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        # With the inline fsync: waits for the clients the last fsync answered
        # (commit_wait.py); `wake` has the server flush again after the loop reads.
        self.commit_wait = commit_wait if inline else None
        self._wake = wake
        self.inline = inline  # `always`'s fsync on the loop thread (see the docstring)
        self._on_synced = on_synced  # told after every fsync (a compaction may wait for one)
        self.journal = journal
        self._on_fatal = on_fatal
        self._batches: deque[Batch] = deque()
        self._held: dict[Connection, int] = {}  # outputs of a connection in _batches
        self.synced = journal.size if journal is not None else 0
        # What the last fsync made durable besides bytes (journal.py's counters):
        # every PUT up to this id, and this many MOVEs.
        self.durable_put_id = journal.newest_put_written if journal is not None else 0
        self.durable_moves = journal.moves_written if journal is not None else 0
        self.wanted = self.synced  # the largest offset a waiting batch needs on disk
        self.syncing = False
        self._everysec_timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self.broken = False

    @property
    def idle(self) -> bool:
        return not self.syncing and not self._batches

    def submit(self, outputs: list[tuple[Connection, Output]], durable: bool,
               failed: bool = False) -> None:
        """submit takes one iteration's replies; they go out now or after an fsync."""
        journal = self.journal
        needs_sync = (durable and not failed and journal is not None
                      and journal.fsync_policy == "always")
        if not needs_sync and not self._batches:
            _release(outputs, failed)  # the common fast path: nothing to wait for
        else:
            if not failed:
                outputs = self._release_committed_reads(outputs)
            offset = journal.size if needs_sync else 0
            self.wanted = max(self.wanted, offset)
            if outputs or offset:  # else every reply went early: nothing to keep in line
                self._hold(Batch(outputs, offset, failed))
            self._release_ready()
            self._start_sync()
        if journal is not None and journal.fsync_policy == "everysec":
            self._arm_everysec()

    def _release_committed_reads(self, outputs: list[tuple[Connection, Output]],
                                 ) -> list[tuple[Connection, Output]]:
        """_release_committed_reads sends, before the fsync, the outputs that only show
        messages whose PUT is already on disk, of connections with no earlier output
        waiting, and returns the others. While a MOVE is not yet on disk nothing
        leaves early: a moved message keeps its old id.
        """
        assert self.journal is not None
        if self.durable_moves != self.journal.moves_written:
            return outputs
        durable_put_id = self.durable_put_id
        waiting = self._held
        held = []
        for conn, output in outputs:
            newest = output.newest_shown
            if newest is not None and newest <= durable_put_id and conn not in waiting:
                conn.send_output(output)
            else:
                held.append((conn, output))
        return held

    def after_switch(self, size: int) -> None:
        """after_switch notes that a compaction replaced the journal with a file of
        `size` bytes that is wholly on disk: every waiting batch is durable now."""
        self.synced = self.wanted = size
        if self.journal is not None:
            self.durable_put_id = self.journal.newest_put_written
            self.durable_moves = self.journal.moves_written
        while self._batches:  # their records are in the new file, which is on disk
            self._release_batch(self._batches.popleft(), batch_failed=None)
        self._release_ready()  # resolves a pending drain()

    # ---------------------------------------------------------------- fsync

    def _hold(self, batch: Batch) -> None:
        """_hold puts a batch in line; its connections now have an output waiting."""
        held = self._held
        commit_wait = self.commit_wait
        for conn, _output in batch.outputs:
            held[conn] = held.get(conn, 0) + 1
            if commit_wait is not None:
                commit_wait.joined(conn)
        self._batches.append(batch)

    def _release_batch(self, batch: Batch, batch_failed: bool | None) -> None:
        """_release_batch sends a batch taken out of line, failed as `batch_failed` says
        (None: as the batch itself says)."""
        for conn, _output in batch.outputs:
            self._unhold(conn, 1)
        _release(batch.outputs, batch.failed if batch_failed is None else batch_failed)

    def _unhold(self, conn: Connection, count: int) -> None:
        """_unhold: `count` outputs of `conn` have left the line."""
        left = self._held[conn] - count
        if left:
            self._held[conn] = left
        else:
            del self._held[conn]

    def _release_ready(self) -> None:
        batches = self._batches
        ready: list[Batch] = []
        while batches and batches[0].offset <= self.synced:
            ready.append(batches.popleft())
        if len(ready) == 1:
            self._release_batch(ready[0], batch_failed=None)
        elif ready:
            self._release_newest_first(ready)
        if self.commit_wait is not None:
            # durable replies released: commit_wait expects their connections
            answered = [conn for batch in ready if batch.offset and not batch.failed
                        for conn, _output in batch.outputs]
            if answered:
                self.commit_wait.expect(answered)
        if not batches:
            self._resolve_drained()

    def _release_newest_first(self, ready: list[Batch]) -> None:
        """_release_newest_first sends the outputs of `ready` (batches in line order, all
        released by one fsync) newest first, and each connection's in their order: a
        connection goes out where its newest output stands (the docstring's release order)."""
        # Each connection's outputs, gathered newest first, are sent oldest first.
        newest_first: dict[Connection, list[tuple[Output, bool]]] = {}
        for batch in reversed(ready):
            failed = batch.failed
            for conn, output in reversed(batch.outputs):
                newest_first.setdefault(conn, []).append((output, failed))
        for conn, outputs in newest_first.items():
            self._unhold(conn, len(outputs))
            for output, failed in reversed(outputs):
                conn.send_output(output, failed)

    def resume(self) -> None:
        """resume: the server's flush, after a loop turn that brought nothing to submit,
        asks again for an fsync that commit_wait put off."""
        if self._batches and not self.syncing:
            self._start_sync()

    def forget(self, conn: Connection) -> None:
        """forget: `conn` closed; it is not waited for."""
        if self.commit_wait is not None:
            self.commit_wait.joined(conn)

    def _resolve_drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _start_sync(self) -> None:
        # Not "is the last batch synced": the last one may need no fsync while
        # one before it still does.
        if self.syncing or self.broken or not self._batches or self.wanted <= self.synced:
            return
        if self.inline:
            if self.commit_wait is not None and self.commit_wait.hold():
                self._wake()  # an expected client's request is in: read it first
                return
            self._sync_inline()
        else:
            self._sync_in_thread()

    def _sync_inline(self) -> None:
        """_sync_inline fsyncs everything written so far, here, on the event loop."""
        assert self.journal is not None
        mark = self._mark()
        self.syncing = True
        try:
            self.journal.sync()
        except Exception as exc:
            self._finish_sync(exc, mark)
        else:
            self._finish_sync(None, mark)

    def _sync_in_thread(self) -> None:
        """_sync_in_thread fsyncs everything written so far, off the event loop."""
        assert self.journal is not None
        mark = self._mark()
        self.syncing = True
        future = self._loop.run_in_executor(None, self.journal.sync)
        future.add_done_callback(lambda f: self._finish_sync(f.exception(), mark))

    def _mark(self) -> tuple[int, int, int]:
        """_mark is what an fsync starting now makes durable: (size, put id, moves)."""
        journal = self.journal
        assert journal is not None
        return journal.size, journal.newest_put_written, journal.moves_written

    def _finish_sync(self, exc: BaseException | None, mark: tuple[int, int, int]) -> None:
        self.syncing = False
        if exc is not None:
            self.broken = True
            while self._batches:
                self._release_batch(self._batches.popleft(), batch_failed=True)
            self._resolve_drained()
            self._on_fatal(exc)
            return
        target, put_id, moves = mark
        self.synced = max(self.synced, target)
        self.durable_put_id = max(self.durable_put_id, put_id)
        self.durable_moves = max(self.durable_moves, moves)
        if self.journal is not None and self.journal.fsync_policy == "everysec" \
                and self.journal.size > self.synced:
            self._arm_everysec()  # written while this fsync ran: sync it within a second
        self._release_ready()
        # Before the next fsync starts: a compaction waiting for a moment with no
        # fsync running switches files now (under steady load there is no other).
        self._on_synced()
        self._start_sync()

    def _arm_everysec(self) -> None:
        if self._everysec_timer is None:
            self._everysec_timer = self._loop.call_later(EVERYSEC_INTERVAL_S, self._everysec)

    def _everysec(self) -> None:
        self._everysec_timer = None
        journal = self.journal
        if journal is None or self.syncing or self.broken or journal.size <= self.synced:
            return
        self._sync_in_thread()

    def stop(self) -> None:
        if self._everysec_timer is not None:
            self._everysec_timer.cancel()
            self._everysec_timer = None

    async def drain(self) -> None:
        """drain waits until every held batch has been released (for shutdown)."""
        if self.commit_wait is not None:
            self.commit_wait.stop()  # nothing more is coming: sync what waits now
        if not self._batches or self.broken:
            return
        self._drained = self._loop.create_future()
        self._start_sync()
        await self._drained


def _release(outputs: list[tuple[Connection, Output]], failed: bool) -> None:
    for conn, output in outputs:
        conn.send_output(output, failed)
