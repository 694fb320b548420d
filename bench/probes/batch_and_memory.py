"""S4 shapes (batches of 100) and S5 (resident bytes per queued message).

    python bench/probes/batch_and_memory.py PORT SERVER_PID MESSAGES FILL
"""

from __future__ import annotations

import asyncio
import time

from _common import resident_bytes, server_cpu_s, whole_numbers

from wonderq_client import connect


async def main(port: int, pid: int, n: int, fill: int) -> None:
    async with connect("127.0.0.1", port) as client:
        batch = [b"x" * 100] * 100
        c0, t0 = server_cpu_s(pid), time.perf_counter()
        for _ in range(n // 100):
            await client.put_many("q", batch)
        c1, t1, own1 = server_cpu_s(pid), time.perf_counter(), time.process_time()
        for _ in range(n // 100):
            await client.ack_many("q", await client.receive("q", max=100))
        c2, t2, own2 = server_cpu_s(pid), time.perf_counter(), time.process_time()
        print(f"S4p {n / (t1 - t0):.0f}/s {1e6 * (c1 - c0) / n:.1f}us  "
              f"S4c {n / (t2 - t1):.0f}/s {1e6 * (c2 - c1) / n:.1f}us "
              f"(client {1e6 * (own2 - own1) / n:.1f}us)")
        if fill:
            before = resident_bytes(pid)
            for _ in range(fill // 1000):
                await asyncio.gather(*(client.put_many("mem", batch) for _ in range(10)))
            print(f"S5 {fill} messages: {(resident_bytes(pid) - before) / fill:.0f} bytes/msg")


if __name__ == "__main__":
    asyncio.run(main(*whole_numbers(__doc__, 4)))
