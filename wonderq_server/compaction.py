"""Compaction: rewrite the journal as the live state, without stopping service.

Design decision: the next journal file (journal.N+1.tmp) is built a slice at
a time, between event-loop iterations, while the server keeps running:

1. start: open the .tmp file, write the header, a SEQ record (so ids are
   never reused even when every message was acked) and a QUEUE record for
   each explicit queue, and take the list of messages that exist now. From
   here on, every record the server writes to the live journal is also
   written to the .tmp file, in the same order.
2. step: for the next `SLICE_MESSAGES` messages, write each one still stored
   as a PUT or PUTX (plus a STATE if it was ever delivered or is not ready);
   plain messages of one queue in a row go in one PUTS record.
   The list holds (queue name, id) pairs, looked up at step time, not the
   messages themselves: most messages are plain (message.py), a body with
   no object to hold on to. A message no longer where the list says was
   acked, purged or moved since the start; it is skipped, and a moved one
   still reaches the new file, because its MOVE record holds the whole
   message and replay makes it in its new queue from that record alone
   (replay.py). Each record states a whole state, so a snapshot written
   after a live record about the same message simply supersedes it, and a
   live record after the snapshot supersedes the snapshot: replaying the
   file in order gives the current state.
3. pre-sync: fsync the .tmp file in a worker thread (the bulk of the data).
4. switch, in the loop, at a moment when no fsync of the live journal runs:
   fsync the little written since the pre-sync, rename .tmp over
   journal.N+1, fsync the directory, then make it the live journal and delete
   journal.N. Records still in the journal's buffer go to the new file.

A crash before the rename leaves journal.N whole (it got every record); a
crash after it leaves journal.N+1 whole. Recovery deletes .tmp files and any
older journal, so it finds exactly one of the two states.

When: the journal is over `min_bytes` and more than `RATIO` times the size
the live messages would take, and than the size the last compaction left
(`due`). So its size stays proportional to the live messages, not to
history, and a compaction is never due again at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .journal import (
    CompactionFailed,
    Journal,
    journal_name,
    live_estimate,
    plain_puts_record,
    put_record,
    state_record,
)
from .journal_format import FILE_HEADER, QUEUE, SEQ, encode_record
from .message import READY

if TYPE_CHECKING:
    from .broker import Broker

logger = logging.getLogger("wonderq.journal")

# A slice ends after this many messages or this many bytes, whichever comes first:
# about 5 ms of work, the longest pause a compaction causes.
SLICE_MESSAGES = 5000
SLICE_BYTES = 1 << 20
# Compact when the journal is this many times the size of its live content.
RATIO = 2.0
DEFAULT_MIN_BYTES = 64 * 1024 * 1024
# After a compaction fails (a full disk, most often), the next waits this long,
# doubled with each failure in a row up to RETRY_MAX_S (Redis backs off its AOF
# rewrite the same way). Without it a journal that stays due restarted the
# compaction after every write: an operator's review measured 1,653 abandoned
# compactions in 5 s and puts down from 35,000/s to 5,500/s.
RETRY_MIN_S = 60.0
RETRY_MAX_S = 3600.0


def retry_delay_s(failures: int) -> float:
    """retry_delay_s: how long after the `failures`-th failed compaction in a row the
    next may start."""
    return min(RETRY_MIN_S * 2.0 ** min(max(failures - 1, 0), 32), RETRY_MAX_S)


def due(journal: Journal, min_bytes: int) -> bool:
    """due says whether the journal has grown enough, and enough of it is dead, to compact.

    Against `RATIO` times the larger of the live estimate and the size the last
    compaction left (Redis' rule for its AOF rewrite): the estimate counts bodies
    and a fixed overhead, not headers or the STATE records of leased and delayed
    messages, so a compacted file can be over twice the estimate. Measured by a
    reviewer: 70,000 messages with 1 KB headers compacted to 73 MB against an
    estimate of 1.2 MB, and the server rewrote those 73 MB after almost every
    flush (49 times in 20 s)."""
    base = max(journal.live_bytes, journal.compacted_size)
    return journal.size > min_bytes and journal.size > RATIO * base


class Compaction:
    def __init__(self, journal: Journal, broker: Broker) -> None:
        self.journal = journal
        self.broker = broker
        self.generation = journal.generation + 1
        self.final_name = journal_name(self.generation)
        self.tmp_name = self.final_name + ".tmp"
        self.started = time.perf_counter()
        self.size_before = journal.size
        self.written = 0
        self.records = 0  # records in the new file
        self.fd = -1
        self.presynced = False  # set once the bulk fsync of the .tmp file is done
        self.renamed = False  # the new file is journal.N+1 (switch's rename went through)
        # The pre-sync runs in a worker thread: abandon() must not close the file under it.
        self._fd_lock = threading.Lock()
        self._presyncing = False  # the thread has the file (under _fd_lock)
        self._abandoned = False  # abandon() came meanwhile: the thread closes it
        self._messages: Iterator[tuple[str, int]] | None = None

    def start(self) -> None:
        """start opens the .tmp file and begins receiving every live record too."""
        self.fd = self.journal.open_file(self.tmp_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        queues = self.broker.queues
        head = [encode_record([SEQ, self.broker.ids.last])]
        head += [encode_record([QUEUE, q.name, q.settings.as_dict()])
                 for q in queues.values() if q.explicit]
        self._write(FILE_HEADER + b"".join(head))
        self.records = len(head)
        # Messages now; those put later reach the new file through their own records.
        snapshot = [(q.name, q.messages.ids_in_order()) for q in queues.values()]
        self._messages = ((name, message_id) for name, ids in snapshot for message_id in ids)
        self.journal.compaction_fd = self.fd
        self.journal.compaction_records = 0

    def step(self) -> bool:
        """step writes the next slice of live messages; True once all are written.

        Not while the journal holds records not yet written (the server steps right
        after its write; a failed write may leave some): a MOVE still pending could
        bring a message back to the queue the list has it in, and both the slice's
        record and the MOVE would make it at replay (a reviewer's differential found
        counts drifting so). The slice waits for the next write instead."""
        assert self._messages is not None
        if self.journal.has_pending:
            return False
        records: list[bytes] = []
        count = size = 0
        queues = self.broker.queues
        # Plain messages of one queue in a row become one PUTS record (journal_format.py).
        plain_queue, plain_ids, plain_bodies = "", [], []
        for name, message_id in self._messages:
            q = queues.get(name)
            msg = q.messages.get(message_id) if q is not None else None
            if msg is None:
                continue  # acked, expired, purged or moved since the list was taken
            if plain_ids and (type(msg) is not bytes or name != plain_queue):
                # The queue's stretch of plain messages ends here.
                records.append(encode_record(
                    plain_puts_record(plain_queue, plain_ids, plain_bodies)))
                plain_ids, plain_bodies = [], []
            if type(msg) is bytes:
                plain_queue = name
                plain_ids.append(message_id)
                plain_bodies.append(msg)
                size += len(msg)
            else:
                records.append(encode_record(put_record(msg)))
                size += len(records[-1])
                if msg.deliveries or msg.state != READY:
                    # (Ready with no deliveries holds no lease: a nack with `unseen`
                    # that takes the only delivery back ends its lease too.)
                    records.append(encode_record(
                        state_record(msg, self.broker.own_deadline(msg))))
            count += 1
            if count >= SLICE_MESSAGES or size >= SLICE_BYTES:
                break
        else:
            count = -1  # every id has been written
        if plain_ids:
            records.append(encode_record(plain_puts_record(plain_queue, plain_ids, plain_bodies)))
        if records:
            self._write(b"".join(records))
            self.records += len(records)
        return count < 0

    def presync(self) -> None:
        """presync fsyncs the bulk of the new file; runs in a worker thread. An abandon()
        that comes meanwhile leaves closing and removing the file to it, when it is done,
        so the descriptor is never closed (and maybe reused) under its fsync."""
        with self._fd_lock:
            if self._abandoned:
                return
            self._presyncing = True
        try:
            os.fsync(self.fd)
            self.presynced = True
        finally:
            with self._fd_lock:
                self._presyncing = False
                if self._abandoned:
                    self._discard()

    def switch(self, now: float) -> int:
        """switch makes the new file the live journal; returns its size. Runs in the loop.

        No fsync of the live journal may be running. Records not yet written
        (pending in the journal's buffer) go to the new file only, later.

        Until the rename nothing but the .tmp file has changed, so a failed
        fsync of it, or a failed rename, is CompactionFailed: the compaction is
        abandoned and the live journal goes on, as for a failed write to the
        new file. Once renamed, journal.N+1 is what a restart would read, so a
        failure of the directory's fsync is not caught here (an OSError): a
        running server stops rather than go on writing to journal.N, and at a
        stop abandon() keeps journal.N+1, which got every record.
        """
        journal = self.journal
        try:
            os.fsync(self.fd)  # only what was written since the pre-sync
            journal.rename_file(self.tmp_name, self.final_name)
            self.renamed = True
        except OSError as exc:
            raise CompactionFailed(f"the new journal could not be made durable: {exc}") \
                from exc
        journal._fsync_directory()
        old_fd, old_generation = journal.fd, journal.generation
        journal.fd, journal.generation = self.fd, self.generation
        journal.compaction_fd = -1
        journal.records = self.records + journal.compaction_records
        journal.synced_records = journal.reserve_bytes > 0  # the new file has none yet
        journal.continue_at(os.lseek(self.fd, 0, os.SEEK_END))
        journal.live_bytes = live_estimate(self.broker)  # as a restart would rebuild it
        journal.compacted_size = journal.size
        journal.last_compaction_at = now
        os.close(old_fd)
        journal.unlink_file(journal_name(old_generation))
        logger.info("compacted the journal: %d -> %d bytes in %.2f s (%s)",
                    self.size_before, journal.size, time.perf_counter() - self.started,
                    self.final_name)
        return journal.size

    def abandon(self, reason: str) -> None:
        """abandon gives up (a write failed); the live journal was never touched."""
        if self.journal.fd == self.fd:
            return  # already switched: this file is the live journal now, never close it
        self.journal.compaction_fd = -1
        if self.renamed:
            # The directory's fsync after the rename failed. Every record written so far
            # went to both files, and journal.N+1 is the one a start reads: keep it.
            logger.error("compaction stopped after the new journal became %s: %s; it holds "
                         "every record written so far, and the next start reads it",
                         self.final_name, reason)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            return
        logger.error("compaction abandoned: %s; the live journal is unaffected", reason)
        with self._fd_lock:
            self._abandoned = True
            if not self._presyncing:
                self._discard()

    def _discard(self) -> None:
        """_discard closes and removes the abandoned .tmp file (under _fd_lock). When the
        pre-sync's thread does it, late, no next compaction has opened a .tmp of the same
        name yet: the server waits for that thread first (server.py, _abandoned_presync)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.journal.unlink_file(self.tmp_name)

    def _write(self, data: bytes) -> None:
        try:
            self.journal.write_all(self.fd, data)
        except OSError as exc:
            raise CompactionFailed(str(exc)) from exc
        self.written += len(data)
