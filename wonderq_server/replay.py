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
* A record about a message that is gone (acked since) changes nothing, but
  for a MOVE, which holds the whole message and recreates it in its new
  queue (compaction.py needs this).
* A PUT without options restores a plain message (message.py), as the put
  stored it; any record that changes a plain message materializes it first.
  PUTs out of id order leave plain messages outside the table's run;
  `settle_runs`, once every record is applied, puts them in it.
* A queue made by use (not explicit) that holds no message once every
  record is applied is forgotten (`forget_emptied_queues`): no record keeps
  such a queue, so it must not come back just because the journal still
  holds the PUTs of its old messages (it would not after a compaction).
* Deadlines are restored as recorded, even when passed; the journal calls
  `advance(now)` once replay is done (journal.py), so leases and delays that
  ended while the server was down end as they would have, dead-lettering and
  expiry included.

Must not know: the journal's file format, files, clocks.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from .message import (
    DELAYED,
    DELETED,
    LEASED,
    MESSAGE_OVERHEAD_BYTES,
    READY,
    Message,
    materialize,
)
from .queue_admin import QueueAdmin
from .queue_settings import QueueSettings

if TYPE_CHECKING:
    from .broker import Broker
    from .queues import Queue


# Broker's bases are one line, Broker(Replay(QueueAdmin)), not two beside each other: a
# compiled build compiles Broker (compiled.py), and a compiled class takes one base.
class Replay(QueueAdmin):
    def restore_put(self: Broker, name: str, message_id: int, body: bytes,
                    options: dict[str, Any] | None = None) -> None:
        """restore_put replays a PUT record: the message exists, never delivered.

        `options` (a PUTX record) may give priority, headers, expires_at,
        origin and delayed_until; without any, the message is stored plain
        (message.py), as a put stores it (`restore_puts`). A PUT for a
        message that exists already (a compacted journal may hold a record
        and, later, a snapshot of the same message) resets it, so replay ends
        in the state the last record describes. The record's enqueued_at is
        not read: it is the time in the id.
        """
        if not options:
            self.restore_puts(name, [message_id], [body])
            return
        self._restore_message(self._restored_queue(name), message_id, body, options, 0)

    def restore_puts(self: Broker, name: str, ids: list[int], bodies: list[bytes]) -> None:
        """restore_puts replays a run of PUT records (no options) to one queue, in order:
        each message is stored plain and READY, as restore_put says, in one loop that
        counts once at the end. A start replays one for every message waiting:
        millions, so no object is made per message and, for increasing ids, nothing
        but an append to the table's run (message_table.py)."""
        q = self._restored_queue(name)
        messages, ready = q.messages, q.ready
        if messages.extend_run_if_in_order(ids, bodies):  # the usual case, in one step
            self._count_restored_puts(q, len(ids), sum(map(len, bodies)))
            self.ids.observe(ids[-1])
            return
        append_to_run = messages.append_to_run
        count = size = 0
        for message_id, body in zip(ids, bodies, strict=True):
            if append_to_run(message_id, body):
                count += 1
                size += len(body)
                continue
            stored = messages.get(message_id)
            if stored is None:
                messages[message_id] = body
                heapq.heappush(ready, message_id)
                count += 1
                size += len(body)
            elif type(stored) is not bytes:  # (a plain one is already what the record says)
                self._count_restored_puts(q, count, size)  # what the reset may look at
                count = size = 0
                self._restore_message(q, message_id, body, {}, 0)
                ready = q.ready  # the reset may have rebuilt the heap
        self._count_restored_puts(q, count, size)
        if ids:
            self.ids.observe(max(ids))

    def _count_restored_puts(self: Broker, q: Queue, count: int, size: int) -> None:
        q.put_total += count
        q.ready_count += count
        q.body_bytes += size
        self.stored_bytes += size + count * MESSAGE_OVERHEAD_BYTES

    def _restore_message(self: Broker, q: Queue, message_id: int, body: bytes,
                         options: dict[str, Any], deliveries: int) -> Message:
        """_restore_message makes `message_id` in `q` the Message that `options` and
        `deliveries` describe, not leased, whatever it was before."""
        messages = q.messages
        stored = messages.get(message_id)
        if stored is None:
            msg = messages[message_id] = Message(message_id, body, q)
            q.put_total += 1
            q.body_bytes += len(body)
            msg.state = DELETED  # in no structure yet; _detach below must not count it
        else:
            if type(stored) is bytes:
                stored = materialize(messages, message_id, stored, q)
            msg = stored
            self.stored_bytes -= self._cost(msg)
        self._detach_restored(msg)
        msg.priority = options.get("priority", 0)
        msg.headers = options.get("headers") or None
        origin = options.get("origin")
        msg.origin = (origin[0], origin[1]) if origin else None
        msg.deliveries = deliveries
        msg.lease = None
        msg.kept_lease = self._kept_lease(options, origin, message_id)
        self.stored_bytes += self._cost(msg)
        self._cancel_expiry(msg)
        if options.get("expires_at"):
            self._set_expiry(msg, options["expires_at"])
        if options.get("delayed_until"):
            self._make_delayed(msg, options["delayed_until"])
        else:
            self._make_ready(msg)
        self.ids.observe(message_id)
        return msg

    def _detach_restored(self: Broker, msg: Message) -> None:
        if msg.state != DELETED:
            self._detach(msg)

    def _restored_message(self: Broker, name: str, message_id: int) -> Message | None:
        """_restored_message is the message a record names, materialized if it was plain
        (the record is about to change it), or None when it is gone."""
        q = self.queues.get(name)
        if q is None:
            return None
        stored = q.messages.get(message_id)
        if type(stored) is bytes:
            return materialize(q.messages, message_id, stored, q)
        return stored

    def restore_state(self: Broker, name: str, message_id: int, state: int, deadline_at: float,
                      deliveries: int, lease: int | None, now: float,
                      kept_lease: int | None = None) -> None:
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
        msg = self._restored_message(name, message_id)
        if msg is None:
            return
        self._detach(msg)
        msg.deliveries = deliveries
        if lease is not None:
            msg.kept_lease = None  # a lease of its own: none kept aside (broker._take)
        elif (kept := self._possible_lease(kept_lease, message_id)) is not None:
            msg.kept_lease = kept  # a nack's: for a late ack only
        elif msg.lease is not None:
            # A lease taken back (a nack with `unseen`) ends the kept one too (broker.nack).
            # Not a snapshot's STATE after its PUTX, which comes with no lease to take back.
            msg.kept_lease = None
        msg.lease = lease
        if state == LEASED:
            self._make_leased(msg, deadline_at)
        elif state == DELAYED:
            self._make_delayed(msg, deadline_at)
        else:
            self._make_ready(msg)

    def restore_ack(self: Broker, name: str, message_id: int) -> None:
        """restore_ack replays an ACK record; an unknown message is already gone."""
        msg = self._restored_message(name, message_id)
        if msg is not None:
            msg.queue.acked_total += 1
            self._drop(msg)

    def restore_move(self: Broker, from_queue: str, message_id: int, to_queue: str,
                     deliveries: int, origin: list[Any] | None, expires_at: float | None,
                     body: bytes | None, options: dict[str, Any] | None) -> None:
        """restore_move replays a MOVE record (dead-lettering or redrive).

        The record holds the whole message (journal_format.py): when the
        message is not in `from_queue` (a compaction's snapshot passed over it
        because it had moved before its slice was written, compaction.py), it
        is made in `to_queue` as the record describes, ready. A message found
        in `from_queue` moves as the running server moved it.
        """
        msg = self._restored_message(from_queue, message_id)
        target = self._restored_queue(to_queue)
        if msg is None:
            if body is None:  # a MOVE older than a2807bf holds no message to make
                return
            described = {**(options or {}), "origin": origin, "expires_at": expires_at}
            self._restore_message(target, message_id, body, described, deliveries)
            return
        if origin:
            msg.queue.dead_lettered_total += 1
        self._move(msg, target, deliveries, (origin[0], origin[1]) if origin else None,
                   expires_at, 0.0)
        # As the record says, not from the lease replay last gave it: a move by a nack with
        # `unseen` kept none (a reviewer's replay let a given-back lease ack).
        msg.kept_lease = self._kept_lease(options or {}, origin, message_id)

    def _kept_lease(self: Broker, options: dict[str, Any], origin: Any,
                    message_id: int) -> int | None:
        """_kept_lease: the dead_letter_lease a record's options give a dead-lettered
        message (for a late ack: broker.py), if it is a lease that message could have had
        (a later id than its own); it counts as a used id."""
        return self._possible_lease(options.get("dead_letter_lease"), message_id) \
            if origin else None

    def _possible_lease(self: Broker, lease: Any, message_id: int) -> int | None:
        """_possible_lease is `lease` if the message could have had it (an int, a later id
        than its own), counted as a used id; else None."""
        if type(lease) is not int or lease <= message_id:
            return None
        self.ids.observe(lease)
        return lease

    def restore_queue_settings(self: Broker, name: str, record: dict[str, Any]) -> None:
        q = self._restored_queue(name)
        q.settings = QueueSettings.from_record(record)
        q.explicit = True

    def restore_purge(self: Broker, name: str) -> None:
        q = self.queues.get(name)
        if q is not None:
            self._remove_all(q)

    def settle_runs(self: Broker) -> None:
        """settle_runs moves the plain messages replay left out of their queue's run (their
        PUTs came out of id order) into it, and rebuilds the ready heap of the Messages
        left; the journal calls it once every record is applied. Without it, a backlog
        restored from a journal compacted while producers were putting would keep an id
        object, a dict entry and a heap slot per message (message_table.py)."""
        for q in self.queues.values():
            if q.messages.rebuild_run():
                q.ready = [m.ready_key for m in q.messages.others.values() if m.state == READY]
                heapq.heapify(q.ready)

    def forget_emptied_queues(self: Broker) -> None:
        """forget_emptied_queues drops the queues made by use that replay left empty; the
        journal calls it once every record is applied (no waiter exists yet)."""
        for name in [name for name, q in self.queues.items()
                     if not q.explicit and not q.messages]:
            self._drop_queue(name)

    def restore_delete_queue(self: Broker, name: str) -> None:
        q = self.queues.get(name)
        if q is not None:
            self._drop_queue(name)
            self._remove_all(q)
