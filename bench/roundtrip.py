"""One client, one request per round trip: the latency-bound shape (issue 6's S1 and S2).

    python bench/roundtrip.py [--messages 20000] [--runs 3] [--server-arg=--FLAG=VALUE ...]

Starts the real `wonderq-server --in-memory` on 127.0.0.1 for each run, puts
`--messages` 100-byte messages one at a time (S1), then receives and acks
them one at a time (S2), and prints the median of `--runs` runs with the
server's CPU time per message (from /proc). Bounded in count and time.
`--server-arg` (repeatable; write it with `=` since its value starts with
`--`) passes a flag to the server, such as `--server-arg=--metrics-port=0`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from durability import Server

from wonderq_client import connect

TIME_LIMIT_S = 60.0


async def run(port: int, messages: int, server: Server) -> tuple[float, float, float, float]:
    body = b"x" * 100
    async with connect("127.0.0.1", port) as client:
        give_up = time.perf_counter() + TIME_LIMIT_S
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        for _ in range(messages):
            await client.put("rt", body)
            if time.perf_counter() > give_up:
                raise SystemExit("put phase over its time limit")
        t1, cpu1 = time.perf_counter(), server.cpu_seconds()
        done = 0
        while done < messages and time.perf_counter() < give_up:
            [msg] = await client.receive("rt")
            await msg.ack()
            done += 1
        t2, cpu2 = time.perf_counter(), server.cpu_seconds()
    return (messages / (t1 - t0), 1e6 * (cpu1 - cpu0) / messages,
            done / (t2 - t1), 1e6 * (cpu2 - cpu1) / done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for wonderq-server (repeatable)")
    args = parser.parse_args()
    rows = []
    for i in range(args.runs):
        server = Server("--in-memory", *args.server_arg)
        try:
            rows.append(asyncio.run(run(server.port, args.messages, server)))
        finally:
            server.stop()
        print(f"run {i + 1}: put {rows[-1][0]:8.0f}/s ({rows[-1][1]:.1f} us server CPU), "
              f"receive+ack {rows[-1][2]:8.0f}/s ({rows[-1][3]:.1f} us)", flush=True)
    med = [statistics.median(r[k] for r in rows) for k in range(4)]
    print(f"median of {args.runs}: S1 put {med[0]:.0f} msgs/s, {med[1]:.1f} us server CPU/msg; "
          f"S2 receive+ack {med[2]:.0f} msgs/s, {med[3]:.1f} us server CPU/msg")


if __name__ == "__main__":
    main()
