"""The broker: queues, leases and the visibility rules, as pure state.

Design decision: the broker is plain Python with no I/O and no clock. Every
operation takes `now` (seconds since the epoch, a float) from its caller, so
the whole queueing behaviour is unit-tested with numbers as the clock and no
sleeping. The server calls `advance(now)` when the one timer it keeps, armed
at `next_deadline()`, fires. This module is the message path (put, receive,
ack, nack, touch, deadlines, dead-lettering, expiry); commands about whole
queues live in queue_admin.py, and the replay of journal records in replay.py.

Design decision (issue 6): a put with nothing but a body stores the body
alone, a *plain* message (message.py), counted READY; the broker makes it a
Message only when it must change it (`_take` leases it; replay restores a
state, an ack or a move onto it). The put path of nearly every message, and
a backlog of millions, then carry no object per message. Plain messages put
in order wait in the queue's table's run (message_table.py), which is their
ready order, instead of on the ready heap: `_take` takes from whichever of
the two comes first.

Rules:
* A message is in exactly one state (message.py) and is counted in exactly
  one of its queue's counters. `_detach`, the `_make_*` functions, `_drop`
  and `_move` are the only code that moves a message between states or
  queues, so counters cannot drift; besides them, `_store_plain` stores a
  plain message READY, and `_remove_all` (queue_admin.py) uncounts one.
* Everything that reads a queue's table handles both forms of a message:
  a Message, or a plain message's body (`type(value) is bytes`). A plain
  message is READY and its ready-heap key is its id; an ack, nack or touch
  naming one is LEASE_LOST (it was never leased), and it costs
  `len(body) + MESSAGE_OVERHEAD_BYTES` against --max-memory, like a Message
  without headers, so materializing one changes no accounting.
* Only the lease of the latest delivery can ack, nack or touch a message.
  A lease that ran out still works until the message is delivered again
  (late ack, late touch); after that every older lease gets LEASE_LOST and
  changes nothing, so a slow consumer can never delete a message someone
  else holds.
* A delivery ended by its consumer keeps its lease aside (`kept_lease`) and
  the message has no lease: that lease still acks it (a late ack) until it
  is delivered again, and does nothing else, so a touch after a nack cannot
  take back what its consumer gave back (a reviewer's heartbeat hid a nacked
  message for an hour), nor a second nack delay it again. A lease that ran
  out is not given back by anyone and stays the message's own (late touch).
* The same holds on the last delivery, whose end (its lease running out, or
  a nack) moves the message to the dead-letter queue: the move keeps that
  lease aside, and an ack naming the queue it came from finds it there
  (`_dead_lettered`) until it is received from there. Else a handler that
  succeeded just past its lease would have its work dead-lettered, as it
  would not on any earlier delivery.
  A message that is gone (acked, expired, moved to another queue, or never
  existed) gets NOT_FOUND.
* Leases belong to the message, not to a connection.
* Waiters are served first come first served the moment a message becomes
  ready (put, nack, lease or delay running out, a move), so a queue never has
  both a ready message and a live waiter. `deliver` callbacks run inside
  broker calls and must not call back into the broker. A waiter whose
  `gone` check (set by its connection) says its consumer went away is
  answered with nothing instead of leased, and the next one is served.
* A delivery that ends without an ack (its lease runs out, or a nack) is
  where dead-lettering and expiry are decided, at once (`_end_delivery`):
  the message expires if its time has passed, else moves to the dead-letter
  queue if it reached max_deliveries, else becomes ready (or delayed).
* Expiry never takes a message from a consumer: an expiry that passes while
  the message is leased is acted on when that lease ends without an ack.
* Puts are refused with FULL, storing nothing, when the queue is at its
  max_length or the accounted memory of all messages would pass
  `max_memory_bytes`; a queue made for a refused put goes again (it would
  hold a --max-queues place with nothing in it). Moves (dead-lettering,
  redrive) never count against a max_length: refusing them would mean
  dropping the message.

* Every change of state that must survive a restart is reported to the
  `journal` (if one is attached) as it happens (ChangeLog below). Delay and
  expiry deadlines are not reported when they pass: they follow from the
  recorded times, and a restart replays them through `advance`. A lease
  that runs out is (`lease_ended`), since what it leads to depends on queue
  settings that may change afterwards.
  replay.py applies those records when the journal is replayed.

Must not know: sockets, asyncio, wire formats, the clock, the journal's file
format.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast
from weakref import WeakValueDictionary

from .deadlines import DeadlineHeap
from .errors import (
    BODY_TOO_LARGE,
    FULL,
    LEASE_LOST,
    NOT_FOUND,
    TOO_MANY_QUEUES,
    CommandError,
    detached,
)
from .ids import IdSequence
from .lease_batch import LeaseBatch
from .message import (
    DELAYED,
    DELETED,
    ID_MASK,
    LEASED,
    MESSAGE_OVERHEAD_BYTES,
    READY,
    ExpiryTimer,
    Message,
    materialize,
)
from .queue_settings import QueueSettings
from .queues import Queue, Waiter, check_queue_name
from .replay import Replay

DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
DEFAULT_MAX_QUEUES = 10_000

# A ready heap is rebuilt when its entries outnumber its ready messages by more
# than this factor plus slack. Stale entries are left by late acks, touches and
# nacks of messages that went back to ready; a late nack, or a late touch whose
# lease runs out again, also leaves a second entry for a message still ready.
READY_HEAP_FACTOR = 2
READY_HEAP_SLACK = 64

# A receive of at least this many takes a slice of the run at once (`_take_from_run`);
# a smaller one takes message by message. The slice's fixed cost (three slices of the
# run, a range of lease ids) only pays from about four messages on: take + ack per
# message, in process, run slice against one by one: 4.9 / 3.2 µs for one message,
# 3.6 / 3.2 for two, 3.3 / 3.0 for three, 2.4 / 2.6 for four, 1.8 / 2.6 for eight.
TAKE_FROM_RUN_MIN = 4

# An item of ack_many or nack_many: an (id, lease) pair, or the error the request
# checks (commands.py) refused it with, which stays that item's result. (Compiled, as
# for every call, a pair of other types is a TypeError: commands.py makes ints.)
LeaseItem = Sequence[int] | CommandError


class ChangeLog(Protocol):
    """Where the broker reports changes that must survive a restart (journal.py)."""

    def put(self, msg: Message) -> None: ...
    def put_plain(self, q: Queue, message_id: int, body: bytes) -> None: ...
    def put_plain_batch(self, q: Queue, ids: Sequence[int], bodies: Sequence[bytes]) -> None: ...
    def state(self, msg: Message) -> None: ...
    def lease_ended(self, msg: Message) -> None: ...
    def ack(self, msg: Message) -> None: ...
    def move(self, msg: Message, from_queue: str) -> None: ...
    def queue_settings(self, q: Queue) -> None: ...
    def purge(self, q: Queue) -> None: ...
    def delete_queue(self, q: Queue) -> None: ...


class Broker(Replay):
    journal: ChangeLog | None

    def __init__(self, *, visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_queues: int = DEFAULT_MAX_QUEUES,
                 max_memory_bytes: int = 0) -> None:
        self.journal = None
        self.visibility_timeout_s = visibility_timeout_s
        self.max_message_bytes = max_message_bytes
        self.max_queues = max_queues
        self.max_memory_bytes = max_memory_bytes  # 0: no limit
        self.stored_bytes = 0  # accounted memory of every stored message
        self.full_refusals_total = 0  # puts refused with FULL (max_length or --max-memory)
        self.too_many_queues_total = 0  # queues not created: --max-queues reached
        # What the messages moved so far (dead-lettered, redriven) counted against
        # --max-memory: each move is a journal record with the whole message, so the
        # callers that bound a step's records (advance's max_moved_bytes, the service's
        # redrive steps) read how much a step moved from it.
        self.moved_bytes = 0
        # The redrive under way of each queue that has one (queue_admin.RedriveRun), held
        # weakly: one dropped mid-way (its client's connection, a stop) just goes.
        self.redrive_runs: Any = WeakValueDictionary()
        # Names of the queues a waiting receive made that nothing else has used since:
        # the table less these is the queues in use (`queue`), counted in O(1).
        self._waited_only: set[str] = set()
        self.queues: dict[str, Queue] = {}
        self.deadlines = DeadlineHeap()
        # While set (a time), a lease that runs out is not ended but due again then: the
        # server sets it while its journal writes fail, so that lease ends (each a record,
        # a dead-letter move one with the whole body) do not pile up in memory for a
        # journal that cannot take them. Nobody can receive meanwhile anyway.
        self.hold_lease_ends_until: float | None = None
        # A held lease end's own time, kept to judge it at (item -> (its end, the time it
        # is held to)): the hold moves its deadline, but a deadline is judged at its own
        # time (advance). Judged at the hold's, a last delivery that ended before the
        # message's expiry had it dropped as expired, not dead-lettered (a reviewer).
        self._held_lease_ends: dict[Message | LeaseBatch, tuple[float, float]] = {}
        # next_deadline() is when `advance` next has work to do, or None: the heap's
        # answer, bound here (the server asks after every read).
        self.next_deadline: Callable[[], float | None] = self.deadlines.next_at
        self.ids = IdSequence()

    # ------------------------------------------------------------------ queues

    def queue(self, name: str, to_wait_on: bool = False) -> Queue:
        """queue returns the queue called `name`, creating it on first use.

        The name is checked only when the queue is created: a name already in
        the table was valid then. A name that is not a str (even an unhashable
        one) is refused with INVALID_QUEUE_NAME, never a TypeError; compiled
        (compiled.py), the public calls that take a name (put, receive, ...)
        refuse one that is not a str with a TypeError before they get here (on
        the wire, commands.py refuses it first).

        --max-queues: a queue made `to_wait_on` (a waiting receive) counts every
        queue in the table. Any other new queue counts only the queues in use,
        not those waiting receives made and nothing has used since: a client
        waiting on made-up names could fill the table, and every producer's
        first put to a new queue was refused (a reviewer). So the table holds
        at most twice --max-queues (a queue waited on and then used stays, as
        it always did: it was in the table before the limit was reached).
        """
        q = self.queues.get(name) if isinstance(name, str) else None
        if q is not None:
            return q
        check_queue_name(name)
        if len(self.queues) >= self.max_queues:
            counted = len(self.queues) if to_wait_on else self._queues_in_use()
            if counted >= self.max_queues:
                # Both figures: a start under a lower limit keeps the queues it finds
                # (an operator's review read "22 queues, the limit" under a limit of 5).
                self.too_many_queues_total += 1
                raise CommandError(TOO_MANY_QUEUES, (
                    f"the server has {counted} queues{'' if to_wait_on else ' in use'}, "
                    f"at or over its limit of {self.max_queues} (--max-queues); delete "
                    "one first"))
        q = self.queues[name] = Queue(name)
        if to_wait_on:
            self._waited_only.add(name)
        return q

    def _queues_in_use(self) -> int:
        """_queues_in_use counts the queues in the table but those only waited on (see
        `queue`). In O(1): a walk of the table at the limit made a redrive of 20,000
        messages whose queue could not be made again take 5 s (a reviewer)."""
        return len(self.queues) - len(self._waited_only)

    def _first_held(self, q: Queue) -> None:
        """_first_held: `q` stores its first message, so it is in use (see `queue`)."""
        q.ever_held = True
        self._waited_only.discard(q.name)

    def _drop_queue(self, name: str) -> None:
        """_drop_queue removes a queue from the table (forgotten, deleted, replayed away)."""
        del self.queues[name]
        self._waited_only.discard(name)

    def _forget_if_unused(self, q: Queue) -> None:
        """_forget_if_unused drops a queue made by use that never held a message and has
        no one waiting on it (a long poll on a made-up name, a batch refused whole), so
        such names do not pile up against --max-queues. Nothing about it is lost: it
        has no settings, no messages and no totals."""
        if (not q.explicit and not q.ever_held and not q.messages and not q.live_waiters()
                and self.queues.get(q.name) is q):
            self._drop_queue(q.name)

    def _restored_queue(self, name: str) -> Queue:
        """_restored_queue is `queue` for replay and moves: what the journal holds was
        allowed, and a move must never be refused. Such a queue is about to hold one."""
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = Queue(name)
        if not q.ever_held:
            self._first_held(q)
        return q

    def _existing_message(self, name: str, message_id: int, lease: int) -> Message:
        """_existing_message finds a message and checks that `lease` is its latest.
        A plain message was never leased, so no lease holds it (and it stays plain)."""
        q = self.queues.get(name)
        # A Message is always in the table's `others`; the full lookup is for the rest.
        msg = None if q is None else (q.messages.others.get(message_id)
                                      or q.messages.get(message_id))
        if msg is None:
            raise CommandError(NOT_FOUND, f"no message {message_id} in queue {name!r}"
                               " (acked, expired or moved already, or never put)")
        if type(msg) is bytes or msg.lease != lease:
            # No lease holds a message that was never delivered, given back unseen (which
            # ends its lease for good) or moved (dead-lettered, redriven); a client told
            # "delivered again" would look for a consumer that does not exist.
            # Leases come from the id sequence, so every lease a message has had is above
            # its id and no later than its latest: outside that range, it was never this
            # message's (a client mixing up the leases of one batch, say).
            if type(msg) is not bytes and msg.lease is None and msg.kept_lease == lease:
                since = "its delivery was ended by a nack, or by a move to this dead-letter " \
                    "queue: that lease can still ack it (a late ack), nothing else"
            elif type(msg) is bytes or msg.lease is None:
                since = "no lease holds it now (never delivered, given back unseen, or " \
                    "moved to this queue since)"
            elif lease > msg.lease or lease <= message_id:
                since = "that lease was never this message's"
            else:
                since = "it has been delivered again since (or that lease was never its)"
            raise CommandError(LEASE_LOST, f"lease {lease} no longer holds message "
                               f"{message_id}: {since}")
        return msg

    # -------------------------------------------------------------------- put

    def put(self, name: str, body: bytes | bytearray, now: float, *, delay: float | None = None,
            priority: int = 0, headers: dict[str, str] | None = None,
            expiry: float | None = None) -> int:
        """put stores one message and returns its id; nothing is stored on error.

        `delay` and `expiry` None take the queue's settings; an expiry of 0
        means never.
        """
        if len(body) > self.max_message_bytes:  # before the queue is made: no trace
            self._check_body(body)
        q = self.queues.get(name) if type(name) is str else None
        if q is None:
            q = self.queue(name)
        try:
            if delay is None and expiry is None and not priority and not headers \
                    and type(body) is bytes and _adds_nothing(q.settings):
                msg_id = self._store_plain(q, body, now)  # what _store decides, inline
            else:
                msg_id = self._store(q, body, now, delay, priority or 0, headers, expiry)
        except CommandError:
            # Refused (FULL: --max-memory or max_length): a queue made for this put goes
            # again, or it would hold a --max-queues place with nothing in it (a reviewer).
            self._forget_if_unused(q)
            raise
        if q.waiters and q.ready_count:
            self._serve_waiters(q, now)
        return msg_id

    def put_many(self, name: str, items: Sequence[bytes | dict[str, Any] | CommandError],
                 now: float) -> list[int | CommandError]:
        """put_many stores each item on its own: a result per item, an id or the error.

        An item is a body, or a dict {"body", "delay", "priority", "headers",
        "expiry"} (None: the default). An item that is already a CommandError
        (refused by the request checks) stays its own result. Items are
        stored in order, so when the queue fills up, the first items are the
        ones stored.
        """
        q = self.queue(name)
        settings = q.settings
        # When the queue adds nothing to a message (no delay, expiry or length
        # limit), an item without options of its own is stored plain directly,
        # skipping what _store would decide again for every item of the batch.
        plain_queue = _adds_nothing(settings)
        max_bytes = self.max_message_bytes
        if plain_queue and items and all(type(item) is bytes and len(item) <= max_bytes
                                         for item in items):
            stored = self._store_plain_batch(q, cast("Sequence[bytes]", items), now)
            if stored is not None:
                if q.waiters:
                    self._serve_waiters(q, now)
                return stored
        results: list[int | CommandError] = []
        append = results.append
        for item in items:
            if isinstance(item, CommandError):
                append(item)
                continue
            if isinstance(item, bytes):
                body, delay, priority, headers, expiry = item, None, 0, None, None
            else:
                body, delay, headers, expiry = (item["body"], item.get("delay"),
                                                item.get("headers"), item.get("expiry"))
                priority = item.get("priority") or 0
            try:
                self._check_body(body)
                if plain_queue and type(body) is bytes \
                        and not (delay or priority or headers or expiry):
                    append(self._store_plain(q, body, now))
                else:
                    append(self._store(q, body, now, delay, priority, headers, expiry))
            except CommandError as exc:
                append(detached(exc))  # (kept as a result: errors.py's rules)
        if q.waiters and q.ready_count:
            self._serve_waiters(q, now)
        self._forget_if_unused(q)  # every item refused, on a queue made for them
        return results

    def _store(self, q: Queue, body: bytes | bytearray, now: float, delay: float | None,
               priority: int, headers: dict[str, str] | None, expiry: float | None) -> int:
        """_store stores a message whose body the caller has checked (`_check_body`).

        A message with no priority, headers, delay or expiry (its own or its
        queue's) is stored plain (`_store_plain`); any other as a Message.
        """
        settings = q.settings
        if settings.max_length and len(q.messages) >= settings.max_length:
            self.full_refusals_total += 1
            held = len(q.messages)
            raise CommandError(FULL, f"queue {q.name!r} holds {held} message"
                               f"{'' if held == 1 else 's'}, its max_length; this message was not "
                               "stored (retry after consumers catch up)")
        if type(body) is not bytes:  # a plain message is told apart by its exact type
            body = bytes(body)
        if expiry is None:
            expiry = settings.expiry
        if delay is None:
            delay = settings.delay
        if not (priority or headers or expiry or delay):
            return self._store_plain(q, body, now)
        msg = Message(0, body, q, priority, headers or None)
        cost = self._cost(msg)
        if self.max_memory_bytes:
            self._check_memory(cost)
        msg.id = self.ids.next(now)  # only now: a refused put uses no id
        self.stored_bytes += cost
        if not q.ever_held:
            self._first_held(q)
        q.messages.others[msg.id] = msg  # a new id: in no run (message_table.py)
        q.put_total += 1
        q.body_bytes += len(body)
        if expiry:
            self._set_expiry(msg, now + expiry)
        if delay:
            self._make_delayed(msg, now + delay)
        else:
            self._make_ready(msg)
        if self.journal is not None:
            self.journal.put(msg)
        return msg.id

    def _store_plain(self, q: Queue, body: bytes, now: float) -> int:
        """_store_plain stores a plain message: its body under its id, READY (what
        `_make_ready` does for a Message, with the id as its ready key)."""
        cost = len(body) + MESSAGE_OVERHEAD_BYTES
        if self.max_memory_bytes:
            self._check_memory(cost)
        msg_id = self.ids.next(now)  # only now: a refused put uses no id
        self.stored_bytes += cost
        if not q.ever_held:
            self._first_held(q)
        q.put_total += 1
        q.body_bytes += len(body)
        q.ready_count += 1
        if not q.messages.append_plain(msg_id, body):  # not in the run: on the heap
            heapq.heappush(q.ready, msg_id)
            _compact_ready(q)  # bounds the heap, as in _make_ready
        if self.journal is not None:
            self.journal.put_plain(q, msg_id, body)
        return msg_id

    def _store_plain_batch(self, q: Queue, bodies: Sequence[bytes],
                           now: float) -> list[int | CommandError] | None:
        """_store_plain_batch stores a batch of bare bodies (checked by the caller) as
        plain messages, as `_store_plain` would one by one, but with one id range,
        one extension of the table's run and one update of each count. None, storing
        nothing, when the batch would pass --max-memory: the caller then stores
        item by item, as many as fit."""
        count = len(bodies)
        size = sum(map(len, bodies))
        cost = size + count * MESSAGE_OVERHEAD_BYTES
        if self.max_memory_bytes and self.stored_bytes + cost > self.max_memory_bytes:
            return None
        ids = self.ids.next_range(now, count)
        q.messages.extend_run(ids, bodies)
        self.stored_bytes += cost
        if not q.ever_held:
            self._first_held(q)
        q.put_total += count
        q.body_bytes += size
        q.ready_count += count
        if self.journal is not None:
            self.journal.put_plain_batch(q, ids, bodies)
        stored: list[int | CommandError] = list(ids)
        return stored

    def _check_memory(self, cost: int) -> None:
        """_check_memory refuses a put of `cost` that would pass --max-memory (when set)."""
        if self.stored_bytes + cost > self.max_memory_bytes:
            self.full_refusals_total += 1
            raise CommandError(FULL, f"the server's stored messages take {self.stored_bytes} "
                               f"of {self.max_memory_bytes} bytes (--max-memory); this message "
                               "was not stored (retry after consumers catch up)")

    def _check_body(self, body: bytes | bytearray) -> None:
        if len(body) > self.max_message_bytes:
            raise CommandError(BODY_TOO_LARGE, f"message body is {len(body)} bytes, over the "
                               f"limit of {self.max_message_bytes} (--max-message-bytes)")

    @staticmethod
    def _cost(msg: Message | bytes) -> int:
        """_cost is what a message, plain or not, counts against --max-memory (and in
        stored_bytes)."""
        if isinstance(msg, bytes):
            return len(msg) + MESSAGE_OVERHEAD_BYTES
        if msg.headers is None:
            return len(msg.body) + MESSAGE_OVERHEAD_BYTES
        return len(msg.body) + msg.header_bytes() + MESSAGE_OVERHEAD_BYTES

    # ---------------------------------------------------------------- receive

    def receive(self, name: str, max_messages: int, visibility_s: float | None,
                now: float) -> list[Message]:
        """receive leases up to `max_messages` ready messages, by priority then age.

        The returned messages are the live objects; the caller must encode
        them before calling into the broker again. A receive that finds no
        queue makes none (there is nothing to wait for), so receives on made-up
        names cannot fill the table of queues.
        """
        q = self.queues.get(name) if isinstance(name, str) else None
        if q is None:
            check_queue_name(name)
            return []
        if not q.ready_count:
            return []
        return self._take(q, max_messages, self._visibility(q, visibility_s), now)

    def wait(self, name: str, max_messages: int, visibility_s: float | None, until: float,
             deliver: Callable[[list[Message]], None], now: float) -> Waiter:
        """wait parks a receive until a message is ready or `until` passes.

        `deliver` is called exactly once (unless `cancel_wait` comes first):
        with the leased messages, or with [] when the wait runs out.
        """
        q = self.queue(name, to_wait_on=True)
        # The lease's length is settled when messages are handed out, not now: a
        # configure_queue or create_queue during the wait applies to it.
        waiter = Waiter(q, max_messages, visibility_s, until, deliver)
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
        self._forget_if_unused(waiter.queue)

    def _visibility(self, q: Queue, visibility_s: float | None) -> float:
        """_visibility: the receive's own, else the queue's setting, else the server's."""
        if visibility_s is not None:
            return visibility_s
        return q.settings.visibility_timeout or self.visibility_timeout_s

    def _take(self, q: Queue, max_messages: int, visibility_s: float,
              now: float) -> list[Message]:
        """_take leases up to `max_messages` ready messages; a plain one is materialized
        (once: it stays a Message from then on)."""
        if not q.ready and q.messages.run_count and max_messages >= TAKE_FROM_RUN_MIN:
            # only the run holds ready messages: lease a slice of it
            return self._take_from_run(q, max_messages, now + visibility_s, now)
        return self._take_each(q, max_messages, visibility_s, now)

    def _take_each(self, q: Queue, max_messages: int, visibility_s: float,
                   now: float) -> list[Message]:
        """_take_each is `_take` one message at a time: whatever the ready heap and the
        run hold, in their merged order."""
        taken: list[Message] = []
        ready, messages = q.ready, q.messages
        deadline_at = now + visibility_s
        try:
            while q.ready_count and len(taken) < max_messages:
                # The oldest plain messages wait in the table's run, the rest on the
                # heap (queues.py): take whichever comes first by key.
                first_plain = messages.first_plain_id()
                msg: Message  # declared, so a compiled build reaches its fields directly
                if ready and (first_plain is None or ready[0] < first_plain):
                    message_id = heapq.heappop(ready) & ID_MASK
                    found = messages.get(message_id)
                    if found is None:
                        continue  # a stale entry: acked, moved or purged since
                    if type(found) is bytes:
                        msg = materialize(messages, message_id, found, q)
                    elif found.state != READY:
                        continue  # a stale entry: leased again, or delayed
                    else:
                        msg = found
                else:
                    message_id, body = messages.take_first_plain()
                    msg = messages.others[message_id] = Message(message_id, body, q)
                self._detach(msg)
                msg.state = LEASED  # _make_leased but the heap entry: _push_leases pushes one
                q.leased_count += 1
                msg.deadline_at = deadline_at
                taken.append(msg)  # at once: a leased message must reach the heap
                msg.deliveries += 1
                if msg.deliveries > 1:
                    q.redelivered_total += 1
                    msg.kept_lease = None  # only a message delivered before has one
                msg.lease = self.ids.next(now)
                if self.journal is not None:
                    self.journal.state(msg)
        finally:  # whatever was leased gets its heap entry, even if a step raised (a bug)
            self._push_leases(taken, deadline_at)
        return taken

    def _take_from_run(self, q: Queue, max_messages: int, deadline_at: float,
                       now: float) -> list[Message]:
        """_take_from_run is `_take` when every ready message is in the table's run (a
        backlog put in order and never delivered: the usual case): the oldest are
        leased as the loop in `_take` would lease them one by one, with one slice of
        the run, one range of lease ids and each count updated once."""
        ids, bodies = q.messages.take_first_plain_many(max_messages)
        if not ids:  # max_messages 0: next_range(now, 0) would still move the sequence
            return []
        leases = self.ids.next_range(now, len(ids))
        others, journal = q.messages.others, self.journal
        taken = []
        try:
            for message_id, body, lease in zip(ids, bodies, leases, strict=True):
                msg = others[message_id] = Message(message_id, body, q)
                msg.state = LEASED
                msg.deadline_at = deadline_at
                msg.deliveries = 1
                msg.lease = lease
                taken.append(msg)  # at once: a leased message must reach the heap
                if journal is not None:
                    journal.state(msg)
        finally:
            # Even if a step raised (a bug): what was leased gets its heap entry and
            # its counts, and what the slice took out of the run but did not lease
            # goes back, ready, as an out-of-order plain message (message_table.py).
            self._push_leases(taken, deadline_at)
            q.ready_count -= len(taken)
            q.leased_count += len(taken)
            for message_id, body in zip(ids[len(taken):], bodies[len(taken):], strict=True):
                if message_id not in others:
                    q.messages[message_id] = body
                    heapq.heappush(q.ready, message_id)
        return taken

    def _push_leases(self, taken: list[Message], deadline_at: float) -> None:
        """_push_leases gives the leases one take made (all due at `deadline_at`) their
        heap entry: a lone message its own; several one LeaseBatch, which each of them
        points to (lease_batch.py), so a batch consumer's receive costs one push and,
        once it has acked them all, one stale entry rather than one each."""
        if len(taken) == 1:
            self.deadlines.push(deadline_at, taken[0])
        elif taken:
            batch = LeaseBatch(deadline_at)
            members = batch.members
            for msg in taken:
                msg.lease_batch = batch
                members[msg.id] = msg
            self.deadlines.push(deadline_at, batch)

    def _serve_waiters(self, q: Queue, now: float) -> None:
        while q.ready_count:
            waiter = q.next_waiter()
            if waiter is None:
                return
            self._finish_waiter(waiter)
            gone = waiter.gone
            if gone is not None and gone():
                waiter.deliver([])  # its consumer went away unnoticed; the message stays
                continue
            waiter.deliver(self._take(q, waiter.max_messages,
                                      self._visibility(q, waiter.visibility_s), now))

    def _finish_waiter(self, waiter: Waiter) -> None:
        waiter.done = True
        if waiter.deadline_at is not None:  # still in the deadline heap
            waiter.deadline_at = None
            self.deadlines.forget()

    # ----------------------------------------------------- ack / nack / touch

    def ack(self, name: str, message_id: int, lease: int, now: float) -> None:
        """ack deletes a message for good; only its latest lease may do so, or a lease
        kept aside (the module's rules): after a nack, or in the dead-letter queue its last
        delivery's end moved it to."""
        try:
            msg = self._existing_message(name, message_id, lease)
        except CommandError as exc:
            kept = self._kept_lease_holder(name, message_id, lease, exc.code)
            if kept is None:
                raise  # (bare: see _kept_lease_holder)
            msg = kept
        msg.queue.acked_total += 1
        self._drop(msg)

    def _kept_lease_holder(self, name: str, message_id: int, lease: int,
                           not_held: str) -> Message | None:
        """_kept_lease_holder finds the message `lease` was kept aside for, for a late ack:
        in queue `name` (ended by a nack; or a dead letter, named by its new queue), or in
        that queue's dead-letter queue; else None: the caller raises the error whose code
        is `not_held`, what the queue said, again.

        The error is not passed in to be raised here: raised again from a frame whose
        argument names it, it would hold its own traceback, which holds that frame and,
        through the frames above, the request's connection: a reference cycle, which
        only the cyclic collector frees, and never once frozen (gc_policy.py)."""
        if not_held != LEASE_LOST:
            return self._dead_lettered(name, message_id, lease, not_held)
        msg = self.queues[name].messages.others.get(message_id)  # LEASE_LOST: it is there
        if type(msg) is not Message or msg.lease is not None or msg.kept_lease != lease:
            return None
        return msg

    def _held_message(self, name: str, message_id: int, lease: int) -> Message:
        """_held_message is `_existing_message` for a touch or nack, whose NOT_FOUND for a
        message dead-lettered from `name` says so: a heartbeat told only "not found" gave
        up on work whose late ack would still have deleted it there (a reviewer). One
        received from there since is LEASE_LOST, as an ack with that lease is."""
        try:
            return self._existing_message(name, message_id, lease)
        except CommandError as exc:
            if exc.code != NOT_FOUND:
                raise
            # LEASE_LOST if received from there since, as for an ack; None: exc itself.
            moved = self._dead_lettered(name, message_id, lease, exc.code)
            if moved is None:
                raise
            raise CommandError(NOT_FOUND, f"message {message_id} is no longer in queue "
                               f"{name!r}: it was dead-lettered to {moved.queue.name!r}, and "
                               "nobody has received it from there since; an ack with this "
                               "lease still deletes it there, a touch or nack cannot") from None

    def _dead_lettered(self, name: str, message_id: int, lease: int,
                       not_here: str) -> Message | None:
        """_dead_lettered finds a message that the end of its last delivery moved from
        queue `name` to its dead-letter queue, for a late ack by that delivery's lease
        (the module's rules); else None, for the caller to raise again the error whose
        code is `not_here`, what the queue itself said (see _kept_lease_holder)."""
        q = self.queues.get(name)
        if not_here != NOT_FOUND or q is None or not q.settings.dead_letter_queue:
            return None
        target = self.queues.get(q.settings.dead_letter_queue)
        if target is None:
            return None
        msg = target.messages.others.get(message_id)
        if msg is None or msg.origin is None or msg.origin[0] != name:
            return None
        # Nobody received it since: no lease, and the one kept aside is this one (a dead-
        # letter queue's consumer that nacked it, with a delay too: then DELAYED, which a
        # reviewer's late ack was refused for).
        if msg.kept_lease != lease or msg.lease is not None:
            raise CommandError(LEASE_LOST, f"lease {lease} no longer holds message "
                               f"{message_id}: it was dead-lettered to {target.name!r} and "
                               "delivered from there since (or that lease was never its)")
        return msg

    def ack_many(self, name: str, items: Sequence[LeaseItem],
                 now: float) -> list[CommandError | None]:
        """ack_many acks each (id, lease) on its own; a result per item, None or the error.

        The usual item, a Message of this queue held by that lease, is acked
        here directly; anything else goes through `ack` for its error, so
        the rules and messages stay `ack`'s (this loop runs for every
        message of a batch consumer).
        """
        q = self.queues.get(name) if type(name) is str else None
        if q is None:
            return _each(items, self.ack, name, now)
        others, drop, journal = q.messages.others, self._drop, self.journal
        results: list[CommandError | None] = []
        append = results.append
        for item in items:
            if isinstance(item, CommandError):
                append(item)  # refused by the request checks: its own result
                continue
            msg = others.get(item[0])
            # isinstance, not type(msg) is not bytes: compiled, msg is then a Message and
            # its fields are reached directly (0.55 -> 0.31 us a message; pure, the same).
            if isinstance(msg, Message) and msg.lease == item[1]:
                q.acked_total += 1
                batch: LeaseBatch | None = msg.lease_batch
                if batch is not None and msg.expiry is None and msg.headers is None:
                    # `_drop` of a lease batch's member (LEASED, its deadline held by the
                    # batch), inline: a batch consumer acks every message this way.
                    q.leased_count -= 1
                    msg.deadline_at = msg.lease_batch = None
                    if batch.leave(msg.id):
                        self.deadlines.forget()
                    msg.state = DELETED
                    del others[msg.id]
                    q.body_bytes -= len(msg.body)
                    self.stored_bytes -= len(msg.body) + MESSAGE_OVERHEAD_BYTES
                    if journal is not None:
                        journal.ack(msg)
                else:
                    drop(msg)
                append(None)
            else:
                results += _each([item], self.ack, name, now)
        return results

    def nack(self, name: str, message_id: int, lease: int, delay_s: float, now: float,
             unseen: bool = False) -> None:
        """nack gives a message back: ready at once, or after `delay_s` seconds.

        A message at its queue's max_deliveries is dead-lettered instead, and
        one whose expiry has passed is dropped (`_end_delivery`). `unseen`: the
        consumer says nobody looked at it (a client giving back what came for a
        receive nobody awaited, a worker handing back work it never started), so
        this delivery is taken back off its count before that rule is applied,
        and cannot be what sends it to the dead-letter queue. Only while the
        delivery runs (LEASED), and that ends its lease for good (a plain nack
        keeps it aside, for a late ack only): a second nack, a late touch that
        would make it LEASED again, or an ack with that lease is LEASE_LOST, so
        one delivery is never taken back twice (a reviewer took 2 deliveries to
        0 with repeated nacks, then with touch and nack). The STATE record
        carries the count and the lease (or the one kept aside), so replay
        needs nothing more. (redelivered_total, a counter, is not lowered: a
        message given back unseen after a redelivery counts again when it is
        next delivered.)
        """
        msg = self._held_message(name, message_id, lease)
        if unseen and msg.state == LEASED and msg.deliveries:
            msg.deliveries -= 1
            msg.lease = msg.kept_lease = None  # no lease of before holds it now
        else:  # kept for a late ack only (the module's rules)
            msg.lease, msg.kept_lease = None, lease
        self._end_delivery(msg, now, delay_s)

    def nack_many(self, name: str, items: Sequence[LeaseItem], delay_s: float,
                  now: float, unseen: bool = False) -> list[CommandError | None]:
        """nack_many nacks each (id, lease) on its own; a result per item."""
        return _each(items, self.nack, name, delay_s, now, unseen)

    def touch(self, name: str, message_id: int, lease: int, visibility_s: float | None,
              now: float) -> float:
        """touch extends (or, after a late touch, renews) a lease; returns the new deadline.

        A lease that ran out but whose message has not been delivered again
        is taken back by its owner, as a late ack would be accepted; not a lease
        a nack ended (kept aside for a late ack only: the module's rules).
        """
        msg = self._held_message(name, message_id, lease)
        self._detach(msg)
        deadline = now + self._visibility(msg.queue, visibility_s)
        self._make_leased(msg, deadline)
        if self.journal is not None:
            self.journal.state(msg)
        return deadline

    # ------------------------------------------ the end of a delivery, moves

    def _end_delivery(self, msg: Message, now: float, delay_s: float = 0.0,
                      freed: dict[Queue, None] | None = None) -> None:
        """_end_delivery decides what becomes of a message whose delivery ended unacked.

        In order: expired -> dropped; at max_deliveries with a dead-letter
        queue -> moved there; else ready (or delayed by `delay_s`). From
        `advance`, `now` is the deadline's own time and `freed` collects the
        dead-letter queue, whose waiters advance serves at its own `now`.
        """
        q = msg.queue
        if msg.expiry is not None and msg.expiry.expires_at <= now:
            q.expired_total += 1
            self._drop(msg)
            return
        settings = q.settings
        if settings.max_deliveries and msg.deliveries >= settings.max_deliveries:
            target = self._restored_queue(settings.dead_letter_queue)
            q.dead_lettered_total += 1
            self._move(msg, target, msg.deliveries, (q.name, now),
                       self._expiry_for(target, now), now, freed, keep_lease=True)
            return
        self._detach(msg)
        if delay_s > 0:
            self._make_delayed(msg, now + delay_s)
        else:
            self._make_ready(msg)
        if self.journal is not None:
            self.journal.state(msg)
        if msg.state == READY and q.waiters:
            self._serve_waiters(q, now)

    def _move(self, msg: Message, target: Queue, deliveries: int,
              origin: tuple[str, float] | None, expires_at: float | None, now: float,
              freed: dict[Queue, None] | None = None, keep_lease: bool = False) -> None:
        """_move takes a message out of its queue and makes it ready in `target`.

        It keeps its id, body, headers and priority; it gets `deliveries`,
        `origin` and `expires_at` (callers give the target queue's expiry
        counted from the move, `_expiry_for`), and loses its lease: no older
        lease can touch it now; but dead-lettering keeps it aside (`keep_lease`:
        `kept_lease`), for the last delivery's late ack (the module's
        rules). Target's waiters are served at once, or, when `freed` is given
        (a move inside `advance`), added to it for later.
        """
        source = msg.queue
        self.moved_bytes += self._cost(msg)
        self._detach(msg)
        self._cancel_expiry(msg)
        del source.messages.others[msg.id]  # a Message: never in a run
        source.body_bytes -= len(msg.body)
        _compact_ready(source)
        msg.queue = target
        msg.deliveries = deliveries
        msg.origin = origin
        if not keep_lease:
            msg.kept_lease = None
        elif msg.lease is not None:  # else a nack has already kept it aside
            msg.kept_lease = msg.lease
        msg.lease = None
        if not target.ever_held:
            self._first_held(target)
        target.messages[msg.id] = msg  # an older id, maybe, than the target's (oldest_id)
        target.body_bytes += len(msg.body)
        if expires_at:
            self._set_expiry(msg, expires_at)
        self._make_ready(msg)
        if self.journal is not None:
            self.journal.move(msg, source.name)
        if freed is not None:
            # Inside advance `now` is the lease's own time, which may be long past:
            # served now, a waiter would get a lease already over (ended again in
            # the same advance, with the message ready for others while it is held).
            freed[target] = None
        elif target.waiters:
            self._serve_waiters(target, now)

    @staticmethod
    def _expiry_for(target: Queue, now: float) -> float | None:
        return now + target.settings.expiry if target.settings.expiry else None

    def _drop(self, msg: Message) -> None:
        """_drop deletes a message for good (ack, expiry); the caller counts why."""
        q = msg.queue
        was_ready = msg.state == READY
        self._detach(msg)
        if msg.expiry is not None:
            self._cancel_expiry(msg)
        msg.state = DELETED
        del q.messages.others[msg.id]  # a Message: never in a run
        q.body_bytes -= len(msg.body)
        # _cost, inline for the usual message (no headers): an ack runs this per message
        self.stored_bytes -= (len(msg.body) + MESSAGE_OVERHEAD_BYTES if msg.headers is None
                              else self._cost(msg))
        if was_ready:  # its heap entry went stale (an acked one, leased, had none live)
            _compact_ready(q)
        if self.journal is not None:
            self.journal.ack(msg)

    def _set_expiry(self, msg: Message, expires_at: float) -> None:
        self._cancel_expiry(msg)
        msg.expiry = ExpiryTimer(msg, expires_at)
        self.deadlines.push(expires_at, msg.expiry)

    def _cancel_expiry(self, msg: Message) -> None:
        timer = msg.expiry
        if timer is not None:
            msg.expiry = None
            if timer.deadline_at is not None:
                timer.deadline_at = None
                self.deadlines.forget()

    # -------------------------------------------------------------- deadlines

    def own_deadline(self, msg: Message) -> float | None:
        """own_deadline is `msg`'s deadline as the journal has it: a held lease's own end
        (advance), not the hold's time its deadline_at says meanwhile; else deadline_at.
        Compaction writes this one: with the hold's, a restart judged the lease at the wrong
        time (a last delivery ended before its expiry was dropped as expired)."""
        for item in (msg, msg.lease_batch):
            held = self._held_lease_ends.get(item) if item is not None else None
            if held is not None and held[1] == msg.deadline_at:
                return held[0]
        return msg.deadline_at

    def forget_settled_holds(self) -> None:
        """forget_settled_holds drops the held lease ends (advance) whose lease was acked,
        nacked or touched since: not held any more. advance does it once the hold is over;
        the server also calls it once a second, since on an idle server, all of them
        settled, no deadline may come to run advance, and each kept its message's body."""
        if self._held_lease_ends:
            self._held_lease_ends = {item: held for item, held in self._held_lease_ends.items()
                                     if item.deadline_at == held[1]}

    def advance(self, now: float, max_steps: int | None = None,
                max_moved_bytes: int | None = None) -> int:
        """advance handles every deadline at or before `now`; returns how many.

        Leases that ran out end their deliveries (`_end_delivery`: ready,
        dead-lettered or expired), unless `hold_lease_ends_until` is set: then
        they are due again at that time; delays that ended make their messages
        ready; expiries drop messages that are not leased; waits that ran out
        are answered with no messages. Waiters of touched queues are served
        last, so a message freed at the same instant as a wait ends still
        reaches a waiter that is parked for it.

        With `max_steps` (and `max_moved_bytes`) it stops once it has taken
        that many deadlines (a lease batch counts its members), or moved
        messages counting that many bytes (`moved_bytes`), whichever comes
        first, leaving the rest due: `next_deadline()` is then at or before
        `now`, and the caller calls again. The server does so a loop turn
        later: 100,000 leases that ended at once into a dead-letter queue held
        its loop for 0.47 s and built their records (every body) in one
        journal write (bench/probes/redrive_stall.py).
        """
        handled = steps = 0
        moved_from = self.moved_bytes
        # Queues in the order they were freed (a dict, not a set: the order in which
        # waiters of several queues are served must not depend on object addresses).
        freed: dict[Queue, None] = {}
        expired_waiters: list[tuple[Waiter, float]] = []  # and when their waits ended
        cut_short = False
        hold_until = self.hold_lease_ends_until
        if hold_until is not None and hold_until <= now:
            hold_until = None  # a hold already over (pushed back to it, it would pop for ever)
        while True:
            if max_steps is not None and (steps >= max_steps or (
                    max_moved_bytes is not None
                    and self.moved_bytes - moved_from >= max_moved_bytes)):
                cut_short = True
                break  # the step is used up; the rest stays due
            item = self.deadlines.pop_due(now)
            if item is None:
                break
            if type(item) is not LeaseBatch:
                steps += 1  # (a batch counts the members it ends, below, or holds)
            if type(item) is Message and item.lease_batch is not None:
                # An own entry of a lease batch's pending member, from an earlier
                # lease or delay, due at the very time its batch is: it looks live,
                # but the member's deadline is its batch's now (deadlines.py, "handed
                # over"), so it is stale. The lease ends with the batch.
                self.deadlines.revived()
                continue
            if hold_until is not None and (type(item) is LeaseBatch or (
                    type(item) is Message and item.state == LEASED)):
                # Held (see hold_lease_ends_until): due again then, in the same order,
                # and judged at its own end when it is handled (held again, the first).
                held = self._held_lease_ends.get(item)
                own_end = held[0] if held is not None and held[1] == item.deadline_at \
                    else item.deadline_at
                assert own_end is not None  # it popped: it was due
                self._held_lease_ends[item] = (own_end, hold_until)
                item.deadline_at = hold_until
                if type(item) is LeaseBatch:
                    steps += len(item.members)
                    for member in item.members.values():  # what message_info shows
                        member.deadline_at = hold_until
                self.deadlines.push(hold_until, item)
                continue
            handled += 1
            # Each deadline is judged at its own time, not at `now`: when the timer
            # runs late, or the server was down, a lease that ended before an expiry
            # came still ends first, as it would have on time.
            at = item.deadline_at
            if self._held_lease_ends:
                held = self._held_lease_ends.pop(item, None)  # type: ignore[arg-type]
                if held is not None and held[1] == at:
                    at = held[0]  # a held lease end: its own time, not the hold's
            assert at is not None  # it popped: it was due
            item.deadline_at = None  # popped: no longer in the heap, nothing to forget
            if isinstance(item, Waiter):
                expired_waiters.append((item, at))
            elif isinstance(item, ExpiryTimer):
                self._expire(item.message)
            elif isinstance(item, LeaseBatch):
                if max_steps is None:
                    ended = self._batch_deadline_passed(item, at, freed)
                else:
                    ended = self._batch_deadline_passed(
                        item, at, freed, max(1, max_steps - steps), None
                        if max_moved_bytes is None
                        else max_moved_bytes - (self.moved_bytes - moved_from))
                steps += ended
                handled += ended - 1
            else:
                self._deadline_passed(item, at, freed)
        if self._held_lease_ends and hold_until is None:
            self.forget_settled_holds()
        for q in freed:
            if q.waiters:
                self._serve_waiters(q, now)
        # A step cut short before deadlines due no later than a wait's end: a message one
        # of them frees must still reach that waiter, as in one advance (a reviewer's wait
        # and lease ending at the same time, 1,023 deadlines before them, one per step).
        # Such waits are due again at their own time, after those.
        next_due = self.deadlines.next_at() if cut_short else None
        for waiter, ended_at in expired_waiters:
            if waiter.done:
                continue
            if next_due is not None and next_due <= ended_at:
                handled -= 1
                waiter.deadline_at = ended_at
                self.deadlines.push(ended_at, waiter)
                continue
            self._finish_waiter(waiter)
            waiter.queue.waiter_gone()
            waiter.deliver([])
            self._forget_if_unused(waiter.queue)
        return handled

    def _batch_deadline_passed(self, batch: LeaseBatch, at: float, freed: dict[Queue, None],
                               max_members: int | None = None,
                               max_moved_bytes: int | None = None) -> int:
        """_batch_deadline_passed ends the leases of a batch's pending members, in lease
        order, as their own entries would have popped; returns how many it ended.

        With `max_members` (and `max_moved_bytes`: advance's step) it stops once it
        has ended that many (at least one), or dead-lettered messages counting that
        many bytes, and the batch is due again at `at` with the members left, to be
        judged at the same time: never split, one receive of 1,000 messages of 256 KiB
        dead-lettered 256 MiB in one step and one journal write (a reviewer). The
        batch's one entry is already popped, so a member skipped here would stay
        leased for ever: if one member's ending raises (a bug), every other member is
        still ended (or the batch due again), then the first error is raised, as one
        entry each would have.
        """
        failed: Exception | None = None
        ended = 0
        bytes_from = self.moved_bytes
        for msg in list(batch.members.values()):  # a copy: each member leaves as it ends
            if ended and ((max_members is not None and ended >= max_members) or (
                    max_moved_bytes is not None
                    and self.moved_bytes - bytes_from >= max_moved_bytes)):
                batch.deadline_at = at  # the rest: due again at once, judged at `at`
                for member in batch.members.values():  # (a held one's showed the hold's)
                    member.deadline_at = at
                # Ahead of those due at `at` too, leased after it (a reviewer's lease
                # taken after the batch ended before its rest).
                self.deadlines.push_first(at, batch)
                break
            ended += 1
            try:
                self._deadline_passed(msg, at, freed)
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            try:
                raise failed
            finally:
                # A local naming the error raised from its frame makes a reference cycle
                # (see _kept_lease_holder).
                del failed
        return ended

    def _deadline_passed(self, msg: Message, at: float, freed: dict[Queue, None]) -> None:
        """_deadline_passed ends a lease or a delay whose time, `at`, has come.

        A lease that ends with the message back to ready is journaled (a
        record no reply waits for): a replay must not decide it again under
        queue settings changed since. A delay that ends is not: nothing but
        the message's own recorded expiry bears on it. Waiters of freed
        queues are served by `advance` once every deadline due is handled.
        """
        q = msg.queue
        expired = msg.expiry is not None and msg.expiry.expires_at <= at
        if msg.state == LEASED:
            settings = q.settings
            if expired or (settings.max_deliveries
                           and msg.deliveries >= settings.max_deliveries):
                self._end_delivery(msg, at, freed=freed)
                return
            self._detach(msg)
            self._make_ready(msg)
            if self.journal is not None:
                self.journal.lease_ended(msg)
            timer = msg.expiry
            if timer is not None and timer.deadline_at is None:
                # Its expiry came while the lease was held (hold_lease_ends_until) and
                # left it be, leased: due again, now, as it was then, so this same advance
                # drops it. Else it lived on for good, ready, with no expiry to come, and
                # a restart's replay dropped it (a reviewer).
                timer.deadline_at = timer.expires_at
                self.deadlines.push(timer.expires_at, timer)
        elif expired:  # a delay ended after the expiry (which found it delayed)
            q.expired_total += 1
            self._drop(msg)
            return
        else:
            self._detach(msg)
            self._make_ready(msg)
        freed[q] = None

    def _expire(self, msg: Message) -> None:
        """_expire drops a message whose expiry came, unless a consumer holds it now."""
        if msg.state == LEASED or msg.state == DELETED:
            return  # a leased one is decided when its lease ends (_end_delivery)
        msg.queue.expired_total += 1
        self._drop(msg)

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
                batch = msg.lease_batch
                if batch is None:
                    self.deadlines.forget()
                else:  # its batch's entry goes stale once every member has left
                    msg.lease_batch = None
                    if batch.leave(msg.id):
                        self.deadlines.forget()

    def _make_ready(self, msg: Message) -> None:
        q = msg.queue
        msg.state = READY
        q.ready_count += 1
        heapq.heappush(q.ready, msg.ready_key)
        _compact_ready(q)  # the heap grows only here and in _store_plain: this bounds it

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


def _adds_nothing(settings: QueueSettings) -> bool:
    """_adds_nothing: the queue gives a message nothing of its own (no delay, expiry or
    length limit), so a put without options of its own is stored plain at once."""
    return not (settings.delay or settings.expiry or settings.max_length)


def _compact_ready(q: Queue) -> None:
    """_compact_ready rebuilds a ready heap that holds too many stale or repeated keys.

    The rebuilt heap holds each ready message's key exactly once, so a client
    that nacks (or late-touches) the same message over and over cannot make
    the heap grow without bound.
    """
    # Counted against the ready messages the heap is for: not those in the run.
    if len(q.ready) > READY_HEAP_FACTOR * (q.ready_count - q.messages.run_count) \
            + READY_HEAP_SLACK:
        messages = q.messages
        q.ready = list({key for key in q.ready
                        if (m := messages.get(key & ID_MASK)) is not None
                        and (type(m) is bytes or m.state == READY)})
        heapq.heapify(q.ready)


def _each(items: Sequence[LeaseItem], settle: Callable[..., Any],
          name: str, *rest: Any) -> list[CommandError | None]:
    """_each settles each (id, lease) item on its own, as settle(name, id, lease, *rest):
    None, or the error it met. An item already refused by the request checks stays its
    own result. (No closure per batch item: this runs for every message of a batch.)"""
    results: list[CommandError | None] = []
    append = results.append
    for item in items:
        if isinstance(item, CommandError):
            append(item)
            continue
        try:
            settle(name, item[0], item[1], *rest)
            append(None)
        except CommandError as exc:
            append(detached(exc))  # (kept as a result: errors.py's rules)
    return results
