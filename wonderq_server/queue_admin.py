"""Commands about whole queues: settings, listing, peek, purge, delete, redrive, stats.

Design decision: these are the broker's (a base class of Broker, so they
share its state and its state movements) but live apart from the message
path in broker.py, which stays about one message at a time. Like the rest of
the broker they are pure: `now` is passed in.

Rules:
* Commands that read or empty a queue (queue_info, peek, purge,
  delete_queue, redrive, message_info, configure_queue) never create one; a
  queue that does not exist is QUEUE_NOT_FOUND. create_queue and every
  message command create queues as before.
* create_queue is idempotent: the same settings again succeed; different
  settings for a queue made by create_queue (or configure_queue) are
  QUEUE_EXISTS. A queue that exists only because it was used takes the
  settings and becomes explicit.
* purge and delete_queue remove messages in every state, leased ones too
  (their leases then get NOT_FOUND), with one journal record each, however
  many messages go.
* redrive moves only ready messages that were dead-lettered (they know their
  origin), in the order receive would take them (priority, then oldest);
  one whose origin queue is full stays. It can be done a step at a time
  (RedriveRun), each step bounded in moves, bytes and messages looked at.
* peek shows what receive would hand out next, without leasing, and never
  shows a lease token (a peeker must not be able to ack).
* A plain message (message.py) is read where it lies, never materialized:
  peek and message_info show it through a throwaway Message (`view`), purge
  and delete uncount it, redrive passes over it (it has no origin).

Must not know: sockets, asyncio, wire formats, the clock.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from .errors import NOT_FOUND, QUEUE_EXISTS, QUEUE_NOT_FOUND, REDRIVE_RUNNING, CommandError
from .ids import id_time
from .message import DELETED, ID_MASK, READY, STATE_NAMES, Message, view
from .message_table import MessageTable
from .queue_settings import QueueSettings
from .queues import Queue
from .rates import RateWindow

# A peek returns no more messages once their bodies and headers pass this (see peek).
PEEK_REPLY_BYTES = 1024 * 1024

def _stale(msg: Message | bytes | None) -> bool:
    """_stale: a ready-heap entry's message (looked up by id) is not ready there."""
    return msg is None or (type(msg) is not bytes and msg.state != READY)


class RedriveRun:
    """One redrive under way (Broker.redrive_start).

    What it may move is fixed when it begins: the messages whose keys its own
    copy of the queue's ready heap holds (`keys`, popped in the order receive
    takes them), and at most `left` of them (`max`, or the messages the queue
    held). So messages that come to the queue while it runs, a consumer
    failing the redriven ones again among them, are left for the next; a key
    the copy holds twice (a message moved and back, whose old entry is stale)
    is looked at once, or such a message went twice and used up the place of
    another (a reviewer). The queue's own heap is popped only of the stale
    entries the moves leave at its top (or PEEK walked past them all, 100 ms
    a call after a redrive of 50,000: a reviewer): messages that stay (origin
    full, plain) remain there for its consumers. The copy is one pointer a
    message, and a queue has one redrive at a time (Broker.redrive_runs), so
    the copies held are at most the heaps themselves again.
    """

    __slots__ = ("__weakref__", "keys", "last_key", "left", "moved", "queue")

    def __init__(self, queue: Queue, left: int) -> None:
        self.queue = queue
        self.keys = list(queue.ready)  # a heap already
        self.last_key = -1  # popped last: a key twice in the copy pops twice in a row
        self.left = left
        self.moved = 0


if TYPE_CHECKING:
    from .broker import Broker


class QueueAdmin:
    # ------------------------------------------------------------ settings

    def create_queue(self: Broker, name: str, settings: dict[str, Any],
                     now: float) -> dict[str, Any]:
        """create_queue makes a queue with settings (the rest at their defaults)."""
        q = self.queues.get(name) if isinstance(name, str) else None
        wanted = QueueSettings().changed(name, settings)
        if q is not None and q.explicit:
            if q.settings != wanted:
                raise CommandError(QUEUE_EXISTS, f"queue {name!r} exists with other settings "
                                   f"({_describe(q.settings)}); use configure_queue to "
                                   "change them")
            return q.settings.as_dict()
        if q is None:
            q = self.queue(name)
        self._apply_settings(q, wanted)
        return q.settings.as_dict()

    def configure_queue(self: Broker, name: str, changes: dict[str, Any],
                        now: float) -> dict[str, Any]:
        """configure_queue changes the given settings of an existing queue."""
        q = self._admin_queue(name)
        self._apply_settings(q, q.settings.changed(name, changes))
        return q.settings.as_dict()

    def _apply_settings(self: Broker, q: Queue, settings: QueueSettings) -> None:
        """_apply_settings takes effect for what happens from now on: running leases,
        delays and expiries keep the times they were given."""
        q.settings = settings
        q.explicit = True
        self._waited_only.discard(q.name)  # in use now (broker.queue)
        if self.journal is not None:
            self.journal.queue_settings(q)

    def queue_info(self: Broker, name: str, now: float,
                   rates_now: float | None = None) -> dict[str, Any]:
        """queue_info: one queue's settings and counts; `rates_now` is the time on the clock
        sample_rates is given (the server's steady one), `now` when None."""
        q = self._admin_queue(name)
        return {"queue": q.name, "explicit": q.explicit, **q.settings.as_dict(),
                **self._queue_counts(q, now, now if rates_now is None else rates_now)}

    def list_queues(self: Broker, now: float) -> list[dict[str, Any]]:
        return [{"queue": q.name, "explicit": q.explicit, "messages": len(q.messages),
                 "ready": q.ready_count, "in_flight": q.leased_count,
                 "delayed": q.delayed_count}
                for _, q in sorted(self.queues.items())]

    def _admin_queue(self: Broker, name: str) -> Queue:
        q = self.queues.get(name) if isinstance(name, str) else None
        if q is None:
            raise CommandError(QUEUE_NOT_FOUND, f"no queue {name!r:.140}")
        return q

    # ------------------------------------------------------------ messages

    def peek(self: Broker, name: str, max_messages: int,
             max_bytes: int = PEEK_REPLY_BYTES) -> list[Message]:
        """peek returns up to `max_messages` ready messages in the order receive takes them,
        and stops once their bodies and headers (as --max-memory counts them:
        Message.header_bytes) pass `max_bytes` (at least one is returned). Bodies alone, a
        reviewer's 1,000 one-byte messages with 4 KiB of headers each made a 17-byte peek an
        11 MB text reply.

        The byte bound: a peek leases nothing, so the same stored messages can be
        peeked by any number of connections, each reply a copy. A reviewer's 20-byte
        peeks of 1,000 messages of 256 KiB, from connections that never read, held
        250 MB each until the server ran out of memory.

        It walks the ready heap from its root, smallest key first, keeping a
        small heap of the frontier: O(k log k) for k messages, whatever the
        queue's length, skipping stale entries as receive would; and beside
        it the table's run, which is in order already, taking whichever
        comes first as receive does. Plain
        messages come back as throwaway Messages (`view`), not stored.
        """
        q = self._admin_queue(name)
        ready, messages = q.ready, q.messages
        found: list[Message] = []
        seen: set[int] = set()
        frontier = [(ready[0], 0)] if ready else []
        plain = messages.plain_from_oldest()  # the run: in order already
        next_plain = next(plain, None)
        size = 0
        while (frontier or next_plain is not None) and len(found) < max_messages \
                and size < max_bytes:
            if next_plain is not None and (not frontier or next_plain[0] < frontier[0][0]):
                found.append(view(next_plain[0], next_plain[1], q))
                size += len(next_plain[1])
                next_plain = next(plain, None)
                continue
            key, index = heapq.heappop(frontier)
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(ready):
                    heapq.heappush(frontier, (ready[child], child))
            message_id = key & ID_MASK
            stored = messages.get(message_id)
            if (stored is None or message_id in seen
                    or (type(stored) is not bytes and stored.state != READY)):
                continue
            seen.add(message_id)
            found.append(view(message_id, stored, q))
            size += len(found[-1].body) + found[-1].header_bytes()
        return found

    def message_info(self: Broker, name: str, message_id: int, now: float) -> dict[str, Any]:
        q = self._admin_queue(name)
        stored = q.messages.get(message_id)
        if stored is None:
            raise CommandError(NOT_FOUND, f"no message {message_id} in queue {name!r}")
        msg = view(message_id, stored, q)
        return {
            "id": msg.id,
            "queue": q.name,
            "state": STATE_NAMES[msg.state],
            "deliveries": msg.deliveries,
            "priority": msg.priority,
            "enqueued_at": msg.enqueued_at,
            "deadline_at": msg.deadline_at,
            "expires_at": msg.expires_at,
            "body_bytes": len(msg.body),
            "headers": dict(msg.headers or {}),
            "dead_letter": list(msg.origin) if msg.origin else None,
        }

    def purge(self: Broker, name: str, now: float) -> int:
        """purge removes every message of a queue; returns how many."""
        q = self._admin_queue(name)
        if self.journal is not None and q.messages:
            self.journal.purge(q)
        return self._remove_all(q)

    def delete_queue(self: Broker, name: str, now: float) -> int:
        """delete_queue removes a queue, its settings and its messages; returns how many
        messages. Its waiting receives are answered with no messages."""
        q = self._admin_queue(name)
        if self.journal is not None:
            self.journal.delete_queue(q)
        removed = self._remove_all(q)
        self._drop_queue(name)
        while (waiter := q.next_waiter()) is not None:
            self._finish_waiter(waiter)
            waiter.deliver([])
        return removed

    def _remove_all(self: Broker, q: Queue) -> int:
        removed = len(q.messages)
        for msg in q.messages.values():
            self.stored_bytes -= self._cost(msg)
            if type(msg) is bytes:  # plain: READY, in no structure but the table and heap
                q.ready_count -= 1
                continue
            self._detach(msg)
            self._cancel_expiry(msg)
            msg.state = DELETED
        q.messages = MessageTable()
        q.ready = []
        q.body_bytes = 0
        return removed

    def redrive(self: Broker, name: str, max_messages: int | None, now: float) -> int:
        """redrive moves dead-lettered ready messages back to the queues they came from.

        Each goes back with its delivery count reset, as if newly put, in the
        order receive would take them (priority, then oldest); one
        whose origin queue is full (or cannot be created) stays here. All at
        once: the server moves a big queue a step at a time (redrive_start,
        redrive_step; service.py).
        """
        run = self.redrive_start(name, max_messages)
        self.redrive_step(run, now)
        return run.moved

    def redrive_start(self: Broker, name: str, max_messages: int | None) -> RedriveRun:
        """redrive_start begins a redrive of queue `name` (QUEUE_NOT_FOUND if there is
        none): what it may move is fixed now (RedriveRun)."""
        q = self._admin_queue(name)
        running = self.redrive_runs.get(name)
        if running is not None and running.queue is q:
            raise CommandError(REDRIVE_RUNNING, f"a redrive of {name!r:.140} is under way "
                               f"({running.moved} moved so far); retry once it has ended")
        run = RedriveRun(q, len(q.messages) if max_messages is None else max_messages)
        self.redrive_runs[name] = run
        return run

    def redrive_step(self: Broker, run: RedriveRun, now: float,
                     max_moves: int | None = None, max_bytes: int | None = None,
                     max_looks: int | None = None) -> bool:
        """redrive_step moves the next messages of `run`; True once it is done (nothing
        left that it may move, or its queue deleted since), False when it stopped at a
        bound: `max_moves` messages moved, messages counting `max_bytes` moved
        (`moved_bytes`; at least one), or `max_looks` keys looked at. Messages that
        cannot go back are looked at once and left where they are, in the queue and
        its heap, so a step's work is bounded however many of them come first."""
        q = run.queue
        if self.queues.get(q.name) is not q:
            return self._redrive_ended(run)  # deleted (and perhaps made again) since
        keys, messages, ready = run.keys, q.messages, q.ready
        moved = looks = 0
        bytes_from = self.moved_bytes
        while keys and run.left > 0:
            if (max_moves is not None and moved >= max_moves) \
                    or (max_looks is not None and looks >= max_looks) \
                    or (max_bytes is not None and self.moved_bytes - bytes_from >= max_bytes):
                return False
            key = heapq.heappop(keys)
            looks += 1
            if key == run.last_key:
                continue  # the same message's second entry (RedriveRun)
            run.last_key = key
            msg = messages.get(key & ID_MASK)
            if msg is None or type(msg) is bytes or msg.state != READY:
                # Gone (moved by a key seen before, received, deleted), plain (never
                # dead-lettered: nowhere to go back to) or not ready: a stale entry.
                continue
            if msg.origin is None or msg.origin[0] == q.name:
                continue
            try:
                target = self.queue(msg.origin[0])
            except CommandError:  # TOO_MANY_QUEUES
                continue
            if target.is_full():
                continue
            self._move(msg, target, 0, None, self._expiry_for(target, now), now)
            moved += 1
            run.moved += 1
            run.left -= 1
            while ready and _stale(messages.get(ready[0] & ID_MASK)):
                heapq.heappop(ready)  # the moved one's entry, at the top (RedriveRun)
        return self._redrive_ended(run)

    def _redrive_ended(self: Broker, run: RedriveRun) -> bool:
        if self.redrive_runs.get(run.queue.name) is run:
            del self.redrive_runs[run.queue.name]
        return True

    # --------------------------------------------------------------- stats

    def sample_rates(self: Broker, now: float) -> None:
        """sample_rates records every queue's totals; the server calls it once a second, with
        its steady clock (time.monotonic): by the wall clock, a step of the system's time made
        every rate wrong (or 0) for the 5 s the samples cover."""
        for q in self.queues.values():
            q.rates.sample(now, q.totals())

    def reset_totals(self: Broker) -> None:
        """reset_totals zeroes the per-queue totals (after replay: they count from a start)."""
        for q in self.queues.values():
            q.put_total = q.acked_total = q.redelivered_total = 0
            q.dead_lettered_total = q.expired_total = 0
            q.rates = RateWindow()

    def _queue_counts(self: Broker, q: Queue, now: float, rates_now: float) -> dict[str, Any]:
        put_rate, ack_rate, redelivered_rate = q.rates.rates(rates_now, q.totals())
        oldest = q.messages.oldest_id()
        return {
            "messages": len(q.messages),
            "ready": q.ready_count,
            "in_flight": q.leased_count,
            "delayed": q.delayed_count,
            "waiting": q.live_waiters(),
            "put_total": q.put_total,
            "acked_total": q.acked_total,
            "redelivered_total": q.redelivered_total,
            "dead_lettered_total": q.dead_lettered_total,
            "expired_total": q.expired_total,
            "oldest_age_s": round(max(0.0, now - id_time(oldest)), 3) if oldest is not None
            else 0.0,
            "put_rate": put_rate,
            "ack_rate": ack_rate,
            "redelivered_rate": redelivered_rate,
        }

    def stats(self: Broker, now: float, rates_now: float | None = None) -> dict[str, Any]:
        """stats is a snapshot of every queue's counts and the server-wide totals (`rates_now`
        as for queue_info)."""
        at = now if rates_now is None else rates_now
        queues = {name: self._queue_counts(q, now, at) for name, q in self.queues.items()}
        return {
            "messages": sum(len(q.messages) for q in self.queues.values()),
            "waiting_consumers": sum(c["waiting"] for c in queues.values()),
            "queue_count": len(self.queues),
            "max_queues": self.max_queues,
            "too_many_queues_total": self.too_many_queues_total,
            "stored_bytes": self.stored_bytes,
            "max_memory": self.max_memory_bytes,
            "full_refusals_total": self.full_refusals_total,
            "queues": queues,
        }


def _describe(settings: QueueSettings) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings.as_dict().items())
