"""Tests of the journal's record format (wonderq_server/journal_format.py): bytes only.

A torn tail (a crash in the middle of the last write) is cut off quietly;
damage before it stops the reader at a named offset unless it is asked to
repair, in which case the damaged record is skipped and reported.
"""

from __future__ import annotations

import mmap
import os
import random
import re
import tracemalloc
import zlib
from typing import Any

import msgpack
import pytest

from wonderq_server import journal_format
from wonderq_server.journal_format import (
    ACK,
    FILE_HEADER,
    PUT,
    PUTS,
    RECORD_HEADER_BYTES,
    SEQ,
    STATE,
    SYNCED,
    VERSION,
    JournalCorrupt,
    ReadResult,
    encode_record,
    first_misfit,
    kept_tail_end,
    misfit,
    read_records,
)

T0 = 1_700_000_000.25
BIG_ID = (1_700_000_000_000 << 20) + 12345

# One record of every kind, with the values each field can take.
RECORDS: dict[str, list[Any]] = {
    "PUT": [PUT, "orders", BIG_ID, b"\x00body\xff" * 10, T0],
    "PUT empty body": [PUT, "q", 7, b"", 1.5],
    "PUTS": [PUTS, "orders", [BIG_ID, BIG_ID + 1, BIG_ID + 5], [b"a", b"", b"\x00c" * 40]],
    "STATE leased": [STATE, "orders", BIG_ID, 1, T0 + 30.0, 1, BIG_ID + 1],
    "STATE delayed": [STATE, "orders", BIG_ID, 2, T0 + 60.5, 3, BIG_ID + 9],
    "STATE ready, never leased": [STATE, "q.x-y_z", 7, 0, 0.0, 0, None],
    "ACK": [ACK, "orders", BIG_ID],
    "SEQ": [SEQ, BIG_ID + 10],
    "SYNCED": [SYNCED, 4096, b"\x00nonce\xff\x01"],
}


def journal_bytes(*records: list[Any]) -> bytes:
    return FILE_HEADER + b"".join(encode_record(r) for r in records)


def read_all(data: bytes | memoryview, repair: bool = False) -> tuple[list[Any], ReadResult]:
    result = ReadResult()
    return list(read_records(data, result, repair)), result


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1:]


# ------------------------------------------------------------------ round trip

@pytest.mark.parametrize("name", RECORDS)
def test_every_kind_round_trips(name: str) -> None:
    record = RECORDS[name]
    data = journal_bytes(record)
    records, result = read_all(data)
    assert records == [record]
    assert type(records[0][-1]) is type(record[-1])  # floats stay floats, None stays None
    assert result == ReadResult(good_end=len(data), records=1, torn_tail_bytes=0, skipped=[])


def test_all_kinds_in_one_file_come_back_in_order() -> None:
    records = list(RECORDS.values())
    data = journal_bytes(*records)
    got, result = read_all(memoryview(data))  # the reader takes a memoryview as well
    assert got == records
    assert result == ReadResult(good_end=len(data), records=len(records))


def test_a_record_is_length_checksum_payload() -> None:
    record = RECORDS["STATE leased"]
    framed = encode_record(record)
    payload = framed[RECORD_HEADER_BYTES:]
    assert int.from_bytes(framed[:4], "big") == len(payload)
    assert int.from_bytes(framed[4:8], "big") == zlib.crc32(payload)
    assert msgpack.unpackb(payload) == record


def test_a_file_with_only_its_header_has_no_records() -> None:
    assert (FILE_HEADER[:6], FILE_HEADER[6], FILE_HEADER[7:]) == (b"WQJRNL", VERSION, b"\n")
    assert read_all(FILE_HEADER) == ([], ReadResult(good_end=8))


# ------------------------------------------------------------------ torn tail

@pytest.mark.parametrize("name", RECORDS)
def test_a_torn_tail_at_every_offset_of_the_last_record_is_cut_off(name: str) -> None:
    earlier = [RECORDS["PUT"], RECORDS["STATE leased"], RECORDS["SEQ"]]
    whole = journal_bytes(*earlier)
    last = encode_record(RECORDS[name])
    for cut in range(len(last)):
        records, result = read_all(whole + last[:cut])
        assert records == earlier, cut
        # Zeros the cut ends in (all of it, inside the length's leading zero bytes) are
        # told apart: as far as anyone can tell they are reserved space.
        torn = len(last[:cut].rstrip(b"\0"))
        assert result == ReadResult(good_end=len(whole), records=3, torn_tail_bytes=torn,
                                    zero_tail_bytes=cut - torn), cut
    records, result = read_all(whole + last)
    assert records == [*earlier, RECORDS[name]]
    assert result.torn_tail_bytes == 0


def test_a_whole_last_record_with_a_bad_checksum_is_a_torn_tail() -> None:
    whole = journal_bytes(RECORDS["PUT"])
    last = encode_record(RECORDS["ACK"])
    for offset in range(4, len(last)):  # the checksum or the payload, not the length
        records, result = read_all(whole + flip(last, offset))
        assert records == [RECORDS["PUT"]], offset
        assert result == ReadResult(good_end=len(whole), records=1,
                                    torn_tail_bytes=len(last)), offset


@pytest.mark.parametrize("reserved", [0, 4096])
def test_what_is_kept_of_a_damaged_last_record_ending_in_zeros(reserved: int) -> None:
    # A reviewer: the zeros a record ends in (an id's low bytes) were counted as reserved
    # space, so the log undercounted the torn record and --repair's copy, which stops
    # where the reserved space starts, lost its last bytes.
    whole = journal_bytes(RECORDS["PUT"])
    last = encode_record([ACK, "orders", 0x1A22C32FC8400000])
    assert last.endswith(b"\0\0")
    damaged = flip(last, 10)  # a payload byte: the length still frames the record
    data = whole + damaged + bytes(reserved)
    records, result = read_all(data)
    assert records == [RECORDS["PUT"]]
    # The report counts up to the last non-zero byte (zeros may be a write cut short)...
    assert (result.torn_tail_bytes, result.zero_tail_bytes) == (len(last) - 2, reserved + 2)
    # ...but what is kept of the file keeps the record whole, as its length frames it.
    assert kept_tail_end(data, result) == len(whole) + len(last)
    # A record cut short before the zeros: its length frames them, so they are kept too
    # (as far as anyone can tell they are its bytes); with no zeros after it, nothing is.
    cut = whole + last[:12]
    for tail in (b"", bytes(reserved)):
        _, result = read_all(cut + tail)
        assert kept_tail_end(cut + tail, result) == (
            len(whole) + len(last) if reserved and tail else len(cut))
    # Undamaged, the file ends at its last record.
    _, result = read_all(whole + last + bytes(reserved))
    assert kept_tail_end(whole + last + bytes(reserved), result) == len(whole) + len(last)


# ---------------------------------------------------------- damage, repair

def damaged_middle(offset_in_record: int) -> tuple[bytes, int, list[list[Any]]]:
    """damaged_middle: four records, the second one with one byte flipped."""
    records = [RECORDS["PUT"], RECORDS["STATE leased"], RECORDS["ACK"], RECORDS["SEQ"]]
    first = len(FILE_HEADER) + len(encode_record(records[0]))
    data = flip(journal_bytes(*records), first + offset_in_record)
    return data, first, records


@pytest.mark.parametrize("offset_in_record", [4, 7, RECORD_HEADER_BYTES, 12, 25])
def test_a_bad_checksum_in_the_middle_names_the_record(offset_in_record: int) -> None:
    data, bad, records = damaged_middle(offset_in_record)
    result = ReadResult()
    reader = read_records(data, result)
    assert next(reader) == records[0]  # what comes before the damage is read
    with pytest.raises(JournalCorrupt) as info:
        next(reader)
    assert info.value.offset == bad
    assert info.value.reason == "checksum mismatch"
    assert str(info.value) == f"damaged record at byte offset {bad}: checksum mismatch"
    assert result.good_end == bad


@pytest.mark.parametrize("offset_in_record", [4, 7, RECORD_HEADER_BYTES, 12, 25])
def test_repair_skips_the_damaged_record_and_reads_on(offset_in_record: int) -> None:
    data, bad, records = damaged_middle(offset_in_record)
    got, result = read_all(data, repair=True)
    assert got == [records[0], records[2], records[3]]
    assert result == ReadResult(good_end=len(data), records=3, torn_tail_bytes=0,
                                skipped=[(bad, "checksum mismatch")])


def test_repair_still_cuts_a_torn_tail_after_skipping() -> None:
    data, bad, records = damaged_middle(12)
    tail = encode_record(RECORDS["PUT"])[:20]
    got, result = read_all(data + tail, repair=True)
    assert got == [records[0], records[2], records[3]]
    assert result == ReadResult(good_end=len(data), records=3, torn_tail_bytes=20,
                                skipped=[(bad, "checksum mismatch")])


def frame(payload: bytes) -> bytes:
    """frame frames raw payload bytes with a correct length and checksum."""
    return len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("payload, reason", [
    (msgpack.packb([99, "q", 1]), "unknown record [99, 'q', 1]"),
    (msgpack.packb([]), "unknown record []"),
    (msgpack.packb({"kind": 1}), "unknown record {'kind': 1}"),
    (b"\xc1", "undecodable payload"),
])
def test_a_well_framed_record_that_is_not_ours_is_damage(payload: bytes, reason: str) -> None:
    before, after = encode_record(RECORDS["PUT"]), encode_record(RECORDS["ACK"])
    bad = len(FILE_HEADER) + len(before)
    data = FILE_HEADER + before + frame(payload) + after
    with pytest.raises(JournalCorrupt) as info:
        read_all(data)
    assert info.value.offset == bad
    assert info.value.reason.startswith(reason)
    got, result = read_all(data, repair=True)
    assert got == [RECORDS["PUT"], RECORDS["ACK"]]
    assert [offset for offset, _ in result.skipped] == [bad]
    assert result.skipped[0][1].startswith(reason)


def test_an_unknown_kind_at_the_end_is_refused_not_cut_off() -> None:
    # The checksum holds, so the write was whole: this is a record of a newer
    # format, which an old reader must refuse by name, not throw away as torn.
    before = encode_record(RECORDS["PUT"])
    data = FILE_HEADER + before + frame(msgpack.packb([99, "q", 1]))
    with pytest.raises(JournalCorrupt) as info:
        read_all(data)
    assert info.value.offset == len(FILE_HEADER) + len(before)
    assert info.value.reason == "unknown record [99, 'q', 1]"
    got, result = read_all(data, repair=True)
    assert got == [RECORDS["PUT"]]
    # Skipped, not cut off: appends continue after it, so the file keeps it.
    assert result == ReadResult(good_end=len(data), records=1, torn_tail_bytes=0,
                                skipped=[(len(FILE_HEADER) + len(before),
                                          "unknown record [99, 'q', 1]")])


# ------------------------------------------------------------------ the header

@pytest.mark.parametrize("data", [
    b"", b"WQJR", b"WQJRNL\x01", b"XQJRNL\x01\n", b"WQJRNL\x01\r" + encode_record([SEQ, 1]),
    b"\x00" * 64,
])
def test_a_bad_file_header_is_refused(data: bytes) -> None:
    with pytest.raises(JournalCorrupt) as info:
        read_all(data)
    assert info.value.offset == 0
    assert info.value.reason == (
        "not a WonderQ journal (its file header is not one): move it out of the data "
        "directory to start without it, or restore the directory from a copy")
    assert not info.value.repairable  # --repair skips records, never a bad header
    with pytest.raises(JournalCorrupt):
        read_all(data, repair=True)


def test_a_newer_version_is_refused() -> None:
    data = b"WQJRNL" + bytes([VERSION + 1]) + b"\n" + encode_record([SEQ, 1])
    with pytest.raises(JournalCorrupt) as info:
        read_all(data)
    assert info.value.offset == 0
    assert info.value.reason == (f"journal format version {VERSION + 1} is newer than this "
                                 f"server's ({VERSION}): a newer WonderQ wrote it; run that "
                                 "version, or start this one on a fresh data directory")
    assert not info.value.repairable


def test_the_current_version_is_read() -> None:
    data = b"WQJRNL" + bytes([VERSION]) + b"\n" + encode_record([SEQ, 1])
    assert read_all(data)[0] == [[SEQ, 1]]


# ------------------------------------------------------------ the docstring

EXAMPLE_PAYLOAD = bytes.fromhex("95 01 a1 71 07 c4 02 68 69 cb 3f f8 00 00 00 00 00 00")


def test_the_docstring_example_is_true() -> None:
    doc = journal_format.__doc__
    assert doc is not None
    hex_bytes = r"([0-9a-f]{2}(?: [0-9a-f]{2})*)"
    match = re.search(r"msgpack\(\[1, \"q\", 7, b\"hi\", 1\.5\]\) = " + hex_bytes
                      + r"\s*\((\d+) bytes\), framed as " + hex_bytes + ",", doc)
    assert match is not None, "the example in journal_format's docstring moved"
    assert bytes.fromhex(match.group(1)) == EXAMPLE_PAYLOAD
    assert int(match.group(2)) == len(EXAMPLE_PAYLOAD) == 18
    assert bytes.fromhex(match.group(3)) == b"\x00\x00\x00\x12"

    record = [PUT, "q", 7, b"hi", 1.5]
    assert msgpack.packb(record, use_bin_type=True) == EXAMPLE_PAYLOAD
    assert encode_record(record) == (b"\x00\x00\x00\x12" + bytes.fromhex("7c21c364")
                                     + EXAMPLE_PAYLOAD)
    assert zlib.crc32(EXAMPLE_PAYLOAD) == 0x7C21C364
    assert read_all(FILE_HEADER + encode_record(record))[0] == [record]


@pytest.mark.parametrize("length_byte", [0, 1, 2, 3])
def test_a_damaged_length_in_the_middle_is_damage_not_a_torn_tail(length_byte: int) -> None:
    # A length that now runs past the end of the file must not be read as a
    # torn tail: valid records follow it, so cutting there would lose them.
    records = [RECORDS["PUT"], RECORDS["STATE leased"], RECORDS["ACK"], RECORDS["SEQ"]]
    data = journal_bytes(*records)
    second = len(FILE_HEADER) + len(encode_record(records[0]))
    damaged = bytearray(data)
    damaged[second + length_byte] ^= 0x40
    with pytest.raises(JournalCorrupt) as info:
        read_all(bytes(damaged))
    assert info.value.offset == second
    got, result = read_all(bytes(damaged), repair=True)
    # Repair skips to the next record that is whole and valid, and keeps the rest.
    assert got == [records[0], records[2], records[3]]
    assert result.skipped[0][0] == second
    assert result.good_end == len(data)
    assert result.torn_tail_bytes == 0


@pytest.mark.parametrize("zeros", [1, 8, 9, 4096])
def test_zeros_after_the_last_record_are_reserved_space_not_a_torn_tail(zeros: int) -> None:
    data = journal_bytes(RECORDS["PUT"], RECORDS["ACK"])
    got, result = read_all(data + bytes(zeros))
    assert got == [RECORDS["PUT"], RECORDS["ACK"]]
    assert (result.good_end, result.zero_tail_bytes, result.torn_tail_bytes) == (
        len(data), zeros, 0)


@pytest.mark.parametrize("cut", [4, 8, 20])
def test_a_torn_record_before_reserved_zeros_is_a_torn_tail(cut: int) -> None:
    # A crash mid-write into reserved space: the record's first bytes, then zeros.
    data = journal_bytes(RECORDS["PUT"])
    last = encode_record(RECORDS["ACK"])
    got, result = read_all(data + last[:cut] + bytes(4096))
    assert got == [RECORDS["PUT"]]
    torn = len(last[:cut].rstrip(b"\0"))
    assert (result.good_end, result.torn_tail_bytes, result.zero_tail_bytes) == (
        len(data), torn, cut - torn + 4096)


def test_a_record_after_zeros_is_damage_not_reserved_space() -> None:
    # Zeros are the end only when nothing follows them: a record after is read as damage.
    data = journal_bytes(RECORDS["PUT"])
    after = encode_record(RECORDS["ACK"])
    with pytest.raises(JournalCorrupt) as info:
        read_all(data + bytes(64) + after)
    assert info.value.offset == len(data)


# ------------------------------------------------------------- field checks

@pytest.mark.parametrize("name", RECORDS)
def test_every_kind_fits_its_fields(name: str) -> None:
    assert misfit(RECORDS[name]) is None


@pytest.mark.parametrize(("record", "problem"), [
    ([PUT, "q", 2**63, b"x", T0], "PUT field 2 is"),
    ([PUT, "q", -1, b"x", T0], "PUT field 2 is"),
    ([PUT, "q", True, b"x", T0], "PUT field 2 is"),
    ([PUT, "q", 7, "a str body", T0], "PUT field 3 is"),
    ([PUT, "q", 7], "PUT has 2 fields, not 4"),
    ([STATE, "q", 7, 1, T0, 1, "lease"], "STATE field 6 is"),
    ([ACK, 5, 7], "ACK field 1 is"),
    ([PUTS, "q", [7, 8], [b"one"]], "PUTS has 2 ids for 1 bodies"),
    ([PUTS, "q", [7, "8"], [b"a", b"b"]], "PUTS field 2 is"),
])
def test_a_record_that_does_not_fit_is_named(record: list[Any], problem: str) -> None:
    assert misfit(record).startswith(problem)
    good = encode_record(RECORDS["PUT"])
    data = FILE_HEADER + good + encode_record(record) + good
    assert first_misfit(data, repair=False) == (len(FILE_HEADER) + len(good), misfit(record))
    assert first_misfit(FILE_HEADER + good + good, repair=False) is None


# ------------------------------------------- bytes inside a body are not records

PURGE_VICTIM = encode_record([journal_format.PURGE, "victim"])
DROP_VICTIM = encode_record([journal_format.DROP, "victim"])


def planted_journal(planted: bytes) -> tuple[bytes, list[list[Any]], int]:
    """planted_journal: good records around a PUT whose body (a client's bytes) holds
    `planted`, framed records of its own; returns the file, its records and the
    offset of that PUT."""
    records = [[PUT, "victim", 1, b"keep me", T0], [PUT, "jobs", 2, b"x" + planted + b"y", T0],
               [PUT, "victim", 3, b"and me", T0], [ACK, "jobs", 9], [SEQ, 10]]
    data = journal_bytes(*records)
    return data, records, len(FILE_HEADER) + len(encode_record(records[0]))


@pytest.fixture
def checked(monkeypatch) -> list[int]:
    """checked: the size of every payload journal_format checksums, from now on."""
    sizes: list[int] = []
    real_crc32 = zlib.crc32

    class CountingZlib:
        @staticmethod
        def crc32(payload: Any) -> int:
            sizes.append(len(payload))
            return real_crc32(payload)

    monkeypatch.setattr(journal_format, "zlib", CountingZlib)
    return sizes


@pytest.mark.parametrize("header_byte", [4, 5, 6, 7])
def test_repair_never_reads_a_record_inside_a_body_whose_checksum_failed(header_byte) -> None:
    # The reviewer's case: a flipped checksum bit, and repair resumed inside the body,
    # replaying a PURGE that a producer had put there.
    data, records, planted_at = planted_journal(PURGE_VICTIM)
    damaged = flip(data, planted_at + header_byte)
    with pytest.raises(JournalCorrupt) as info:
        read_all(damaged)
    assert info.value.offset == planted_at
    got, result = read_all(damaged, repair=True)
    assert got == [records[0], records[2], records[3], records[4]]
    assert result.skipped == [(planted_at, "checksum mismatch")]


@pytest.mark.parametrize("length_byte", [0, 1, 2, 3])
def test_with_a_broken_length_repair_resumes_where_records_run_to_the_end(length_byte) -> None:
    # The length is what broke, so the file is scanned: the planted PURGE is valid on
    # its own, but what follows it is the rest of a body, not records, so the scan
    # goes on to the real next record.
    data, records, planted_at = planted_journal(PURGE_VICTIM + b"and more of the body")
    damaged = bytearray(data)
    damaged[planted_at + length_byte] ^= 0x40
    got, result = read_all(bytes(damaged), repair=True)
    assert got == [records[0], records[2], records[3], records[4]]
    assert [offset for offset, _ in result.skipped] == [planted_at]
    assert result.good_end == len(data)


def test_a_broken_length_that_lands_in_the_last_body_of_a_puts_is_not_followed() -> None:
    # A reviewer's case: the last body of a PUTS (a put_many) is planted PURGE records up
    # to its end, so from inside it records run on, through the records after the PUTS,
    # to the end of the file. One flipped bit of the PUTS's length ended it inside that
    # body, and repair replayed the PURGEs. The payload up to its own end still matches
    # the checksum: that is where the record ends.
    purge = encode_record([journal_format.PURGE, "vict5"])
    assert len(purge) == 16  # so a length short by 16, 32 ... 1024 lands on one of them
    records = [[PUT, "vict5", 1, b"keep me", T0], [PUTS, "jobs", [2, 3], [b"first", purge * 64]],
               [PUT, "vict5", 4, b"and me", T0], [ACK, "jobs", 9], [SEQ, 10]]
    data = journal_bytes(*records)
    at = len(FILE_HEADER) + len(encode_record(records[0]))
    length = int.from_bytes(data[at:at + 4], "big")
    shortened = [bit for bit in range(4, 11) if length >> bit & 1]
    assert shortened  # the length has such bits set, whatever msgpack's framing adds
    for bit in shortened:
        damaged = data[:at] + (length ^ (1 << bit)).to_bytes(4, "big") + data[at + 4:]
        got, result = read_all(damaged, repair=True)
        assert got == [records[0], records[2], records[3], records[4]], bit
        assert [offset for offset, _ in result.skipped] == [at]


PLANTED = encode_record([journal_format.PURGE, "vict5"]) * 64  # a body of records
CARRIERS = {
    "PUTS, planted last": [PUTS, "jobs", [2, 3], [b"first", PLANTED]],
    "PUTS, planted first": [PUTS, "jobs", [2, 3], [PLANTED, b"last"]],
    "PUT": [PUT, "jobs", 2, PLANTED, T0],
    "PUTX": [journal_format.PUTX, "jobs", 2, PLANTED, T0, {"priority": 3}],
    "MOVE": [journal_format.MOVE, "jobs", 2, "dlq", 1, ["jobs", T0], None, PLANTED, T0, {}],
}


@pytest.mark.parametrize("synced", [False, True], ids=["appending", "with SYNCED records"])
@pytest.mark.parametrize("carrier", CARRIERS)
def test_one_flipped_bit_never_replays_a_planted_record_nor_loses_another(carrier, synced):
    # Every bit of the frame and of the first 40 payload bytes of a record whose body is
    # records a producer planted: --repair skips that record and nothing else, and never
    # replays what was planted. A reviewer found the frame's (shortened) length taken
    # with SYNCED records, and a body's shortened msgpack length taken without them.
    nonce = b"N" * 8
    before = [[SYNCED, len(FILE_HEADER), nonce]] if synced else []
    before += [[PUT, "vict5", 1, b"keep me", T0]]
    after = [[PUT, "vict5", 4, b"and me", T0], [ACK, "jobs", 9]]
    data = journal_bytes(*before, CARRIERS[carrier], *after)
    at = len(journal_bytes(*before))
    if synced:
        data += encode_record([SYNCED, len(data), nonce])
    data += encode_record([SEQ, 10])
    good = [r for r in (*before, *after, [SEQ, 10]) if r[0] != SYNCED]
    for offset in range(at, at + RECORD_HEADER_BYTES + 40):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            got, _ = read_all(bytes(damaged), repair=True)
            got = [r for r in got if r[0] != SYNCED]
            assert not any(r[0] == journal_format.PURGE for r in got), (offset - at, bit)
            assert all(r in got for r in good), (offset - at, bit)


@pytest.mark.parametrize("cut", [1, 5, 17])
def test_a_torn_last_record_with_records_in_its_body_is_a_torn_tail(cut) -> None:
    # The reviewer's torn-tail case: the last record, torn inside its body after a
    # planted DROP. The payload's own lengths say the data ends inside it: a torn tail,
    # cut quietly as any other, and the DROP is never read.
    data, records, _ = planted_journal(b"")
    last = encode_record([PUT, "jobs", 11, b"x" + DROP_VICTIM + b"the rest of the body", T0])
    torn = data + last[:last.index(DROP_VICTIM) + len(DROP_VICTIM) + cut]
    for repair in (False, True):
        got, result = read_all(torn, repair=repair)
        assert got == records
        assert (result.good_end, result.torn_tail_bytes, result.skipped) == (
            len(data), len(torn) - len(data), [])


def test_a_broken_length_is_skipped_by_the_payloads_own_length() -> None:
    # Even with a torn tail after it: the payload says where the record ends, and every
    # record after it is read.
    records = [[PUT, "q", i, b"body %d" % i, T0] for i in range(50)]
    data = bytearray(journal_bytes(*records) + encode_record(records[0])[:15])
    second = len(FILE_HEADER) + len(encode_record(records[0]))
    data[second] = 0xFF  # its length now runs past the end
    with pytest.raises(JournalCorrupt):
        read_all(bytes(data))
    got, result = read_all(bytes(data), repair=True)
    assert got == records[:1] + records[2:]
    assert [offset for offset, _ in result.skipped] == [second]
    assert result.torn_tail_bytes == 15


def test_scanning_for_the_next_record_is_linear_in_the_file(checked: list[int]) -> None:
    # The reviewer's journal of binary bodies: at a random offset a length that fits is
    # common, and a checksum over each took minutes for 64 MB. The scan now checks the
    # payload's first two bytes first.
    rng = random.Random(6)
    records = [[PUTS, "q", list(range(i * 64, i * 64 + 64)),
                [rng.randbytes(rng.randrange(100, 4000)) for _ in range(64)]]
               for i in range(16)]
    data = bytearray(journal_bytes(*records))
    first = len(FILE_HEADER)
    data[first] = 0xFF  # the first record's length now runs past the end, and its
    data[first + RECORD_HEADER_BYTES] = 0xC1  # payload is no record's: a scan
    got, result = read_all(bytes(data), repair=True)
    assert got == records[1:]
    assert [offset for offset, _ in result.skipped] == [first]
    assert sum(checked) < 4 * len(data), f"{sum(checked)} bytes checksummed, file {len(data)}"


def test_a_scan_through_thousands_of_records_to_a_garbage_tail_is_linear(checked) -> None:
    # A broken record, then thousands of good records, then garbage: the run from the
    # first good record reaches the garbage, which holds no record (a torn tail), so
    # repair resumes there. Each byte is walked and checksummed a bounded number of
    # times, not once per record.
    records = [[PUT, "q", i, b"body %d" % i, T0] for i in range(3000)]
    data = bytearray(journal_bytes(*records) + b"\xff" * 15)
    data[len(FILE_HEADER)] = 0xFF  # a broken length ...
    data[len(FILE_HEADER) + RECORD_HEADER_BYTES] = 0xC1  # ... and a payload no record's
    got, result = read_all(bytes(data), repair=True)
    assert got == records[1:]
    assert (len(result.skipped), result.torn_tail_bytes) == (1, 15)
    assert sum(checked) < 4 * len(data), f"{sum(checked)} bytes checksummed, file {len(data)}"


# ------------------------------- a second review: the frame and the payload disagree

def test_a_torn_tail_zeroed_from_inside_its_first_record_is_still_cut() -> None:
    # A power cut can leave the last write reading as zeros from inside its first record.
    whole = journal_bytes(RECORDS["PUT"])
    last = bytearray(encode_record([PUT, "q", 9, b"y" * 5000, T0])
                     + encode_record([PUT, "q", 10, b"z" * 5000, T0]))  # one write, two records
    last[30:] = bytes(len(last) - 30)
    for repair in (False, True):
        got, result = read_all(whole + bytes(last), repair=repair)
        assert (got, result.skipped) == ([RECORDS["PUT"]], [])
        torn = len(bytes(last).rstrip(b"\0"))  # the torn bytes, then zeros
        assert (result.torn_tail_bytes, result.zero_tail_bytes) == (torn, len(last) - torn)


def test_a_length_that_lands_on_a_record_planted_in_the_next_body_is_not_believed() -> None:
    records = [[PUT, "orders", 1, b"a", T0], [PUT, "jobs", 2, b"xx" + DROP_VICTIM + b"tail", T0],
               [ACK, "jobs", 9]]
    data = bytearray(journal_bytes(*records))
    first = len(FILE_HEADER)
    planted = bytes(data).index(DROP_VICTIM)
    data[first:first + 4] = (planted - first - RECORD_HEADER_BYTES).to_bytes(4, "big")
    with pytest.raises(JournalCorrupt):
        read_all(bytes(data))
    got, result = read_all(bytes(data), repair=True)
    assert got == records[1:]  # resumed where the payload's own lengths end
    assert [offset for offset, _ in result.skipped] == [first]


def test_a_length_that_ends_at_the_end_of_the_file_does_not_hide_the_records_after() -> None:
    records = [[PUT, "orders", 1, b"a", T0], [ACK, "orders", 1], [SEQ, 5]]
    data = bytearray(journal_bytes(*records))
    first = len(FILE_HEADER)
    data[first:first + 4] = (len(data) - first - RECORD_HEADER_BYTES).to_bytes(4, "big")
    with pytest.raises(JournalCorrupt):  # not a torn tail: whole records follow
        read_all(bytes(data))
    got, _ = read_all(bytes(data), repair=True)
    assert got == records[1:]


def test_bodies_that_look_like_record_headers_everywhere_cannot_make_a_scan_quadratic(
        checked) -> None:
    # Every 10 bytes a header claiming a 100 KB payload that fits in the file, and the
    # two bytes a payload starts with; the claimed length ends where the pattern shows
    # those two bytes again, as if a record followed: each would be checksummed.
    bait = ((100_002).to_bytes(4, "big") + bytes(4) + b"\x92\x01") * 20_000
    records = [[PUT, "q", 1, bait, T0], [PUT, "q", 2, bait, T0], [ACK, "q", 1]]
    data = bytearray(journal_bytes(*records))
    data[len(FILE_HEADER)] = 0xFF  # a broken length and a payload no record's
    data[len(FILE_HEADER) + RECORD_HEADER_BYTES] = 0xC1
    got, result = read_all(bytes(data), repair=True)
    assert sum(checked) < 5 * len(data) + (1 << 21), f"{sum(checked)} for {len(data)}"
    assert got == [] and "were not read" in result.skipped[0][1]


def test_a_broken_record_among_random_bodies_is_found_past_without_giving_up() -> None:
    # In random bodies a length that fits is a large one: checksummed, a few of them
    # spent the scan's budget, and repair dropped every record after the damage.
    rng = random.Random(1)
    records = [[PUTS, "q", list(range(i * 256, i * 256 + 256)),
                [rng.randbytes(4000) for _ in range(256)]] for i in range(64)]  # 65 MB
    data = bytearray(journal_bytes(*records))
    data[len(FILE_HEADER)] = 0xFF  # a broken length and a payload no record's
    data[len(FILE_HEADER) + RECORD_HEADER_BYTES] = 0xC1
    got, result = read_all(bytes(data), repair=True)
    assert got == records[1:]
    assert [offset for offset, _ in result.skipped] == [len(FILE_HEADER)]


# ------------------------------------------- SYNCED records (reserved space)

NONCE = b"\x07" * 8


def synced(offset: int, nonce: bytes = NONCE) -> list[Any]:
    return [SYNCED, offset, nonce]


def synced_writes(*writes: list[list[Any]]) -> tuple[bytes, list[int]]:
    """synced_writes lays out a journal as journal.py does with reserved space: each write
    after the first starts with a SYNCED record naming where the write before it ended
    (the fsync between them covered it); the first names the header's end. Returns the
    file and where each write starts."""
    data, starts = bytearray(FILE_HEADER), []
    for write in writes:
        starts.append(len(data))
        data += encode_record(synced(len(data)))
        data += b"".join(encode_record(r) for r in write)
    return bytes(data), starts


def test_with_synced_records_a_write_cut_short_in_the_zeros_is_a_torn_tail() -> None:
    # The reviewer's D1: the last write's body holds records, and the write is cut inside
    # it with the reserved zeros after. Without SYNCED records that looks like damage
    # followed by records that run on (to the zeros).
    inner = b"".join(encode_record(RECORDS[name]) for name in ("PUT", "ACK", "SEQ")) * 4
    head, _ = synced_writes([RECORDS["PUT"]])
    last = encode_record(synced(len(head))) + encode_record([PUT, "q", 9, inner, T0])
    for cut in range(1, len(last), 5):
        records, result = read_all(head + last[:cut] + bytes(4096))
        assert records[-1] in (RECORDS["PUT"], synced(len(head))), cut
        assert result.torn_tail_bytes + result.zero_tail_bytes >= 4096, cut
        assert not result.skipped


@pytest.mark.parametrize("lost", ["first page", "middle", "its SYNCED record"])
def test_with_synced_records_pages_lost_from_an_unsynced_write_are_a_torn_tail(
        lost: str) -> None:
    # The reviewer's D2: a power cut kept some pages of the last (unsynced) write and
    # lost others (zeros), so valid records follow zeros.
    puts = [[PUT, "q", BIG_ID + i, bytes([65 + i]) * 300, T0] for i in range(12)]
    data, starts = synced_writes([RECORDS["PUT"], RECORDS["ACK"]], puts)
    unsynced = starts[1]
    hole = {"first page": (unsynced, unsynced + 1000),
            "middle": (unsynced + 1200, unsynced + 2000),
            "its SYNCED record": (unsynced, unsynced + 8)}[lost]
    torn = bytearray(data + bytes(4096))
    torn[hole[0]:hole[1]] = bytes(hole[1] - hole[0])
    records, result = read_all(bytes(torn))
    assert records[:3] == [synced(len(FILE_HEADER)), RECORDS["PUT"], RECORDS["ACK"]]
    assert all(r in puts or r == synced(unsynced) for r in records[3:])
    assert result.torn_tail_bytes > 0 and not result.skipped


def test_with_synced_records_damage_before_a_later_synced_record_is_damage() -> None:
    data, starts = synced_writes([RECORDS["PUT"], RECORDS["ACK"]], [RECORDS["SEQ"]])
    bad = starts[0] + len(encode_record(synced(len(FILE_HEADER))))  # the PUT's record
    damaged = flip(data, bad + 5)  # its checksum
    with pytest.raises(JournalCorrupt) as info:
        read_all(damaged + bytes(4096))
    assert info.value.offset == bad
    records, result = read_all(damaged + bytes(4096), repair=True)
    assert records == [synced(len(FILE_HEADER)), RECORDS["ACK"], synced(starts[1]),
                       RECORDS["SEQ"]]
    assert [offset for offset, _ in result.skipped] == [bad]


@pytest.mark.parametrize("nonce", [b"\x00" * 8, b"guessed!"])
def test_a_synced_record_planted_in_a_body_proves_nothing(nonce: bytes) -> None:
    # A body holding a SYNCED record that names an offset past the tear, followed by
    # records: without the file's nonce it is no proof, so the write is torn, not damage
    # (which --repair would have read on from, inside the body).
    head, _ = synced_writes([RECORDS["PUT"]])
    put_at = len(head) + len(encode_record(synced(len(head))))  # where the torn PUT starts
    planted_at = put_at + 1  # past it, and before the planted record itself
    planted = encode_record([SYNCED, planted_at, nonce]) + encode_record(RECORDS["ACK"]) * 3
    last = encode_record(synced(len(head))) + encode_record([PUT, "q", 9, planted, T0])
    torn = bytearray(head + last + bytes(64))
    inside_the_put = len(head) + len(encode_record(synced(len(head)))) + 10
    torn[inside_the_put] ^= 0xFF  # before the planted bytes
    for repair in (False, True):
        records, result = read_all(bytes(torn), repair=repair)
        assert records == [synced(len(FILE_HEADER)), RECORDS["PUT"], synced(len(head))]
        assert result.torn_tail_bytes > 0 and not result.skipped


def test_a_proof_must_not_name_an_offset_past_itself() -> None:
    # A genuine SYNCED record is written after the fsync it names: never past itself.
    data, starts = synced_writes([RECORDS["PUT"]], [RECORDS["ACK"]])
    bad = starts[0] + len(encode_record(synced(len(FILE_HEADER))))
    damaged = flip(data, bad + 5) + encode_record(synced(10**9))  # named past itself
    damaged = damaged.replace(encode_record(synced(starts[1])), encode_record(synced(1)))
    records, result = read_all(damaged)
    assert result.torn_tail_bytes > 0 and records == [synced(len(FILE_HEADER))]


def test_repair_in_a_synced_file_skips_only_the_damaged_record_before_a_lost_page() -> None:
    # The last review's repair defect: damage in a synced record, and a page lost from the
    # last, unsynced write. Repair must skip the damaged record alone and keep every
    # synced record after it, then stop at the lost page as a torn tail.
    synced_puts = [[PUT, "q", BIG_ID + i, b"s%02d" % i * 20, T0] for i in range(19)]
    unsynced = [[PUT, "q", BIG_ID + 100 + i, b"u" * 300, T0] for i in range(20)]
    data, starts = synced_writes(synced_puts, [RECORDS["ACK"]], unsynced)
    bad = starts[0] + len(encode_record(synced(len(FILE_HEADER))))  # the first PUT
    damaged = bytearray(flip(data, bad + 5) + bytes(4096))
    hole = starts[2] + 1500
    damaged[hole:hole + 2000] = bytes(2000)
    records, result = read_all(bytes(damaged), repair=True)
    assert [offset for offset, _ in result.skipped] == [bad]
    kept = [r for r in records if r[0] == PUT]
    assert kept[:18] == synced_puts[1:]
    assert result.torn_tail_bytes > 0


# ------------------------------------------------------------ tails, a piece at a time

@pytest.mark.parametrize(("tail", "torn"), [
    (b"", 0),  # zeros alone: reserved space
    (b"\x07" * 10, 10),  # a torn write, then zeros: found from the end, 16 chunks back
], ids=["zeros", "torn-then-zeros"])
def test_a_big_tail_is_read_without_copying_it(tmp_path, tail: bytes, torn: int) -> None:
    # Replay maps the journal (journal.py); the tail's checks copied it whole, so 2 GiB
    # of zeros at the end took a start to 4.2 GB. Now they look at 1 MiB at a time.
    path = tmp_path / "journal"
    good = journal_bytes(RECORDS["PUT"], RECORDS["ACK"])
    zeros = 16 << 20
    path.write_bytes(good + tail)
    os.truncate(path, len(good) + len(tail) + zeros)  # sparse: cheap to make
    with open(path, "rb") as file:
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    tracemalloc.start()
    try:
        records, result = read_all(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        data.close()
    assert len(records) == 2
    assert (result.torn_tail_bytes, result.zero_tail_bytes) == (torn, len(tail) + zeros - torn)
    assert peak < 8 << 20, peak  # a few chunks, not the tail
