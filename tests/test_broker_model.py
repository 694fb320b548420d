"""The broker against a tiny reference model, driven by random operations.

The model is the rules of broker.py written as plainly as possible: a dict of
message id -> (queue, state, lease, deliveries, deadline), a list of waiters,
and a few totals. Hypothesis applies random sequences of put / put_many /
receive / wait / cancel / ack / nack / touch / advance-the-clock to both, and
after every step compares everything observable: returned ids, error codes,
touch deadlines, what each waiter was handed, stats and the next deadline.

Ids and lease tokens come from the broker (the model does not re-implement the
id sequence); the model checks that each one is larger than every earlier one
and then remembers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wonderq_server.broker import Broker
from wonderq_server.errors import BODY_TOO_LARGE, LEASE_LOST, NOT_FOUND, CommandError
from wonderq_server.message import DELAYED, LEASED, READY, Message, view

T0 = 1_700_000_000.0
DEFAULT_VISIBILITY = 3.0
MAX_BYTES = 8
QUEUES = ("a", "b")

# Times are multiples of 0.5, so sums of them are exact and ties are common.
visibilities = st.sampled_from([None, 0.0, 0.5, 1.0, 2.5, 5.0])
delays = st.sampled_from([0.0, 0.0, 0.5, 1.0, 4.0])
waits = st.sampled_from([0.0, 0.5, 1.0, 2.5, 6.0])
steps = st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0, 10.0])
queues = st.sampled_from(QUEUES)
picks = st.integers(min_value=0, max_value=10**6)
rarely = st.integers(min_value=0, max_value=9).map(lambda n: n == 0)  # true one time in ten

STATE = {"ready": READY, "leased": LEASED, "delayed": DELAYED}


@dataclass
class ModelMessage:
    queue: str
    body: bytes
    state: str = "ready"
    lease: int | None = None
    deliveries: int = 0
    deadline: float | None = None


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


@dataclass
class Delivery:
    """What a waiter's deliver callback saw, read at once as a codec would."""

    waiter: int
    messages: list[tuple[int, int | None, int, float | None, bytes, int]] = field(
        default_factory=list)


def snapshot(messages: list[Message]) -> list[tuple[int, int | None, int, float | None,
                                                    bytes, int]]:
    return [(m.id, m.lease, m.deliveries, m.deadline_at, m.body, m.state) for m in messages]


class BrokerVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.broker = Broker(visibility_timeout_s=DEFAULT_VISIBILITY, max_message_bytes=MAX_BYTES)
        self.now = T0
        self.messages: dict[int, ModelMessage] = {}
        self.waiters: list[ModelWaiter] = []
        self.totals = {name: Totals() for name in QUEUES}
        # Queues that held a message; with those someone waits on, what the broker keeps
        # (a queue made by a wait that never held a message goes when its waiters do).
        self.held_queues: set[str] = set()
        self.last_token = 0  # the largest id or lease seen so far
        self.pairs: list[tuple[str, int, int]] = []  # (queue, id, lease) of every delivery
        self.unleased: list[tuple[str, int, int]] = []  # (queue, id, a lease it never had)
        self.delivered: list[Delivery] = []  # filled by the waiters' callbacks
        self.bodies = 0

    # ------------------------------------------------------------ model helpers

    def new_token(self, token: int) -> None:
        assert token > self.last_token, "ids and leases must grow"
        self.last_token = token

    def visibility(self, visibility: float | None) -> float:
        return DEFAULT_VISIBILITY if visibility is None else visibility

    def ready_ids(self, queue: str) -> list[int]:
        return sorted(i for i, m in self.messages.items()
                      if m.queue == queue and m.state == "ready")

    def take(self, queue: str, max_messages: int, visibility: float | None) -> list[int]:
        """take leases the oldest ready messages in the model (leases come later)."""
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

    def call(self, method: Any, *args: Any) -> tuple[Any, str | None]:
        try:
            return method(*args), None
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
            queue = QUEUES[1 - QUEUES.index(queue)]
        return queue, msg_id, lease

    # -------------------------------------------------------------------- rules

    @initialize(first=st.lists(st.integers(0, 3), min_size=2, max_size=2))
    def start_with_messages(self, first: list[int]) -> None:
        """start_with_messages puts a few messages in each queue, so runs get going."""
        for queue, n in zip(QUEUES, first, strict=True):
            if n:
                self.put(queue, [1] * n, True, False)

    @rule(queue=queues, sizes=st.lists(st.integers(0, MAX_BYTES), min_size=1, max_size=4),
          many=st.booleans(), too_large=rarely)
    def put(self, queue: str, sizes: list[int], many: bool, too_large: bool) -> None:
        bodies = []
        for size in sizes:
            self.bodies += 1
            bodies.append(bytes([65 + self.bodies % 26]) * size)
        if too_large:
            bodies[self.bodies % len(bodies)] = b"z" * (MAX_BYTES + 1)
        if len(bodies) == 1 and not many:
            result, code = self.call(self.broker.put, queue, bodies[0], self.now)
            if len(bodies[0]) > MAX_BYTES:
                assert code == BODY_TOO_LARGE
                assert self.delivered == []
                return
            results: list[Any] = [result]
        else:
            # put_many: a result per item; a refused item is its own CommandError.
            results, code = self.call(self.broker.put_many, queue, bodies, self.now)
        assert code is None
        assert len(results) == len(bodies)
        for msg_id, body in zip(results, bodies, strict=True):
            if len(body) > MAX_BYTES:
                assert isinstance(msg_id, CommandError) and msg_id.code == BODY_TOO_LARGE
                continue
            self.held_queues.add(queue)
            self.new_token(msg_id)
            self.messages[msg_id] = ModelMessage(queue, body)
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
        if delay > 0:
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

    @rule(step=steps)
    def advance(self, step: float) -> None:
        self.now += step
        handled = self.broker.advance(self.now)
        due = sorted(i for i, m in self.messages.items()
                     if m.deadline is not None and m.deadline <= self.now)
        expired = [i for i, w in enumerate(self.waiters) if not w.done and w.until <= self.now]
        assert handled == len(due) + len(expired)
        freed = set()
        for i in due:
            m = self.messages[i]
            m.state, m.deadline = "ready", None
            freed.add(m.queue)
        served: dict[int, list[int]] = {}
        for queue in freed:
            served.update(self.serve(queue))
        for i in expired:
            if not self.waiters[i].done:  # not served by a message freed just now
                self.waiters[i].done = True
                served[i] = []
        self.check_waiters_served(served)

    # --------------------------------------------------------------- invariants

    @invariant()
    def stats_match(self) -> None:
        stats = self.broker.stats(self.now)
        want = {}
        kept = self.held_queues | {w.queue for w in self.waiters if not w.done}
        for queue in sorted(kept):
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
            }
        assert {name: {key: counts[key] for key in want.get(name, counts)}
                for name, counts in stats["queues"].items()} == want
        assert stats["messages"] == len(self.messages)
        assert stats["waiting_consumers"] == sum(1 for w in self.waiters if not w.done)

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
            assert (s.state, s.lease, s.deliveries, s.deadline_at, s.body) == (
                STATE[m.state], m.lease, m.deliveries, m.deadline, m.body)


BrokerVersusModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None)
TestBrokerVersusModel = BrokerVersusModel.TestCase
