"""The broker: queues, leases and the visibility rules, as pure state.

Design decision: the broker is plain Python with no I/O and no clock. Every
operation takes `now` (seconds since the epoch, a float) from its caller, so
the whole queueing behaviour is unit-tested with numbers as the clock and no
sleeping. The server calls `advance(now)` when the one timer it keeps, armed
at `next_deadline()`, fires.

Rules:
* A message is in exactly one state (message.py) and is counted in exactly
  one of its queue's counters. `_detach` and the `_make_*` functions are the
  only code that moves a message between states, so counters cannot drift.
* Only the lease of the latest delivery can ack, nack or touch a message.
  A lease that ran out still works until the message is delivered again
  (late ack); after that every older lease gets LEASE_LOST and changes
  nothing, so a slow consumer can never delete a message someone else holds.
  A message that is gone (acked, or never existed) gets NOT_FOUND.
* Leases belong to the message, not to a connection.
* Waiters are served first come first served the moment a message becomes
  ready (put, nack, lease or delay running out), so a queue never has both a
  ready message and a live waiter. `deliver` callbacks run inside broker
  calls and must not call back into the broker.
* Deadlines that pass are handled in deadline order; messages whose leases
  run out go back into the ready order under their own id.

* Every change of state that must survive a restart is reported to the
  `journal` (if one is attached) as it happens: `put(msg)`, `state(msg)`
  (leased, given back, touched), `ack(msg)`. Lease and delay expiry are not
  reported: they follow from the recorded deadline. `restore_*` applies those
  same records when the journal is replayed at start-up.

Must not know: sockets, asyncio, wire formats, the clock, the journal's file
format.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .deadlines import DeadlineHeap
from .errors import BODY_TOO_LARGE, LEASE_LOST, NOT_FOUND, CommandError
from .ids import IdSequence
from .message import DELAYED, DELETED, LEASED, READY, Message
from .queues import Queue, Waiter, check_queue_name

DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024

# A ready heap is rebuilt when its entries outnumber its ready messages by more
# than this factor plus slack. Stale entries are left by late acks, touches and
# nacks of messages that went back to ready; a late nack, or a late touch whose
# lease runs out again, also leaves a second entry for a message still ready.
READY_HEAP_FACTOR = 2
READY_HEAP_SLACK = 64


class ChangeLog(Protocol):
    """Where the broker reports changes that must survive a restart (journal.py)."""

    def put(self, msg: Message) -> None: ...
    def state(self, msg: Message) -> None: ...
    def ack(self, msg: Message) -> None: ...


class Broker:
    journal: ChangeLog | None = None

    def __init__(self, *, visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.visibility_timeout_s = visibility_timeout_s
        self.max_message_bytes = max_message_bytes
        self.queues: dict[str, Queue] = {}
        self.deadlines = DeadlineHeap()
        self.ids = IdSequence()

    # ------------------------------------------------------------------ queues

    def queue(self, name: str) -> Queue:
        """queue returns the queue called `name`, creating it on first use.

        The name is checked only when the queue is created: a name already in
        the table was valid then. A name that is not a str (even an unhashable
        one) is refused with INVALID_QUEUE_NAME, never a TypeError.
        """
        q = self.queues.get(name) if isinstance(name, str) else None
        if q is None:
            q = self.queues[name] = Queue(check_queue_name(name))
        return q

    def _existing_message(self, name: str, message_id: int, lease: int) -> Message:
        """_existing_message finds a message and checks that `lease` is its latest."""
        q = self.queues.get(name)
        msg = q.messages.get(message_id) if q is not None else None
        if msg is None:
            raise CommandError(NOT_FOUND, f"no message {message_id} in queue {name!r}"
                               " (acked already, or never put)")
        if msg.lease != lease:
            raise CommandError(LEASE_LOST, f"lease {lease} no longer holds message "
                               f"{message_id}: it has been delivered again since")
        return msg

    # -------------------------------------------------------------------- put

    def put(self, name: str, body: bytes, now: float) -> int:
        """put stores one message and returns its id; nothing is stored on error."""
        self._check_body(body)
        q = self.queue(name)
        msg_id = self._store(q, body, now)
        if q.waiters:
            self._serve_waiters(q, now)
        return msg_id

    def put_many(self, name: str, bodies: Sequence[bytes], now: float) -> list[int]:
        """put_many stores all bodies, or none of them if any is refused."""
        for body in bodies:
            self._check_body(body)
        q = self.queue(name)
        ids = [self._store(q, body, now) for body in bodies]
        if q.waiters:
            self._serve_waiters(q, now)
        return ids

    def _check_body(self, body: bytes) -> None:
        if len(body) > self.max_message_bytes:
            raise CommandError(BODY_TOO_LARGE, f"message body is {len(body)} bytes, over the "
                               f"limit of {self.max_message_bytes} (--max-message-bytes)")

    def _store(self, q: Queue, body: bytes, now: float) -> int:
        msg = Message(self.ids.next(now), body, now, q)
        q.messages[msg.id] = msg
        q.put_total += 1
        q.body_bytes += len(body)
        self._make_ready(msg)
        if self.journal is not None:
            self.journal.put(msg)
        return msg.id

    # ---------------------------------------------------------------- receive

    def receive(self, name: str, max_messages: int, visibility_s: float | None,
                now: float) -> list[Message]:
        """receive leases up to `max_messages` ready messages, oldest first.

        The returned messages are the live objects; the caller must encode
        them before calling into the broker again.
        """
        q = self.queue(name)
        if not q.ready_count:
            return []
        return self._take(q, max_messages, self._visibility(visibility_s), now)

    def wait(self, name: str, max_messages: int, visibility_s: float | None, until: float,
             deliver: Callable[[list[Message]], None], now: float) -> Waiter:
        """wait parks a receive until a message is ready or `until` passes.

        `deliver` is called exactly once (unless `cancel_wait` comes first):
        with the leased messages, or with [] when the wait runs out.
        """
        q = self.queue(name)
        waiter = Waiter(q, max_messages, self._visibility(visibility_s), until, deliver)
        q.waiters.append(waiter)
        self.deadlines.push(until, waiter)
        if q.ready_count:
            self._serve_waiters(q, now)
        return waiter

    def cancel_wait(self, waiter: Waiter) -> None:
        """cancel_wait withdraws a parked receive (its consumer went away); idempotent."""
        if waiter.done:
            return
        self._finish_waiter(waiter)
        waiter.queue.waiter_gone()

    def _visibility(self, visibility_s: float | None) -> float:
        return self.visibility_timeout_s if visibility_s is None else visibility_s

    def _take(self, q: Queue, max_messages: int, visibility_s: float,
              now: float) -> list[Message]:
        taken: list[Message] = []
        ready, messages = q.ready, q.messages
        while q.ready_count and len(taken) < max_messages:
            msg = messages.get(heapq.heappop(ready))
            if msg is None or msg.state != READY:
                continue  # a stale entry: acked late, or already leased again
            self._detach(msg)
            self._make_leased(msg, now + visibility_s)
            msg.deliveries += 1
            if msg.deliveries > 1:
                q.redelivered_total += 1
            msg.lease = self.ids.next(now)
            taken.append(msg)
            if self.journal is not None:
                self.journal.state(msg)
        return taken

    def _serve_waiters(self, q: Queue, now: float) -> None:
        while q.ready_count:
            waiter = q.next_waiter()
            if waiter is None:
                return
            self._finish_waiter(waiter)
            waiter.deliver(self._take(q, waiter.max_messages, waiter.visibility_s, now))

    def _finish_waiter(self, waiter: Waiter) -> None:
        waiter.done = True
        if waiter.deadline_at is not None:  # still in the deadline heap
            waiter.deadline_at = None
            self.deadlines.forget()

    # ----------------------------------------------------- ack / nack / touch

    def ack(self, name: str, message_id: int, lease: int, now: float) -> None:
        """ack deletes a message for good; only its latest lease may do so."""
        msg = self._existing_message(name, message_id, lease)
        q = msg.queue
        self._detach(msg)
        msg.state = DELETED
        del q.messages[message_id]
        q.acked_total += 1
        q.body_bytes -= len(msg.body)
        _compact_ready(q)
        if self.journal is not None:
            self.journal.ack(msg)

    def nack(self, name: str, message_id: int, lease: int, delay_s: float, now: float) -> None:
        """nack gives a message back: ready at once, or after `delay_s` seconds."""
        msg = self._existing_message(name, message_id, lease)
        self._detach(msg)
        if delay_s > 0:
            self._make_delayed(msg, now + delay_s)
        else:
            self._make_ready(msg)
        if self.journal is not None:
            self.journal.state(msg)
        if msg.state == READY and msg.queue.waiters:
            self._serve_waiters(msg.queue, now)

    def touch(self, name: str, message_id: int, lease: int, visibility_s: float | None,
              now: float) -> float:
        """touch extends (or, after a late touch, renews) a lease; returns the new deadline.

        A lease that ran out but whose message has not been delivered again
        is taken back by its owner, as a late ack would be accepted.
        """
        msg = self._existing_message(name, message_id, lease)
        self._detach(msg)
        deadline = now + self._visibility(visibility_s)
        self._make_leased(msg, deadline)
        if self.journal is not None:
            self.journal.state(msg)
        return deadline

    # --------------------------------------------------------------- recovery

    def restore_put(self, name: str, message_id: int, body: bytes, enqueued_at: float) -> None:
        """restore_put replays a PUT record: the message exists, ready, never delivered.

        A PUT for a message that exists already (a compacted journal may hold
        a record and, later, a snapshot of the same message) resets it, so
        replay ends in the state the last record describes.
        """
        q = self.queues.get(name) or self.queue(name)
        messages = q.messages
        msg = messages.get(message_id)
        if msg is None:
            msg = messages[message_id] = Message(message_id, body, enqueued_at, q)
            q.put_total += 1
            q.body_bytes += len(body)
            q.ready_count += 1
            ids = self.ids
            if message_id > ids.last:
                # The common case, replaying puts in id order: larger than every id
                # in the ready heap, so appending keeps the heap property.
                q.ready.append(message_id)
                ids.last = message_id
            else:
                heapq.heappush(q.ready, message_id)
            return
        self._detach(msg)
        msg.deliveries = 0
        msg.lease = None
        self._make_ready(msg)
        self.ids.observe(message_id)

    def restore_state(self, name: str, message_id: int, state: int, deadline_at: float,
                      deliveries: int, lease: int | None, now: float) -> None:
        """restore_state replays a STATE record; a message acked since is left alone.

        A lease or delay whose deadline has passed by `now` is restored as
        ready, keeping its lease, so a late ack after a restart still works.
        The lease counts as a used id even when the message is gone: a
        compacted journal may hold a message's lease and ack but no PUT.
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
        if state == LEASED and deadline_at > now:
            self._make_leased(msg, deadline_at)
        elif state == DELAYED and deadline_at > now:
            self._make_delayed(msg, deadline_at)
        else:
            self._make_ready(msg)

    def restore_ack(self, name: str, message_id: int) -> None:
        """restore_ack replays an ACK record; an unknown message is already gone."""
        q = self.queues.get(name)
        msg = q.messages.pop(message_id, None) if q is not None else None
        if msg is not None:
            self._detach(msg)
            msg.state = DELETED
            q.acked_total += 1
            q.body_bytes -= len(msg.body)
            _compact_ready(q)

    # -------------------------------------------------------------- deadlines

    def next_deadline(self) -> float | None:
        """next_deadline is when `advance` next has work to do, or None."""
        return self.deadlines.next_at()

    def advance(self, now: float) -> int:
        """advance handles every deadline at or before `now`; returns how many.

        Leases that ran out and delays that ended make their messages ready
        (in id order, since the ready heap sorts them); waits that ran out are
        answered with no messages. Waiters of touched queues are served last,
        so a message freed at the same instant as a wait ends still reaches a
        waiter that is parked for it.
        """
        handled = 0
        freed: set[Queue] = set()
        expired_waiters: list[Waiter] = []
        while (item := self.deadlines.pop_due(now)) is not None:
            handled += 1
            item.deadline_at = None  # popped: no longer in the heap, nothing to forget
            if isinstance(item, Waiter):
                expired_waiters.append(item)
                continue
            msg: Message = item
            self._detach(msg)
            self._make_ready(msg)
            freed.add(msg.queue)
        for q in freed:
            if q.waiters:
                self._serve_waiters(q, now)
        for waiter in expired_waiters:
            if not waiter.done:
                self._finish_waiter(waiter)
                waiter.queue.waiter_gone()
                waiter.deliver([])
        return handled

    # ------------------------------------------------------- state movements

    def _detach(self, msg: Message) -> None:
        """_detach takes a message out of its current state's count and deadline."""
        q = msg.queue
        state = msg.state
        if state == READY:
            q.ready_count -= 1  # its ready-heap entry goes stale; skipped when popped
        else:
            if state == LEASED:
                q.leased_count -= 1
            elif state == DELAYED:
                q.delayed_count -= 1
            if msg.deadline_at is not None:  # its heap entry goes stale
                msg.deadline_at = None
                self.deadlines.forget()

    def _make_ready(self, msg: Message) -> None:
        q = msg.queue
        msg.state = READY
        q.ready_count += 1
        heapq.heappush(q.ready, msg.id)
        _compact_ready(q)  # the heap grows only here, so checking here bounds it

    def _make_leased(self, msg: Message, deadline_at: float) -> None:
        msg.state = LEASED
        msg.queue.leased_count += 1
        msg.deadline_at = deadline_at
        self.deadlines.push(deadline_at, msg)

    def _make_delayed(self, msg: Message, deadline_at: float) -> None:
        msg.state = DELAYED
        msg.queue.delayed_count += 1
        msg.deadline_at = deadline_at
        self.deadlines.push(deadline_at, msg)

    # ------------------------------------------------------------------ stats

    def stats(self, now: float) -> dict[str, Any]:
        """stats is a snapshot of every queue's counts and the server-wide totals."""
        queues = {}
        waiting = 0
        for name, q in self.queues.items():
            live_waiters = q.live_waiters()
            waiting += live_waiters
            queues[name] = {
                "ready": q.ready_count,
                "in_flight": q.leased_count,
                "delayed": q.delayed_count,
                "waiting": live_waiters,
                "put_total": q.put_total,
                "acked_total": q.acked_total,
                "redelivered_total": q.redelivered_total,
            }
        return {
            "messages": sum(len(q.messages) for q in self.queues.values()),
            "waiting_consumers": waiting,
            "queues": queues,
        }


def _compact_ready(q: Queue) -> None:
    """_compact_ready rebuilds a ready heap that holds too many stale or repeated ids.

    The rebuilt heap holds each ready message's id exactly once, so a client
    that nacks (or late-touches) the same message over and over cannot make
    the heap grow without bound.
    """
    if len(q.ready) > READY_HEAP_FACTOR * q.ready_count + READY_HEAP_SLACK:
        messages = q.messages
        q.ready = list({i for i in q.ready
                        if (m := messages.get(i)) is not None and m.state == READY})
        heapq.heapify(q.ready)
