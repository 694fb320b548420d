"""The soak's load: producers, consumers that die at random, reconnecting with backoff.

Design decision: the workers behave like real clients that know nothing of
the soak's kills. A connection that ends (the server was killed) is noticed
as ConnectionClosed on the request in flight; the worker records that
request as unanswered (a put) or uncertain (an ack) in the ledger, then
reconnects with exponential backoff until the server answers again, to
whatever port the server object names. A consumer "dies" by closing its
connection while it holds leases it never acks or nacks: those messages
must come back when their visibility timeout runs out.

Rules:
* Every worker loop is bounded in count (MAX_ROUNDS) and ends when `stop`
  is set; waits are bounded too (a receive long-polls WAIT_S, a connect
  gives up after CONNECT_TIMEOUT_S, backoff is capped at BACKOFF_MAX_S).
* Only the ledger judges; a worker records what it saw and carries on. An
  error the soak does not expect (a refused put, a failed receive) is
  counted, never raised.
* The queue holds a standing backlog between `min_backlog` and
  `max_backlog` answered puts not yet acked (the ledger's count): producers
  (one put in flight each) pause above the ceiling, consumers pause below
  the floor. The floor puts that many messages at risk at every kill (a
  queue the consumers keep empty would put almost none there); the ceiling
  bounds the server's memory, so memory growth means a leak.
* Consumers receive up to RECEIVE_MAX messages and ack them with one ack_many;
  a consumer that dies acks a random part of its batch first.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

from soak_ledger import Ledger, make_body
from soak_server import SoakServer

from wonderq_client import Client, ConnectionClosed, WonderQError, connect

QUEUE = "soak"
RECEIVE_MAX = 10
WAIT_S = 1.0  # a receive's long poll: short, so a stop is seen within a second
CONNECT_TIMEOUT_S = 2.0
BACKOFF_FIRST_S = 0.01
BACKOFF_MAX_S = 0.5
MAX_ROUNDS = 50_000_000  # bound on any worker's loop; time ends a soak long before
MAX_CONNECT_TRIES = 100_000  # bound on one reconnect; `stop` ends it long before


@dataclass
class Load:
    """What the workers share: the server, the ledger, the settings, and the tallies."""

    server: SoakServer
    ledger: Ledger
    visibility_s: float
    die_chance: float
    min_backlog: int
    max_backlog: int
    body_size: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set while <= max_backlog
    work: asyncio.Event = field(default_factory=asyncio.Event)  # set while >= min_backlog
    deaths: int = 0  # consumers that died holding leases
    leases_dropped: int = 0  # messages they held when they died
    reconnects: int = 0
    unexpected: Counter[str] = field(default_factory=Counter)  # errors the soak did not expect

    def update_room(self) -> None:
        """update_room lets producers and consumers go or wait, by the backlog. Once the
        load has ended, both gates stay open: a worker that finishes its last request
        after `end` must not close a gate that another is about to wait at (it would
        wait for ever, since the gate is waited for before `stop` is looked at)."""
        if self.stop.is_set():
            return
        backlog = self.ledger.backlog
        if backlog <= self.max_backlog:
            self.room.set()
        else:
            self.room.clear()
        if backlog >= self.min_backlog:
            self.work.set()
        else:
            self.work.clear()

    def end(self) -> None:
        """end tells every worker to stop after the request in hand, waiting or not."""
        self.stop.set()
        self.room.set()
        self.work.set()


async def connect_with_backoff(load: Load, rng: random.Random) -> Client | None:
    """connect_with_backoff retries until the server answers; None once `stop` is set."""
    delay = BACKOFF_FIRST_S
    for _ in range(MAX_CONNECT_TRIES):
        if load.stop.is_set():
            return None
        try:
            return await connect(load.server.host, load.server.port, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ConnectionClosed):
            pass
        # Jittered, so the workers do not all knock in the same instant.
        await asyncio.sleep(delay * (0.5 + rng.random()))
        delay = min(delay * 2, BACKOFF_MAX_S)
    return None


async def next_turn(load: Load, gate: asyncio.Event, client: Client | None,
                    rng: random.Random) -> Client | None:
    """next_turn waits for `gate`, then returns a connected client (`client`, or a new one
    if it was lost); None when the load stops or the server never comes back."""
    if not gate.is_set():
        await gate.wait()
    if load.stop.is_set():
        return None
    if client is None or client.closed:
        load.reconnects += client is not None
        return await connect_with_backoff(load, rng)
    return client


async def produce(load: Load, rng: random.Random) -> None:
    """produce puts one message at a time, each body carrying its sequence number."""
    ledger = load.ledger
    client: Client | None = None
    try:
        for _ in range(MAX_ROUNDS):
            turn = await next_turn(load, load.room, client, rng)
            if turn is None:
                return
            client = turn
            seq = ledger.new_put()
            try:
                message_id = await client.put(QUEUE, make_body(seq, load.body_size))
            except ConnectionClosed:
                ledger.put_unanswered(seq)
                continue
            except WonderQError as exc:
                ledger.put_refused(seq, exc.code)
                continue
            ledger.put_answered(seq, message_id)
            load.update_room()
    finally:
        if client is not None:
            await client.close()


async def consume(load: Load, rng: random.Random) -> None:
    """consume receives batches and acks them; now and then it dies holding some."""
    ledger = load.ledger
    client: Client | None = None
    try:
        for _ in range(MAX_ROUNDS):
            turn = await next_turn(load, load.work, client, rng)
            if turn is None:
                return
            client = turn
            try:
                batch = await client.receive(QUEUE, max=RECEIVE_MAX, wait=WAIT_S,
                                             visibility=load.visibility_s)
            except ConnectionClosed:
                continue
            except WonderQError as exc:
                load.unexpected[f"receive: {exc.code}"] += 1
                continue
            seqs = [ledger.delivered(msg.body, msg.id) for msg in batch]
            keep = len(batch)
            dies = bool(batch) and rng.random() < load.die_chance
            if dies:
                keep = rng.randrange(len(batch))  # ack these, die holding the rest
            await _ack(load, client, batch[:keep], seqs[:keep])
            if dies:
                load.deaths += 1
                load.leases_dropped += len(batch) - keep
                await client.close()
                client = None
    finally:
        if client is not None:
            await client.close()


async def _ack(load: Load, client: Client, batch: list, seqs: list[int | None]) -> None:
    """_ack acks `batch` in one request and records each result in the ledger."""
    if not batch:
        return
    ledger = load.ledger
    try:
        results = await client.ack_many(QUEUE, batch)
    except ConnectionClosed:  # sent; whether it was applied, nobody will say
        _uncertain(load, seqs)
        return
    except asyncio.CancelledError:  # the soak stopped waiting: the same doubt
        _uncertain(load, seqs)
        raise
    except WonderQError as exc:  # the whole request refused: nothing was acked
        load.unexpected[f"ack_many: {exc.code}"] += 1
        return
    for seq, error in zip(seqs, results, strict=True):
        if error is not None:
            ledger.ack_refused(error.code)
        elif seq is not None:
            ledger.ack_confirmed(seq)
    load.update_room()


def _uncertain(load: Load, seqs: list[int | None]) -> None:
    for seq in seqs:
        if seq is not None:
            load.ledger.ack_uncertain(seq)
    load.update_room()


async def drain(load: Load, time_limit_s: float, clock) -> tuple[int, int, bool]:
    """drain receives and acks until the queue is empty; returns (drained, left, finished).

    A message whose lease is still running (a dead consumer's, or one a kill
    left leased) comes back when it runs out: each receive waits a little
    longer than the visibility timeout, and the drain ends only when a
    receive found nothing and the stats say the queue holds nothing.
    """
    ledger = load.ledger
    give_up = clock() + time_limit_s
    drained = 0
    wait_s = load.visibility_s + 1.0
    async with connect(load.server.host, load.server.port) as client:
        for _ in range(MAX_ROUNDS):
            if clock() > give_up:
                break
            batch = await client.receive(QUEUE, max=100, wait=wait_s, visibility=60.0)
            if batch:
                seqs = [ledger.delivered(msg.body, msg.id) for msg in batch]
                await _ack(load, client, batch, seqs)
                drained += len(batch)
                continue
            if await _queue_messages(client) == 0:
                return drained, 0, True
        return drained, await _queue_messages(client), False


async def _queue_messages(client: Client) -> int:
    stats = await client.stats()
    return int(stats["queues"].get(QUEUE, {}).get("messages", 0))
