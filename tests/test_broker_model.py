"""The broker against a tiny reference model, driven by random operations, restarts included.

The model is the rules of broker.py and of the journal's replay written as
plainly as possible: a dict of message id -> (queue, state, lease,
deliveries, deadline, priority, dead-letter origin), a list of waiters, each
queue's max_deliveries (its dead-letter queue is the other queue), and a few
totals. Hypothesis applies random sequences of put / put_many / receive /
wait / cancel / ack / nack / touch / configure / purge / advance-the-clock /
flush / restart to both, and after every step compares everything observable:
returned ids, error codes, touch deadlines, what each waiter was handed,
stats, every message's state and the next deadline.

The broker runs with a real Journal (fsync "never") in a temporary directory.
`flush` writes the journal's buffer, as the server's flush does once per
event-loop iteration, and the model remembers its state then as what the
journal holds. `restart` stops the broker cleanly (write, close) or as kill -9
would (`killed`: the buffer is lost, the files are closed), lets the clock run
while it is down, and opens a fresh Broker and Journal on the same directory.
What the model says a restart keeps and does (journal.py, replay.py, README's
"Durability"):

* Everything written survives: messages with their leases (an old lease can
  still ack), deliveries, delays, deadlines, priorities, dead-letter origins,
  queue settings. After a crash, only what the last flush wrote: what came
  after it never happened, and the ids it used may be handed out again (no
  client saw them: the server writes the journal before it replies).
* Waiting receives vanish: their connections are gone.
* Leases and delays whose deadline passed while down end at start-up, each
  judged at its own time: a lease at max_deliveries is dead-lettered, with
  its deadline as the time in its origin.
* Totals count from the start (dead-lettering at start-up included); a queue
  made by use that holds no message is gone.

Ids and lease tokens come from the broker (the model does not re-implement the
id sequence); the model checks that each one is larger than every earlier one
a client could have seen, and then remembers it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

from durability import killed
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wonderq_server.broker import Broker
from wonderq_server.errors import (
    BODY_TOO_LARGE,
    LEASE_LOST,
    NOT_FOUND,
    QUEUE_NOT_FOUND,
    CommandError,
)
from wonderq_server.journal import Journal, RecoveryReport
from wonderq_server.message import (
    DELAYED,
    LEASED,
    MESSAGE_OVERHEAD_BYTES,
    READY,
    Message,
    view,
)

T0 = 1_700_000_000.0
DEFAULT_VISIBILITY = 3.0
MAX_BYTES = 8
QUEUES = ("a", "b")  # a queue's dead-letter queue, when it has one, is the other

# Times are multiples of 0.5, so sums of them are exact and ties are common.
visibilities = st.sampled_from([None, 0.0, 0.5, 1.0, 2.5, 5.0])
delays = st.sampled_from([0.0, 0.0, 0.5, 1.0, 4.0])
waits = st.sampled_from([0.0, 0.5, 1.0, 2.5, 6.0, 20.0])
steps = st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0, 10.0])
downtimes = st.sampled_from([0.0, 0.5, 2.0, 10.0])
queues = st.sampled_from(QUEUES)
priorities = st.lists(st.sampled_from([0, 0, 0, -1, 2]), min_size=4, max_size=4)
delivery_limits = st.sampled_from([0, 0, 1, 2, 3])  # max_deliveries; 0: no dead-lettering
picks = st.integers(min_value=0, max_value=10**6)
rarely = st.integers(min_value=0, max_value=9).map(lambda n: n == 0)  # true one time in ten

STATE = {"ready": READY, "leased": LEASED, "delayed": DELAYED}


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


@dataclass
class ModelWaiter:
    queue: str
    max_messages: int
    visibility: float | None
    until: float
    handle: Any = None
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


@dataclass
class Delivery:
    """What a waiter's deliver callback saw, read at once as a codec would."""

    waiter: int
    messages: list[tuple[int, int | None, int, float | None, bytes, int]] = field(
        default_factory=list)


def snapshot(messages: list[Message]) -> list[tuple[int, int | None, int, float | None,
                                                    bytes, int]]:
    return [(m.id, m.lease, m.deliveries, m.deadline_at, m.body, m.state) for m in messages]


def copied(messages: dict[int, ModelMessage]) -> dict[int, ModelMessage]:
    return {i: replace(m) for i, m in messages.items()}


class BrokerVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = ""
        self.journal: Journal | None = None
        self.broker = Broker()
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
        self.last_token = 0  # the largest id or lease seen so far
        self.written = self.now_written()  # the journal's file (empty, once opened)
        self.pairs: list[tuple[str, int, int]] = []  # (queue, id, lease) of every delivery
        self.unleased: list[tuple[str, int, int]] = []  # (queue, id, a lease it never had)
        self.delivered: list[Delivery] = []  # filled by the waiters' callbacks
        self.bodies = 0

    def teardown(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------ model helpers

    def open_broker(self) -> RecoveryReport:
        """open_broker gives the directory's journal to a fresh broker, as the server starts."""
        self.broker = Broker(visibility_timeout_s=DEFAULT_VISIBILITY, max_message_bytes=MAX_BYTES)
        self.journal = Journal(self.directory, fsync="never")
        return self.journal.open(self.broker, self.now)

    def now_written(self) -> Written:
        return Written(copied(self.messages), dict(self.max_deliveries), set(self.explicit),
                       self.last_token)

    def new_token(self, token: int) -> None:
        assert token > self.last_token, "ids and leases must grow"
        self.last_token = token

    def visibility(self, visibility: float | None) -> float:
        return DEFAULT_VISIBILITY if visibility is None else visibility

    def kept_queues(self) -> set[str]:
        return self.held_queues | self.explicit | {w.queue for w in self.waiters if not w.done}

    def ready_ids(self, queue: str) -> list[int]:
        """ready_ids in the order receive takes them: lower priority first, then older."""
        ready = [(m.priority, i) for i, m in self.messages.items()
                 if m.queue == queue and m.state == "ready"]
        return [i for _, i in sorted(ready)]

    def take(self, queue: str, max_messages: int, visibility: float | None) -> list[int]:
        """take leases the first ready messages in the model (leases come later)."""
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
        """serve hands ready messages to the queue's live waiters, first come first served."""
        served: dict[int, list[int]] = {}
        for index, w in enumerate(self.waiters):
            if not self.ready_ids(queue):
                break
            if w.queue == queue and not w.done:
                w.done = True
                served[index] = self.take(queue, w.max_messages, w.visibility)
        return served

    def at_limit(self, m: ModelMessage) -> bool:
        limit = self.max_deliveries[m.queue]
        return bool(limit) and m.deliveries >= limit

    def dead_letter(self, msg_id: int, at: float) -> str:
        """dead_letter moves a message to its queue's dead-letter queue, ready, without a
        lease; returns that queue."""
        m = self.messages[msg_id]
        self.totals[m.queue].dead_lettered += 1
        target = other(m.queue)
        self.held_queues.add(target)
        m.origin = (m.queue, at)
        m.queue, m.state, m.lease, m.deadline = target, "ready", None, None
        return target

    def end_due(self) -> set[str]:
        """end_due ends every lease and delay due by now, each judged at its own time (a
        lease at max_deliveries is dead-lettered); returns the queues that got a ready
        message."""
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

    def check_delivered_messages(self, got: list[tuple], want_ids: list[int]) -> None:
        """check_delivered_messages compares one batch and adopts its new leases."""
        assert [g[0] for g in got] == want_ids
        for msg_id, lease, deliveries, deadline_at, body, state in got:
            m = self.messages[msg_id]
            assert lease is not None
            self.new_token(lease)
            m.lease = lease
            self.pairs.append((m.queue, msg_id, lease))
            assert (deliveries, deadline_at, body, state) == (
                m.deliveries, m.deadline, m.body, LEASED)

    def check_waiters_served(self, want: dict[int, list[int]]) -> None:
        """check_waiters_served compares what every waiter got during the last call."""
        got = {d.waiter: d.messages for d in self.delivered}
        assert len(got) == len(self.delivered), "a waiter was answered twice"
        assert sorted(got) == sorted(want)
        for d in self.delivered:  # in call order, so leases must grow in this order
            self.check_delivered_messages(d.messages, want[d.waiter])
        self.delivered.clear()

    def checked_message(self, queue: str, msg_id: int, lease: int) -> ModelMessage | str:
        m = self.messages.get(msg_id)
        if m is None or m.queue != queue:
            return NOT_FOUND
        if m.lease != lease:
            return LEASE_LOST
        return m

    def call(self, method: Any, *args: Any, **options: Any) -> tuple[Any, str | None]:
        try:
            return method(*args, **options), None
        except CommandError as e:
            return None, e.code

    def pick_pair(self, pick: int, other_queue: bool) -> tuple[str, int, int]:
        """pick_pair mostly picks a recent lease, sometimes any known one, rarely nonsense."""
        if pick % 11 == 0:
            return QUEUES[pick % 2], self.last_token + 1 + pick, pick  # never existed
        if pick % 7 == 0:
            queue, msg_id, lease = self.unleased[pick % len(self.unleased)]
        elif pick % 3 == 0:
            queue, msg_id, lease = self.pairs[pick % len(self.pairs)]
        else:
            queue, msg_id, lease = self.pairs[-1 - pick % min(len(self.pairs), 6)]
        if other_queue:
            queue = other(queue)
        return queue, msg_id, lease

    # -------------------------------------------------------------------- rules

    @initialize(first=st.lists(st.integers(0, 3), min_size=2, max_size=2),
                limits=st.lists(st.sampled_from([0, 1, 1, 2, 3]), min_size=2, max_size=2))
    def start(self, first: list[int], limits: list[int]) -> None:
        """start opens a journal in a new directory, makes the queues dead-letter to each
        other after `limits` deliveries (0: not), and puts a few messages in each queue,
        so runs get going."""
        self.directory = tempfile.mkdtemp(prefix="wonderq-model-")
        self.open_broker()
        for queue, limit, n in zip(QUEUES, limits, first, strict=True):
            if limit:
                self.broker.create_queue(queue, {"max_deliveries": limit,
                                                 "dead_letter_queue": other(queue)}, self.now)
                self.explicit.add(queue)
                self.max_deliveries[queue] = limit
            if n:
                self.put(queue, [1] * n, True, False, [0] * 4)

    @rule(queue=queues, sizes=st.lists(st.integers(0, MAX_BYTES), min_size=1, max_size=4),
          many=st.booleans(), too_large=rarely, chosen=priorities)
    def put(self, queue: str, sizes: list[int], many: bool, too_large: bool,
            chosen: list[int]) -> None:
        bodies = []
        for size in sizes:
            self.bodies += 1
            bodies.append(bytes([65 + self.bodies % 26]) * size)
        if too_large:
            bodies[self.bodies % len(bodies)] = b"z" * (MAX_BYTES + 1)
        if len(bodies) == 1 and not many:
            result, code = self.call(self.broker.put, queue, bodies[0], self.now,
                                     priority=chosen[0])
            if len(bodies[0]) > MAX_BYTES:
                assert code == BODY_TOO_LARGE
                assert self.delivered == []
                return
            results: list[Any] = [result]
        else:
            # put_many: a result per item; a refused item is its own CommandError.
            items = [{"body": body, "priority": p} if p else body
                     for body, p in zip(bodies, chosen, strict=False)]
            results, code = self.call(self.broker.put_many, queue, items, self.now)
        assert code is None
        assert len(results) == len(bodies)
        for msg_id, body, priority in zip(results, bodies, chosen, strict=False):
            if len(body) > MAX_BYTES:
                assert isinstance(msg_id, CommandError) and msg_id.code == BODY_TOO_LARGE
                continue
            self.held_queues.add(queue)
            self.new_token(msg_id)
            self.messages[msg_id] = ModelMessage(queue, body, priority)
            self.unleased.append((queue, msg_id, msg_id))  # a lease it never had
            self.totals[queue].put += 1
        self.check_waiters_served(self.serve(queue))

    @rule(queue=queues, max_messages=st.integers(1, 4), visibility=visibilities)
    def receive(self, queue: str, max_messages: int, visibility: float | None) -> None:
        got = self.broker.receive(queue, max_messages, visibility, self.now)
        self.check_delivered_messages(snapshot(got), self.take(queue, max_messages, visibility))

    @rule(queue=queues, max_messages=st.integers(1, 3), visibility=visibilities, wait_s=waits)
    def wait(self, queue: str, max_messages: int, visibility: float | None,
             wait_s: float) -> None:
        index = len(self.waiters)
        w = ModelWaiter(queue, max_messages, visibility, self.now + wait_s)
        self.waiters.append(w)

        def deliver(messages: list[Message]) -> None:
            self.delivered.append(Delivery(index, snapshot(messages)))

        w.handle = self.broker.wait(queue, max_messages, visibility, w.until, deliver, self.now)
        self.check_waiters_served(self.serve(queue))

    @precondition(lambda self: bool(self.waiters))
    @rule(pick=picks)
    def cancel(self, pick: int) -> None:
        w = self.waiters[pick % len(self.waiters)]
        self.broker.cancel_wait(w.handle)
        w.done = True
        assert self.delivered == []

    @precondition(lambda self: bool(self.pairs))
    @rule(pick=picks, other_queue=rarely)
    def ack(self, pick: int, other_queue: bool) -> None:
        queue, msg_id, lease = self.pick_pair(pick, other_queue)
        _, code = self.call(self.broker.ack, queue, msg_id, lease, self.now)
        m = self.checked_message(queue, msg_id, lease)
        if isinstance(m, str):
            assert code == m
            return
        assert code is None
        del self.messages[msg_id]
        self.totals[queue].acked += 1

    @precondition(lambda self: bool(self.pairs))
    @rule(pick=picks, other_queue=rarely, delay=delays)
    def nack(self, pick: int, other_queue: bool, delay: float) -> None:
        queue, msg_id, lease = self.pick_pair(pick, other_queue)
        _, code = self.call(self.broker.nack, queue, msg_id, lease, delay, self.now)
        m = self.checked_message(queue, msg_id, lease)
        if isinstance(m, str):
            assert code == m
            assert self.delivered == []
            return
        assert code is None
        if self.at_limit(m):  # dead-lettered at once, delay or not
            self.check_waiters_served(self.serve(self.dead_letter(msg_id, self.now)))
        elif delay > 0:
            m.state, m.deadline = "delayed", self.now + delay
            assert self.delivered == []
        else:
            m.state, m.deadline = "ready", None
            self.check_waiters_served(self.serve(queue))

    @precondition(lambda self: bool(self.pairs))
    @rule(pick=picks, other_queue=rarely, visibility=visibilities)
    def touch(self, pick: int, other_queue: bool, visibility: float | None) -> None:
        queue, msg_id, lease = self.pick_pair(pick, other_queue)
        result, code = self.call(self.broker.touch, queue, msg_id, lease, visibility, self.now)
        m = self.checked_message(queue, msg_id, lease)
        if isinstance(m, str):
            assert code == m
            return
        assert code is None
        m.state, m.deadline = "leased", self.now + self.visibility(visibility)
        assert result == m.deadline

    @rule(queue=queues, limit=delivery_limits)
    def configure(self, queue: str, limit: int) -> None:
        """configure turns dead-lettering (to the other queue) on, off or to a new limit; it
        applies when a delivery ends, running ones included."""
        changes = {"max_deliveries": limit, "dead_letter_queue": other(queue) if limit else ""}
        result, code = self.call(self.broker.configure_queue, queue, changes, self.now)
        if queue not in self.kept_queues():
            assert code == QUEUE_NOT_FOUND
            return
        assert code is None
        assert (result["max_deliveries"], result["dead_letter_queue"]) == (
            limit, changes["dead_letter_queue"])
        self.explicit.add(queue)
        self.max_deliveries[queue] = limit

    @rule(queue=queues)
    def purge(self, queue: str) -> None:
        """purge removes every message of a queue, leased ones too; the queue stays (until a
        restart finds it empty and made by use)."""
        result, code = self.call(self.broker.purge, queue, self.now)
        if queue not in self.kept_queues():
            assert code == QUEUE_NOT_FOUND
            return
        gone = [i for i, m in self.messages.items() if m.queue == queue]
        assert (result, code) == (len(gone), None)
        for i in gone:
            del self.messages[i]

    @rule(step=steps)
    def advance(self, step: float) -> None:
        self.now += step
        handled = self.broker.advance(self.now)
        due = [i for i, m in self.messages.items()
               if m.deadline is not None and m.deadline <= self.now]
        expired = [i for i, w in enumerate(self.waiters) if not w.done and w.until <= self.now]
        assert handled == len(due) + len(expired)
        served: dict[int, list[int]] = {}
        for queue in self.end_due():  # waiters are served after every deadline due
            served.update(self.serve(queue))
        for i in expired:
            if not self.waiters[i].done:  # not served by a message freed just now
                self.waiters[i].done = True
                served[i] = []
        self.check_waiters_served(served)

    @rule()
    def flush(self) -> None:
        """flush writes the journal's buffer, as the server does once per loop iteration."""
        assert self.journal is not None
        self.journal.write_pending()
        self.written = self.now_written()

    @rule(crash=st.booleans(), down_s=downtimes)
    def restart(self, crash: bool, down_s: float) -> None:
        """restart stops the broker (cleanly, or as kill -9 would), lets the clock run
        `down_s` and opens a fresh broker on the journal's directory."""
        assert self.journal is not None
        if crash:  # what came after the last write never happened
            killed(self.journal)
            self.messages = copied(self.written.messages)
            self.max_deliveries = dict(self.written.max_deliveries)
            self.explicit = set(self.written.explicit)
            self.last_token = self.written.last_token
        else:
            self.journal.close()
        self.now += down_s
        report = self.open_broker()
        self.waiters = []  # their connections are gone
        self.totals = {name: Totals() for name in QUEUES}
        self.held_queues = {m.queue for m in self.messages.values()}
        assert (report.messages, report.queues) == (
            len(self.messages), len(self.held_queues | self.explicit))
        # The file holds this state; what the start-up advance changes is in the buffer.
        self.written = self.now_written()
        self.end_due()
        assert self.delivered == []

    # --------------------------------------------------------------- invariants

    @invariant()
    def stats_match(self) -> None:
        stats = self.broker.stats(self.now)
        want = {}
        for queue in sorted(self.kept_queues()):
            states = [m.state for m in self.messages.values() if m.queue == queue]
            totals = self.totals[queue]
            want[queue] = {
                "ready": states.count("ready"),
                "in_flight": states.count("leased"),
                "delayed": states.count("delayed"),
                "waiting": sum(1 for w in self.waiters if w.queue == queue and not w.done),
                "put_total": totals.put,
                "acked_total": totals.acked,
                "redelivered_total": totals.redelivered,
                "dead_lettered_total": totals.dead_lettered,
            }
        assert {name: {key: counts[key] for key in want.get(name, counts)}
                for name, counts in stats["queues"].items()} == want
        assert stats["messages"] == len(self.messages)
        assert stats["stored_bytes"] == sum(len(m.body) + MESSAGE_OVERHEAD_BYTES
                                            for m in self.messages.values())
        assert stats["waiting_consumers"] == sum(1 for w in self.waiters if not w.done)

    @invariant()
    def settings_match(self) -> None:
        for queue in QUEUES:
            q = self.broker.queues.get(queue)
            if q is not None:
                assert (q.explicit, q.settings.max_deliveries) == (
                    queue in self.explicit, self.max_deliveries[queue])

    @invariant()
    def next_deadline_matches(self) -> None:
        deadlines = [m.deadline for m in self.messages.values() if m.deadline is not None]
        deadlines += [w.until for w in self.waiters if not w.done]
        assert self.broker.next_deadline() == min(deadlines, default=None)

    @invariant()
    def no_ready_message_beside_a_live_waiter(self) -> None:
        for queue in QUEUES:
            if self.ready_ids(queue):
                assert not any(w.queue == queue and not w.done for w in self.waiters)

    @invariant()
    def message_states_match(self) -> None:
        stored = {i: view(i, m, q) for q in self.broker.queues.values()
                  for i, m in q.messages.items()}
        assert set(stored) == set(self.messages)
        for i, m in self.messages.items():
            s = stored[i]
            assert (s.queue.name, s.state, s.lease, s.deliveries, s.deadline_at, s.body,
                    s.priority, s.origin) == (
                m.queue, STATE[m.state], m.lease, m.deliveries, m.deadline, m.body,
                m.priority, m.origin)


BrokerVersusModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None)
TestBrokerVersusModel = BrokerVersusModel.TestCase
