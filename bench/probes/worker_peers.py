"""WonderQ's Worker beside arq's (asyncio jobs on Redis): the same no-op job, drained.

    python bench/probes/worker_peers.py [JOBS] [CONCURRENCY] [RUNS]   (defaults 20000 100 3)

What a Python team compares when it picks a job queue: how fast a worker library drains a
backlog, and what that costs the broker. Each run starts a fresh `wonderq-server
--in-memory` and a fresh `redis-server` (no persistence) on free loopback ports, queues JOBS
jobs (untimed: WonderQ by put_many, arq by enqueue_job), and drains them with a worker of
CONCURRENCY slots running a job that returns at once:

    wonderq   wonderq_client.Worker(concurrency=CONCURRENCY): long-poll receives, one
              ack_many per loop iteration for the jobs that ended in it
    arq       arq.worker.Worker(max_jobs=CONCURRENCY, burst=True, keep_result=0): its
              own polling of a sorted set, a lock key and a job key per job

Runs are interleaved (the order alternates) and the medians printed: jobs/s from the first
receive to the last ack, the broker's CPU per job (from /proc), this process's CPU per job,
and WonderQ's ratio to arq. Needs redis-server and `pip install arq` (bench/README.md); every
server is stopped by its PID, and each drain is bounded by TIME_LIMIT_S.

Asymmetries, written down: arq keeps a job's arguments and result as Redis keys and gives
each job a timeout and retry count (it was told keep_result=0: no result kept); WonderQ's
message is its body, with lease, delivery count and dead-letter rule. Both deliver at least
once. arq's poll_delay is set to 0.01 s (default 0.5) so that it is not measured asleep.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import whole_numbers  # noqa: E402
from runner import run_event_loop  # noqa: E402
from systems import redis_streams, wonderq  # noqa: E402
from worker_throughput import BODY, by_worker, fill  # noqa: E402

from wonderq_client import connect  # noqa: E402

TIME_LIMIT_S = 120.0
ENQUEUE_AT_ONCE = 200  # arq's enqueue_job calls in flight at once while queueing (untimed)


async def wonderq_queue(port: int, jobs: int) -> None:
    async with connect("127.0.0.1", port) as client:
        await fill(client, "jobs", jobs)


async def wonderq_drain(port: int, jobs: int, concurrency: int) -> None:
    await asyncio.wait_for(by_worker(port, "jobs", jobs, concurrency), TIME_LIMIT_S)


async def arq_queue(port: int, jobs: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings(host="127.0.0.1", port=port))
    try:
        for start in range(0, jobs, ENQUEUE_AT_ONCE):
            await asyncio.gather(*(pool.enqueue_job("noop", BODY)
                                   for _ in range(min(ENQUEUE_AT_ONCE, jobs - start))))
    finally:
        await pool.aclose()


async def arq_drain(port: int, jobs: int, concurrency: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker as ArqWorker
    from arq.worker import func

    done = 0

    async def noop(ctx: dict, body: bytes) -> None:
        nonlocal done
        done += 1

    pool = await create_pool(RedisSettings(host="127.0.0.1", port=port))
    try:
        worker = ArqWorker(functions=[func(noop, name="noop")], redis_pool=pool, burst=True,
                           max_jobs=concurrency, keep_result=0, handle_signals=False,
                           poll_delay=0.01, log_results=False)
        await asyncio.wait_for(worker.main(), TIME_LIMIT_S)
        await worker.close()
    finally:
        await pool.aclose()
    if done != jobs:
        raise SystemExit(f"arq: ran {done} of {jobs}")


SYSTEMS = {
    "wonderq": (lambda port, d: wonderq.server_argv(port, d, "memory"), wonderq.probe,
                wonderq_queue, wonderq_drain),
    "arq": (lambda port, d: redis_streams.server_argv(port, d, "memory"),
            redis_streams.probe, arq_queue, arq_drain),
}


async def one_run(name: str, server: servers.ServerProcess, port: int, jobs: int,
                  concurrency: int) -> tuple[float, float, float]:
    """one_run: jobs/s, the broker's and this process's CPU µs per job, of one drain."""
    _, probe, queue, drain = SYSTEMS[name]
    await server.wait_ready(lambda: probe(port), 30)
    await queue(port, jobs)
    broker0, own0, started = server.cpu_seconds(), time.process_time(), time.perf_counter()
    await drain(port, jobs, concurrency)
    seconds = time.perf_counter() - started
    return (jobs / seconds, 1e6 * (server.cpu_seconds() - broker0) / jobs,
            1e6 * (time.process_time() - own0) / jobs)


def main(jobs: int, concurrency: int, runs: int) -> None:
    if importlib.util.find_spec("arq") is None:
        raise SystemExit("worker_peers.py needs arq: pip install arq")
    if (why := redis_streams.missing()) is not None:
        raise SystemExit(f"worker_peers.py needs redis-server: {why}")
    logging.getLogger("arq").setLevel(logging.WARNING)
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in SYSTEMS}
    names = list(SYSTEMS)
    with tempfile.TemporaryDirectory(prefix="wonderq-workers-") as tmp:
        try:
            for run in range(runs):
                for name in names[run % 2:] + names[:run % 2]:
                    argv = SYSTEMS[name][0]
                    port, data_dir = servers.free_port(), Path(tmp) / f"{name}-{run}"
                    data_dir.mkdir()
                    server = servers.ServerProcess(name, argv(port, data_dir),
                                                   Path(tmp) / f"{name}-{run}.log")
                    try:
                        rows[name].append(run_event_loop(
                            one_run(name, server, port, jobs, concurrency)))
                    finally:
                        server.stop()
        finally:
            servers.stop_all()
    medians = {name: [statistics.median(column) for column in zip(*table, strict=True)]
               for name, table in rows.items()}
    print(f"{jobs} no-op jobs, concurrency {concurrency}, median of {runs} runs")
    for name, (rate, broker_us, own_us) in medians.items():
        print(f"{name:8s} {rate:9,.0f} jobs/s  broker {broker_us:6.1f} us/job  "
              f"worker {own_us:6.1f} us/job")
    wonderq_rate, arq_rate = medians["wonderq"][0], medians["arq"][0]
    print(f"wonderq / arq: {wonderq_rate / arq_rate:.1f}x jobs/s, broker CPU "
          f"{medians['wonderq'][1] / medians['arq'][1]:.2f}x, worker CPU "
          f"{medians['wonderq'][2] / medians['arq'][2]:.2f}x")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (20000, 100, 3)))
