"""The client's own CPU per message in the S1/S2 shapes (run against nothing_server.py).

    python bench/probes/client_cpu.py PORT MESSAGES
"""

from __future__ import annotations

import time

import uvloop
from _common import whole_numbers

from wonderq_client import connect


async def main(port: int, n: int) -> None:
    async with connect("127.0.0.1", port) as client:
        body = b"x" * 100
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await client.put("q", body)
        c1, t1 = time.process_time(), time.perf_counter()
        for _ in range(n):
            [msg] = await client.receive("q")
            await msg.ack()
        c2, t2 = time.process_time(), time.perf_counter()
    print(f"S1 {n / (t1 - t0):.0f}/s client {1e6 * (c1 - c0) / n:.1f}us  "
          f"S2 {n / (t2 - t1):.0f}/s client {1e6 * (c2 - c1) / n:.1f}us")


if __name__ == "__main__":
    uvloop.run(main(*whole_numbers(__doc__, 2)))
