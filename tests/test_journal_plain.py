"""Plain messages (message.py) through the journal: a PUT without options replays to a
plain message, and any record that changes one materializes it first (replay.py).

Journals are written by a live broker, or by hand with `encode_record` where a
record sequence is needed that the running server would not write in that order
(a compacted journal may replay records about a message twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker_helpers import check_invariants
from durability import T0, broker_state, open_broker, restored

from wonderq_server.ids import id_time
from wonderq_server.journal_format import (
    ACK,
    FILE_HEADER,
    PUT,
    PUTS,
    PUTX,
    STATE,
    ReadResult,
    encode_record,
    read_records,
)
from wonderq_server.message import (
    HEADER_ENTRY_BYTES,
    HEADERS_DICT_BYTES,
    LEASED,
    MESSAGE_OVERHEAD_BYTES,
    Message,
)

ID = 1 << 60  # any id: hand-written records need not come from a clock


def records_of(directory: Path) -> list[list[Any]]:
    [path] = [p for p in directory.iterdir() if p.name.startswith("journal.")]
    return list(read_records(path.read_bytes(), ReadResult()))


def hand_written(directory: Path, *records: list[Any]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "journal.000001").write_bytes(
        FILE_HEADER + b"".join(encode_record(r) for r in records))


def test_plain_messages_come_back_plain_and_leased_ones_as_messages(tmp_path: Path) -> None:
    journal, broker, _ = open_broker(tmp_path, T0)
    first, second, third = broker.put_many("q", [b"one", b"two", b"three"], T0 + 0.25)
    urgent = broker.put("q", b"urgent", T0, priority=-1)
    broker.receive("q", 2, None, T0 + 1)  # urgent, then first
    journal.write_pending()
    expected = broker_state(broker)
    journal.close()
    # The bare put_many is one PUTS record: no enqueued_at, which is the time in each id.
    assert [r for r in records_of(tmp_path) if r[0] == PUTS] == [
        [PUTS, "q", [first, second, third], [b"one", b"two", b"three"]]]
    assert id_time(first) == id_time(third) == T0 + 0.25
    again, _ = restored(tmp_path, T0 + 2)
    assert broker_state(again) == expected
    stored = again.queues["q"].messages
    assert [type(stored[i]) for i in (urgent, first, second, third)] == [
        Message, Message, bytes, bytes]
    check_invariants(again)


def test_a_state_record_materializes_a_plain_message(tmp_path: Path) -> None:
    hand_written(tmp_path, [PUT, "q", ID, b"x", 0.0],
                 [STATE, "q", ID, LEASED, T0 + 30, 1, ID + 1])
    broker, _ = restored(tmp_path, T0)
    m = broker.queues["q"].messages[ID]
    assert isinstance(m, Message)
    assert (m.state, m.deliveries, m.lease, m.deadline_at) == (LEASED, 1, ID + 1, T0 + 30)
    check_invariants(broker)


def test_an_ack_record_of_a_plain_message_removes_it(tmp_path: Path) -> None:
    hand_written(tmp_path, [PUT, "q", ID, b"x", 0.0], [PUT, "q", ID + 1, b"yy", 0.0],
                 [ACK, "q", ID])
    broker, report = restored(tmp_path, T0)
    assert broker.queues["q"].messages == {ID + 1: b"yy"}
    assert broker.stored_bytes == 2 + MESSAGE_OVERHEAD_BYTES and report.messages == 1
    check_invariants(broker)


def test_a_put_replayed_twice_leaves_one_plain_message(tmp_path: Path) -> None:
    hand_written(tmp_path, [PUT, "q", ID, b"x", 0.0], [PUT, "q", ID, b"x", 0.0])
    broker, _ = restored(tmp_path, T0)
    q = broker.queues["q"]
    assert (dict(q.messages), q.ready_count, q.ready) == ({ID: b"x"}, 1, [])
    assert broker.stored_bytes == 1 + MESSAGE_OVERHEAD_BYTES
    check_invariants(broker)


def test_a_putx_after_a_plain_put_of_the_same_message_gives_it_options(tmp_path: Path
                                                                       ) -> None:
    hand_written(tmp_path, [PUT, "q", ID, b"x", 0.0],
                 [PUTX, "q", ID, b"x", 0.0, {"headers": {"k": "v"}, "expires_at": T0 + 9}],
                 [PUT, "q", ID + 1, b"y", 0.0])
    broker, _ = restored(tmp_path, T0)
    m = broker.queues["q"].messages[ID]
    assert isinstance(m, Message) and (m.headers, m.expires_at) == ({"k": "v"}, T0 + 9)
    assert broker.stored_bytes == 2 * (1 + MESSAGE_OVERHEAD_BYTES) + 2 + HEADERS_DICT_BYTES \
        + HEADER_ENTRY_BYTES
    check_invariants(broker)
    assert [m.id for m in broker.receive("q", 5, None, T0)] == [ID, ID + 1]


def test_runs_of_puts_to_several_queues_replay_in_order(tmp_path: Path) -> None:
    hand_written(tmp_path, [PUT, "a", ID, b"1", 0.0], [PUT, "a", ID + 1, b"2", 0.0],
                 [PUT, "b", ID + 2, b"3", 0.0], [PUT, "a", ID + 3, b"4", 0.0],
                 [STATE, "a", ID, LEASED, T0 + 30, 1, ID + 9],
                 [PUT, "a", ID + 4, b"5", 0.0], [ACK, "a", ID + 1], [PUT, "b", ID + 5, b"6", 0.0])
    broker, report = restored(tmp_path, T0)
    assert report.records == 8
    assert {name: list(q.messages) for name, q in broker.queues.items()} == {
        "a": [ID, ID + 3, ID + 4], "b": [ID + 2, ID + 5]}
    assert type(broker.queues["a"].messages[ID]) is Message
    assert broker.ids.last == ID + 9  # the lease, the largest id seen
    assert [m.body for m in broker.receive("a", 5, None, T0)] == [b"4", b"5"]
    check_invariants(broker)


def test_a_put_in_a_run_resets_a_message_delivered_since(tmp_path: Path) -> None:
    """A compacted journal may hold a live lease, then the snapshot's PUT of the same
    message (compaction.py): the PUT, last, says the message is ready again."""
    hand_written(tmp_path, [PUT, "q", ID, b"a", 0.0],
                 [STATE, "q", ID, LEASED, T0 + 30, 1, ID + 9],
                 [PUT, "q", ID + 1, b"b", 0.0], [PUT, "q", ID, b"a", 0.0],
                 [PUT, "q", ID + 2, b"c", 0.0])
    broker, _ = restored(tmp_path, T0)
    m = broker.queues["q"].messages[ID]
    assert isinstance(m, Message) and (m.deliveries, m.lease, m.deadline_at) == (0, None, None)
    assert broker.next_deadline() is None
    assert [m.body for m in broker.receive("q", 5, None, T0)] == [b"a", b"b", b"c"]
    check_invariants(broker)
