"""4 producers + 4 consumers, at most 32 unacked (the S3/S6 shape); msgs/s, server CPU/msg.

    python bench/probes/durable_mix.py PORT SERVER_PID MESSAGES

Bounded: every loop gives up after 120 s.
"""

from __future__ import annotations

import asyncio
import time

from _common import server_cpu_s, whole_numbers

from wonderq_client import connect

GIVE_UP_S = 120.0


async def main(port: int, pid: int, n: int) -> None:
    body = b"x" * 100
    done = unacked = 0
    give_up = time.monotonic() + GIVE_UP_S

    async def producer() -> None:
        nonlocal unacked
        async with connect("127.0.0.1", port) as client:
            for _ in range(n // 4):
                while unacked > 32 and time.monotonic() < give_up:
                    await asyncio.sleep(0.0005)
                unacked += 1
                await client.put("q", body)

    async def consumer() -> None:
        nonlocal done, unacked
        async with connect("127.0.0.1", port) as client:
            while done < n and time.monotonic() < give_up:
                for msg in await client.receive("q", wait=0.2):
                    await msg.ack()
                    done += 1
                    unacked -= 1

    c0, t0 = server_cpu_s(pid), time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(4)), *(consumer() for _ in range(4)))
    c1, t1 = server_cpu_s(pid), time.perf_counter()
    print(f"{done / (t1 - t0):.0f} msgs/s, server {1e6 * (c1 - c0) / max(done, 1):.1f} us/msg"
          f" ({done} of {n} acked)")


if __name__ == "__main__":
    asyncio.run(main(*whole_numbers(__doc__, 3)))
