"""Helpers for the durability tests: a broker's whole state, journals opened as the server
does, and a journal left as kill -9 leaves the server's (`killed`).

`broker_state` is what a restart must keep and nothing else: put/ack totals
count from each start (the journal resets them), and a queue made on first
use whose messages are all gone is left out, since no record keeps it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from wonderq_server.broker import Broker
from wonderq_server.ids import id_time
from wonderq_server.journal import Journal, RecoveryReport
from wonderq_server.journal_format import FILE_HEADER, RECORD_HEADER_BYTES
from wonderq_server.message import DELAYED, LEASED, READY, Message
from wonderq_server.queues import Queue

T0 = 1_700_000_000.0
VISIBILITY = 30.0


def broker_state(broker: Broker) -> dict[str, Any]:
    """broker_state: per queue, every message's id, body, state, deliveries, lease,
    deadline_at and enqueued_at, the queue's counters, and the next deadline. A plain
    message (message.py) and a Message in the same state compare equal: both become
    the same tuple (`message_state`)."""
    queues: dict[str, Any] = {}
    for name, q in broker.queues.items():
        if not q.messages and not q.explicit:
            continue
        messages = {i: message_state(i, m, q) for i, m in q.messages.items()}
        states = [m[1] for m in messages.values()]
        # The counters must agree with the messages, or the comparison below means little.
        assert (q.ready_count, q.leased_count, q.delayed_count) == (
            states.count(READY), states.count(LEASED), states.count(DELAYED)), name
        queues[name] = {
            "counts": (q.ready_count, q.leased_count, q.delayed_count),
            "settings": (q.explicit, q.settings),
            "messages": messages,
        }
    return {"queues": queues, "next_deadline": broker.next_deadline()}


def message_state(message_id: int, stored: Message | bytes, q: Queue) -> tuple[Any, ...]:
    """message_state: (body, state, deliveries, lease, deadline_at, enqueued_at, priority,
    headers, origin, expires_at, dead_letter_lease), the same for a plain message and its
    Message form."""
    if type(stored) is bytes:
        return (stored, READY, 0, None, None, id_time(message_id), 0, None, None, None, None)
    m = stored
    assert isinstance(m, Message) and m.id == message_id and m.queue is q
    assert (m.deadline_at is not None) == (m.state in (LEASED, DELAYED)), m
    return (m.body, m.state, m.deliveries, m.lease, m.deadline_at, m.enqueued_at, m.priority,
            m.headers, m.origin, m.expires_at, m.kept_lease)


def open_broker(directory: Path, now: float, **journal_options: Any
                ) -> tuple[Journal, Broker, RecoveryReport]:
    """open_broker opens a journal into a fresh broker, as server.py does."""
    broker = Broker(visibility_timeout_s=VISIBILITY)
    journal = Journal(directory, **journal_options)
    report = journal.open(broker, now)  # attaches itself once replay is done
    assert broker.journal is journal
    return journal, broker, report


def restored(directory: Path, now: float, **journal_options: Any
             ) -> tuple[Broker, RecoveryReport]:
    """restored opens `directory` into a fresh broker and closes it again."""
    journal, broker, report = open_broker(directory, now, **journal_options)
    journal.close()
    broker.journal = None
    return broker, report


def killed(journal: Journal) -> None:
    """killed leaves `journal` as kill -9 leaves the server's: what write_pending wrote
    stays in the file (the kernel has it), the records still in the buffer are lost, and
    the files are closed as the kernel closes a dead process's, which releases the lock."""
    journal._pending.clear()
    os.close(journal.fd)
    journal.fd = -1
    journal._unlock()


def restored_copy(directory: Path, copy: Path, now: float) -> tuple[Broker, RecoveryReport]:
    """restored_copy copies the data directory as it is on disk this instant (what a crash
    would leave, given everything was written) and opens the copy."""
    shutil.copytree(directory, copy)
    return restored(copy, now)


def journal_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("journal."))


def record_offsets(data: bytes) -> list[int]:
    """record_offsets walks the frames of a journal file (trusting their lengths), up to
    the zeros of its reserved space, if any."""
    offsets = []
    pos = len(FILE_HEADER)
    while pos < len(data) and any(data[pos:pos + RECORD_HEADER_BYTES]):
        offsets.append(pos)
        pos += RECORD_HEADER_BYTES + int.from_bytes(data[pos:pos + 4], "big")
    assert pos <= len(data) and not any(data[pos:])
    return offsets
