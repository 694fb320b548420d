"""S4c as issue 6 defines it beside two ways of keeping more than one request in flight,
WonderQ and beanstalkd, so the maintainers can see what a change of the scenario would do.

    python bench/probes/s4c_pipelined.py [MESSAGES] [RUNS]   (defaults 100000, 3)

S4c (bench/scenarios.py's `receive_ack_batches`) receives a batch of 100,
acks it, and only then receives again: two round trips per batch, and the
server and the load generator take turns. Two variants, the same for both
systems through the bench's adapters:

* `pipe`: the ack of batch k goes out together with the receive of batch
  k+1 (asyncio.gather): one round trip per batch. Both systems answer a
  connection's requests in order, so the ack is carried out first.
* `prefetch`: the receive of batch k+1 is sent as soon as batch k arrives,
  before its ack, so the server can work on the next batch while the
  client acks this one.

Each run drains MESSAGES put in batches of 100 on a fresh in-memory server;
runs are interleaved (each variant, each system) and the medians printed
with the server's CPU per message (from /proc) and the load generator's own
(process_time), then WonderQ's ratio to beanstalkd per variant. Every phase
is bounded by TIME_LIMIT_S; every server is stopped by its PID. Needs
beanstalkd installed (bench/README.md).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import on_fresh_server, whole_numbers  # noqa: E402
from scenarios import WAIT_S, Progress, put_batches, receive_ack_batches  # noqa: E402
from systems import beanstalkd, wonderq  # noqa: E402

TIME_LIMIT_S = 60.0
BATCH = 100
SYSTEMS = {"wonderq": wonderq, "beanstalkd": beanstalkd}
VARIANTS = ("S4c", "pipe", "prefetch")


async def pipelined(conn: Any, n: int, give_up: float) -> int:
    """pipe: each batch's ack goes out with the next batch's receive."""
    got = await conn.receive_batch(min(BATCH, n), WAIT_S)
    done = 0
    while got and time.monotonic() < give_up:
        handles = [handle for handle, _ in got]
        done += len(handles)
        if done >= n:
            await conn.ack_batch(handles)
            break
        _, got = await asyncio.gather(conn.ack_batch(handles),
                                      conn.receive_batch(min(BATCH, n - done), WAIT_S))
    return done


async def prefetched(conn: Any, n: int, give_up: float) -> int:
    """prefetch: the next batch's receive is sent before this batch's ack."""
    asked = min(BATCH, n)
    next_batch = asyncio.ensure_future(conn.receive_batch(asked, WAIT_S))
    done = 0
    while done < n and time.monotonic() < give_up:
        got = await next_batch
        if not got:
            break
        done += len(got)
        if asked < n:
            size = min(BATCH, n - asked)
            asked += size
            next_batch = asyncio.ensure_future(conn.receive_batch(size, WAIT_S))
        await conn.ack_batch([handle for handle, _ in got])
    if not next_batch.done():
        next_batch.cancel()
    return done


async def one_run(adapter: Any, server: servers.ServerProcess, port: int, variant: str,
                  n: int) -> tuple[float, float, float]:
    """one_run: msgs/s, the server's and the load generator's CPU µs per message."""
    await server.wait_ready(lambda: adapter.probe(port), 30)
    await adapter.prepare(port, "pipelined", "memory")
    conn = await adapter.connect(port, "pipelined", "c1")
    try:
        give_up = time.monotonic() + TIME_LIMIT_S
        load = await put_batches(conn, n, BATCH, give_up, Progress())
        if load.stalled:
            raise SystemExit(f"{server.name}: put_batches {load.stalled}")
        cpu0, own0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        give_up = time.monotonic() + TIME_LIMIT_S
        if variant == "S4c":
            load = await receive_ack_batches(conn, n, BATCH, give_up, Progress())
            done = load.messages
        elif variant == "pipe":
            done = await pipelined(conn, n, give_up)
        else:
            done = await prefetched(conn, n, give_up)
        wall = time.perf_counter() - wall0
        if done != n:
            raise SystemExit(f"{server.name} {variant}: {done} of {n} acked in time")
        return (n / wall, 1e6 * (server.cpu_seconds() - cpu0) / n,
                1e6 * (time.process_time() - own0) / n)
    finally:
        await conn.close()


def main(n: int, runs: int) -> None:
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="wonderq-pipelined-") as tmp:
        try:
            for run in range(runs):
                for variant in VARIANTS:
                    names = list(SYSTEMS)
                    for name in names[run % 2:] + names[:run % 2]:
                        adapter = SYSTEMS[name]
                        rows.setdefault((name, variant), []).append(on_fresh_server(
                            tmp, f"{name}-{variant}", run,
                            partial(adapter.server_argv, mode="memory"),
                            lambda server, port, a=adapter, v=variant: one_run(
                                a, server, port, v, n)))
        finally:
            servers.stop_all()
    print(f"{n} messages, batches of {BATCH}, median of {runs} runs [min-max msgs/s]")
    medians = {}
    for (name, variant), table in rows.items():
        rate, server_us, client_us = (statistics.median(r[k] for r in table) for k in range(3))
        medians[name, variant] = rate
        low, high = min(r[0] for r in table), max(r[0] for r in table)
        print(f"{variant:8s} {name:10s} {rate:9,.0f} msgs/s [{low:,.0f}-{high:,.0f}]  "
              f"server {server_us:5.2f} µs/msg  load generator {client_us:5.2f} µs/msg")
    ratios = {v: medians["wonderq", v] / medians["beanstalkd", v] for v in VARIANTS}
    print("WonderQ / beanstalkd: " + "  ".join(f"{v} {r:.2f}x" for v, r in ratios.items()))


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (100_000, 3)))
