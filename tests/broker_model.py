"""The reference model that test_broker_model.py holds the broker to.

It is the rules of broker.py and of the journal's replay written as plainly as
possible: a dict of message id -> (queue, state, lease, deliveries, deadline,
priority, dead-letter origin), a list of waiters, each queue's max_deliveries
(its dead-letter queue is the other queue), which queues are explicit, and a
few totals. It knows nothing of the broker: the test drives both and
compares them.

What the model says a restart keeps and does (journal.py, replay.py, README's
"Durability"):

* Everything written survives: messages with their leases (an old lease can
  still ack), deliveries, delays, deadlines, priorities, dead-letter origins,
  queue settings. After a crash, only what the last write (`remember_written`)
  wrote: what came after it never happened, and the ids it used may be
  handed out again (no client saw them: the server writes the journal before
  it replies).
* Waiting receives vanish: their connections are gone.
* Leases and delays whose deadline passed while down end at start-up, each
  judged at its own time: a lease at max_deliveries is dead-lettered, with
  its deadline as the time in its origin.
* Totals count from the start (dead-lettering at start-up included); a queue
  made by use that holds no message is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from wonderq_server.errors import LEASE_LOST, NOT_FOUND

T0 = 1_700_000_000.0
DEFAULT_VISIBILITY = 3.0
QUEUES = ("a", "b")  # a queue's dead-letter queue, when it has one, is the other


def other(queue: str) -> str:
    return QUEUES[1 - QUEUES.index(queue)]


@dataclass
class ModelMessage:
    queue: str
    body: bytes
    priority: int = 0
    state: str = "ready"
    lease: int | None = None
    deliveries: int = 0
    deadline: float | None = None
    origin: tuple[str, float] | None = None  # (queue, when) once dead-lettered
    kept_lease: int | None = None  # a lease that can only ack: a nack's, or the last
    # delivery's of a dead letter (then naming its origin queue too)


@dataclass
class ModelWaiter:
    queue: str
    max_messages: int
    visibility: float | None
    until: float
    handle: Any = None  # the broker's Waiter, for cancel_wait
    done: bool = False


@dataclass
class Totals:
    put: int = 0
    acked: int = 0
    redelivered: int = 0
    dead_lettered: int = 0


@dataclass
class Written:
    """What the journal's file holds: the model's state at the last write."""

    messages: dict[int, ModelMessage]
    max_deliveries: dict[str, int]
    explicit: set[str]
    last_token: int


def copied(messages: dict[int, ModelMessage]) -> dict[int, ModelMessage]:
    return {i: replace(m) for i, m in messages.items()}


def kept_for(m: ModelMessage, lease: int) -> bool:
    """kept_for: `lease` is the one a dead letter's move kept aside, and nobody has received
    the message since (its late ack still deletes it)."""
    return m.lease is None and m.state == "ready" and m.kept_lease == lease


class ReferenceModel:
    def __init__(self) -> None:
        self.now = T0
        self.messages: dict[int, ModelMessage] = {}
        self.waiters: list[ModelWaiter] = []
        self.totals = {name: Totals() for name in QUEUES}
        self.max_deliveries = dict.fromkeys(QUEUES, 0)
        self.explicit: set[str] = set()  # made or changed by create/configure_queue
        # Queues that held a message; with explicit ones and those someone waits on, what
        # the broker keeps (a queue made by a wait that never held a message goes when its
        # waiters do).
        self.held_queues: set[str] = set()
        self.last_token = 0  # the largest id or lease a client could have seen
        self.written = self.now_written()  # the journal's file (empty, once opened)

    # ------------------------------------------------------------------ reading

    def visibility(self, visibility: float | None) -> float:
        return DEFAULT_VISIBILITY if visibility is None else visibility

    def kept_queues(self) -> set[str]:
        return self.held_queues | self.explicit | {w.queue for w in self.waiters if not w.done}

    def live_waiters(self, queue: str | None = None) -> int:
        return sum(1 for w in self.waiters if not w.done and queue in (None, w.queue))

    def ready_ids(self, queue: str) -> list[int]:
        """ready_ids in the order receive takes them: lower priority first, then older."""
        ready = [(m.priority, i) for i, m in self.messages.items()
                 if m.queue == queue and m.state == "ready"]
        return [i for _, i in sorted(ready)]

    def at_limit(self, m: ModelMessage) -> bool:
        limit = self.max_deliveries[m.queue]
        return bool(limit) and m.deliveries >= limit

    def checked_message(self, queue: str, msg_id: int, lease: int) -> ModelMessage | str:
        """checked_message is the message `lease` holds, or the error code for it."""
        m = self.messages.get(msg_id)
        if m is None or m.queue != queue:
            return NOT_FOUND
        if m.lease != lease:
            return LEASE_LOST
        return m

    def checked_ack(self, queue: str, msg_id: int, lease: int) -> ModelMessage | str:
        """checked_ack is checked_message for an ack, which also finds a message that the
        end of its last delivery moved out of `queue` into its dead-letter queue (a late
        ack of that delivery), and one whose lease a nack kept aside."""
        m = self.messages.get(msg_id)
        if m is not None and m.queue == queue and m.lease is None and m.kept_lease == lease:
            return m
        moved = self.dead_lettered_from(queue, msg_id)
        if moved is not None:
            return moved if kept_for(moved, lease) else LEASE_LOST
        return self.checked_message(queue, msg_id, lease)

    def checked_held(self, queue: str, msg_id: int, lease: int) -> ModelMessage | str:
        """checked_held is checked_message for a touch or nack: one that the end of its last
        delivery moved out of `queue` into its dead-letter queue is NOT_FOUND (its late ack
        alone may still act there), or LEASE_LOST, as for an ack, if `lease` is not the one
        kept aside (never its, or it was received from there since)."""
        moved = self.dead_lettered_from(queue, msg_id)
        if moved is not None:
            return NOT_FOUND if kept_for(moved, lease) else LEASE_LOST
        return self.checked_message(queue, msg_id, lease)

    def dead_lettered_from(self, queue: str, msg_id: int) -> ModelMessage | None:
        """dead_lettered_from is the message if the end of a delivery moved it out of
        `queue` into the dead-letter queue `queue` still names; else None."""
        m = self.messages.get(msg_id)
        if m is not None and m.origin is not None and m.origin[0] == queue \
                and m.queue == other(queue) and self.max_deliveries.get(queue):
            return m
        return None

    def new_token(self, token: int) -> None:
        assert token > self.last_token, "ids and leases must grow"
        self.last_token = token

    # ----------------------------------------------------------------- changing

    def stored(self, msg_id: int, queue: str, body: bytes, priority: int) -> None:
        self.held_queues.add(queue)
        self.new_token(msg_id)
        self.messages[msg_id] = ModelMessage(queue, body, priority)
        self.totals[queue].put += 1

    def acked(self, msg_id: int) -> None:
        m = self.messages.pop(msg_id)
        self.totals[m.queue].acked += 1

    def nacked(self, msg_id: int, delay: float) -> str | None:
        """nacked ends a delivery: dead-lettered at its limit (delay or not), else ready or
        delayed; returns the queue that got a ready message, if one did."""
        m = self.messages[msg_id]
        m.kept_lease, m.lease = m.lease, None  # for a late ack only
        if self.at_limit(m):
            return self.dead_letter(msg_id, self.now)
        if delay > 0:
            m.state, m.deadline = "delayed", self.now + delay
            return None
        m.state, m.deadline = "ready", None
        return m.queue

    def configured(self, queue: str, max_deliveries: int) -> None:
        self.explicit.add(queue)
        self.max_deliveries[queue] = max_deliveries

    def purged(self, queue: str) -> int:
        gone = [i for i, m in self.messages.items() if m.queue == queue]
        for i in gone:
            del self.messages[i]
        return len(gone)

    def take(self, queue: str, max_messages: int, visibility: float | None) -> list[int]:
        """take leases the first ready messages (their lease tokens come from the broker)."""
        taken = self.ready_ids(queue)[:max_messages]
        for i in taken:
            m = self.messages[i]
            m.state = "leased"
            m.deliveries += 1
            if m.deliveries > 1:
                self.totals[queue].redelivered += 1
            m.deadline = self.now + self.visibility(visibility)
        return taken

    def serve(self, queue: str) -> dict[int, list[int]]:
        """serve hands ready messages to the queue's live waiters, first come first served;
        returns what each waiter (by its index) was handed."""
        served: dict[int, list[int]] = {}
        for index, w in enumerate(self.waiters):
            if not self.ready_ids(queue):
                break
            if w.queue == queue and not w.done:
                w.done = True
                served[index] = self.take(queue, w.max_messages, w.visibility)
        return served

    def dead_letter(self, msg_id: int, at: float) -> str:
        """dead_letter moves a message to its queue's dead-letter queue, ready, without a
        lease but keeping its last one aside (for a late ack); returns that queue."""
        m = self.messages[msg_id]
        self.totals[m.queue].dead_lettered += 1
        target = other(m.queue)
        self.held_queues.add(target)
        m.origin = (m.queue, at)
        if m.lease is not None:  # else a nack kept it aside already
            m.kept_lease = m.lease
        m.queue, m.state, m.lease, m.deadline = target, "ready", None, None
        return target

    def end_due(self) -> set[str]:
        """end_due ends every lease and delay due by now, each judged at its own time (a
        lease at max_deliveries is dead-lettered); returns the queues that got a ready
        message. Their waiters are served afterwards, at `now`."""
        freed = set()
        for i, m in list(self.messages.items()):
            if m.deadline is None or m.deadline > self.now:
                continue
            if m.state == "leased" and self.at_limit(m):
                freed.add(self.dead_letter(i, m.deadline))
            else:
                m.state, m.deadline = "ready", None
                freed.add(m.queue)
        return freed

    # ------------------------------------------------------------ the journal

    def now_written(self) -> Written:
        return Written(copied(self.messages), dict(self.max_deliveries), set(self.explicit),
                       self.last_token)

    def remember_written(self) -> None:
        """remember_written: the journal's buffer was written; the file holds this state."""
        self.written = self.now_written()

    def restart(self, crash: bool, down_s: float) -> tuple[int, int]:
        """restart applies a restart after `down_s` seconds down (module docstring);
        returns the (messages, queues) that replay finds, before the start-up advance."""
        if crash:  # what came after the last write never happened
            self.messages = copied(self.written.messages)
            self.max_deliveries = dict(self.written.max_deliveries)
            self.explicit = set(self.written.explicit)
            self.last_token = self.written.last_token
        self.now += down_s
        self.waiters = []  # their connections are gone
        self.totals = {name: Totals() for name in QUEUES}
        self.held_queues = {m.queue for m in self.messages.values()}
        replayed = (len(self.messages), len(self.held_queues | self.explicit))
        # The file holds this state; what the start-up advance changes is in the buffer.
        self.remember_written()
        self.end_due()
        return replayed
