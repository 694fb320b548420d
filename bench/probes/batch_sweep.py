"""S4c's loop at several batch sizes, WonderQ beside beanstalkd: the cost of a round trip
apart from the cost of a message.

    python bench/probes/batch_sweep.py [MESSAGES] [RUNS] [BUSY_POLL_US]
                                       (defaults 100000, 3, 0)

S4c receives a batch, acks it, and only then receives again: one request in
flight, so the server and the load generator take turns and every batch pays
two round trips (two wake-ups of each process) besides its messages. This
probe runs that loop (bench/scenarios.py's `receive_ack_batches`, through the
bench's adapters) with batches of 10, 30, 100 and 300, on fresh in-memory
servers, runs interleaved and the order of the systems rotating, and fits, per
system, the CPU time of one batch's turn (server's, from /proc, and the load
generator's own, from process_time) and its wall time as

    per batch = fixed + batch size x per message

by least squares over the four sizes (medians of RUNS). `fixed` is what a
batch's two round trips cost whatever they carry (system calls, the wake-ups,
each side's per-request code); `per message` is what each message adds. It
then prints the ratio to beanstalkd S4c's batch of 100 gets, and what WonderQ's
per-message wall time would have to be for a given ratio with its fixed cost
as measured. BUSY_POLL_US runs WonderQ's side with busy polling (compare.py's
--busy-poll: the server's --busy-poll and the client's busy_poll), which
shows how much of its fixed part is being woken. Every phase is bounded by
TIME_LIMIT_S; every server is stopped by its PID. Needs beanstalkd installed
(bench/README.md).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import servers  # noqa: E402
from _common import on_fresh_server, whole_numbers  # noqa: E402
from scenarios import Progress, put_batches, receive_ack_batches  # noqa: E402
from systems import beanstalkd, wonderq  # noqa: E402

TIME_LIMIT_S = 60.0
BATCHES = (10, 30, 100, 300)
PUT_BATCH = 100
BODY_BYTES = 100
SYSTEMS = {"wonderq": wonderq, "beanstalkd": beanstalkd}
# The ratio the issue asks of S4c, for the "would need" line.
TARGET = 2.5


async def one_run(adapter, server: servers.ServerProcess, port: int,
                  n: int) -> dict[int, tuple[float, float, float]]:
    """one_run: per batch size, on one fresh server, a backlog of n put in batches of
    100, then drained with that batch size; (wall, server CPU, client CPU) in µs per
    batch."""
    await server.wait_ready(lambda: adapter.probe(port), 30)
    figures = {}
    for batch in BATCHES:
        queue = f"sweep{batch}"
        await adapter.prepare(port, queue, "memory")
        conn = await adapter.connect(port, queue, "c1")
        try:
            give_up = time.monotonic() + TIME_LIMIT_S
            load = await put_batches(conn, n, PUT_BATCH, give_up, Progress())
            if load.stalled:
                raise SystemExit(f"{server.name}: put_batches {load.stalled}")
            cpu0, own0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
            load = await receive_ack_batches(conn, n, batch, time.monotonic() + TIME_LIMIT_S,
                                             Progress())
            wall = time.perf_counter() - wall0
            if load.stalled:
                raise SystemExit(f"{server.name}: receive_ack_batches({batch}) {load.stalled}")
            rounds = load.messages / batch
            figures[batch] = (1e6 * wall / rounds,
                              1e6 * (server.cpu_seconds() - cpu0) / rounds,
                              1e6 * (time.process_time() - own0) / rounds)
        finally:
            await conn.close()
    return figures


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """fit: least squares of y = fixed + x * per; returns (fixed, per)."""
    per, fixed = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return fixed, per


def main(n: int, runs: int, busy_poll_us: int) -> None:
    wonderq.BUSY_POLL_US = busy_poll_us
    rows: dict[str, list[dict[int, tuple[float, float, float]]]] = {s: [] for s in SYSTEMS}
    names = list(SYSTEMS)
    with tempfile.TemporaryDirectory(prefix="wonderq-sweep-") as tmp:
        try:
            for run in range(runs):
                for name in names[run % 2:] + names[:run % 2]:
                    adapter = SYSTEMS[name]
                    rows[name].append(on_fresh_server(
                        tmp, name, run, partial(adapter.server_argv, mode="memory"),
                        lambda server, port, adapter=adapter: one_run(adapter, server, port, n)))
        finally:
            servers.stop_all()
    print(f"{n} messages per batch size, {BODY_BYTES}-byte bodies, median of {runs} runs; "
          f"µs per batch (one receive + one ack); WonderQ's busy polling "
          f"{f'{busy_poll_us} µs' if busy_poll_us else 'off'}")
    fitted = {}
    for name, table in rows.items():
        medians = {b: [statistics.median(run[b][k] for run in table) for k in range(3)]
                   for b in BATCHES}
        for b, (wall, server_us, client_us) in medians.items():
            print(f"{name:10s} batch {b:3d}: {b / wall * 1e6:9,.0f} msgs/s  wall {wall:7.1f}  "
                  f"server {server_us:7.1f}  client {client_us:7.1f}")
        fitted[name] = [fit([(b, medians[b][k]) for b in BATCHES]) for k in range(3)]
        (wf, wp), (sf, sp), (cf, cp) = fitted[name]
        print(f"{name:10s} fit: wall {wf:6.1f} + {wp:5.2f}/msg  server {sf:6.1f} + "
              f"{sp:5.2f}/msg  client {cf:6.1f} + {cp:5.2f}/msg")
    (wq_fixed, wq_per), (bs_fixed, bs_per) = fitted["wonderq"][0], fitted["beanstalkd"][0]
    wq100, bs100 = wq_fixed + 100 * wq_per, bs_fixed + 100 * bs_per
    need = (bs100 / TARGET - wq_fixed) / 100
    print(f"batch of 100 (from the fits): wonderq {wq100:.0f} µs, beanstalkd {bs100:.0f} µs, "
          f"ratio {bs100 / wq100:.2f}x; {TARGET}x needs wonderq's wall per message at "
          f"{need:.2f} µs (now {wq_per:.2f}) with its fixed {wq_fixed:.0f} µs per batch")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (100_000, 3, 0)))
