"""S1's round trip split into user and system CPU, server and client: where a put's time goes.

    python bench/probes/s1_cpu_split.py [MESSAGES] [RUNS]     (defaults 30000, 5)

S1 (one put per round trip) is a wake-up each way per message: a server and a
client that each sleep in epoll between requests. floor.py shows that a
do-nothing uvloop server reaches about what WonderQ does there; this probe
shows why, by splitting each side's CPU per message into user time (the
Python, msgpack, uvloop) and system time (the socket calls, waking the other
side, being woken), for beanstalkd (the bench's text client), the do-nothing
server and `wonderq-server --in-memory` (both through wonderq_client).

Rules: the server's times come from /proc/PID/stat (clock ticks of 10 ms:
at the default 30,000 messages a tick is 0.33 µs a message, so do not go much
lower), the client's from getrusage() around the loop alone; every
server is fresh and stopped by its PID; runs rotate the order; medians are
printed, in µs per message. Bounded by MESSAGES and TIME_LIMIT_S per run.
Needs beanstalkd installed (bench/README.md).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import server_times, whole_numbers  # noqa: E402
from floor import rotated_runs  # noqa: E402
from scenarios import Progress, put_one_by_one  # noqa: E402

TIME_LIMIT_S = 60.0


async def one_run(adapter, server: servers.ServerProcess, port: int, n: int) -> list[float]:
    """one_run: S1 on a fresh server; msgs/s, then server user, server system, client
    user and client system µs per message."""
    await ready(adapter, server, port)
    conn = await adapter.connect(port, "split", "c1")
    try:
        return await split(server, lambda: put_one_by_one(
            conn, n, time.monotonic() + TIME_LIMIT_S, Progress()))
    finally:
        await conn.close()


async def ready(adapter, server: servers.ServerProcess, port: int) -> None:
    """ready waits for a fresh server to answer, then makes queue "split" on it."""
    await server.wait_ready(lambda: adapter.probe(port), 30)
    if server.name != "do-nothing":  # it has no queues to create
        await adapter.prepare(port, "split", "memory")


async def split(server: servers.ServerProcess, load) -> list[float]:
    """split runs `load()` (a scenario's loop, returning its Load); msgs/s, then server
    user, server system, client user and client system µs per message."""
    server0, client0 = server_times(server.pid), resource.getrusage(resource.RUSAGE_SELF)
    done = await load()
    server1, client1 = server_times(server.pid), resource.getrusage(resource.RUSAGE_SELF)
    if done.stalled:
        raise SystemExit(f"{server.name}: {done.stalled}")
    per_message = 1e6 / done.messages
    return [done.messages / done.seconds,
            (server1[0] - server0[0]) * per_message, (server1[1] - server0[1]) * per_message,
            (client1.ru_utime - client0.ru_utime) * per_message,
            (client1.ru_stime - client0.ru_stime) * per_message]


def print_table(title: str, rows: dict[str, list[list[float]]]) -> None:
    print(title)
    print(f"{'':11s} {'msgs/s':>8s}  {'server user':>11s} {'sys':>6s}  "
          f"{'client user':>11s} {'sys':>6s}")
    for name, table in rows.items():
        rate, s_user, s_sys, c_user, c_sys = (statistics.median(column)
                                              for column in zip(*table, strict=True))
        print(f"{name:11s} {rate:8.0f}  {s_user:11.1f} {s_sys:6.1f}  {c_user:11.1f} {c_sys:6.1f}")


def main(n: int, runs: int) -> None:
    print_table(f"S1, {n} messages, median of {runs} runs; CPU in µs per message",
                rotated_runs(runs, one_run, n))


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (30000, 5)))
