"""What a mass dead-lettering and a REDRIVE cost everyone else: loop stall and peak memory.

    python bench/probes/redrive_stall.py [MESSAGES] [BODY_BYTES] [RUNS]
                                         (defaults 100000, 1000, 3)

Each run starts a fresh `wonderq-server --data-dir DIR` (default fsync), puts
MESSAGES messages of BODY_BYTES into a queue whose max_deliveries is 1 and
whose dead-letter queue is `dead`, receives them all with a 1 s lease and
lets the leases run out (every message is dead-lettered by the deadline
timer), then REDRIVEs `dead` back. Meanwhile one other connection pings back
to back. For each of the two events it prints the longest ping round trip
(how long the event loop was held), and the server's peak resident memory
(VmHWM, reset before each event) above its resident memory before it. Every
loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from _common import on_fresh_server, resident_bytes, whole_numbers  # noqa: E402
from systems import wonderq  # noqa: E402

from wonderq_client import connect  # noqa: E402

GIVE_UP_S = 120.0
BATCH = 1000


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS


async def ping_while(port: int, done: asyncio.Event) -> float:
    """ping_while pings back to back until `done`; the longest round trip, in seconds."""
    longest = 0.0
    async with connect("127.0.0.1", port) as client:
        give_up = time.monotonic() + GIVE_UP_S
        while not done.is_set() and time.monotonic() < give_up:
            started = time.perf_counter()
            await client.ping()
            longest = max(longest, time.perf_counter() - started)
    return longest


async def measure(port: int, pid: int, n: int, body_bytes: int) -> tuple[float, ...]:
    body = b"x" * body_bytes
    async with connect("127.0.0.1", port) as client:
        await client.create_queue("dead")
        await client.create_queue("work", max_deliveries=1, dead_letter_queue="dead")
        for start in range(0, n, BATCH):
            await client.put_many("work", [body] * min(BATCH, n - start))
        leased = 0
        while leased < n:
            leased += len(await client.receive("work", max=BATCH, visibility=1.0))
        before = resident_bytes(pid)
        reset_peak(pid)
        done = asyncio.Event()
        pinger = asyncio.create_task(ping_while(port, done))
        give_up = time.monotonic() + GIVE_UP_S
        while (await client.queue_info("dead"))["messages"] < n:
            if time.monotonic() > give_up:
                raise SystemExit("the leases did not end in time")
            await asyncio.sleep(0.05)  # polling a count; the stall is the pinger's figure
        done.set()
        expiry_stall = await pinger
        expiry_peak = resident_bytes(pid, "VmHWM") - before
        before = resident_bytes(pid)
        reset_peak(pid)
        done = asyncio.Event()
        pinger = asyncio.create_task(ping_while(port, done))
        started = time.perf_counter()
        moved = await client.redrive("dead")
        redrive_s = time.perf_counter() - started
        done.set()
        redrive_stall = await pinger
        redrive_peak = resident_bytes(pid, "VmHWM") - before
        if moved != n:
            raise SystemExit(f"redrive moved {moved} of {n}")
    return expiry_stall, expiry_peak, redrive_s, redrive_stall, redrive_peak


def main(n: int, body_bytes: int, runs: int) -> None:
    def argv(port: int, data_dir: Path) -> list[str]:
        return [sys.executable, "-m", "wonderq_server", "--host", "127.0.0.1", "--port",
                str(port), "--data-dir", str(data_dir), "--log-level", "warning"]

    async def one(server, port: int) -> tuple[float, ...]:
        await server.wait_ready(lambda: wonderq.probe(port), 30.0)
        return await measure(port, server.pid, n, body_bytes)

    with tempfile.TemporaryDirectory() as tmp:
        figures = [on_fresh_server(tmp, "wonderq", run, argv, one) for run in range(runs)]
    mib = 1024 * 1024
    rows = list(zip(*figures, strict=True))
    print(f"{n} messages of {body_bytes} B, median of {runs} runs: "
          f"dead-lettering: longest ping {statistics.median(rows[0]) * 1000:.1f} ms, "
          f"peak RSS +{statistics.median(rows[1]) / mib:.1f} MiB; "
          f"redrive: {statistics.median(rows[2]):.2f} s, longest ping "
          f"{statistics.median(rows[3]) * 1000:.1f} ms, "
          f"peak RSS +{statistics.median(rows[4]) / mib:.1f} MiB")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (100000, 1000, 3)))
