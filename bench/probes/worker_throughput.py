"""The Worker's cost: a no-op handler on N queued messages, beside hand-written consumers.

    python bench/probes/worker_throughput.py PORT PID MESSAGES [CONCURRENCY] [ROUNDS]
                                             [BUSY_POLL_US]

Against `wonderq-server --in-memory --port PORT` (PID: the server's, for its CPU). Each round
queues MESSAGES 100-byte messages (put_many, untimed), then drains them three ways, in
turn, each from a queue of its own:

    worker     Worker(concurrency=CONCURRENCY) with a handler that returns at once
    per-ack    receive(max=CONCURRENCY, wait) then one ack per message, all at once
    ack_many   receive(max=CONCURRENCY, wait) then one ack_many: the cheapest consumer

and prints, per way, the median over ROUNDS of msgs/s, the client's CPU and the server's CPU
per message (from /proc). Defaults: CONCURRENCY 100, ROUNDS 3. BUSY_POLL_US (default 0,
off) is the consumers' `busy_poll` in microseconds (the Worker's option and connect()'s),
for a server started with `--busy-poll`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop
from _common import server_cpu_s, whole_numbers

from wonderq_client import Client, Message, Worker, connect

BODY = b"x" * 100
PUT_BATCH = 1000


async def fill(client: Client, queue: str, n: int) -> None:
    for start in range(0, n, PUT_BATCH):
        await client.put_many(queue, [BODY] * min(PUT_BATCH, n - start))


async def by_worker(port: int, queue: str, n: int, concurrency: int, busy_poll: float) -> None:
    handled = 0

    async def handler(msg: Message) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            worker.stop()  # the stop waits for the acks still on their way

    worker = Worker(queue, handler, port=port, concurrency=concurrency, wait=1.0,
                    busy_poll=busy_poll)
    await worker.run()
    if worker.counts.acked != n:
        raise RuntimeError(f"{queue}: the worker acked {worker.counts.acked} of {n}")


async def by_hand(port: int, queue: str, n: int, concurrency: int, batched: bool,
                  busy_poll: float) -> None:
    async with connect("127.0.0.1", port, busy_poll=busy_poll) as client:
        left = n
        while left > 0:
            messages = await client.receive(queue, max=concurrency, wait=1.0)
            if not messages:
                raise RuntimeError(f"{queue}: {left} messages never came")
            if batched:
                await client.ack_many(queue, messages)
            else:
                await asyncio.gather(*(msg.ack() for msg in messages))
            left -= len(messages)


async def measure(pid: int, drain: Callable[[], Awaitable[None]], n: int) -> tuple[float, ...]:
    s0, c0, t0 = server_cpu_s(pid), time.process_time(), time.perf_counter()
    await drain()
    s1, c1, t1 = server_cpu_s(pid), time.process_time(), time.perf_counter()
    return n / (t1 - t0), 1e6 * (c1 - c0) / n, 1e6 * (s1 - s0) / n


async def main(port: int, pid: int, n: int, concurrency: int, rounds: int,
               busy_poll_us: int) -> None:
    poll = busy_poll_us / 1e6
    ways: dict[str, Callable[[str], Awaitable[None]]] = {
        "worker": lambda q: by_worker(port, q, n, concurrency, poll),
        "per-ack": lambda q: by_hand(port, q, n, concurrency, False, poll),
        "ack_many": lambda q: by_hand(port, q, n, concurrency, True, poll),
    }
    results: dict[str, list[tuple[float, ...]]] = {way: [] for way in ways}
    async with connect("127.0.0.1", port) as client:
        for round_number in range(rounds):
            for way, drain in ways.items():
                queue = f"probe-{way}-{round_number}"
                await fill(client, queue, n)
                results[way].append(await measure(pid, lambda d=drain, q=queue: d(q), n))
                await client.delete_queue(queue)
    for way, runs in results.items():
        rate, client_us, server_us = (statistics.median(column)
                                      for column in zip(*runs, strict=True))
        print(f"{way:9} {rate:9,.0f} msgs/s  client {client_us:5.1f} us/msg  "
              f"server {server_us:5.1f} us/msg")


if __name__ == "__main__":
    uvloop.run(main(*whole_numbers(__doc__, 3, (100, 3, 0))))
