"""A well-behaved client's round trips, alone and while other connections flood the server.

    python bench/probes/slow_clients.py PORT SERVER_PID ROUNDS [FLOODERS]

Each run measures ROUNDS put + receive + ack round trips of one client (p50 and p99
of the three together), first alone, then while FLOODERS (default 4) raw
connections have each sent 2,000 pipelined peeks of a 200 KB message without
reading a byte (400 MB of replies each if the server buffered them), and the
server's resident memory before and during. Three runs; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import struct
import time

import msgpack
from _common import resident_bytes, whole_numbers

from wonderq_client import connect

RUNS = 3
PEEKS = 2000
BIG = 200 * 1024
GIVE_UP_S = 120.0


def flood(port: int) -> socket.socket:
    """flood opens a connection, sends PEEKS pipelined peeks and never reads."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    frames = []
    for i in range(PEEKS):
        payload = msgpack.packb([i, "peek", {"queue": "big"}])
        frames.append(struct.pack(">I", len(payload)) + payload)
    sock.sendall(b"WQ\x00\x01" + b"".join(frames))
    return sock


async def round_trips(port: int, rounds: int) -> list[float]:
    latencies = []
    give_up = time.monotonic() + GIVE_UP_S
    async with connect("127.0.0.1", port) as client:
        for _i in range(rounds):
            if time.monotonic() > give_up:
                break
            started = time.perf_counter()
            await client.put("polite", b"x" * 100)
            [msg] = await client.receive("polite")
            await msg.ack()
            latencies.append(time.perf_counter() - started)
    return latencies


def summary(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return (ordered[len(ordered) // 2] * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6)


async def main(port: int, pid: int, rounds: int, flooders: int) -> None:
    async with connect("127.0.0.1", port) as client:
        if "big" in await client.queues():
            await client.purge("big")
        await client.put("big", b"B" * BIG)
    rows = []
    for _ in range(RUNS):
        alone = summary(await round_trips(port, rounds))
        rss_before = resident_bytes(pid)
        socks = [flood(port) for _ in range(flooders)]
        async with connect("127.0.0.1", port) as client:
            give_up = time.monotonic() + GIVE_UP_S
            while (await client.stats())["server"]["connections_paused"] < flooders:
                assert time.monotonic() < give_up, "the flooders were never paused"
                await asyncio.sleep(0.05)
        flooded = summary(await round_trips(port, rounds))
        rss_during = resident_bytes(pid)
        for sock in socks:
            sock.close()
        rows.append((alone, flooded, rss_during - rss_before))
        print(f"alone p50 {alone[0]:.0f} us p99 {alone[1]:.0f} us | with {flooders} flooders "
              f"p50 {flooded[0]:.0f} us p99 {flooded[1]:.0f} us | server RSS "
              f"{(rss_during - rss_before) / 1e6:+.1f} MB", flush=True)
    median = statistics.median
    print(f"median of {RUNS}: alone p50 {median(r[0][0] for r in rows):.0f} us, p99 "
          f"{median(r[0][1] for r in rows):.0f} us; flooded p50 "
          f"{median(r[1][0] for r in rows):.0f} us, p99 {median(r[1][1] for r in rows):.0f} us; "
          f"RSS growth {median(r[2] for r in rows) / 1e6:+.1f} MB")


if __name__ == "__main__":
    asyncio.run(main(*whole_numbers(__doc__, 3, (4,))))
