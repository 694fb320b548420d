"""The journal's file format: records with a length and a checksum, sans-I/O.

Design decision: a journal file is a 8-byte header followed by records. Each
record is framed on its own, so a reader can tell a record cut short by a
crash (a torn tail) from damage in the middle of the file:

    file    = b"WQJRNL" + version (1 byte) + b"\\n", then records
    record  = length (u32, big-endian) + crc32 of the payload (u32) + payload
    payload = one msgpack array [kind, ...]

Kinds (each record states a message's whole new state, so replaying a record
twice, or replaying a record older than a snapshot of the same message, ends
in the same state as replaying it once):

    PUT    [1, queue, id, body, enqueued_at]     stored, ready, never delivered
    STATE  [2, queue, id, state, deadline_at, deliveries, lease(, kept_lease)]
                                                 leased (state 1) or delayed (2)
                                                 until deadline_at, or ready (0);
                                                 kept_lease (version 4), when lease
                                                 is nil: a lease kept aside, which
                                                 can still ack it (a nack's, or, in
                                                 a snapshot, a dead-letter move's)
    ACK    [3, queue, id]                        deleted
    SEQ    [4, last_id]                          ids so far, so none is reused
                                                 even if every message is acked
    PUTX   [5, queue, id, body, enqueued_at, {options}]
                                                 a PUT with options, each only when
                                                 not default: priority, headers,
                                                 expires_at, origin [queue, moved_at],
                                                 dead_letter_lease (the lease kept
                                                 for a late ack), delayed_until
    MOVE   [6, from_queue, id, to_queue, deliveries, origin or nil, expires_at or nil,
            body, enqueued_at, {options}]
                                                 dead-lettered (origin given) or
                                                 redriven (nil); ready in to_queue.
                                                 The whole message (options as in
                                                 PUTX: priority, headers,
                                                 dead_letter_lease), so a MOVE
                                                 whose message is not in from_queue
                                                 makes it in to_queue
    QUEUE  [7, queue, {settings}]                an explicit queue's whole settings
    PURGE  [8, queue]                            every message of the queue deleted
    DROP   [9, queue]                            the queue and its messages deleted
    PUTS   [10, queue, [id, ...], [body, ...]]   plain messages (no options) stored,
                                                 ready, never delivered: one PUT per
                                                 (id, body) pair, in that order
    SYNCED [11, offset, nonce]                   every byte of this file before
                                                 `offset` was on disk (an fsync had
                                                 returned) before this record was
                                                 written; `nonce`, 8 random bytes, the
                                                 same in every SYNCED record of a file;
                                                 changes nothing in the broker

A put_many of bare bodies is one PUTS record, not a PUT per body; so are
the plain puts to one queue that one journal write carries (journal.py's
put runs: single puts pipelined, or from several producers), and
compaction writes a queue's runs of plain messages as PUTS records too: a
start replays one record (one checksum, one decode) per batch rather than
per message. A batch's record is whole or, as a torn tail, absent, and the
batch was answered only once it was written, so it is all or nothing.

A move is one record, not an ACK and a PUT, so no crash can leave a message
in neither queue (or in both). It holds the whole message because a
compacted journal may have no PUT of it before the MOVE (compaction.py
writes its snapshot by (queue, id) and passes over a message that moved
away before its turn).

enqueued_at (PUT, PUTX, MOVE) is the time in the message's id, to the
millisecond (ids.py), and replay takes it from the id rather than from this
field (which servers before issue 6 filled with the exact time of the put).

Example: a put of b"hi" to queue "q" with id 7 at time 1.5 is the payload
msgpack([1, "q", 7, b"hi", 1.5]) = 95 01 a1 71 07 c4 02 68 69 cb 3f f8 00 00 00 00 00 00
(18 bytes), framed as 00 00 00 12, then its crc32, then those 18 bytes.

Rules:
* Zeros from the end of a record to the end of the file are the journal's
  reserved space (journal.py): the records end there, as at the end of the
  file (`zero_tail_bytes`; a length of 0 frames no record, since every
  payload is a non-empty array). A write a crash cut off before any of it
  reached the disk may read as such zeros too, and it was never answered.
* A file with SYNCED records (journal.py writes them with reserved space,
  and goes on once a file has them) is read by them, because there the rules
  below cannot tell a torn write from damage: a write into zeros that a
  crash cut short does not run past the end of the file, and a power cut may
  keep any of an unsynced write's pages and lose others (nothing orders
  them, as the file's growing size orders appends). So once a SYNCED record
  has been read, a record that fails is damage only when a valid SYNCED
  record after it names an offset past it (what it was written after was on
  disk); otherwise it is in what no fsync covered: a torn tail, whatever
  follows it. A SYNCED record's own write begins after the fsync it names
  returned, so the one in an unsynced write never names an offset inside
  that write, nor one past itself. A message body may hold bytes that form a
  SYNCED record, so the proof must carry the nonce of the file's first
  SYNCED record (which the journal writes and syncs before it writes
  anything into reserved space), which no client sees. Damage inside the
  last write an fsync covered reads as torn, as the file's last record does
  without SYNCED records. But a record framed whole (a length over 0 that
  fits, its checksum right) is no crash's work, whether an fsync covered it
  or not: one that fails is damage or a newer server's kind, and the start
  stops naming it, as without SYNCED records. Read as torn, it was cut off
  with every record after it: a rollback from a newer server that added a
  kind lost what that server had answered (a reviewer).
* A record that runs past the end of the data, or whose checksum fails and
  which is the last thing in the file, is a torn tail: the writer crashed in
  the middle of it. It is cut off and nothing after it exists.
* A record whose checksum fails with more data after it is damage: the reader
  stops and names the offset, unless asked to skip damaged records (repair),
  in which case it skips that record by its length and counts it. Bytes
  inside a damaged record are never read as records when its length holds;
  when the length is broken, reading resumes only where records run from
  there to the end of the file (`_diagnose`): a body, which a client chose,
  may hold bytes that form records.
* Changing the format: add a new kind (old readers refuse unknown kinds by
  name) or bump the version byte; a reader accepts every version up to its
  own and converts on read. Never change the meaning of an existing field.

Must not know: files, sockets, clocks, the broker.
"""

from __future__ import annotations

import mmap
import re
import reprlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import msgpack

MAGIC = b"WQJRNL"
# 2: PUTS records. A version-1 reader calls a PUTS "damaged" and offers --repair, which
# would drop every message in one; the version refuses the file outright instead.
# 3: SYNCED records (and the reserved space they make safe to read, journal.py).
# 4: STATE's kept_lease. A version-3 reader would call such a STATE damaged.
VERSION = 4
FILE_HEADER = MAGIC + bytes([VERSION]) + b"\n"
RECORD_HEADER_BYTES = 8
PUT = 1
STATE = 2
ACK = 3
SEQ = 4
PUTX = 5
MOVE = 6
QUEUE = 7
PURGE = 8
DROP = 9
PUTS = 10
SYNCED = 11
SYNCED_NONCE_BYTES = 8
KINDS = {PUT: "PUT", STATE: "STATE", ACK: "ACK", SEQ: "SEQ", PUTX: "PUTX", MOVE: "MOVE",
         QUEUE: "QUEUE", PURGE: "PURGE", DROP: "DROP", PUTS: "PUTS", SYNCED: "SYNCED"}

_packer = msgpack.Packer(use_bin_type=True)
_HEADER = struct.Struct(">II")  # length, crc32
unpack_header = _HEADER.unpack_from


def encode_record(payload: list[Any]) -> bytes:
    """encode_record frames one record."""
    body = _packer.pack(payload)
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


class JournalCorrupt(Exception):
    """Damage before the tail of a journal; start-up stops unless repair was asked for.
    Not `repairable`: the file's header is not one this server reads (another file, or a
    newer server's journal), so there are no records for --repair to skip."""

    def __init__(self, offset: int, reason: str, repairable: bool = True) -> None:
        super().__init__(f"damaged record at byte offset {offset}: {reason}" if repairable
                         else reason)
        self.offset = offset
        self.reason = reason
        self.repairable = repairable


@dataclass
class ReadResult:
    """What reading a journal found, besides the records themselves."""

    good_end: int = 0  # offset just past the last good record: where appends continue
    last_record_at: int = field(default=0, compare=False)  # the last record handed out
    records: int = 0
    torn_tail_bytes: int = 0  # bytes cut off at the end
    zero_tail_bytes: int = 0  # zeros after the last record: reserved space (journal.py)
    synced_seen: bool = field(default=False, compare=False)  # read by SYNCED records
    synced_nonce: bytes = field(default=b"", compare=False)  # their nonce (see the rules)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (offset, reason), repair only
    skipped_bytes: int = field(default=0, compare=False)  # what those skips passed over


def check_header(data: bytes | memoryview | mmap.mmap) -> None:
    """check_header raises JournalCorrupt unless `data` starts with a journal header we read."""
    head = bytes(data[:len(FILE_HEADER)])
    if len(head) < len(FILE_HEADER) or head[:len(MAGIC)] != MAGIC or head[-1:] != b"\n":
        # A server never leaves a journal without its header (it is written under .tmp
        # first): this is another file, or one damaged from its first bytes.
        raise JournalCorrupt(0, "not a WonderQ journal (its file header is not one): move it "
                             "out of the data directory to start without it, or restore the "
                             "directory from a copy", repairable=False)
    if head[len(MAGIC)] > VERSION:
        # A rollback: README, "Journal format versions" (a reviewer was sent to --repair).
        raise JournalCorrupt(0, f"journal format version {head[len(MAGIC)]} is newer than "
                             f"this server's ({VERSION}): a newer WonderQ wrote it; run that "
                             "version, or start this one on a fresh data directory",
                             repairable=False)


def _decode(body: bytes | memoryview) -> tuple[list[Any] | None, str | None]:
    """_decode unpacks one record's payload; returns (payload, None) or (None, problem)."""
    try:
        payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        return None, f"undecodable payload ({type(exc).__name__}: {exc})"
    if not _known(payload):
        return None, f"unknown record {str(payload)[:40]}"
    return payload, None


def _known(payload: Any) -> bool:
    """_known: a payload is a non-empty array whose first item names a kind."""
    return (type(payload) is list and bool(payload) and type(payload[0]) is int
            and payload[0] in KINDS)


# A payload is an msgpack array of 2 to 10 items (a fixarray) whose first item is a
# kind: the two bytes a record's payload must start with. The scan for the next
# record checks them before it computes a checksum (see `_next_valid`).
_PAYLOAD_STARTS = frozenset(range(0x92, 0xa0))
_PAYLOAD_START_BYTE = re.compile(rb"[\x92-\x9f]")  # the same bytes, for a fast scan


def _starts_payload(view: memoryview, start: int, end: int) -> bool:
    """_starts_payload: the two bytes at `start` are how a record's payload begins."""
    return end - start >= 2 and view[start] in _PAYLOAD_STARTS and view[start + 1] in KINDS


def _valid_at(view: memoryview, offset: int, end: int,
              budget: _ScanBudget | None = None) -> int | None:
    """_valid_at is the end of the whole, valid record at `offset`, or None. With a
    `budget`, the checksum it would compute is paid from it first (none when spent)."""
    start = offset + RECORD_HEADER_BYTES
    if not _starts_payload(view, start, end):
        return None
    size, checksum = unpack_header(view, offset)
    stop = start + size
    if size < 2 or stop > end:
        return None
    if budget is not None:
        budget.left -= size
        if budget.left < 0:
            return None
    body = view[start:stop]
    if zlib.crc32(body) == checksum and _decode(body)[1] is None:
        return stop
    return None


class _ScanBudget:
    """_ScanBudget is how many payload bytes one scan may checksum: a few times the
    bytes it covers. Bodies are a client's bytes and can look like record headers
    every few bytes, each claiming a long payload (a checksum of it all each time
    would be quadratic); a scan that runs out gives up (`_GAVE_UP`)."""

    __slots__ = ("left",)

    def __init__(self, start: int, end: int) -> None:
        self.left = 4 * (end - start) + (1 << 20)


_GAVE_UP = -1  # `_next_valid`: the budget ran out before a record was found


def _next_valid(view: memoryview, start: int, end: int, budget: _ScanBudget) -> int | None:
    """_next_valid is the first offset at or after `start` where a whole, valid record
    begins, None when there is none, or `_GAVE_UP`.

    The two bytes a payload starts with are checked before the checksum: at a
    random offset a length that fits in the file is common, and a checksum over
    it costs up to the file's size, which made the scan of a 64 MB journal of
    binary bodies take minutes (quadratic); the two bytes pass about one offset
    in 500. So must what its length leads to (`_could_follow`), before the
    checksum too: in random bodies a length that fits is a large one, and a
    few of those would spend the budget. Bytes a client chose can pass both
    anywhere: the budget bounds that."""
    kinds, find_start = KINDS, _PAYLOAD_START_BYTE.search
    # Only offsets whose payload's first byte is one a payload starts with are looked
    # at, found by the regex engine rather than a Python step per byte: 16 MiB of
    # zeros after a torn write took a start 3 s this way (0.18 s per MiB).
    at, last = start + RECORD_HEADER_BYTES, end - 1
    while (found := find_start(view, at, last)) is not None:
        payload = found.start()
        offset, at = payload - RECORD_HEADER_BYTES, payload + 1
        if view[payload + 1] not in kinds:  # `_starts_payload`'s second byte
            continue
        if not _could_follow(view, payload + unpack_header(view, offset)[0], end):
            continue
        if _valid_at(view, offset, end, budget) is not None:
            return offset
        if budget.left < 0:
            return _GAVE_UP
    return None


def _could_follow(view: memoryview, stop: int, end: int) -> bool:
    """_could_follow: a record that ends at `stop` could be a real one: the file ends
    there, or what comes next starts as a record does (or is too short to tell, or
    zeros: a torn tail)."""
    if stop > end:
        return False
    if end - stop < RECORD_HEADER_BYTES + 2:
        return True
    return (_starts_payload(view, stop + RECORD_HEADER_BYTES, end)
            or not any(view[stop:stop + RECORD_HEADER_BYTES + 2]))  # zeros begin there


def _frame_skips_damage(view: memoryview, stop: int, end: int) -> bool:
    """_frame_skips_damage: a damaged record whose frame ends at `stop` (inside the
    file) is followed by a valid record, so the damage is inside it: skip it by its
    length. Zeros after it are not such proof: a power cut can zero the end of the
    last write from inside its first record, and that is a torn tail."""
    return _valid_at(view, stop, end) is not None


_TORN = -1  # `_payload_end`: the data ends inside the payload


def _payload_end(view: memoryview, start: int, end: int) -> int | None:
    """_payload_end is where the record payload at `start` ends by its own msgpack
    lengths (msgpack is self-delimiting), `_TORN` when the data ends inside it, or
    None when it is not a record payload at all."""
    if not _starts_payload(view, start, end):
        return None
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=end - start)
    unpacker.feed(view[start:end])
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        return _TORN
    except Exception:
        return None
    return start + unpacker.tell()


def _broken_at(view: memoryview, offset: int, end: int, budget: _ScanBudget,
               garbage_tail: bool = True) -> int | None:
    """_broken_at is where records from `offset`, one after another, stop leading on, or
    None when they run to the end of the file, to zeros there, or to a torn tail (a
    last record cut short, or bytes with no valid record in them), passing only
    damage whose frame held. A record found by a scan inside a damaged one may be a
    message body's bytes, which a client chose: bytes that happen to form a record, or
    a planted run of them, do not also line up with the records written after them all
    the way to the end. Without
    `garbage_tail`, bytes with no valid record in them do not count as a torn tail."""
    while offset < end:
        stop = _valid_at(view, offset, end)
        if stop is None:
            if _all_zero(view, offset, end):
                return None
            if end - offset < RECORD_HEADER_BYTES:
                return None  # a header cut short: a torn tail, as in `_diagnose`
            stop = offset + RECORD_HEADER_BYTES + unpack_header(view, offset)[0]
            if stop > end and _payload_end(view, offset + RECORD_HEADER_BYTES, end) \
                    in (_TORN, end):
                return None  # a torn tail after a run of records: the run holds
            if stop < end and _frame_skips_damage(view, stop, end):
                offset = stop
                continue
            if garbage_tail and _next_valid(view, offset + 1, end, budget) is None:
                return None  # nothing valid after it: a torn tail, as `_diagnose` says
            return offset
        offset = stop
    return None


_SYNCED_PAYLOAD_START = bytes([0x93, SYNCED])  # msgpack: an array of 3, then the kind
_SYNCED_MAX_PAYLOAD = 2 + 9 + 2 + SYNCED_NONCE_BYTES  # that, a uint64, a bin8 of the nonce


def _synced_past(data: bytes | memoryview | mmap.mmap, pos: int, end: int,
                 nonce: bytes) -> int | None:
    """_synced_past is where a valid SYNCED record with the file's nonce starts, after
    `pos`, that names an offset past it and not past itself (so the record at `pos` was on
    disk before that one was written: see the rules), or None. Bytes, not records, are
    searched: the record at `pos` may hide where records start."""
    haystack = data if isinstance(data, bytes | mmap.mmap) else bytes(data)  # no copy
    view = memoryview(haystack)
    at = haystack.find(_SYNCED_PAYLOAD_START, pos + RECORD_HEADER_BYTES + 1, end)
    while at >= 0:
        frame = at - RECORD_HEADER_BYTES
        size, checksum = unpack_header(view, frame)
        stop = at + size
        if 2 <= size <= _SYNCED_MAX_PAYLOAD and stop <= end \
                and zlib.crc32(view[at:stop]) == checksum:
            payload, _ = _decode(view[at:stop])
            if payload is not None and len(payload) == 3 and type(payload[1]) is int \
                    and pos < payload[1] <= frame and payload[2] == nonce:
                return frame
        at = haystack.find(_SYNCED_PAYLOAD_START, at + 1, end)
    return None


def _intact_end(view: memoryview, pos: int, end: int,
                payload_end: int | None) -> int | None:
    """_intact_end is where the damaged record at `pos` ends when its payload, up to its own
    msgpack end, matches its checksum: the record is whole and only its length is
    damaged. The frame's end, inside the payload, could land on records planted in a
    body that run on to the end of the file (the last body of a PUTS is followed by the
    records after it): a reviewer's one flipped bit replayed the PURGE records a
    producer had put there. None otherwise."""
    size, checksum = unpack_header(view, pos)
    if payload_end is None or payload_end == _TORN or payload_end >= end \
            or payload_end == pos + RECORD_HEADER_BYTES + size:
        return None
    if zlib.crc32(view[pos + RECORD_HEADER_BYTES:payload_end]) != checksum:
        return None
    return payload_end


def _resume_before(view: memoryview, pos: int, end: int, proof: int,
                   resume: int | None) -> int:
    """_resume_before is where reading goes on after damage at `pos` that the SYNCED
    record at `proof` says was on disk: after the damaged record by its length when a
    valid record starts there, else where `_diagnose` said, but never past `proof`.
    `_diagnose`'s runs assume nothing valid follows a torn write, which reserved space
    does not keep (a lost page inside the last write); `proof` is a record boundary."""
    stop = pos + RECORD_HEADER_BYTES + unpack_header(view, pos)[0]
    intact_end = _intact_end(view, pos, end,
                             _payload_end(view, pos + RECORD_HEADER_BYTES, end))
    if intact_end is not None and intact_end <= proof:
        return intact_end  # only the length was damaged (see there)
    if pos < stop < proof and _valid_at(view, stop, end) is not None:
        return stop
    return proof if resume is None or resume > proof else resume


# A tail (zeros, or a torn write) is looked at this much at a time: copied whole, a
# mapped journal with 2 GiB of zeros at its end took a start to 4.2 GB (a review).
_SCAN_CHUNK = 1 << 20
_ZERO_CHUNK = bytes(_SCAN_CHUNK)


def _torn_tail(result: ReadResult, view: memoryview, pos: int, end: int) -> None:
    """_torn_tail records a torn tail from `pos`: the torn bytes, and apart from them the
    zeros after them (reserved space), so a report does not count megabytes of zeros."""
    torn = 0
    for stop in range(end, pos, -_SCAN_CHUNK):  # from the end: the zeros come last
        start = max(pos, stop - _SCAN_CHUNK)
        kept = view[start:stop].tobytes().rstrip(b"\0")
        if kept:
            torn = start + len(kept) - pos
            break
    result.torn_tail_bytes, result.zero_tail_bytes = torn, end - pos - torn


def kept_tail_end(data: bytes | memoryview | mmap.mmap, result: ReadResult) -> int:
    """kept_tail_end: where a file read into `result` ends once the reserved zeros after
    its records are left out (--repair's copy of it, journal.py). A torn tail's own
    zeros stay: those its length field frames, within the file, are the record's (it
    often ends in an id's low zero bytes, which a reviewer found cut from the copy),
    though the report counts only the bytes up to its last non-zero one."""
    end = len(data) - result.zero_tail_bytes
    start = result.good_end
    if result.torn_tail_bytes and len(data) - start >= RECORD_HEADER_BYTES:
        framed_end = start + RECORD_HEADER_BYTES + unpack_header(data, start)[0]
        if end < framed_end <= len(data):
            end = framed_end
    return end


def _all_zero(view: memoryview, start: int, end: int) -> bool:
    for at in range(start, end, _SCAN_CHUNK):
        stop = min(at + _SCAN_CHUNK, end)
        if view[at:stop] != _ZERO_CHUNK[:stop - at]:
            return False
    return True


def read_records(data: bytes | memoryview | mmap.mmap, result: ReadResult,
                 repair: bool = False) -> Iterator[list[Any]]:
    """read_records yields each good record's payload from a whole journal file.

    `result` is complete once the iterator is exhausted (or closed). Raises
    JournalCorrupt for damage before the tail (unless `repair`), never for a
    torn tail.

    A good record takes the loop's first branch alone, with no call beyond
    the header's, the checksum's and the decoder's: a start replays millions.
    Anything else goes to `_diagnose`, which tells a torn tail from damage.
    """
    check_header(data)
    view = memoryview(data)
    end = len(view)
    pos = len(FILE_HEADER)
    crc32, unpackb, kinds = zlib.crc32, msgpack.unpackb, KINDS
    records = 0
    last_start = pos
    synced_seen = False  # read by SYNCED records (see the rules) once one has been read
    nonce = b""  # the first SYNCED record's: every proof must carry it
    try:
        while pos < end:
            if end - pos >= RECORD_HEADER_BYTES:
                size, checksum = unpack_header(view, pos)
                stop = pos + RECORD_HEADER_BYTES + size
                if stop <= end and crc32(body := view[pos + RECORD_HEADER_BYTES:stop]) == checksum:
                    try:
                        payload = unpackb(body, raw=False, strict_map_key=False)
                    except Exception:
                        payload = None
                    if (type(payload) is list and payload and type(payload[0]) is int
                            and payload[0] in kinds):
                        records += 1
                        last_start, pos = pos, stop
                        if payload[0] == SYNCED and not synced_seen:
                            synced_seen = True
                            nonce = payload[2] if len(payload) > 2 else b""
                        yield payload
                        continue
            if not any(view[pos:pos + RECORD_HEADER_BYTES]) and _all_zero(view, pos, end):
                result.zero_tail_bytes = end - pos
                break
            proof = _synced_past(data, pos, end, nonce) if synced_seen else None
            if synced_seen and proof is None and not _framed_whole(view, pos, end):
                _torn_tail(result, view, pos, end)  # nothing says an fsync covered it
                break
            problem, resume = _diagnose(view, pos, end)
            if proof is not None:
                resume = _resume_before(view, pos, end, proof, resume)
            if resume is None:
                _torn_tail(result, view, pos, end)
                break
            if not repair:
                raise JournalCorrupt(pos, problem)
            result.skipped.append((pos, problem))
            result.skipped_bytes += resume - pos
            pos = resume
    finally:
        result.records += records
        result.good_end = pos
        result.last_record_at = last_start
        result.synced_seen, result.synced_nonce = synced_seen, nonce


# What each kind's fields must be, after the kind itself (the table in the docstring).
# Replay does not check these per record (a start replays millions); `first_misfit`
# does, once replay has failed, to name the record to blame.
_ID_LIMIT = 1 << 63  # ids live in signed 64-bit arrays (message_table.py)


def _is_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < _ID_LIMIT


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_list_of(check: Any) -> Any:
    return lambda value: type(value) is list and all(map(check, value))


def _or_none(check: Any) -> Any:
    return lambda value: value is None or check(value)


def _is(kind: type) -> Any:
    return lambda value: type(value) is kind


_FIELDS: dict[int, tuple[Any, ...]] = {
    PUT: (_is(str), _is_id, _is(bytes), _is_number),
    STATE: (_is(str), _is_id, _is(int), _is_number, _is(int), _or_none(_is_id)),
    ACK: (_is(str), _is_id),
    SEQ: (_is_id,),
    PUTX: (_is(str), _is_id, _is(bytes), _is_number, _is(dict)),
    MOVE: (_is(str), _is_id, _is(str), _is(int), _or_none(_is(list)), _or_none(_is_number),
           _is(bytes), _is_number, _is(dict)),
    QUEUE: (_is(str), _is(dict)),
    PURGE: (_is(str),),
    DROP: (_is(str),),
    PUTS: (_is(str), _is_list_of(_is_id), _is_list_of(_is(bytes))),
    SYNCED: (_is_id, _is(bytes)),
}
_STATE_WITH_KEPT_LEASE = (*_FIELDS[STATE], _is_id)


# A misfit field is shown this short whatever it holds (a field nested a thousand deep
# must not make the report itself fail with a RecursionError).
_shower = reprlib.Repr()
_shower.maxlevel, _shower.maxstring, _shower.maxother = 2, 40, 40
_show = _shower.repr


def misfit(payload: list[Any]) -> str | None:
    """misfit says how a decoded record does not fit its kind's fields, or None."""
    fields = _FIELDS[payload[0]]
    name = KINDS[payload[0]]
    if payload[0] == MOVE and len(payload) == 7:
        fields = fields[:6]  # a version-1 MOVE from before a2807bf: no body, no options
    elif payload[0] == STATE and len(payload) == 8:
        fields = _STATE_WITH_KEPT_LEASE
    if len(payload) != len(fields) + 1:
        return f"{name} has {len(payload) - 1} fields, not {len(fields)}"
    for index, (check, value) in enumerate(zip(fields, payload[1:], strict=True), 1):
        if not check(value):
            return f"{name} field {index} is {_show(value)}"
    if payload[0] == PUTS and len(payload[2]) != len(payload[3]):
        return f"PUTS has {len(payload[2])} ids for {len(payload[3])} bodies"
    return None


def first_misfit(data: bytes | memoryview | mmap.mmap, repair: bool,
                 limit: int | None = None) -> tuple[int, str] | None:
    """first_misfit is (offset, problem) of the first record, of the first `limit` (all
    when None) that `read_records` hands out, that does not fit its kind; None if every
    one fits. A failed replay gives as `limit` the records it was handed: a record after
    those cannot be what failed, and the read stops before damage replay never reached."""
    result = ReadResult()
    records = read_records(data, result, repair)
    try:
        for payload in islice(records, limit):
            problem = misfit(payload)
            if problem is not None:
                records.close()  # sets last_record_at: this record's offset
                return result.last_record_at, problem
    finally:
        records.close()
    return None


def _framed_whole(view: memoryview, pos: int, end: int) -> bool:
    """_framed_whole: the record at `pos` has a length over 0 that fits in the file and
    a checksum that holds, so a write cut short did not make it (see the rules)."""
    if end - pos < RECORD_HEADER_BYTES:
        return False
    size, checksum = unpack_header(view, pos)
    stop = pos + RECORD_HEADER_BYTES + size
    return size > 0 and stop <= end \
        and zlib.crc32(view[pos + RECORD_HEADER_BYTES:stop]) == checksum


def _diagnose(view: memoryview, pos: int, end: int) -> tuple[str, int | None]:
    """_diagnose says what is wrong with the record at `pos` and where reading may
    resume after it: (problem, offset), or (problem, None) for a torn tail.

    A crash mid-write leaves a prefix of the last write, so nothing valid can
    follow a torn record; zeros are what some file systems leave after a power
    cut. A record framed whole (its length and checksum hold) is damage (or a
    newer format) even at the end, and is skipped by its length. Otherwise the
    frame's length and the payload's own msgpack lengths each say where the
    record ends, and either may be the damaged one: reading resumes at whichever
    end records run from, one after another, to the end of the file (or to a
    torn tail there); a wrong end can land on a record planted in a message body,
    whose run stops where that body goes on. Nothing inside a damaged record is
    read as a record then. Only when neither end leads on is the file scanned for
    the next record, with the same rule (`_broken_at`) and a bounded amount of
    checksumming (`_ScanBudget`); when nothing qualifies, reading resumes at the
    end (repair skips the rest, and says so). A record whose frame and payload
    both run to the end, or the file's last record with a bad checksum, or one
    after which nothing valid follows, is a torn tail.
    """
    if end - pos < RECORD_HEADER_BYTES:
        return "a record header cut short", None
    size, checksum = unpack_header(view, pos)
    stop = pos + RECORD_HEADER_BYTES + size
    framed_whole = False
    if stop > end:
        problem = f"record length {size} runs past the end of the file"
    elif zlib.crc32(view[pos + RECORD_HEADER_BYTES:stop]) != checksum:
        problem = "checksum mismatch"
    else:
        framed_whole = True
        problem = _decode(view[pos + RECORD_HEADER_BYTES:stop])[1] or "unknown record"
    if _all_zero(view, pos, end):
        return problem, None
    if framed_whole:
        return problem, stop
    # The frame's length and the payload's own msgpack lengths each say where the
    # record ends. When both run to the end of the file, it is a write cut short: a
    # torn tail, whatever its body's bytes look like. Otherwise reading resumes at
    # the one of the two ends from which records run on to the end of the file
    # (`_broken_at`), the earlier if both do: either may be the damaged one, and a
    # wrong one can land on a record planted in a body (a flipped bit in a length,
    # or in a payload's array header), whose run stops where that body goes on.
    payload_end = _payload_end(view, pos + RECORD_HEADER_BYTES, end)
    if stop > end and payload_end in (_TORN, end):
        return problem, None
    if payload_end == _TORN:
        payload_end = None  # the payload runs past the end its frame holds: it is damaged
    intact_end = _intact_end(view, pos, end, payload_end)
    if intact_end is not None:
        return problem, intact_end
    if payload_end in (None, stop) and stop == end:
        return problem, None  # the file's last record, with a bad checksum: a torn tail
    budget = _ScanBudget(pos, end)
    # A payload that runs exactly to the end of the file, while the frame ends before,
    # is the file's last record with a broken length, unless records run from the
    # frame's end all the way to the end (then the payload is what is damaged).
    last_record = payload_end == end
    # The payload does not match the checksum, so it is what is damaged (a single
    # fault): the frame's end first. A damaged msgpack length inside it (a body's) can
    # end it early, on records planted in that body that run on to the frame's end and
    # beyond (a reviewer's case: the earlier end was taken, and they were replayed).
    for resume in dict.fromkeys((stop, payload_end or stop)):
        if resume < end and _frame_skips_damage(view, resume, end) \
                and _broken_at(view, resume, end, budget, not last_record) is None:
            return problem, resume
    if last_record:
        return problem, None
    resume = _next_valid(view, pos + 1, end, budget)
    if resume is None:
        return problem, None  # nothing valid after it: a torn tail
    while resume is not None and resume != _GAVE_UP:
        broken = _broken_at(view, resume, end, budget)
        if broken is None:
            return problem, resume
        # Whatever starts before `broken` is on this run or inside its records: the
        # scan goes on after it, so no byte is walked twice.
        resume = _next_valid(view, broken + 1, end, budget)
    return (f"{problem}; the {end - pos} bytes from here to the end were not read: "
            "no run of records from inside them reaches the end of the file"), end
