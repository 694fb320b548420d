"""S1/S2 shapes: one client, one request per round trip; msgs/s and server CPU per message.

    python bench/probes/roundtrip_cpu.py PORT SERVER_PID MESSAGES
"""

from __future__ import annotations

import asyncio
import time

from _common import server_cpu_s, whole_numbers

from wonderq_client import connect


async def main(port: int, pid: int, n: int) -> None:
    async with connect("127.0.0.1", port) as client:
        body = b"x" * 100
        c0, t0 = server_cpu_s(pid), time.perf_counter()
        for _ in range(n):
            await client.put("q", body)
        c1, t1 = server_cpu_s(pid), time.perf_counter()
        for _ in range(n):
            [msg] = await client.receive("q")
            await msg.ack()
        c2, t2 = server_cpu_s(pid), time.perf_counter()
    print(f"S1 {n / (t1 - t0):.0f}/s {1e6 * (c1 - c0) / n:.1f}us  "
          f"S2 {n / (t2 - t1):.0f}/s {1e6 * (c2 - c1) / n:.1f}us")


if __name__ == "__main__":
    asyncio.run(main(*whole_numbers(__doc__, 3)))
