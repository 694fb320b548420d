"""Clients putting one message at a time under `--fsync always`: the commit wait off and on.

    python bench/probes/durable_putters.py [N] [RUNS] [CLIENTS ...]   (defaults 4000 3 1 2 8)

The commit wait (wonderq_server/commit_wait.py) puts an fsync off while the
clients the last one answered send their next requests. S6 (durable_ab.py)
shows what it wins with producers and consumers at once; this probe shows
the simplest shapes, where it could also cost: one client alone (nobody to
wait for: it must not be slower) and a few clients that each put one
message at a time. For each CLIENTS count, each run starts two fresh
`--data-dir DIR --fsync always` servers of this tree, one with
`--group-commit-wait 0` and one with the default, in rotating order, and
has CLIENTS connections put N messages between them (100-byte bodies), each
waiting for its reply before the next.

Prints per count and setting the medians of RUNS runs: puts/s, the put's
latency p50 and p99, fsyncs per put (STATS' fsync_count before and after).
Every server is stopped by its PID; each run is bounded by TIME_LIMIT_S.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from _common import rotate_fresh_servers  # noqa: E402
from durable_ab import durable_server_argv, fsync_count  # noqa: E402
from scenarios import BODY, percentile  # noqa: E402
from systems import wonderq  # noqa: E402

from wonderq_client import connect  # noqa: E402

TIME_LIMIT_S = 60.0
TREE = str(BENCH.parent)
SETTINGS = {"off": "--group-commit-wait=0", "default": ""}  # durable_ab.py's +FLAGS


async def one_run(server, port: int, clients: int, n: int) -> list[float]:
    """one_run: `clients` connections put n messages one at a time; puts/s, p50 and p99
    in µs, fsyncs per put."""
    await server.wait_ready(lambda: wonderq.probe(port), 30)
    connections = [await connect("127.0.0.1", port) for _ in range(clients)]
    latencies: list[float] = []
    give_up = time.monotonic() + TIME_LIMIT_S

    async def puts(client, count: int) -> None:
        for _ in range(count):
            if time.monotonic() > give_up:
                raise SystemExit(f"{clients} clients: over {TIME_LIMIT_S} s")
            started = time.perf_counter()
            await client.put("putters", BODY)
            latencies.append(time.perf_counter() - started)

    try:
        before = await fsync_count(port)
        started = time.perf_counter()
        await asyncio.gather(*(puts(client, n // clients) for client in connections))
        elapsed = time.perf_counter() - started
        used = await fsync_count(port) - before
    finally:
        for client in connections:
            await client.close()
    return [len(latencies) / elapsed, 1e6 * percentile(latencies, 0.5),
            1e6 * percentile(latencies, 0.99), used / len(latencies)]


def main(n: int, runs: int, counts: list[int]) -> None:
    print(f"clients putting one message at a time, {n} puts a run, --fsync always, "
          f"median of {runs} runs")
    for clients in counts:
        rows = rotate_fresh_servers(
            {f"{setting}:{clients}": (durable_server_argv(f"{TREE}+{flags}"),
                                      lambda server, port, c=clients: one_run(server, port,
                                                                              c, n))
             for setting, flags in SETTINGS.items()},
            runs, "wonderq-durable-putters-")
        for name, results in rows.items():
            rate, p50, p99, fsyncs = (statistics.median(column)
                                      for column in zip(*results, strict=True))
            print(f"{clients:3d} clients, wait {name.split(':')[0]:7s} {rate:7.0f} puts/s  "
                  f"p50 {p50:5.0f} µs  p99 {p99:5.0f} µs  {fsyncs:5.3f} fsyncs/put  "
                  f"runs {[round(row[0]) for row in results]}")


def arguments(given: list[str]) -> tuple[int, int, list[int]]:
    """arguments: N, RUNS and the client counts, or the docstring and exit 2 (0 for
    --help)."""
    if given in (["-h"], ["--help"]):
        print(__doc__.strip())
        raise SystemExit(0)
    values = [int(a) for a in given if a.isdigit()]
    n, runs = (values + [4000, 3][len(values):])[:2] if len(values) < 2 else values[:2]
    counts = values[2:] or [1, 2, 8]
    if len(values) != len(given) or not runs or not all(0 < c <= n for c in counts):
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    return n, runs, counts


if __name__ == "__main__":
    main(*arguments(sys.argv[1:]))
