"""S6's shape against the servers of several source trees, each with `--fsync always`: an A/B.

    python bench/probes/durable_ab.py N RUNS TREE[+FLAGS] [TREE[+FLAGS] ...]

A change to group commit (group_commit.py) is judged by S6: 4 producers and
4 consumers, at most 32 unacked, every put and ack on disk before it is
answered. This probe is tree_ab.py for that shape: each run starts a fresh
`--data-dir DIR --fsync always` server from each TREE (`PYTHONPATH=TREE
python -P -m wonderq_server`, a checkout of this repository such as a `git
worktree add /tmp/before SHA`), drives it with N messages through the bench's
own load loop and adapter (bench/scenarios.py, bench/systems/wonderq.py), and
reads the server's `fsync_count` from STATS before and after. The load
generator's client is the one this process imports, the same for every tree.
A TREE may carry server flags after a `+`, split at commas
(`/work/main+--group-commit-wait=0`): one tree against itself with a
setting changed, or two trees with the same setting.

Prints per tree the medians of RUNS runs: msgs/s, the server's CPU per
message (user + system, /proc), fsyncs per message (how many messages share
an fsync) and the p99 put-to-ack latency, and every run's msgs/s.

Rules: the order of the trees rotates each run; every server is stopped by
its PID; each run is bounded by TIME_LIMIT_S. The data directories are
under the system's temporary directory: its disk is the one measured.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import rotate_fresh_servers  # noqa: E402
from scenarios import Progress, percentile, producers_consumers  # noqa: E402
from systems import wonderq  # noqa: E402
from tree_ab import arguments  # noqa: E402

from wonderq_client import connect  # noqa: E402

TIME_LIMIT_S = 120.0


def durable_server_argv(tree_and_flags: str):
    tree, _, flags = tree_and_flags.partition("+")
    return lambda port, data_dir: ["env", f"PYTHONPATH={tree}", sys.executable, "-P", "-m",
                                   "wonderq_server", "--data-dir", str(data_dir),
                                   "--fsync", "always", "--port", str(port),
                                   *filter(None, flags.split(","))]


async def fsync_count(port: int) -> int:
    async with connect("127.0.0.1", port) as client:
        return int((await client.stats())["server"]["fsync_count"])


async def one_run(server: servers.ServerProcess, port: int, n: int) -> list[float]:
    """one_run: S6's shape on a fresh server; msgs/s, server µs/msg, fsyncs/msg, p99 ms."""
    await server.wait_ready(lambda: wonderq.probe(port), 30)
    await wonderq.prepare(port, "ab", "fsync")
    fsyncs0, cpu0 = await fsync_count(port), server.cpu_seconds()
    load = await producers_consumers(lambda name: wonderq.connect(port, "ab", name), n,
                                     time.monotonic() + TIME_LIMIT_S, Progress())
    cpu1, fsyncs1 = server.cpu_seconds(), await fsync_count(port)
    if load.stalled:
        raise SystemExit(f"{server.name}: {load.stalled}")
    return [load.messages / load.seconds, 1e6 * (cpu1 - cpu0) / load.messages,
            (fsyncs1 - fsyncs0) / load.messages, 1e3 * percentile(load.latencies_s, 0.99)]


def main(n: int, runs: int, trees: list[str]) -> None:
    names = [f"{index + 1}:{tree}" for index, tree in enumerate(trees)]
    rows = rotate_fresh_servers(
        {name: (durable_server_argv(name.split(":", 1)[1]),
                lambda server, port: one_run(server, port, n)) for name in names},
        runs, "wonderq-durable-ab-")
    print(f"S6's shape, {n} messages, --fsync always, median of {runs} runs")
    for name in names:
        rate, cpu, fsyncs, p99 = (statistics.median(c) for c in zip(*rows[name], strict=True))
        print(f"{name}\n    {rate:6.0f} msgs/s ({cpu:5.1f} us) {fsyncs:5.3f} fsyncs/msg "
              f"p99 {p99:6.2f} ms   runs {[round(row[0]) for row in rows[name]]}")


if __name__ == "__main__":
    given = sys.argv[3:]
    n, runs, trees = arguments(sys.argv[1:3] + [tree.partition("+")[0] for tree in given],
                               __doc__)
    main(n, runs, [tree + extra[extra.index("+"):] if "+" in extra else tree
                   for tree, extra in zip(trees, given, strict=True)])
