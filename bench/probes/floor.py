"""S1, S2 and S3 shapes against beanstalkd, the do-nothing server and WonderQ, in one run.

    python bench/probes/floor.py [MESSAGES] [RUNS]     (defaults 30000, 5)

Issue 6 asks S1 and S2 to reach 0.8x beanstalkd, and says a do-nothing uvloop
server answering msgpack frames reached 0.7-0.8x on S1's shape. This probe
measures that floor in the same run as beanstalkd and WonderQ, with the same
load loop (bench/scenarios.py) and adapters (bench/systems/): beanstalkd
through the bench's text client, the do-nothing server
(nothing_server.py) and `wonderq-server --in-memory` both through
wonderq_client. Runs are interleaved and the order rotates each run; it
prints the medians, the server's CPU per message (from /proc), and each
ratio to beanstalkd. Every phase is bounded by TIME_LIMIT_S; every server is
stopped by its PID. Needs beanstalkd installed (bench/README.md).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import rotate_fresh_servers, whole_numbers  # noqa: E402
from scenarios import (  # noqa: E402
    Progress,
    producers_consumers,
    put_one_by_one,
    receive_ack_one_by_one,
)
from systems import beanstalkd, wonderq  # noqa: E402

TIME_LIMIT_S = 60.0
NOTHING = Path(__file__).resolve().parent / "nothing_server.py"

# name -> (adapter driving it, argv of its server for a port and a data directory)
SYSTEMS = {
    "beanstalkd": (beanstalkd, lambda port, d: beanstalkd.server_argv(port, d, "memory")),
    "do-nothing": (wonderq, lambda port, d: [sys.executable, str(NOTHING), str(port)]),
    "wonderq": (wonderq, lambda port, d: wonderq.server_argv(port, d, "memory")),
}


async def one_run(adapter, server: servers.ServerProcess, port: int, n: int) -> list[float]:
    """one_run: S1 then S2 on a fresh server; msgs/s and server µs/msg of each."""
    await server.wait_ready(lambda: adapter.probe(port), 30)
    if server.name != "do-nothing":  # it has no queues to create
        await adapter.prepare(port, "floor", "memory")
    conn = await adapter.connect(port, "floor", "c1")
    figures = []
    try:
        for phase in (put_one_by_one, receive_ack_one_by_one):
            cpu0 = server.cpu_seconds()
            load = await phase(conn, n, time.monotonic() + TIME_LIMIT_S, Progress())
            if load.stalled:
                raise SystemExit(f"{server.name}: {phase.__name__} {load.stalled}")
            figures += [load.messages / load.seconds,
                        1e6 * (server.cpu_seconds() - cpu0) / load.messages]
    finally:
        await conn.close()
    # S3's shape: 4 producers and 4 consumers, each on its own connection. The
    # do-nothing server hands every receive its canned message, so its consumers never
    # wait; the request mix (a put, a receive and an ack per message) is the same.
    cpu0 = server.cpu_seconds()
    load = await producers_consumers(lambda name: adapter.connect(port, "floor3", name), n,
                                     time.monotonic() + TIME_LIMIT_S, Progress())
    if load.stalled:
        raise SystemExit(f"{server.name}: S3 {load.stalled}")
    figures += [load.messages / load.seconds,
                1e6 * (server.cpu_seconds() - cpu0) / load.messages]
    return figures


def rotated_runs(runs: int, one_run, n: int) -> dict[str, list[list[float]]]:
    """rotated_runs: `runs` rounds of `one_run(adapter, server, port, n)` on a fresh server
    of each system, the order rotating each round; each system's rows of figures."""
    return rotate_fresh_servers(
        {name: (argv, lambda server, port, adapter=adapter: one_run(adapter, server, port, n))
         for name, (adapter, argv) in SYSTEMS.items()}, runs, "wonderq-floor-")


def main(n: int, runs: int) -> None:
    rows = rotated_runs(runs, one_run, n)
    base = [statistics.median(column) for column in zip(*rows["beanstalkd"], strict=True)]
    print(f"{n} messages, median of {runs} runs (server CPU per message in brackets)")
    for name, table in rows.items():
        s1, s1_us, s2, s2_us, s3, s3_us = (statistics.median(column)
                                           for column in zip(*table, strict=True))
        print(f"{name:11s} S1 {s1:7.0f}/s ({s1_us:5.1f} us) {s1 / base[0]:4.2f}x   "
              f"S2 {s2:7.0f}/s ({s2_us:5.1f} us) {s2 / base[2]:4.2f}x   "
              f"S3 {s3:7.0f}/s ({s3_us:5.1f} us) {s3 / base[4]:4.2f}x")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (30000, 5)))
