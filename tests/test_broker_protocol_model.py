"""The broker core against a plain reference model of what PROTOCOL.md promises.

A reviewer's (session 35), kept as a regression net. It covers what
test_broker_model.py does not: per-message and per-queue expiry,
queue delay, max_length/FULL, redrive, delete_queue, nack unseen, ack_many /
nack_many, put_many with options, peek and message_info, and DLQ cycles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from broker_helpers import check_invariants
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from wonderq_server.broker import Broker
from wonderq_server.errors import FULL, LEASE_LOST, NOT_FOUND, QUEUE_NOT_FOUND, CommandError
from wonderq_server.message import DELAYED, LEASED, READY, view

T0 = 1_700_000_000.0
VIS = 4.0
QS = ("a", "b", "c")
STATE = {"ready": READY, "leased": LEASED, "delayed": DELAYED}


@dataclass
class ModelQueue:
    md: int = 0
    dlq: str = ""
    max_length: int = 0
    expiry: float = 0.0
    delay: float = 0.0
    vis: float = 0.0


@dataclass
class ModelMessage:
    queue: str
    priority: int = 0
    state: str = "ready"
    lease: int | None = None
    kept: int | None = None
    deliveries: int = 0
    deadline: float | None = None
    expires_at: float | None = None
    origin: tuple[str, float] | None = None


@dataclass
class ModelTotals:
    put: int = 0
    acked: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    expired: int = 0


def call(method: Any, *args: Any, **kw: Any) -> tuple[Any, str | None]:
    try:
        return method(*args, **kw), None
    except CommandError as e:
        return None, e.code


class Model:
    def __init__(self) -> None:
        self.now = T0
        self.queues: dict[str, ModelQueue] = {}
        self.tot: dict[str, ModelTotals] = {}
        self.msgs: dict[int, ModelMessage] = {}
        self.full_refusals = 0

    def make(self, q: str) -> None:
        if q not in self.queues:
            self.queues[q] = ModelQueue()
            self.tot.setdefault(q, ModelTotals())

    def count(self, q: str) -> int:
        return sum(1 for m in self.msgs.values() if m.queue == q)

    def ready_ids(self, q: str) -> list[int]:
        return [i for _, i in sorted((m.priority, i) for i, m in self.msgs.items()
                                     if m.queue == q and m.state == "ready")]

    # --- lookups
    def dead_lettered_from(self, q: str, i: int) -> ModelMessage | None:
        m = self.msgs.get(i)
        s = self.queues.get(q)
        if m is None or s is None or not s.dlq or m.queue != s.dlq or m.origin is None \
                or m.origin[0] != q:
            return None
        return m

    def ack_target(self, q: str, i: int, lease: int) -> ModelMessage | str:
        m = self.msgs.get(i)
        if m is not None and m.queue == q and q in self.queues:
            if m.lease == lease or (m.lease is None and m.kept == lease):
                return m
            return LEASE_LOST
        d = self.dead_lettered_from(q, i)
        if d is not None:
            if d.lease is None and d.kept == lease:  # nobody received it since
                return d
            return LEASE_LOST
        return NOT_FOUND

    def held_target(self, q: str, i: int, lease: int) -> ModelMessage | str:
        m = self.msgs.get(i)
        if m is not None and m.queue == q and q in self.queues:
            return m if m.lease == lease else LEASE_LOST
        d = self.dead_lettered_from(q, i)
        if d is not None:
            if d.lease is None and d.kept == lease:
                return NOT_FOUND
            return LEASE_LOST
        return NOT_FOUND

    # --- changes
    def drop(self, i: int) -> None:
        del self.msgs[i]

    def move(self, i: int, target: str, at: float, dead: bool) -> None:
        m = self.msgs[i]
        src = m.queue
        self.make(target)
        if dead:
            self.tot[src].dead_lettered += 1
            m.origin = (src, at)
            if m.lease is not None:
                m.kept = m.lease
        else:
            m.origin = None
            m.kept = None
            m.deliveries = 0
        m.lease = None
        m.queue = target
        m.state, m.deadline = "ready", None
        e = self.queues[target].expiry
        m.expires_at = at + e if e else None

    def end_delivery(self, i: int, at: float, delay: float) -> None:
        m = self.msgs[i]
        s = self.queues[m.queue]
        if m.expires_at is not None and m.expires_at <= at:
            self.tot[m.queue].expired += 1
            self.drop(i)
            return
        if s.md and m.deliveries >= s.md:
            self.move(i, s.dlq, at, dead=True)
            return
        if delay > 0:
            m.state, m.deadline = "delayed", at + delay
        else:
            m.state, m.deadline = "ready", None

    def advance(self, now: float) -> None:
        while True:
            best = None
            for i, m in self.msgs.items():
                cands = []
                if m.state in ("leased", "delayed") and m.deadline is not None:
                    cands.append((m.deadline, 1, i))
                if m.state in ("ready", "delayed") and m.expires_at is not None:
                    cands.append((m.expires_at, 0, i))
                for c in cands:
                    if c[0] <= now and (best is None or c < best):
                        best = c
            if best is None:
                break
            at, kind, i = best
            m = self.msgs[i]
            if kind == 0:
                self.tot[m.queue].expired += 1
                self.drop(i)
            elif m.state == "leased":
                self.end_delivery(i, at, 0.0)
            else:  # delay ended
                if m.expires_at is not None and m.expires_at <= at:
                    self.tot[m.queue].expired += 1
                    self.drop(i)
                else:
                    m.state, m.deadline = "ready", None
        self.now = now


ops = st.sampled_from
prios = st.sampled_from([0, 0, 0, -1, 2])
delays = st.sampled_from([None, None, 0.0, 1.0, 3.0])
expiries = st.sampled_from([None, None, 0.0, 2.0, 5.0])
visib = st.sampled_from([None, None, 1.0, 2.0, 5.0])
queues = st.sampled_from(QS)


class ProtocolModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Model()
        self.b = Broker(visibility_timeout_s=VIS, max_message_bytes=64)
        self.pairs: list[tuple[str, int, int]] = []

    @initialize()
    def start(self) -> None:
        for q in QS:
            self.b.create_queue(q, {}, self.m.now)
            self.m.make(q)

    # ------------------------------------------------------------------ puts
    def _model_put(self, q: str, prio: int, delay: float | None, expiry: float | None,
                   got: Any, err: str | None) -> None:
        m = self.m
        s = m.queues.get(q)
        if s is None:
            m.make(q)
            s = m.queues[q]
        if s.max_length and m.count(q) >= s.max_length:
            assert err == FULL, (err, got)
            m.full_refusals += 1
            return
        assert err is None, err
        assert got not in m.msgs
        d = s.delay if delay is None else delay
        e = s.expiry if expiry is None else expiry
        mm = ModelMessage(q, prio)
        if e:
            mm.expires_at = m.now + e
        if d:
            mm.state, mm.deadline = "delayed", m.now + d
        m.msgs[got] = mm
        m.tot[q].put += 1

    @rule(q=queues, prio=prios, delay=delays, expiry=expiries)
    def put(self, q: str, prio: int, delay: float | None, expiry: float | None) -> None:
        got, err = call(self.b.put, q, b"x", self.m.now, delay=delay, priority=prio,
                        expiry=expiry)
        self._model_put(q, prio, delay, expiry, got, err)

    @rule(q=queues, items=st.lists(st.tuples(st.booleans(), prios, delays, expiries),
                                   min_size=1, max_size=4))
    def put_many(self, q: str, items: list) -> None:
        wire: list[Any] = []
        for bare, prio, delay, expiry in items:
            if bare:
                wire.append(b"y")
            else:
                wire.append({"body": b"y", "priority": prio, "delay": delay,
                             "expiry": expiry})
        results, err = call(self.b.put_many, q, wire, self.m.now)
        assert err is None
        for (bare, prio, delay, expiry), r in zip(items, results, strict=True):
            if bare:
                prio, delay, expiry = 0, None, None
            if isinstance(r, CommandError):
                self._model_put(q, prio, delay, expiry, None, r.code)
            else:
                self._model_put(q, prio, delay, expiry, r, None)

    # --------------------------------------------------------------- receive
    @rule(q=queues, n=st.integers(1, 5), vis=visib)
    def receive(self, q: str, n: int, vis: float | None) -> None:
        got, err = call(self.b.receive, q, n, vis, self.m.now)
        assert err is None
        snap = [(x.id, x.lease, x.deliveries, x.priority, x.origin) for x in got]
        m = self.m
        want = m.ready_ids(q)[:n] if q in m.queues else []
        assert [s[0] for s in snap] == want, (snap, want)
        for i, lease, deliveries, prio, origin in snap:
            mm = m.msgs[i]
            mm.deliveries += 1
            if mm.deliveries > 1:
                m.tot[q].redelivered += 1
            mm.kept = None
            mm.lease = lease
            mm.state = "leased"
            v = vis if vis is not None else (m.queues[q].vis or VIS)
            mm.deadline = m.now + v
            assert (deliveries, prio, origin) == (mm.deliveries, mm.priority, mm.origin)
            self.pairs.append((q, i, lease))

    def pick(self, k: int, other: int) -> tuple[str, int, int]:
        if not self.pairs:
            return ("a", 1, 2)
        q, i, lease = self.pairs[k % len(self.pairs)]
        if other:
            q = QS[(QS.index(q) + other) % 3]
        return q, i, lease

    # ----------------------------------------------------------- ack / nack
    def _model_ack(self, q: str, i: int, lease: int, err: str | None) -> None:
        t = self.m.ack_target(q, i, lease)
        if isinstance(t, str):
            assert err == t, (err, t, q, i, lease)
            return
        assert err is None, (err, q, i, lease, t)
        self.m.tot[t.queue].acked += 1
        self.m.drop(i)

    @rule(k=st.integers(0, 100), other=st.sampled_from([0, 0, 0, 1, 2]))
    def ack(self, k: int, other: int) -> None:
        q, i, lease = self.pick(k, other)
        _, err = call(self.b.ack, q, i, lease, self.m.now)
        self._model_ack(q, i, lease, err)

    @rule(ks=st.lists(st.integers(0, 100), min_size=1, max_size=4),
          other=st.sampled_from([0, 0, 1]))
    def ack_many(self, ks: list[int], other: int) -> None:
        picked = [self.pick(k, 0) for k in ks]
        q = picked[0][0] if not other else QS[(QS.index(picked[0][0]) + 1) % 3]
        items = [(i, lease) for _, i, lease in picked]
        res, err = call(self.b.ack_many, q, items, self.m.now)
        assert err is None
        for (i, lease), r in zip(items, res, strict=True):
            self._model_ack(q, i, lease, None if r is None else r.code)

    def _model_nack(self, q: str, i: int, lease: int, delay: float, unseen: bool,
                    err: str | None) -> None:
        t = self.m.held_target(q, i, lease)
        if isinstance(t, str):
            assert err == t, (err, t)
            return
        assert err is None, (err, q, i, lease)
        if unseen and t.state == "leased" and t.deliveries:
            t.deliveries -= 1
            t.lease = t.kept = None
        else:
            t.kept, t.lease = lease, None
        self.m.end_delivery(i, self.m.now, delay)

    @rule(k=st.integers(0, 100), other=st.sampled_from([0, 0, 0, 1]),
          delay=st.sampled_from([0.0, 0.0, 2.0]), unseen=st.booleans())
    def nack(self, k: int, other: int, delay: float, unseen: bool) -> None:
        q, i, lease = self.pick(k, other)
        _, err = call(self.b.nack, q, i, lease, delay, self.m.now, unseen=unseen)
        self._model_nack(q, i, lease, delay, unseen, err)

    @rule(ks=st.lists(st.integers(0, 100), min_size=1, max_size=4),
          delay=st.sampled_from([0.0, 2.0]), unseen=st.booleans())
    def nack_many(self, ks: list[int], delay: float, unseen: bool) -> None:
        picked = [self.pick(k, 0) for k in ks]
        q = picked[0][0]
        items = [(i, lease) for _, i, lease in picked]
        res, err = call(self.b.nack_many, q, items, delay, self.m.now, unseen)
        assert err is None
        for (i, lease), r in zip(items, res, strict=True):
            self._model_nack(q, i, lease, delay, unseen, None if r is None else r.code)

    @rule(k=st.integers(0, 100), other=st.sampled_from([0, 0, 0, 1]), vis=visib)
    def touch(self, k: int, other: int, vis: float | None) -> None:
        q, i, lease = self.pick(k, other)
        got, err = call(self.b.touch, q, i, lease, vis, self.m.now)
        t = self.m.held_target(q, i, lease)
        if isinstance(t, str):
            assert err == t, (err, t)
            return
        assert err is None, err
        v = vis if vis is not None else (self.m.queues[q].vis or VIS)
        t.state, t.deadline = "leased", self.m.now + v
        assert got == t.deadline

    # -------------------------------------------------------------- admin
    @rule(q=queues, md=st.sampled_from([0, 1, 2]), dlq=st.sampled_from([1, 2]),
          max_length=st.sampled_from([0, 0, 2, 4]), expiry=st.sampled_from([0.0, 0.0, 3.0]),
          delay=st.sampled_from([0.0, 0.0, 1.0]), vis=st.sampled_from([0.0, 2.0]))
    def configure(self, q: str, md: int, dlq: int, max_length: int, expiry: float,
                  delay: float, vis: float) -> None:
        d = QS[(QS.index(q) + dlq) % 3] if md else ""
        ch = {"max_deliveries": md, "dead_letter_queue": d, "max_length": max_length,
              "expiry": expiry, "delay": delay, "visibility_timeout": vis}
        _, err = call(self.b.configure_queue, q, ch, self.m.now)
        if q not in self.m.queues:
            assert err == QUEUE_NOT_FOUND
            return
        assert err is None
        self.m.queues[q] = ModelQueue(md, d, max_length, expiry, delay, vis)

    def _empty(self, method: Any, q: str) -> bool:
        """_empty runs purge or delete_queue on `q`, checks its count against the model's
        and drops those messages there; False when the queue does not exist."""
        got, err = call(method, q, self.m.now)
        if q not in self.m.queues:
            assert err == QUEUE_NOT_FOUND
            return False
        gone = [i for i, mm in self.m.msgs.items() if mm.queue == q]
        for i in gone:
            self.m.drop(i)
        assert got == len(gone)
        return True

    @rule(q=queues)
    def purge(self, q: str) -> None:
        self._empty(self.b.purge, q)

    @rule(q=queues)
    def delete_queue(self, q: str) -> None:
        if self._empty(self.b.delete_queue, q):
            del self.m.queues[q]
            del self.m.tot[q]

    @rule(q=queues, mx=st.sampled_from([None, 1, 2]))
    def redrive(self, q: str, mx: int | None) -> None:
        got, err = call(self.b.redrive, q, mx, self.m.now)
        m = self.m
        if q not in m.queues:
            assert err == QUEUE_NOT_FOUND
            return
        assert err is None
        moved = 0
        for i in m.ready_ids(q):
            if mx is not None and moved >= mx:
                break
            mm = m.msgs[i]
            if mm.origin is None or mm.origin[0] == q:
                continue
            tq = mm.origin[0]
            m.make(tq)
            s = m.queues[tq]
            if s.max_length and m.count(tq) >= s.max_length:
                continue
            m.move(i, tq, m.now, dead=False)
            moved += 1
        assert got == moved, (got, moved)

    @rule(step=st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0, 5.0]))
    def advance(self, step: float) -> None:
        now = self.m.now + step
        self.b.advance(now)
        self.m.advance(now)

    @rule(q=queues, n=st.integers(1, 6))
    def peek(self, q: str, n: int) -> None:
        got, err = call(self.b.peek, q, n)
        if q not in self.m.queues:
            assert err == QUEUE_NOT_FOUND
            return
        assert [x.id for x in got] == self.m.ready_ids(q)[:n]

    # ---------------------------------------------------------- invariants
    @invariant()
    def same_state(self) -> None:
        b, m = self.b, self.m
        assert set(b.queues) == set(m.queues), (set(b.queues), set(m.queues))
        check_invariants(b)
        stored = {i: view(i, x, q) for q in b.queues.values() for i, x in q.messages.items()}
        assert set(stored) == set(m.msgs), (set(stored) ^ set(m.msgs))
        for i, mm in m.msgs.items():
            s = stored[i]
            assert (s.queue.name, s.state, s.lease, s.kept_lease, s.deliveries,
                    s.deadline_at, s.priority, s.origin, s.expires_at) == (
                mm.queue, STATE[mm.state], mm.lease, mm.kept, mm.deliveries, mm.deadline,
                mm.priority, mm.origin, mm.expires_at), (i, s, mm)
            info = b.message_info(mm.queue, i, m.now)
            assert info["state"] == mm.state and info["deliveries"] == mm.deliveries
        st_ = b.stats(m.now)
        assert st_["full_refusals_total"] == m.full_refusals
        for q, t in m.tot.items():
            c = st_["queues"][q]
            in_q = [x for x in m.msgs.values() if x.queue == q]
            want = {"messages": len(in_q),
                    "ready": sum(x.state == "ready" for x in in_q),
                    "in_flight": sum(x.state == "leased" for x in in_q),
                    "delayed": sum(x.state == "delayed" for x in in_q),
                    "put_total": t.put, "acked_total": t.acked,
                    "redelivered_total": t.redelivered,
                    "dead_lettered_total": t.dead_lettered, "expired_total": t.expired}
            assert {k: c[k] for k in want} == want, (q, c, want)
        nd = b.next_deadline()
        cands = []
        for x in m.msgs.values():
            if x.state in ("leased", "delayed"):
                cands.append(x.deadline)
            if x.state in ("ready", "delayed") and x.expires_at is not None:
                cands.append(x.expires_at)
        if cands:
            assert nd is not None and nd <= min(cands)


ProtocolModelMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("WONDERQ_MODEL_EXAMPLES", "400")), stateful_step_count=60,
    deadline=None)
TestProtocolModel = ProtocolModelMachine.TestCase
