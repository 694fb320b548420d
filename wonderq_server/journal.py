"""The journal: the append-only log that makes the broker's state survive.

Design decision (Redis' AOF, beanstalkd's binlog): the broker reports every
change as it happens (`put`, `state`, `ack`, the ChangeLog of broker.py);
the journal encodes it at once into a memory buffer, and the server writes
that buffer with one write per event-loop iteration (`write_pending`), just
before replies go out. Whether replies also wait for an fsync is the fsync
policy's business (group_commit.py), not this module's.

Files in the data directory:

    LOCK                 held with flock while a server runs: one server per directory
    journal.000007       the journal: header, then records (journal_format.py)
    journal.000008.tmp   a compaction (or a first journal) in progress; deleted at start-up

Rules:
* Every file is opened, renamed and removed relative to the locked
  directory's descriptor, never by its path: a data directory moved or
  replaced under a running server (and another server started on the new
  one) must not have this one's compaction write into, or delete from, a
  directory it does not hold (a reviewer's second server lost every put
  that way).
* Exactly one journal file is live: the highest-numbered one. A compaction
  writes the next number as .tmp and renames it into place only when it is
  complete and on disk, so recovery finds either the old state or the new,
  whole (compaction.py).
* A failed write is cut back off the file (ftruncate to the last good
  offset), so nothing half-written is ever replayed, and the error goes up to
  the server, which answers the requests that needed it with STORAGE_ERROR.
  If even the cut fails, the log can no longer be trusted: JournalBroken.
* The records of a failed write stay pending, in order, and go out with a
  later write (`kept_from_failure`; the server tries again once every
  RETRY_WRITE_S and refuses changes meanwhile, not run): the broker's memory
  already holds their changes, and not all of them were asked for. A lease
  that ran out and moved its message to a dead-letter queue is nobody's
  request; dropped, its MOVE never reached the file, so a restart lost the
  message, and an ack of it in the dead-letter queue, answered OK after
  writes worked again, was undone (a reviewer). So the file is always a
  prefix of the changes, and every change answered OK is in it. STORAGE_ERROR
  says "may or may not take effect": kept, it takes effect on disk as it did
  in memory. Past MAX_RETAINED_BYTES of them (a disk failing for long) the
  journal is broken (JournalBroken, the server stops): dropping them would
  leave a gap in the prefix (a reviewer lost a message to a compaction that
  way), and a restart replays the file as it was before the failures.
* Recovery replays records through the broker's restore_* functions. A torn
  tail is cut off with a warning; damage before the tail stops start-up
  with the file and offset named, unless `repair` skips damaged records.
  In a file with SYNCED records (below), "before the tail" means before
  what the last SYNCED record says was on disk: journal_format.py's rules.
* Consecutive puts of plain messages to one queue (single puts pipelined
  or from several producers, and put_many batches) wait in a *put run* and
  are encoded as one PUTS record when anything else is recorded, when the
  run reaches PUT_RUN_MAX_MESSAGES, or at the write (`_end_put_run`): one
  record, one checksum and one pack call for what took one per message,
  and a start replays it as fast as a batch. Every other record ends the
  run first, so records stay in the order the broker made the changes. A
  run of one is an ordinary PUT record.
* Lease records (STATE after a receive or touch) are written like any other
  but never make a put or ack wait: `durable_pending` only counts PUT, ACK
  and the STATE of a nack.
* Under `always`, the file holds `reserve_bytes` of zeros past its last
  record (reserved space): writes land inside it, so the file's size does
  not change with every write and the fsync behind each reply is an
  fdatasync that flushes the data alone, with no inode update for the
  filesystem to commit (PostgreSQL's zero-filled WAL segments). Measured in
  group_commit.py's docstring. The space is taken a chunk at a time, by
  writing zeros (not posix_fallocate: an extent reserved that way is
  converted at its first write, which is the metadata update this avoids),
  and cut off again at close(). A failed reservation (disk full) is
  logged, and the journal appends as before until a chunk's worth later.
  Replay reads zeros after the last record as reserved space: the end of
  the journal, as quiet as a clean end (journal_format.py).
* Writing over zeros gives up the order appending keeps (ext4 commits a
  grown size only after the data, so a crash loses a tail and nothing
  else): a power cut may keep any of an unsynced write's pages and lose
  others, and a write cut short in the zeros no longer runs past the end
  of the file. So with reserved space every write that follows an fsync
  begins with a SYNCED record naming the offset that fsync covered, and
  the reader tells damage (a later SYNCED record names an offset past it)
  from what no fsync covered (journal_format.py's rules). Each run's first
  SYNCED record in a file (`_mark`) is appended and synced on its own
  before anything is written into the zeros, naming where the file ended
  (its maker fsynced it: a new file's header, a compaction's switch, or a
  start, which fsyncs the replayed file first), so a power cut that loses
  the first write's first page cannot take the file's only SYNCED record
  with it. They carry 8 random bytes per file (kept across restarts), so a
  message body holding a SYNCED record proves nothing. The compaction's
  copy of each write leaves the SYNCED record out: its offsets are the old
  file's. A file that has SYNCED records is
  written with them whatever the settings (`synced_records`), since the
  reader reads it by them; under `never`, which has no fsyncs to name,
  such a file is compacted soon into one without.
* Each successful write also records what it made visible:
  `newest_put_written` (the newest PUT's id) and `moves_written` (MOVEs so
  far), so group commit knows which messages are on disk after an fsync.

Contract per fsync policy (what an answered put, ack or nack survives):

    always    a crash of the machine: answered only after fsync (group commit)
    everysec  a crash of the process; the machine may lose about 1 s of records
    never     a crash of the process; the OS decides when data reaches the disk
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import mmap
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ids import id_time
from .journal_format import (
    ACK,
    DROP,
    FILE_HEADER,
    MOVE,
    PURGE,
    PUT,
    PUTS,
    PUTX,
    QUEUE,
    SEQ,
    STATE,
    SYNCED,
    SYNCED_NONCE_BYTES,
    JournalCorrupt,
    ReadResult,
    encode_record,
    first_misfit,
    kept_tail_end,
    read_records,
)
from .message import DELAYED, LEASED

if TYPE_CHECKING:
    from .broker import Broker
    from .message import Message
    from .queues import Queue

logger = logging.getLogger("wonderq.journal")

FSYNC_POLICIES = ("always", "everysec", "never")
JOURNAL_NAME = re.compile(r"journal\.(\d{6,})$")
# Bytes a live message is counted for in `live_bytes` beyond its body: about what it
# takes in a compacted journal, where most are in PUTS records (its id, 9 bytes, and its
# body's length, 2 or 3). Every put adds, and its ack takes back, exactly this plus the
# body, so `live_bytes` stays `live_estimate(broker)` between rebuilds.
PUT_RECORD_OVERHEAD = 16
# The most puts one put run (see the rules) gathers into a record: records stay
# within what one put_many of the default --max-batch makes (1,000 messages of up to
# --max-message-bytes each), while a run this long already costs its record's
# overhead once per thousand messages.
PUT_RUN_MAX_MESSAGES = 1000
# Reserved space (see the rules), `--journal-reserve`: a chunk is written whenever the
# records reach the zeros' end. 4 MiB is some 20,000 messages of S6's shape: one bigger
# flush in that many, and at most this much disk beyond the records.
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
MAX_RESERVE_BYTES = 256 * 1024 * 1024  # each chunk is a buffer of zeros in memory first


class JournalError(Exception):
    """A write to the journal failed; the records of that write are not in the log yet
    (they stay pending for the next write)."""


class JournalBroken(JournalError):
    """The journal can no longer be trusted; the server must stop."""


class DataDirLocked(Exception):
    """Another server holds this data directory."""


class DataDirUnusable(Exception):
    """The data directory cannot be made or locked (a file in its place, no permission)."""


@dataclass
class RecoveryReport:
    path: str
    records: int
    messages: int
    queues: int
    seconds: float
    file_bytes: int
    torn_tail_bytes: int
    skipped: list[tuple[int, str]]


COPY_CHUNK_BYTES = 1 << 20  # _copy's reads
# The records of failed writes kept for a later one, at most (see the rules); past it the
# server stops rather than let memory run further ahead of the disk.
MAX_RETAINED_BYTES = 64 << 20


def _copy(source: int, target: int, size: int) -> None:
    """_copy writes the first `size` bytes of file `source` to file `target`, and fsyncs it."""
    copied = 0
    while copied < size:
        chunk = os.pread(source, min(COPY_CHUNK_BYTES, size - copied), copied)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view):]
        copied += len(chunk)
    os.fsync(target)


def journal_name(generation: int) -> str:
    return f"journal.{generation:06d}"


def journal_path(directory: Path, generation: int) -> Path:
    return directory / journal_name(generation)


class Journal:
    def __init__(self, directory: str | Path, fsync: str = "always", *,
                 repair: bool = False,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                 write: Callable[[int, bytes], int] = os.write,
                 pwrite: Callable[[int, bytes, int], int] = os.pwrite,
                 fsync_file: Callable[[int], None] = os.fdatasync) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}")
        # Absolute, as the log and errors name it: under systemd the default ./wonderq-data
        # is under / and a relative path did not say where (an operator's review).
        self.directory = Path(directory).absolute()
        self.fsync_policy = fsync
        self.repair = repair
        # Replaceable so tests can make a write fail (disk full), a reservation or an
        # fsync. fdatasync: it flushes a changed file size too, and nothing else matters.
        self._write = write
        self._pwrite = pwrite
        self._fsync = fsync_file
        # Reserved space (see the rules): only where an fsync waits behind each reply.
        self.reserve_bytes = reserve_bytes if fsync == "always" else 0
        self.file_end = 0  # where the file ends: size, or past it by the reserved zeros
        self._reserve_again_at = 0  # after a failed reservation: the size to try again at
        # SYNCED records (see the rules): the offset the last fsync covered, and the last
        # one a SYNCED record in the file names.
        self.synced_records = self.reserve_bytes > 0  # this file is written with them
        self._synced_to = 0
        self._announced = 0
        self._unproven = False  # written since the last SYNCED record: close() adds one
        self._nonce = b""  # the file's SYNCED records' nonce (journal_format.py)
        self.generation = 0
        self.fd = -1
        self._lock_fd = -1
        self._directory_lock_fd = -1  # the data directory itself, flocked (_lock)
        self.size = 0  # bytes in the live file, all written
        self.records = 0  # records in the live file
        self.live_bytes = 0  # estimate of what a compacted journal would take
        self.compacted_size = 0  # the journal's size when the last compaction switched to it
        self._pending: list[bytes] = []
        # The put run (see the rules): plain puts to one queue not yet encoded.
        self._run_queue: Queue | None = None
        self._run_ids: list[int] = []
        self._run_bodies: list[bytes] = []
        self.durable_pending = False  # a PUT, ACK or nack is in _pending
        # What written records made visible, for group commit's read-committed
        # early replies: the newest id of a PUT written (ids grow with every put,
        # ids.py), and how many MOVEs have been written (a move keeps its id).
        self._newest_put_pending = 0
        self.newest_put_written = 0
        self._moves_pending = 0
        self.moves_written = 0
        self.fsync_count = 0
        self.fsync_seconds = 0.0
        # Told each fsync's duration in seconds, in the thread that ran it; set only
        # with --metrics-port (metrics.py), so the journal never imports prometheus.
        self.fsync_observer: Callable[[float], None] | None = None
        self.last_compaction_at: float | None = None
        self.compaction_fd = -1  # set while compaction.py builds the next file
        self.compaction_error = ""  # why writing to the next file failed, if it did
        self.compaction_records = 0  # live records also written to the next file
        self.compact_requested = False  # compact soon whatever the sizes (after a repair)
        self.kept_from_failure = False  # the pending records include a failed write's
        self.lost_at_close = 0  # bytes of them a last write at close() could not write

    # ------------------------------------------------------------ open, lock

    def open(self, broker: Broker, now: float) -> RecoveryReport:
        """open locks the directory, replays the live journal into `broker`, attaches
        itself as the broker's journal and gets ready to append. Raises DataDirLocked,
        DataDirUnusable, JournalCorrupt, OSError."""
        used_before = os.path.lexists(self.directory / "LOCK")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as exc:
            why = "it is not a directory" if os.path.lexists(self.directory) \
                and not os.path.isdir(self.directory) else (exc.strerror or str(exc))
            raise DataDirUnusable(f"the data directory {self.directory} cannot be used: "
                                  f"{why}") from exc
        generations = []
        for name in os.listdir(self._directory_lock_fd):
            if name.endswith(".tmp") and name.startswith("journal."):
                left_by = ("--repair's copy of a damaged journal"
                           if name.endswith(".damaged.tmp") else "a compaction")
                logger.warning("removing %s, left by %s that did not finish",
                               self.directory / name, left_by)
                self.unlink_file(name)
            elif match := JOURNAL_NAME.fullmatch(name):
                generations.append(int(match.group(1)))
        if not generations:
            if used_before:
                # A copy taken while a compaction replaced the journal (rsync listed it,
                # then it was gone) restores as this: say so, not start empty in silence.
                logger.warning("the data directory %s has a LOCK file, left by a server, but "
                               "no journal: starting with no messages. If it was restored "
                               "from a copy, the copy missed the journal (README, Backups); "
                               "a first start that stopped before making its journal also "
                               "leaves this", self.directory)
            self.generation = 1
            path = journal_path(self.directory, 1)
            # Header first, under .tmp: a crash must not leave a journal without one.
            fd = self.open_file(journal_name(1) + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, FILE_HEADER)
            os.fsync(fd)
            self.rename_file(journal_name(1) + ".tmp", journal_name(1))
            self._fsync_directory()
            self.fd = fd
            self.continue_at(len(FILE_HEADER))
            broker.journal = self
            return RecoveryReport(str(path), 0, 0, 0, 0.0, self.size, 0, [])
        generations.sort()
        self.generation = generations[-1]
        report = self._replay(broker, now)
        # A compaction switched over but did not clean up. Only now that the newest
        # has been read: were it unreadable, the older one is what an operator has.
        for old in generations[:-1]:
            self.unlink_file(journal_name(old))
        broker.reset_totals()  # totals count what happens from this start
        self._newest_put_pending = self.newest_put_written = broker.ids.last
        # From here on the broker reports to this journal. Deadlines that passed
        # while the server was down end now, as they would have, and what that
        # changes (dead-lettering, expiry) is logged like any other change.
        broker.journal = self
        broker.advance(now)
        return report

    def _lock(self) -> None:
        """_lock takes the data directory for this process: an OS lock (flock) on the
        directory itself, which cannot be deleted while it holds a journal, and on its
        LOCK file, which names the holder's pid (and which an older server locks). A
        lock on the LOCK file alone let a second server start once someone deleted the
        file, and answered puts were lost (an operator's review)."""
        directory_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        fd = -1
        try:
            # The directory first: a refused server must not make a LOCK file that a
            # running one's was deleted from, nor empty one.
            fcntl.flock(directory_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException as exc:
            for opened in (fd, directory_fd):
                if opened >= 0:
                    os.close(opened)
            if isinstance(exc, BlockingIOError):
                raise DataDirLocked(f"data directory {self.directory} is in use by another "
                                    f"wonderq-server{self._holder()} (it holds the "
                                    "directory's lock)") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd, self._directory_lock_fd = fd, directory_fd

    def _holder(self) -> str:
        """_holder: ", pid N" from the LOCK file, which its holder wrote, if it can be read."""
        try:
            pid = (self.directory / "LOCK").read_text().strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f", pid {pid}" if pid.isdigit() else ""

    def _keep_damaged(self, size: int) -> None:
        """_keep_damaged keeps the journal a repair read past damage in as
        journal.N.damaged, durably, before anything else happens to it: the compaction
        that follows deletes journal.N, and what --repair gave up on must stay there to be
        looked at, or recovered better (an operator's review). A copy of its `size` bytes
        as they are: the live file's tail may be cut next (what reads as a torn tail may be
        the last record, damaged) and its header marked (a reviewer). `size` stops before
        the reserved zeros after the last record, torn or not (kept_tail_end): they hold
        nothing, and with --journal-reserve they were most of the copy (about 3.7 s per
        GiB, a reviewer). Written under .tmp and renamed, so a copy cut short by a crash
        is removed at the next start, never taken for one. Where it cannot be written (a
        full disk, where journals get damaged) it is a hard link, which needs no space and
        loses at most that tail."""
        name = journal_name(self.generation)
        kept, partial = name + ".damaged", name + ".damaged.tmp"
        if os.path.lexists(self.directory / kept):  # whole: only a rename makes one
            logger.warning("%s is kept from an earlier --repair start; delete it once it is "
                           "not needed", self.directory / kept)
            return
        how = "a copy of"
        try:
            try:
                self._copy_file(name, partial, size)
                self.rename_file(partial, kept)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    self.unlink_file(partial)
                os.link(name, kept, src_dir_fd=self._directory_lock_fd,
                        dst_dir_fd=self._directory_lock_fd)
                how = f"(a copy failed: {exc.strerror or exc}) a link to"
            self._fsync_directory()
        except OSError as exc:
            logger.warning("could not keep the damaged journal as %s: %s",
                           self.directory / kept, exc)
            return
        logger.warning("kept %s the journal --repair read past damage in as %s; delete it "
                       "once it is not needed", how, self.directory / kept)

    def _copy_file(self, name: str, target_name: str, size: int) -> None:
        source = self.open_file(name, os.O_RDONLY)
        try:
            target = self.open_file(target_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                _copy(source, target, size)
            finally:
                os.close(target)
        finally:
            os.close(source)

    def _replay(self, broker: Broker, now: float) -> RecoveryReport:
        path = journal_path(self.directory, self.generation)
        started = time.perf_counter()
        try:
            data = _map_whole_file(self.open_file(journal_name(self.generation), os.O_RDONLY))
        except OSError as exc:
            if isinstance(exc.filename, str):
                raise
            # Opened by descriptor (open_file): the error named a number (a reviewer's
            # journal that was a directory: "Is a directory: 8"); it names the file now.
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        try:
            return self._replay_data(broker, now, path, data, started)
        finally:
            if isinstance(data, mmap.mmap):
                with contextlib.suppress(BufferError):  # a view still held: GC unmaps it
                    data.close()

    def _replay_data(self, broker: Broker, now: float, path: Path, data: bytes | mmap.mmap,
                     started: float) -> RecoveryReport:
        result = ReadResult()
        # Replay makes millions of long-lived objects: the cyclic GC would scan
        # them again and again for nothing. Pause it, then freeze what we built
        # so later collections skip it (reference counting still frees messages).
        gc.disable()
        records = read_records(data, result, self.repair)
        try:
            replay_records(broker, records, now)
        except JournalCorrupt as exc:
            raise JournalCorrupt(exc.offset, f"{path}: {exc.reason}" + (
                " (start with --repair to skip damaged records and lose them)"
                if exc.repairable else " (--repair cannot help: it skips records, and the "
                "file is not one it can read records from)"), exc.repairable) from None
        except Exception as exc:
            # Replay does not check each record's fields (a start replays millions), so
            # a record that passed its checksum yet does not fit its kind (written so by
            # a bug or by hand) fails here, maybe while a later record is applied (runs
            # of PUTs go together). Only now is the file checked record by record, to
            # name the one to blame. --repair cannot skip it: the start stops.
            records.close()
            misfit = first_misfit(data, self.repair, result.records)
            if misfit is not None:
                raise JournalCorrupt(misfit[0], (
                    f"{path}: a record passed its checksum but does not fit its kind "
                    f"({misfit[1]}); --repair does not skip such records: move the journal "
                    "aside, cut it before this offset and start again")) from None
            logger.exception("replaying %s failed at a record that fits its kind", path)
            raise JournalCorrupt(result.last_record_at, (
                f"{path}: replay failed at or before this offset although every record "
                f"fits its kind ({type(exc).__name__}: {exc}); this looks like a bug in the "
                "server: keep the journal and report it")) from None
        finally:
            gc.enable()
        gc.freeze()
        broker.settle_runs()  # PUTs out of id order: into the runs all the same
        broker.forget_emptied_queues()
        if result.torn_tail_bytes:
            logger.warning("%s: cut off a torn record of %d bytes at offset %d (a write that "
                           "a crash interrupted; it was never answered as stored%s)",
                           path, result.torn_tail_bytes, result.good_end,
                           ", or damage in the last write no SYNCED record proves was on "
                           "disk" if result.synced_seen else "")
        if result.zero_tail_bytes:
            logger.info("%s: %d bytes of reserved space after the last record, at offset %d "
                        "(the server stopped without closing the journal)",
                        path, result.zero_tail_bytes, result.good_end)
        for offset, reason in result.skipped:
            logger.error("%s: skipped damaged record at offset %d (%s); its change is lost",
                         path, offset, reason)
        if result.skipped:
            # One damaged stretch may hold many records (a page of zeros, say): the count
            # of lines above is not the count of changes lost, and an operator must know.
            logger.error("%s: --repair skipped %d bytes in %d damaged stretch(es); every "
                         "change recorded in them is lost (a put lost: a message missing; an "
                         "ack lost: a message delivered again); %d records were replayed",
                         path, result.skipped_bytes, len(result.skipped), result.records)
        # A repaired journal still holds its damaged records: rewrite it soon, so the
        # next start does not need --repair again.
        # A file read by its SYNCED records (journal_format.py) keeps being written with
        # them, reserved space or not: data after the last one would otherwise read as a
        # torn tail, damaged or not. Without fsyncs (`never`) there are none to write
        # (so none are, not even at close), and such a file is rewritten without them
        # soon (a compaction's file has none); until then damage in what this run writes
        # reads as a torn tail.
        self.synced_records = ((result.synced_seen and self.fsync_policy != "never")
                               or self.reserve_bytes > 0)
        self.compact_requested = bool(result.skipped) or (
            result.synced_seen and self.fsync_policy == "never")
        file_size, file_header = len(data), bytes(data[:len(FILE_HEADER)])
        kept_end = kept_tail_end(data, result) if result.skipped else file_size
        if isinstance(data, mmap.mmap):
            data.close()  # before the file is cut: a mapped page past its end is SIGBUS
        if result.skipped:
            # Before its tail is cut or its header marked; without the reserved zeros.
            self._keep_damaged(kept_end)
        self.fd = self.open_file(journal_name(self.generation), os.O_WRONLY)
        if result.good_end < file_size:
            os.ftruncate(self.fd, result.good_end)
            os.fsync(self.fd)
        elif self.synced_records:
            # What a crashed process left may still be only in the page cache: the first
            # SYNCED record (continue_at) must not say it is on disk before it is.
            os.fsync(self.fd)
        if file_header != FILE_HEADER:
            # An older version's file: this server may append records it cannot read
            # (PUTS), so it must say so before the first append. 8 bytes in place;
            # either header, if a crash interrupts, is one this server reads.
            os.pwrite(self.fd, FILE_HEADER, 0)
            os.fsync(self.fd)
        os.lseek(self.fd, result.good_end, os.SEEK_SET)
        self.records = result.records
        self.continue_at(result.good_end, result.synced_nonce)
        messages = sum(len(q.messages) for q in broker.queues.values())
        self.live_bytes = live_estimate(broker)
        return RecoveryReport(str(path), result.records, messages, len(broker.queues),
                              time.perf_counter() - started, file_size,
                              result.torn_tail_bytes, result.skipped)

    # ------------------------------------------------------- ChangeLog (broker)

    def put(self, msg: Message) -> None:
        self._append(put_record(msg))
        self.durable_pending = True
        self._newest_put_pending = msg.id
        self.live_bytes += len(msg.body) + PUT_RECORD_OVERHEAD

    def put_plain(self, q: Queue, message_id: int, body: bytes) -> None:
        """put_plain: the PUT of a plain message (message.py), which has no Message; it
        joins the put run (see the rules)."""
        self._make_room_in_run(q, 1)
        self._run_ids.append(message_id)
        self._run_bodies.append(body)
        self.durable_pending = True
        self._newest_put_pending = message_id
        self.live_bytes += len(body) + PUT_RECORD_OVERHEAD

    def put_plain_batch(self, q: Queue, ids: Sequence[int], bodies: Sequence[bytes]) -> None:
        """put_plain_batch: the PUTs of a batch of plain messages; they join the put run
        (see the rules)."""
        self._make_room_in_run(q, len(ids))
        self._run_ids += ids
        self._run_bodies += bodies
        self.durable_pending = True
        self._newest_put_pending = ids[-1]  # fresh ids, rising (broker._store_plain_batch)
        self.live_bytes += sum(map(len, bodies)) + len(ids) * PUT_RECORD_OVERHEAD

    def state(self, msg: Message) -> None:
        self._append(state_record(msg))
        if msg.state != LEASED:  # a nack; leases and touches never make anyone wait
            self.durable_pending = True

    def lease_ended(self, msg: Message) -> None:
        """lease_ended: a lease ran out and the message is ready again. Nobody waits for it."""
        self._append(state_record(msg))

    def ack(self, msg: Message) -> None:
        self._append([ACK, msg.queue.name, msg.id])
        self.durable_pending = True
        self.live_bytes = max(0, self.live_bytes - len(msg.body) - PUT_RECORD_OVERHEAD)

    def move(self, msg: Message, from_queue: str) -> None:
        """move: the whole moved message, so replay can make it without its PUT."""
        options: dict[str, Any] = {}
        if msg.priority:
            options["priority"] = msg.priority
        if msg.headers:
            options["headers"] = msg.headers
        if msg.kept_lease is not None:  # for a late ack (broker.py)
            options["dead_letter_lease"] = msg.kept_lease
        self._append([MOVE, from_queue, msg.id, msg.queue.name, msg.deliveries,
                      list(msg.origin) if msg.origin else None, msg.expires_at,
                      msg.body, msg.enqueued_at, options])
        self.durable_pending = True
        self._moves_pending += 1

    def queue_settings(self, q: Queue) -> None:
        self._append([QUEUE, q.name, q.settings.as_dict()])
        self.durable_pending = True

    def purge(self, q: Queue) -> None:
        self._append([PURGE, q.name])
        self.durable_pending = True
        self._forget_live(q)

    def delete_queue(self, q: Queue) -> None:
        self._append([DROP, q.name])
        self.durable_pending = True
        self._forget_live(q)

    def _append(self, payload: list[Any]) -> None:
        """_append buffers any record but a plain put, after the put run (see the rules)."""
        if self._run_ids:
            self._end_put_run()
        self._pending.append(encode_record(payload))

    def _make_room_in_run(self, q: Queue, count: int) -> None:
        """_make_room_in_run: `count` plain puts to `q` are about to join the put run; it
        is ended first if it is another queue's, or would pass PUT_RUN_MAX_MESSAGES (a
        batch longer than that goes alone)."""
        if q is not self._run_queue \
                or len(self._run_ids) + count > max(PUT_RUN_MAX_MESSAGES, count):
            if self._run_ids:
                self._end_put_run()
            self._run_queue = q

    def _end_put_run(self) -> None:
        """_end_put_run encodes the put run as one record (see the rules); the caller
        checks that it is not empty."""
        q, ids, bodies = self._run_queue, self._run_ids, self._run_bodies
        assert q is not None
        if len(ids) == 1:
            self._pending.append(encode_record(plain_put_record(q.name, ids[0], bodies[0])))
        else:
            self._pending.append(encode_record(plain_puts_record(q.name, ids, bodies)))
        self._run_queue = None
        self._run_ids = []
        self._run_bodies = []

    def _forget_live(self, q: Queue) -> None:
        self.live_bytes = max(0, self.live_bytes - q.body_bytes
                              - len(q.messages) * PUT_RECORD_OVERHEAD)

    def sequence(self, last_id: int) -> bytes:
        return encode_record([SEQ, last_id])

    # ---------------------------------------------------------------- writing

    @property
    def has_pending(self) -> bool:
        return bool(self._pending or self._run_ids)

    def write_pending(self) -> bool:
        """write_pending writes the buffered records in one write; returns whether any
        of them was durable (a PUT, ACK or nack).

        On failure the file is cut back to where it was and JournalError is
        raised; the buffered records stay pending for a later write (the rules;
        the server answers their requests with STORAGE_ERROR). JournalBroken if
        the cut fails too, or past MAX_RETAINED_BYTES of them.
        """
        if self._run_ids:
            self._end_put_run()
        if not self._pending:
            return False
        count = len(self._pending)
        data = b"".join(self._pending) if count > 1 else self._pending[0]
        try:
            if self.synced_records and not self._marked:
                self._mark()
            live, synced_to = data, self._synced_to
            if self.synced_records and synced_to > self._announced:
                live = encode_record([SYNCED, synced_to, self._nonce]) + data  # the rules
            if self.reserve_bytes and self.size + len(live) > self.file_end:
                self._reserve(self.size + len(live))
            try:
                self.write_all(self.fd, live)
            except OSError as exc:
                self._cut_back()
                raise JournalError(f"writing the journal failed: {exc.strerror or exc}") \
                    from exc
        except JournalError:
            self._retain_failed(data)
            raise
        self._pending.clear()
        self.kept_from_failure = False
        durable, self.durable_pending = self.durable_pending, False
        moves, self._moves_pending = self._moves_pending, 0
        self.records += count + (live is not data)
        self._announced, self._unproven = synced_to, True
        self.size += len(live)
        if self.size > self.file_end:  # appended past the zeros, or with none reserved
            self.file_end = self.size
        self.newest_put_written = self._newest_put_pending
        self.moves_written += moves
        if self.compaction_fd >= 0:
            try:
                self.write_all(self.compaction_fd, data)
                self.compaction_records += count
            except OSError as exc:  # the live journal is fine; the compaction gives up
                self.compaction_fd = -1
                self.compaction_error = str(exc)
        return durable

    def _retain_failed(self, data: bytes) -> None:
        """_retain_failed: a write of `data` (the pending records, joined) failed and was
        cut back; they stay pending for a later write (the rules), unless they are over
        MAX_RETAINED_BYTES: then the journal is broken."""
        self.kept_from_failure = True
        if len(data) > MAX_RETAINED_BYTES:
            raise JournalBroken(
                f"journal writes have failed for too long: {len(data)} bytes of changes "
                f"wait to be written, over {MAX_RETAINED_BYTES}; stopping rather than let "
                "memory run further ahead of the disk (a restart replays the journal as "
                "it was before the failures)")

    def write_all(self, fd: int, data: bytes) -> None:
        """write_all writes all of `data` to `fd` with the journal's write function (the
        live file, and compaction.py's new one: a test's injected disk faults reach both)."""
        view = memoryview(data)
        while view:
            written = self._write(fd, view)
            view = view[written:]

    def continue_at(self, size: int, nonce: bytes | None = None) -> None:
        """continue_at: the live file (new, replayed, or a compaction's) ends at `size`, all
        of it on disk (its maker fsynced it), and the records go on from there, with no
        space reserved yet. SYNCED records carry `nonce`, the one the file's have (a new
        one for a file that has none)."""
        self.size = self.file_end = size
        self._reserve_again_at = 0
        self._synced_to, self._announced = size, 0
        self._unproven = False  # no byte written since a SYNCED record (or the start)
        self._nonce = nonce or os.urandom(SYNCED_NONCE_BYTES)
        self._marked = False  # this run's first SYNCED record, synced on its own, not yet

    def _mark(self) -> None:
        """_mark appends this run's first SYNCED record and syncs it, before anything is
        written into reserved space: so the file is read by its SYNCED records (with its
        nonce) even if a power cut loses the first page of the first write after it."""
        try:
            self._append_synced(self.size)
        except OSError as exc:
            self._cut_back()
            raise JournalError(f"writing the journal failed: {exc.strerror or exc}") from exc
        self._marked = True

    def _append_synced(self, offset: int) -> None:
        """_append_synced writes a SYNCED record naming `offset` on its own and syncs it
        (`_mark`, and close()'s last one). OSError if the write fails."""
        record = encode_record([SYNCED, offset, self._nonce])
        self.write_all(self.fd, record)
        self.size, self.records = self.size + len(record), self.records + 1
        self.file_end = max(self.file_end, self.size)
        self.sync()
        self._announced, self._unproven = self._synced_to, False

    def _reserve(self, needed: int) -> None:
        """_reserve writes zeros from the file's end to `reserve_bytes` past `needed` (see
        the rules); on failure it logs, and appends go on without until `needed` has
        grown by a chunk."""
        if needed < self._reserve_again_at:
            return
        start = self.file_end
        zeros = memoryview(bytes(needed + self.reserve_bytes - start))
        try:
            while zeros:
                written = self._pwrite(self.fd, zeros, start)
                if written <= 0:
                    raise OSError(errno.ENOSPC, "the disk took no more zeros")
                zeros, start = zeros[written:], start + written
        except OSError as exc:
            self._reserve_again_at = needed + self.reserve_bytes
            logger.warning("could not reserve %d bytes of journal space (%s); appending "
                           "without", self.reserve_bytes, exc.strerror or exc)
        self.file_end = start  # whatever the zeros reached: the cut-back or close cuts it

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self.fd, self.size)
            os.lseek(self.fd, self.size, os.SEEK_SET)
            self.file_end = self.size
        except OSError as exc:
            raise JournalBroken(f"the journal could not be cut back after a failed write "
                                f"({exc}); it can no longer be trusted") from exc

    def sync(self) -> None:
        """sync makes everything written so far durable (fsync). Under `always` it runs on
        the event loop, under `everysec` in a worker thread (group_commit.py).

        An fsync failure means the kernel may have dropped written pages: the
        log can no longer be trusted, and JournalBroken says so.
        """
        started = time.perf_counter()
        covered = self.size  # written before the fsync starts, so on disk once it returns
        try:
            self._fsync(self.fd)
        except OSError as exc:
            raise JournalBroken(f"fsync of the journal failed ({exc}); written records may "
                                "not be on disk") from exc
        self._synced_to = covered
        elapsed = time.perf_counter() - started
        self.fsync_seconds += elapsed
        self.fsync_count += 1
        if self.fsync_observer is not None:
            self.fsync_observer(elapsed)

    def _fsync_directory(self) -> None:
        os.fsync(self._directory_lock_fd)

    def check_still_in_place(self) -> str:
        """check_still_in_place looks at the live journal and the data directory (the
        server asks once a second). Raises JournalBroken if the journal was deleted (its
        directory removed): the server would answer puts and acks as stored while
        nothing reached a file a restart could read. Returns a warning, else "", when the
        path no longer leads to the directory this server locked (it was moved or
        replaced): the journal goes on where the directory now is."""
        if self.fd < 0:
            return ""
        if os.fstat(self.fd).st_nlink == 0:
            raise JournalBroken(f"the live journal in {self.directory} was deleted (was the "
                                "data directory removed?): nothing written from now on would "
                                "survive a restart")
        locked = os.fstat(self._directory_lock_fd)
        try:
            at_path = os.stat(self.directory)
        except OSError:
            at_path = None
        if at_path is None or (at_path.st_dev, at_path.st_ino) != (locked.st_dev,
                                                                    locked.st_ino):
            try:  # where it is now (Linux)
                now_at = f", now {os.readlink(f'/proc/self/fd/{self._directory_lock_fd}')}"
            except OSError:
                now_at = ""
            return (f"{self.directory} is no longer the directory this server locked (it was "
                    f"moved or replaced); the journal goes on in the moved directory{now_at}, "
                    "which is what a restart must be given")
        return ""

    # The data directory's files, by name, relative to the directory this server locked
    # (see the rules): never by path once the lock is held.

    def open_file(self, name: str, flags: int) -> int:
        return os.open(name, flags, 0o644, dir_fd=self._directory_lock_fd)

    def rename_file(self, source: str, target: str) -> None:
        os.rename(source, target, src_dir_fd=self._directory_lock_fd,
                  dst_dir_fd=self._directory_lock_fd)

    def unlink_file(self, name: str) -> None:
        os.unlink(name, dir_fd=self._directory_lock_fd)

    def close(self) -> None:
        """close writes and fsyncs what is buffered, then releases the directory."""
        broken: JournalBroken | None = None
        if self.fd >= 0:
            try:
                self.write_pending()
            except JournalError as exc:  # still failing: what it kept is lost with the stop
                self.lost_at_close = sum(map(len, self._pending))
                logger.error("%s: the changes kept from failed writes (%d bytes of records) "
                             "were only in memory and are lost with this stop", exc,
                             self.lost_at_close)
                self._pending.clear()
                broken = exc if isinstance(exc, JournalBroken) else None
            if self.fsync_policy != "never":
                self.sync()
            if self.synced_records and self._unproven:
                # A last SYNCED record, on disk too, so damage in the last writes reads as
                # damage at the next start, not as a torn tail (journal_format.py).
                try:
                    self._append_synced(self._synced_to)
                except OSError as exc:  # disk full: the records are synced; only the proof
                    logger.warning("could not write the journal's last SYNCED record (%s)",
                                   exc.strerror or exc)
                    with contextlib.suppress(OSError):
                        os.ftruncate(self.fd, self.size)
            if self.file_end > self.size:
                # The reserved zeros go; were the cut lost in a crash, replay reads them
                # as the end all the same, so it needs no fsync of its own.
                try:
                    os.ftruncate(self.fd, self.size)
                except OSError as exc:
                    logger.warning("could not cut the journal's reserved space off (%s)", exc)
            os.close(self.fd)
            self.fd = -1
        self._unlock()
        if broken is not None:
            raise broken  # released all the same; the server exits 1 (see there)

    def _unlock(self) -> None:
        """_unlock lets go of the data directory, as the end of the process would."""
        for fd in (self._lock_fd, self._directory_lock_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._directory_lock_fd = -1

    def stats(self, broker: Broker) -> dict[str, Any]:
        live_records = sum(len(q.messages) + q.leased_count + q.delayed_count
                           for q in broker.queues.values())
        return {
            "fsync_policy": self.fsync_policy,
            "journal_bytes": self.size,
            "journal_records": self.records,
            "journal_live_records": live_records,
            "journal_live_bytes_estimate": self.live_bytes,
            "fsync_count": self.fsync_count,
            "fsync_avg_ms": round(1000 * self.fsync_seconds / self.fsync_count, 3)
            if self.fsync_count else 0.0,
            "last_compaction_at": self.last_compaction_at or 0.0,
        }


def live_estimate(broker: Broker) -> int:
    """live_estimate is `live_bytes` rebuilt from the broker (at a start and after a
    compaction): each message counted as its put added it and its ack takes it back
    (PUT_RECORD_OVERHEAD). Not the compacted file's size: an ack must take back what
    was added, or `live_bytes` drifts and compaction comes early or late."""
    return sum(q.body_bytes + len(q.messages) * PUT_RECORD_OVERHEAD
               for q in broker.queues.values())


class CompactionFailed(JournalError):
    """Writing the next journal failed; the compaction is abandoned, the live journal is fine."""


def _map_whole_file(fd: int) -> bytes | mmap.mmap:
    """_map_whole_file maps the journal for replay, read-only, rather than read it: a
    read copies the whole file into the process (a 206 MB journal took the start to
    260 MiB resident against 61 running, and a restart inside a container's memory
    limit was OOM-killed), while mapped pages are the page cache's, which the kernel
    drops under pressure; MADV_SEQUENTIAL lets it drop them behind the reader. An
    empty file cannot be mapped: it is b"". Takes (and closes) an open descriptor."""
    with open(fd, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_SEQUENTIAL"):
        data.madvise(mmap.MADV_SEQUENTIAL)
    return data


def replay_records(broker: Broker, records: Any, now: float) -> None:
    """replay_records applies journal records to a broker, in order.

    Consecutive PUT and PUTS records to one queue go to `restore_puts` a run
    at a time (a start replays one for every message waiting, millions, and
    a live server's put runs are often a few messages each): the run is
    applied before any other record, so the order holds. A PUTS record
    whose lists differ in length is not joined but replayed alone, so that
    `restore_puts` refuses it as before.
    """
    restore_put = broker.restore_put
    restore_state = broker.restore_state
    restore_ack = broker.restore_ack
    run_queue = ""
    run_ids: list[int] = []
    run_bodies: list[bytes] = []
    for record in records:
        kind = record[0]
        if kind == PUT or (kind == PUTS and len(record[2]) == len(record[3])):
            if record[1] != run_queue:
                if run_ids:
                    broker.restore_puts(run_queue, run_ids, run_bodies)
                    run_ids, run_bodies = [], []
                run_queue = record[1]
            if kind == PUT:
                run_ids.append(record[2])
                run_bodies.append(record[3])
            else:
                run_ids += record[2]
                run_bodies += record[3]
            continue
        if run_ids:
            broker.restore_puts(run_queue, run_ids, run_bodies)
            run_ids, run_bodies = [], []
        if kind == PUTS:
            broker.restore_puts(record[1], record[2], record[3])
        elif kind == STATE:
            queue, message_id, state, deadline_at, deliveries, lease = record[1:7]
            if state not in (LEASED, DELAYED):
                state = 0
            kept = record[7] if len(record) > 7 else None  # version 4: after a nack
            restore_state(queue, message_id, state, deadline_at, deliveries, lease, now, kept)
        elif kind == ACK:
            restore_ack(record[1], record[2])
        elif kind == SEQ:
            broker.ids.observe(record[1])
        elif kind == PUTX:
            restore_put(record[1], record[2], record[3], record[5])
        elif kind == MOVE:  # record[8], enqueued_at, is the time in the id
            if len(record) == 7:  # version 1 before a2807bf: no body, options or enqueued_at
                broker.restore_move(*record[1:7], None, None)
            else:
                broker.restore_move(*record[1:8], record[9])
        elif kind == QUEUE:
            broker.restore_queue_settings(record[1], record[2])
        elif kind == PURGE:
            broker.restore_purge(record[1])
        elif kind == DROP:
            broker.restore_delete_queue(record[1])
    if run_ids:
        broker.restore_puts(run_queue, run_ids, run_bodies)


def state_record(msg: Message, deadline_at: float | None = None) -> list[Any]:
    """state_record is a message's STATE: its state, deadline (`deadline_at` when given:
    Broker.own_deadline), deliveries and lease, and the lease kept aside for a late ack
    when it has no lease of its own (after a nack)."""
    record = [STATE, msg.queue.name, msg.id, msg.state, deadline_at or msg.deadline_at or 0.0,
              msg.deliveries, msg.lease]
    if msg.lease is None and msg.kept_lease is not None:
        record.append(msg.kept_lease)
    return record


def put_record(msg: Message) -> list[Any]:
    """put_record is a message's PUT, or PUTX when it has options (journal_format.py)."""
    options: dict[str, Any] = {}
    if msg.priority:
        options["priority"] = msg.priority
    if msg.headers:
        options["headers"] = msg.headers
    if msg.expiry is not None:
        options["expires_at"] = msg.expiry.expires_at
    if msg.origin is not None:
        options["origin"] = list(msg.origin)
    if msg.lease is None and msg.kept_lease is not None:  # else an older one, unused
        options["dead_letter_lease"] = msg.kept_lease
    if msg.state == DELAYED and msg.deliveries == 0:
        options["delayed_until"] = msg.deadline_at
    if not options:
        return [PUT, msg.queue.name, msg.id, msg.body, msg.enqueued_at]
    return [PUTX, msg.queue.name, msg.id, msg.body, msg.enqueued_at, options]


def plain_put_record(queue: str, message_id: int, body: bytes) -> list[Any]:
    """plain_put_record is a plain message's PUT (message.py)."""
    return [PUT, queue, message_id, body, id_time(message_id)]


def plain_puts_record(queue: str, ids: Sequence[int], bodies: Sequence[bytes]) -> list[Any]:
    """plain_puts_record is the PUTS of plain messages of one queue, in this order."""
    return [PUTS, queue, list(ids), list(bodies)]
