"""S4c's messages split into user and system CPU, server and client, like s3_cpu_split.py.

    python bench/probes/s4c_cpu_split.py [MESSAGES] [RUNS]     (defaults 200000, 5)

S4c (bench/scenarios.py's `receive_ack_batches`: receive up to 100, ack them
in one batch, then receive again) keeps one request in flight, so the server
and the load generator take turns: its rate is about one over the sum of
both sides' CPU per message, and this says which side holds how much. Each
run puts MESSAGES in batches of 100 on a fresh in-memory server, then
measures the draining alone (the puts are not counted). beanstalkd through
the bench's text client (100 pipelined commands a batch) and
`wonderq-server --in-memory` through wonderq_client, rotated as
s1_cpu_split.py rotates them; the median of RUNS. Needs beanstalkd
installed (bench/README.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import rotate_fresh_servers, whole_numbers  # noqa: E402
from s1_cpu_split import print_table, ready, split  # noqa: E402
from scenarios import Progress, put_batches, receive_ack_batches  # noqa: E402
from systems import beanstalkd, wonderq  # noqa: E402

TIME_LIMIT_S = 60.0
BATCH = 100

SYSTEMS = {
    "beanstalkd": (beanstalkd, lambda port, d: beanstalkd.server_argv(port, d, "memory")),
    "wonderq": (wonderq, lambda port, d: wonderq.server_argv(port, d, "memory")),
}


async def one_run(adapter, server: servers.ServerProcess, port: int, n: int) -> list[float]:
    """one_run: S4c on a fresh server holding n messages; msgs/s, then server user, server
    system, client user and client system µs per message."""
    await ready(adapter, server, port)
    conn = await adapter.connect(port, "split", "c1")
    try:
        filled = await put_batches(conn, n, BATCH, time.monotonic() + TIME_LIMIT_S, Progress())
        if filled.stalled:
            raise SystemExit(f"{server.name}: putting {filled.stalled}")
        return await split(server, lambda: receive_ack_batches(
            conn, n, BATCH, time.monotonic() + TIME_LIMIT_S, Progress()))
    finally:
        await conn.close()


def main(n: int, runs: int) -> None:
    rows = rotate_fresh_servers(
        {name: (argv, lambda server, port, adapter=adapter: one_run(adapter, server, port, n))
         for name, (adapter, argv) in SYSTEMS.items()}, runs, "wonderq-s4c-split-")
    print_table(f"S4c, {n} messages, median of {runs} runs; CPU in µs per message", rows)


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (200_000, 5)))
