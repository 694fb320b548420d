"""How long the server's cyclic garbage collector holds the loop with many messages leased.

    python bench/probes/gc_pauses.py [IN_FLIGHT] [CHURN] [RUNS]   (defaults 300000, 3000000, 3)

Each run starts a fresh `wonderq-server --in-memory` through this file (`--serve`, which
times every collection with gc.callbacks and prints one line per collection to its
stderr), puts IN_FLIGHT + CHURN messages, leases IN_FLIGHT of them in receives of 1,000
(a backlog taken by consumers: each lease is an object the collector tracks), then
churns: acks the oldest 1,000 and leases 1,000 more, CHURN messages in all, IN_FLIGHT
always leased. It prints, per phase, the collections of each generation and the longest;
the collections at the stop are left out. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

BATCH = 1000
GIVE_UP_S = 300.0
MARK = "gc-pause"


def serve(argv: list[str]) -> int:
    """serve: the server, every collection timed (generation, ms) on stderr."""
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            print(f"{MARK} {info['generation']} {(time.perf_counter() - started[0]) * 1000:.2f}",
                  file=sys.stderr, flush=True)

    gc.callbacks.append(timed)
    from wonderq_server.main import main as server_main
    return server_main(argv)


def collections_since(log: Path, offset: int) -> tuple[list[tuple[int, float]], int]:
    text = log.read_text()
    found = [(int(gen), float(ms)) for line in text[offset:].splitlines()
             if line.startswith(MARK) for _, gen, ms in [line.split()]]
    return found, len(text)


async def one_run(in_flight: int, churn: int, log: Path) -> dict[str, list[tuple[int, float]]]:
    import servers

    from wonderq_client import connect

    port = servers.free_port()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--in-memory", "--log-level", "warning"],
                                stderr=err, stdout=subprocess.DEVNULL)
    try:
        give_up = time.monotonic() + GIVE_UP_S
        while True:
            try:
                async with connect("127.0.0.1", port, timeout=1.0) as client:
                    await client.ping()
                break
            except Exception:
                if time.monotonic() > give_up or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.1)
        phases: dict[str, list[tuple[int, float]]] = {}
        async with connect("127.0.0.1", port) as client:
            for _ in range((in_flight + churn) // BATCH):
                await client.put_many("q", [b"x" * 100] * BATCH)
            _, offset = collections_since(log, 0)
            held: collections.deque = collections.deque()
            while len(held) * BATCH < in_flight:
                held.append(await client.receive("q", max=BATCH, visibility=600))
            phases["leasing"], offset = collections_since(log, offset)
            done = 0
            while done < churn and time.monotonic() < give_up:
                await client.ack_many("q", held.popleft())
                held.append(await client.receive("q", max=BATCH, visibility=600))
                done += len(held[-1])
            phases["churn"], offset = collections_since(log, offset)
        return phases
    finally:
        proc.terminate()
        proc.wait(30)


def main(in_flight: int, churn: int, runs: int) -> None:
    import tempfile

    from runner import run_event_loop

    rows: dict[str, list[list[tuple[int, float]]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for phase, found in run_event_loop(one_run(in_flight, churn,
                                                       Path(tmp) / f"{run}.log")).items():
                rows[phase].append(found)
    print(f"{in_flight} leased, {churn} churned, medians of {runs} runs:")
    for phase, found_runs in rows.items():
        parts = []
        for generation in (0, 1, 2):
            times = [[ms for gen, ms in found if gen == generation] for found in found_runs]
            count = statistics.median(len(t) for t in times)
            longest = statistics.median(max(t, default=0.0) for t in times)
            parts.append(f"gen{generation} {count:g} collections, longest {longest:.1f} ms")
        print(f"  {phase}: " + "; ".join(parts))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        raise SystemExit(serve(sys.argv[2:]))
    from _common import whole_numbers
    main(*whole_numbers(__doc__, 0, (300000, 3000000, 3)))
