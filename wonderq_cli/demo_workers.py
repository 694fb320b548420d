"""The demo's workers: producers that put numbered bodies, consumers that misbehave on purpose.

Design decision: each worker has a connection of its own, so a consumer's
"crash" is real to the server: it closes its connection while holding
leases it never acks, and those messages come back only when their leases
run out. The consumers' behaviours are chosen to show every path a message
can take:

    steady  takes 5 at a time, works 20-60 ms on each, acks it
    slow    takes 1, works 0.4-1.8 visibility timeouts on it: about half its
            leases run out, and its ack is then refused (LEASE_LOST) if the
            message went to someone else meanwhile, or accepted late if not
    crashy  takes 4; now and then (at most MAX_CRASHES times) closes its
            connection holding them unacked, then restarts
    nacky   nacks a quarter of what it takes (a passing failure; the message
            comes back after NACK_DELAY_S), acks the rest

A Watcher beside them reads the queue's figures for the live view, narrates
each new dead letter (it peeks, so it leases nothing), and says when the
work is settled: every producer done and the queue empty.

Every consumer fails on a poison body (every POISON_EVERY-th) and nacks it,
so poison goes to the dead-letter queue after the queue's max_deliveries.

The server's --max-batch is not known in advance (with --connect it may be
small), so every request that carries a batch (put_many, receive, peek,
nack_many) goes through one BatchLimit shared by the whole run: a request
refused with BATCH_TOO_LARGE was refused whole (nothing stored or leased),
so it is retried at half the size, and every later request is kept at or
under what passed.

Rules:
* Every loop is bounded in time and in count: producers put a fixed list;
  a consumer stops when `stop` is set (work pauses end early then) and after
  Plan.max_rounds receives, a bound no honest run reaches (each receive
  either brings a delivery, and there are at most messages x max_deliveries
  of those, or waits RECEIVE_WAIT_S).
* An ack is never cancelled: its answer is what the accounting counts. A
  consumer told to stop gives back (nacks) what it still holds.
* Workers write what they learn in the Ledger and print nothing.
* A consumer that loses its connection notes it and stops; any other error
  from the server is unexpected and ends the run (demo.py: exit 2).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from wonderq_client import (
    BatchTooLarge,
    Client,
    ConnectionClosed,
    LeaseLost,
    Message,
    NotFound,
    connect,
)

from .demo_ledger import FAILED, GAVE_BACK, NACKED, Ledger

BODY_PREFIX = b"wonderq-demo #"
POISON_EVERY = 20
PUT_BATCH = 10
PUT_RATE = 50.0  # messages a second, all producers together: slow enough to watch
RECEIVE_WAIT_S = 0.5
STEADY_WORK_S = (0.02, 0.06)
SLOW_WORK_VISIBILITIES = (0.4, 1.8)
NACK_CHANCE = 0.25
NACK_DELAY_S = 0.2
CRASH_CHANCE = 0.1
MAX_CRASHES = 3
RESTART_PAUSE_S = 0.5
WATCH_EVERY_S = 0.25
DEAD_LETTERS_SHOWN = 100  # a peek this wide narrates every dead letter of a default run

T = TypeVar("T")

STEADY, SLOW, CRASHY, NACKY = "steady", "slow", "crashy", "nacky"
BEHAVIOURS = (STEADY, SLOW, CRASHY, NACKY)  # consumer i behaves as BEHAVIOURS[i % 4]
TAKES = {STEADY: 5, SLOW: 1, CRASHY: 4, NACKY: 5}


@dataclass(frozen=True)
class Plan:
    """What the demo runs, as its flags asked."""

    queue: str
    dead_letter_queue: str
    messages: int
    producers: int
    consumers: int
    seconds: float
    visibility_s: float = 1.0
    max_deliveries: int = 3

    @property
    def max_rounds(self) -> int:
        return self.messages * self.max_deliveries + int(self.seconds / RECEIVE_WAIT_S) + 10

    def behaviour(self, index: int) -> str:
        return BEHAVIOURS[index % len(BEHAVIOURS)]


class BatchLimit:
    """BatchLimit is the most items the demo puts in one request: no cap until the server
    refuses a batch with BATCH_TOO_LARGE, then half the refused size, and so on down to 1.

    Shared by every worker, so a run learns the server's limit in a few
    refused requests at most (log2 of the largest batch), not one per worker.
    """

    def __init__(self) -> None:
        self.most: int | None = None  # None: no request refused yet

    def cap(self, wanted: int) -> int:
        return wanted if self.most is None else max(1, min(wanted, self.most))

    async def call(self, request: Callable[[int], Awaitable[T]], wanted: int) -> T:
        """call makes request(n) for n = cap(wanted), and again at a smaller n while the
        server answers BATCH_TOO_LARGE; it returns the answer that passed. The request
        must take only its first n items. A batch of one refused is not a size problem:
        it is raised."""
        while True:
            size = self.cap(wanted)
            try:
                return await request(size)
            except BatchTooLarge:
                if size <= 1:
                    raise
                if self.most is None or self.most >= size:  # not lowered meanwhile by another
                    self.most = size // 2


@dataclass
class Crew:
    """What every worker shares: where the server is, the plan, the ledger, the stop signal,
    the batch limit."""

    host: str
    port: int
    plan: Plan
    ledger: Ledger
    stop: asyncio.Event
    clock: Callable[[], float]  # seconds since the demo started
    rng: random.Random
    batches: BatchLimit = field(default_factory=BatchLimit)
    connect_options: dict[str, Any] = field(default_factory=dict)  # auth_token, ssl


def body_for(seq: int) -> bytes:
    return BODY_PREFIX + str(seq).encode() + (b" poison" if is_poison(seq) else b"")


def seq_of(body: bytes) -> int | None:
    """seq_of reads a demo body's sequence number; None for a body the demo did not put."""
    if not body.startswith(BODY_PREFIX):
        return None
    digits = body[len(BODY_PREFIX):].split(b" ", 1)[0]
    return int(digits) if digits.isdigit() else None


def is_poison(seq: int) -> bool:
    return seq % POISON_EVERY == 0


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """pause sleeps `seconds`, or less if `stop` is set meanwhile; returns whether it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Producer:
    def __init__(self, crew: Crew, name: str, seqs: list[int]) -> None:
        self.crew, self.name, self.seqs = crew, name, seqs
        self.tally = crew.ledger.worker(name, "producer")

    async def run(self) -> None:
        """run puts its bodies PUT_BATCH at a time (fewer if the server's limit is lower),
        paced so that all producers together put about PUT_RATE a second."""
        crew = self.crew
        pending = list(self.seqs)
        async with connect(crew.host, crew.port, **crew.connect_options) as client:
            for _ in range(len(self.seqs)):  # each round puts at least one body
                if not pending or crew.stop.is_set():
                    break
                put = await crew.batches.call(lambda n: self._put(client, pending[:n]),
                                              PUT_BATCH)
                del pending[:put]
                self.tally.now = f"put {self.tally.put} of {len(self.seqs)}"
                if await pause(crew.stop, put * crew.plan.producers / PUT_RATE):
                    break
        self.tally.now = "done" if self.tally.put == len(self.seqs) else "stopped"

    async def _put(self, client: Client, batch: list[int]) -> int:
        """_put puts one batch and records the answers; returns how many bodies it took."""
        ledger = self.crew.ledger
        ledger.putting(batch)
        try:
            results = await client.put_many(self.crew.plan.queue, [body_for(s) for s in batch])
        except BatchTooLarge:
            ledger.put_withdrawn(batch)  # refused whole: nothing was stored
            raise
        for seq, result in zip(batch, results, strict=True):
            ledger.put_answered(self.name, seq, result if isinstance(result, int) else None)
        return len(batch)


class Consumer:
    def __init__(self, crew: Crew, name: str, behaviour: str) -> None:
        self.crew, self.name, self.behaviour = crew, name, behaviour
        self.tally = crew.ledger.worker(name, behaviour)
        self.rounds_left = crew.plan.max_rounds

    async def run(self) -> None:
        """run works until told to stop, reconnecting after each simulated crash."""
        crew = self.crew
        try:
            for _ in range(MAX_CRASHES + 1):
                async with connect(crew.host, crew.port, **crew.connect_options) as client:
                    crashed = await self._work(client)
                if not crashed:
                    break
                self.tally.now = "crashed; restarting"
                if await pause(crew.stop, RESTART_PAUSE_S):
                    break
            self.tally.now = "stopped"
        except (ConnectionClosed, OSError) as exc:  # the server went away, say
            self.tally.now = "failed"
            crew.ledger.note(crew.clock(), f"{self.name} stopped: {exc}", alarm=True)

    async def _work(self, client: Client) -> bool:
        """_work takes and handles messages until stopped; returns True if it 'crashed'."""
        crew, ledger = self.crew, self.crew.ledger
        while self.rounds_left > 0 and not crew.stop.is_set():
            self.rounds_left -= 1
            self.tally.now = "waiting"
            batch = await crew.batches.call(
                lambda n: client.receive(crew.plan.queue, max=n, wait=RECEIVE_WAIT_S),
                TAKES[self.behaviour])
            received_at = crew.clock()
            held = [(msg, seq_of(msg.body)) for msg in batch]
            for msg, seq in held:
                if seq is not None:
                    ledger.received(received_at, self.name, seq, msg.deliveries)
            if held and self._crashes_now():
                ledger.crashed(crew.clock(), self.name, [s for _, s in held if s is not None])
                return True
            for index, (msg, seq) in enumerate(held):
                if crew.stop.is_set():
                    await self._give_back(client, held[index:])
                    break
                await self._handle(client, msg, seq, received_at)
        return False

    def _crashes_now(self) -> bool:
        return (self.behaviour == CRASHY and self.tally.crashes < MAX_CRASHES
                and self.crew.rng.random() < CRASH_CHANCE)

    async def _handle(self, client: Client, msg: Message, seq: int | None,
                      received_at: float) -> None:
        crew, rng = self.crew, self.crew.rng
        if seq is None:  # not the demo's: leave it to its owner
            await self._give_back(client, [(msg, seq)])
            return
        self.tally.now = f"working on #{seq}"
        if is_poison(seq):
            await pause(crew.stop, rng.uniform(*STEADY_WORK_S))
            await self._nack(msg, seq, FAILED, 0.0)
            return
        if self.behaviour == NACKY and rng.random() < NACK_CHANCE:
            await self._nack(msg, seq, NACKED, NACK_DELAY_S)
            return
        if self.behaviour == SLOW:
            work_s = rng.uniform(*SLOW_WORK_VISIBILITIES) * crew.plan.visibility_s
        else:
            work_s = rng.uniform(*STEADY_WORK_S)
        if await pause(crew.stop, work_s):
            await self._give_back(client, [(msg, seq)])
            return
        late = crew.clock() - received_at > crew.plan.visibility_s
        crew.ledger.acking(seq)
        refused = None
        try:
            await msg.ack()
        except (LeaseLost, NotFound) as exc:
            refused = exc.code
        crew.ledger.ack_answered(crew.clock(), self.name, seq, refused, late)

    async def _nack(self, msg: Message, seq: int, how: str, delay: float) -> None:
        ledger = self.crew.ledger
        ledger.letting_go(self.name, [seq], how)
        try:
            await msg.nack(delay=delay)
        except (LeaseLost, NotFound):  # the lease had run out: someone else's message now
            ledger.let_go_answered(self.name, [seq], how, done=False)
            return
        ledger.let_go_answered(self.name, [seq], how, done=True)

    async def _give_back(self, client: Client,
                         held: list[tuple[Message, int | None]]) -> None:
        ledger = self.crew.ledger
        seqs = [seq for _, seq in held if seq is not None]
        ledger.letting_go(self.name, seqs, GAVE_BACK)
        rest = list(held)
        for _ in range(len(held)):  # each round gives back at least one
            if not rest:
                break
            given = await self.crew.batches.call(
                lambda n: self._nack_batch(client, rest[:n]), len(rest))
            del rest[:given]

    async def _nack_batch(self, client: Client,
                          held: list[tuple[Message, int | None]]) -> int:
        ledger = self.crew.ledger
        results = await client.nack_many(self.crew.plan.queue, [msg for msg, _ in held])
        for (_, seq), error in zip(held, results, strict=True):
            if seq is not None:
                ledger.let_go_answered(self.name, [seq], GAVE_BACK, done=error is None)
        return len(held)


class Watcher:
    def __init__(self, crew: Crew) -> None:
        self.crew = crew
        self.figures: dict[str, Any] = {}  # the queue's queue_info, refreshed every round
        self.settled = asyncio.Event()

    async def run(self, client: Client, producers_done: Callable[[], bool]) -> None:
        crew = self.crew
        for round_number in range(int(crew.plan.seconds / WATCH_EVERY_S) + 1):
            if crew.stop.is_set():
                return
            self.figures = await client.queue_info(crew.plan.queue)
            settled = producers_done() and self.figures["messages"] == 0
            if settled or round_number % 2 == 0:
                await self._narrate_dead_letters(client)
            if settled:
                self.settled.set()
                return
            await pause(crew.stop, WATCH_EVERY_S)

    async def _narrate_dead_letters(self, client: Client) -> None:
        ledger = self.crew.ledger
        peeked = await self.crew.batches.call(
            lambda n: client.peek(self.crew.plan.dead_letter_queue, n), DEAD_LETTERS_SHOWN)
        for msg in peeked:
            seq = seq_of(msg.body)
            if seq is not None:
                ledger.dead_lettered(self.crew.clock(), seq, msg.deliveries, is_poison(seq))
