"""Replay: applying the journal's records to the broker at start-up.

Design decision: each journal record kind (journal_format.py) has one
`restore_*` function here, which puts the broker in the state the record
describes. They are the broker's (a base class of Broker, sharing its state
and its state movements) but apart from the message path, since their rules
differ: nothing is refused (what the journal holds was allowed when it was
written), nothing is journaled again, and no waiter exists yet.

Rules:
* Replay is idempotent per message: every record states a whole state, so
  replaying a record after a snapshot of the same message (compaction), or
  twice, ends in the state the last record describes.
* A record about a message that is gone (acked since) changes nothing.
* Deadlines are restored as recorded, even when passed; the journal calls
  `advance(now)` once replay is done (journal.py), so leases and delays that
  ended while the server was down end as they would have, dead-lettering and
  expiry included.

Must not know: the journal's file format, files, clocks.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from .message import DELAYED, DELETED, LEASED, MESSAGE_OVERHEAD_BYTES, Message
from .queue_settings import QueueSettings

if TYPE_CHECKING:
    from .broker import Broker


class Replay:
    def restore_put(self: Broker, name: str, message_id: int, body: bytes, enqueued_at: float,
                    options: dict[str, Any] | None = None) -> None:
        """restore_put replays a PUT record: the message exists, never delivered.

        `options` (a PUTX record) may give priority, headers, expires_at,
        origin and delayed_until. A PUT for a message that exists already (a
        compacted journal may hold a record and, later, a snapshot of the same
        message) resets it, so replay ends in the state the last record
        describes.
        """
        q = self._restored_queue(name)
        messages = q.messages
        msg = messages.get(message_id)
        if msg is None and not options:
            msg = messages[message_id] = Message(message_id, body, enqueued_at, q)
            q.put_total += 1
            q.body_bytes += len(body)
            q.ready_count += 1
            self.stored_bytes += len(body) + MESSAGE_OVERHEAD_BYTES
            heapq.heappush(q.ready, message_id)  # cheap for increasing ids: one comparison
            self.ids.observe(message_id)
            return
        if msg is None:
            msg = messages[message_id] = Message(message_id, body, enqueued_at, q)
            q.put_total += 1
            q.body_bytes += len(body)
            msg.state = DELETED  # in no structure yet; _detach below must not count it
        else:
            self.stored_bytes -= self._cost(msg)
        self._detach_restored(msg)
        options = options or {}
        msg.priority = options.get("priority", 0)
        msg.headers = options.get("headers") or None
        origin = options.get("origin")
        msg.origin = (origin[0], origin[1]) if origin else None
        msg.deliveries = 0
        msg.lease = None
        self.stored_bytes += self._cost(msg)
        self._cancel_expiry(msg)
        if options.get("expires_at"):
            self._set_expiry(msg, options["expires_at"])
        if options.get("delayed_until"):
            self._make_delayed(msg, options["delayed_until"])
        else:
            self._make_ready(msg)
        self.ids.observe(message_id)

    def _detach_restored(self: Broker, msg: Message) -> None:
        if msg.state != DELETED:
            self._detach(msg)

    def restore_state(self: Broker, name: str, message_id: int, state: int, deadline_at: float,
                      deliveries: int, lease: int | None, now: float) -> None:
        """restore_state replays a STATE record; a message acked since is left alone.

        A lease or delay keeps its deadline even when it has passed by `now`:
        the first `advance` after start-up ends it as it would have ended had
        the server been running (ready, dead-lettered or expired), keeping the
        lease, so a late ack after a restart still works. The lease counts as
        a used id even when the message is gone: a compacted journal may hold
        a message's lease and ack but no PUT.
        """
        if lease is not None:
            self.ids.observe(lease)
        q = self.queues.get(name)
        msg = q.messages.get(message_id) if q is not None else None
        if msg is None:
            return
        self._detach(msg)
        msg.deliveries = deliveries
        msg.lease = lease
        if state == LEASED:
            self._make_leased(msg, deadline_at)
        elif state == DELAYED:
            self._make_delayed(msg, deadline_at)
        else:
            self._make_ready(msg)

    def restore_ack(self: Broker, name: str, message_id: int) -> None:
        """restore_ack replays an ACK record; an unknown message is already gone."""
        q = self.queues.get(name)
        msg = q.messages.get(message_id) if q is not None else None
        if msg is not None:
            q.acked_total += 1
            self._drop(msg)

    def restore_move(self: Broker, from_queue: str, message_id: int, to_queue: str, deliveries: int,
                     origin: list[Any] | None, expires_at: float | None) -> None:
        """restore_move replays a MOVE record (dead-lettering or redrive)."""
        q = self.queues.get(from_queue)
        msg = q.messages.get(message_id) if q is not None else None
        if msg is not None:
            if origin:
                q.dead_lettered_total += 1
            self._move(msg, self._restored_queue(to_queue), deliveries,
                       (origin[0], origin[1]) if origin else None, expires_at, 0.0)

    def restore_queue_settings(self: Broker, name: str, record: dict[str, Any]) -> None:
        q = self._restored_queue(name)
        q.settings = QueueSettings.from_record(record)
        q.explicit = True

    def restore_purge(self: Broker, name: str) -> None:
        q = self.queues.get(name)
        if q is not None:
            self._remove_all(q)

    def restore_delete_queue(self: Broker, name: str) -> None:
        q = self.queues.pop(name, None)
        if q is not None:
            self._remove_all(q)
