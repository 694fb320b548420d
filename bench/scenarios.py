"""The load generator: the scenarios of issue 6, identical for every system.

Design decision: each scenario is a coroutine over the adapter interface of
systems/__init__.py (connections with put, put_batch, receive_one, ack,
receive_batch, ack_batch), so the same Python code, with the same event
loop, drives every system; only the adapter differs. A scenario measures the
client side only (messages done, seconds, latencies); the server's CPU and
memory are read by runner.py around it.

Rules:
* Bodies are 100 bytes. In S3/S6 the first 8 bytes carry perf_counter() at
  the moment the put was called, so put-to-ack latency needs no lookup, and
  the next 8 the message's number: a message acked twice (delivered again)
  ends the phase as stalled, not as a faster run. (runner.py counts what is
  left in the queue after every phase, for every scenario.) The number
  UNNUMBERED is a probe's do-nothing server's canned message
  (probes/nothing_server.py), which has no queue behind it: it counts as
  a message each time, unchecked.
* Every loop is bounded by its count and by `give_up` (a monotonic time);
  a receive that finds nothing `EMPTY_RECEIVES` times in a row while
  messages are still missing ends the loop too. A loop that stops short
  says why in `Load.stalled`; it never waits for ever.
* `progress.done` is kept current, so a phase cancelled by its time limit
  can still say how far it got.
* Receives wait up to `WAIT_S` (long polling), the same for every system.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

BODY_BYTES = 100
BODY = b"x" * BODY_BYTES
WAIT_S = 1.0
EMPTY_RECEIVES = 3
STAMP = struct.Struct("<dQ")  # perf_counter() at the put, the message's number
PAD = b"x" * (BODY_BYTES - STAMP.size)
UNNUMBERED = 2**64 - 1  # no put made this body: probes/nothing_server.py's canned message

Connect = Callable[[str], Awaitable[Any]]  # consumer name -> a new adapter Connection


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    unit: str
    higher_is_better: bool


SCENARIOS = {s.name: s for s in (
    Scenario("S1", "one client, one put per round trip", "msgs/s", True),
    Scenario("S2", "one client, receive one + ack one", "msgs/s", True),
    Scenario("S3", "4 producers + 4 consumers, <= 32 unacked", "msgs/s", True),
    Scenario("S4p", "put in batches of 100", "msgs/s", True),
    Scenario("S4c", "receive + ack in batches of 100", "msgs/s", True),
    Scenario("S5", "resident memory per queued message", "bytes/msg", False),
    Scenario("S6", "S3 with every write fsynced (see README)", "msgs/s", True),
    Scenario("S7", "restart with the S5 backlog in the log", "s", False),
)}


@dataclass
class Progress:
    done: int = 0


@dataclass
class Load:
    """What one phase did, seen from the client."""

    messages: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    stalled: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def _short(done: int, n: int, why: str) -> str:
    return "" if done >= n else f"stalled after {done} of {n}: {why}"


async def put_one_by_one(conn: Any, n: int, give_up: float, progress: Progress) -> Load:
    """S1: put `n` messages, each awaited before the next."""
    put = conn.put
    started = time.perf_counter()
    while progress.done < n and time.monotonic() < give_up:
        await put(BODY)
        progress.done += 1
    elapsed = time.perf_counter() - started
    return Load(progress.done, elapsed, stalled=_short(progress.done, n, "time limit"))


async def receive_ack_one_by_one(conn: Any, n: int, give_up: float,
                                 progress: Progress) -> Load:
    """S2: receive one message and ack it, one round trip each, until `n` are acked."""
    receive_one, ack = conn.receive_one, conn.ack
    empty = 0
    why = "time limit"
    started = time.perf_counter()
    while progress.done < n and time.monotonic() < give_up:
        got = await receive_one(WAIT_S)
        if got is None:
            empty += 1
            if empty >= EMPTY_RECEIVES:
                why = f"{empty} receives in a row found nothing"
                break
            continue
        empty = 0
        await ack(got[0])
        progress.done += 1
    elapsed = time.perf_counter() - started
    return Load(progress.done, elapsed, stalled=_short(progress.done, n, why))


async def put_batches(conn: Any, n: int, batch: int, give_up: float,
                      progress: Progress) -> Load:
    """S4p (and every fill): put `n` messages in batches of `batch`, one batch at a time."""
    bodies = [BODY] * batch
    started = time.perf_counter()
    while progress.done < n and time.monotonic() < give_up:
        size = min(batch, n - progress.done)
        await conn.put_batch(bodies if size == batch else bodies[:size])
        progress.done += size
    elapsed = time.perf_counter() - started
    return Load(progress.done, elapsed, stalled=_short(progress.done, n, "time limit"))


async def receive_ack_batches(conn: Any, n: int, batch: int, give_up: float,
                              progress: Progress) -> Load:
    """S4c: receive up to `batch` messages, ack them all in one batch, until `n` are acked."""
    empty = 0
    why = "time limit"
    started = time.perf_counter()
    while progress.done < n and time.monotonic() < give_up:
        got = await conn.receive_batch(min(batch, n - progress.done), WAIT_S)
        if not got:
            empty += 1
            if empty >= EMPTY_RECEIVES:
                why = f"{empty} receives in a row found nothing"
                break
            continue
        empty = 0
        await conn.ack_batch([handle for handle, _ in got])
        progress.done += len(got)
    elapsed = time.perf_counter() - started
    return Load(progress.done, elapsed, stalled=_short(progress.done, n, why))


class _Flow:
    """S3's shared state: messages handed out, unacked, acked; producers wait for room."""

    def __init__(self, n: int, limit: int) -> None:
        self.n = n
        self.limit = limit
        self.claimed = 0  # puts started
        self.unacked = 0  # puts started and not yet acked
        self.room = asyncio.Event()
        self.room.set()
        self.first_put_at = 0.0
        self.last_ack_at = 0.0
        self.latencies_s: list[float] = []
        self.acked = bytearray(n)  # by message number: 1 once acked
        self.twice = 0  # messages acked a second time


async def _producer(conn: Any, flow: _Flow, give_up: float) -> None:
    while flow.claimed < flow.n:
        while flow.unacked >= flow.limit:  # pause while `limit` messages are unacked
            flow.room.clear()
            left = give_up - time.monotonic()
            if left <= 0:
                return
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a
                # cancellation that comes in the turn its wait ends (an ack set `room`),
                # and Ctrl-C or a failed consumer left the producers here until give_up
                # (110 s by default, the server running meanwhile: a reviewer).
                async with asyncio.timeout(left):
                    await flow.room.wait()
            except TimeoutError:
                return
        if flow.claimed >= flow.n or time.monotonic() >= give_up:
            return
        number = flow.claimed
        flow.claimed += 1
        flow.unacked += 1
        now = time.perf_counter()
        if not flow.first_put_at:
            flow.first_put_at = now
        await conn.put(STAMP.pack(now, number) + PAD)


async def _consumer(conn: Any, flow: _Flow, give_up: float, progress: Progress) -> None:
    receive_one, ack = conn.receive_one, conn.ack
    latencies = flow.latencies_s
    while progress.done < flow.n and time.monotonic() < give_up:
        got = await receive_one(WAIT_S)
        if got is None:
            continue
        handle, body = got
        await ack(handle)
        now = time.perf_counter()
        put_at, number = STAMP.unpack_from(body)
        if number != UNNUMBERED:
            if flow.acked[number]:
                flow.twice += 1
                continue  # delivered again: not a message more
            flow.acked[number] = 1
        latencies.append(now - put_at)
        progress.done += 1
        flow.last_ack_at = now
        flow.unacked -= 1
        if flow.unacked < flow.limit:
            flow.room.set()


async def producers_consumers(connect: Connect, n: int, give_up: float, progress: Progress,
                              producers: int = 4, consumers: int = 4,
                              unacked_limit: int = 32) -> Load:
    """S3/S6: producers and consumers at once, each on its own connection.

    Throughput is n / (last ack - first put); latency is put called -> ack answered.
    """
    conns = [await connect(f"c{i}") for i in range(producers + consumers)]
    flow = _Flow(n, unacked_limit)
    try:
        async with asyncio.TaskGroup() as tasks:  # an error in one cancels the others
            for conn in conns[:producers]:
                tasks.create_task(_producer(conn, flow, give_up))
            for conn in conns[producers:]:
                tasks.create_task(_consumer(conn, flow, give_up, progress))
    finally:
        for conn in conns:
            await conn.close()
    elapsed = flow.last_ack_at - flow.first_put_at if progress.done else 0.0
    stalled = _short(progress.done, n, "time limit")
    if flow.twice:
        stalled = "; ".join(x for x in (stalled, f"{flow.twice} messages acked twice") if x)
    return Load(progress.done, elapsed, flow.latencies_s, stalled=stalled)


def percentile(values: list[float], q: float) -> float:
    """percentile is the nearest-rank q-quantile (0 < q <= 1) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(q * len(ordered))) - 1)]
