"""S3's messages split into user and system CPU, server and client, like s1_cpu_split.py.

    python bench/probes/s3_cpu_split.py [MESSAGES] [RUNS]     (defaults 40000, 3)

S3 (4 producers and 4 consumers, each one request at a time, at most 32
unacked) keeps the server busy rather than asleep between requests, so where
S1 is a wake-up each way per message, S3 shows whether the server or the load
generator is what stops a system: a server whose CPU per message times its
msgs/s is near one core is the bottleneck. Same systems, rules and order as
s1_cpu_split.py (beanstalkd through the bench's text client; the do-nothing
server and `wonderq-server --in-memory` through wonderq_client). The
do-nothing server hands every receive its canned message, so its consumers
never wait. The client's figures are the whole load generator's (eight
connections in one process). Needs beanstalkd installed (bench/README.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import whole_numbers  # noqa: E402
from floor import rotated_runs  # noqa: E402
from s1_cpu_split import print_table, ready, split  # noqa: E402
from scenarios import Progress, producers_consumers  # noqa: E402

TIME_LIMIT_S = 60.0


async def one_run(adapter, server: servers.ServerProcess, port: int, n: int) -> list[float]:
    """one_run: S3 on a fresh server; msgs/s, then server user, server system, client
    user and client system µs per message."""
    await ready(adapter, server, port)
    return await split(server, lambda: producers_consumers(
        lambda name: adapter.connect(port, "split", name), n,
        time.monotonic() + TIME_LIMIT_S, Progress()))


def main(n: int, runs: int) -> None:
    print_table(f"S3, {n} messages, median of {runs} runs; CPU in µs per message",
                rotated_runs(runs, one_run, n))


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (40000, 3)))
