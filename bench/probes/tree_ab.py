"""S3 and S1 against beanstalkd and the servers of several source trees, in one run: an A/B.

    python bench/probes/tree_ab.py N RUNS TREE [TREE ...]

An optimisation of the message path is judged by what it does to S1-S3
beside beanstalkd, but this VM's noise between runs an hour apart is as big as
most changes. This probe puts the trees side by side instead: each TREE is a
checkout of this repository (a `git worktree add /tmp/before SHA` and the
working tree, say), and every run starts a fresh `--in-memory` server from
each TREE (`PYTHONPATH=TREE python -P -m wonderq_server`: -P, so the working
directory cannot shadow the tree) and a fresh beanstalkd, and drives each with
S3 (N messages: 4 producers, 4 consumers, at most 32 unacked) and then S1 (N/2
puts, one per round trip), through the bench's own load loop and adapters
(bench/scenarios.py, bench/systems/). The load generator's client is the one
this process imports, the same for every tree, so only the servers differ.

Prints per system the medians of RUNS runs: S3 msgs/s, its ratio to
beanstalkd, the server's CPU per message (user + system, /proc), p99
put-to-ack latency; S1 msgs/s, ratio and server CPU; and every S3 run, to
show the spread.

Rules: the order of the systems rotates each run; every server is stopped by
its PID; each phase is bounded by TIME_LIMIT_S. Needs beanstalkd installed
(bench/README.md).
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
from scenarios import Progress, percentile, producers_consumers, put_one_by_one  # noqa: E402
from systems import beanstalkd, wonderq  # noqa: E402

TIME_LIMIT_S = 120.0


def arguments(argv: list[str], usage: str = __doc__) -> tuple[int, int, list[str]]:
    """arguments: N, RUNS and the trees, or `usage` (the calling probe's docstring) and
    exit 2 (0 for --help)."""
    if argv in (["-h"], ["--help"]):
        print(usage.strip())
        raise SystemExit(0)
    if len(argv) < 3 or not argv[0].isdigit() or not argv[1].isdigit() \
            or not all(Path(tree, "wonderq_server").is_dir() for tree in argv[2:]):
        print(usage.strip(), file=sys.stderr)
        raise SystemExit(2)
    return int(argv[0]), int(argv[1]), [str(Path(tree).resolve()) for tree in argv[2:]]


def tree_server_argv(tree: str):
    return lambda port, data_dir: ["env", f"PYTHONPATH={tree}", sys.executable, "-P", "-m",
                                   "wonderq_server", "--in-memory", "--port", str(port)]


async def one_run(adapter, server: servers.ServerProcess, port: int, n: int) -> list[float]:
    """one_run: S3 then S1 on a fresh server; msgs/s, server µs/msg and p99 ms of S3,
    then msgs/s and server µs/msg of S1."""
    await server.wait_ready(lambda: adapter.probe(port), 30)
    await adapter.prepare(port, "ab", "memory")
    cpu0 = server.cpu_seconds()
    s3 = await producers_consumers(lambda name: adapter.connect(port, "ab", name), n,
                                   time.monotonic() + TIME_LIMIT_S, Progress())
    cpu1 = server.cpu_seconds()
    if s3.stalled:
        raise SystemExit(f"{server.name}: S3 {s3.stalled}")
    conn = await adapter.connect(port, "ab", "s1")
    try:
        cpu2 = server.cpu_seconds()
        s1 = await put_one_by_one(conn, n // 2, time.monotonic() + TIME_LIMIT_S, Progress())
        cpu3 = server.cpu_seconds()
    finally:
        await conn.close()
    if s1.stalled:
        raise SystemExit(f"{server.name}: S1 {s1.stalled}")
    return [s3.messages / s3.seconds, 1e6 * (cpu1 - cpu0) / s3.messages,
            1e3 * percentile(s3.latencies_s, 0.99),
            s1.messages / s1.seconds, 1e6 * (cpu3 - cpu2) / s1.messages]


def main(n: int, runs: int, trees: list[str]) -> None:
    systems = {"beanstalkd": (beanstalkd, lambda port, d: beanstalkd.server_argv(port, d,
                                                                                "memory"))}
    for index, tree in enumerate(trees):
        systems[f"{index + 1}:{tree}"] = (wonderq, tree_server_argv(tree))
    names = list(systems)
    rows = rotate_fresh_servers(
        {name: (argv, lambda server, port, adapter=adapter: one_run(adapter, server, port, n))
         for name, (adapter, argv) in systems.items()}, runs, "wonderq-tree-ab-")
    base = [statistics.median(column) for column in zip(*rows["beanstalkd"], strict=True)]
    print(f"S3 {n} and S1 {n // 2} messages, median of {runs} runs (server CPU µs/msg)")
    for name in names:
        s3, s3_us, p99, s1, s1_us = (statistics.median(c) for c in zip(*rows[name], strict=True))
        print(f"{name}\n    S3 {s3:7.0f}/s {s3 / base[0]:4.2f}x ({s3_us:5.1f} us) p99 {p99:5.2f} ms"
              f"   S1 {s1:6.0f}/s {s1 / base[3]:4.2f}x ({s1_us:5.1f} us)"
              f"   S3 runs {[round(row[0]) for row in rows[name]]}")


if __name__ == "__main__":
    main(*arguments(sys.argv[1:]))
