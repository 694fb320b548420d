"""A polite client's PING round trip while other clients loop STATS on a server with many
queues: how long one client waits behind commands whose cost grows with the queues.

    python bench/probes/stats_fairness.py [QUEUES] [LOOPERS] [SECONDS] (defaults 10000, 1, 10)

Starts `python -m wonderq_server --in-memory` on a free loopback port (the
wonderq_server that python imports: run it from outside a source tree and
set PYTHONPATH to measure another tree), puts one message into each of
QUEUES queues, then, in a child process, LOOPERS text connections that each
send STATS, read the whole reply (to END), and send the next, for SECONDS
plus 2 s of head start; meanwhile one polite text connection sends a PING,
waits for its PONG (at most 25 s), and pauses 10 ms, over and over; then,
while the loop goes on, it sends a STATS of its own every 0.2 s for
SECONDS / 2. Prints the polite round trips (count, p50, p99, max in ms)
before and during the loop, its own STATS' round trips (count, p50, max in
s: how long one waits among the loopers), and how many STATS the loopers
got answered. Bounded: the loop ends
after its time, every socket has a timeout, and the server is stopped by its
PID. No peer needed.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import start_in_memory_server, whole_numbers
from flood_fairness import polite

HEAD_START_S = 2.0


def loop_stats(port: int, seconds: float, answered: multiprocessing.Queue) -> None:
    """loop_stats: STATS after STATS on one text connection for `seconds`; reports how many
    were answered."""
    count = 0
    with socket.create_connection(("127.0.0.1", port), timeout=25) as sock:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sock.sendall(b"STATS\n")
            reply = b""
            while not reply.endswith(b"END\r\n"):
                data = sock.recv(1 << 20)
                if not data:
                    answered.put(count)
                    return
                reply += data
            count += 1
    answered.put(count)


def polite_stats(port: int, seconds: float) -> str:
    """polite_stats: one STATS every 0.2 s for `seconds`, on a connection of its own;
    its round trips summarised."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            sock.sendall(b"STATS\n")
            reply = b""
            while not reply.endswith(b"END\r\n"):
                data = sock.recv(1 << 20)
                if not data:
                    return f"closed after {len(times)} STATS"
                reply += data
            times.append(time.perf_counter() - started)
            time.sleep(0.2)
    times.sort()
    return (f"{len(times)} STATS, p50 {times[len(times) // 2]:.2f} s, "
            f"max {times[-1]:.2f} s")


def fill(port: int, queues: int) -> None:
    """fill: one message in each of `queues` queues, pipelined in text mode."""
    with socket.create_connection(("127.0.0.1", port), timeout=25) as sock:
        for start in range(0, queues, 1000):
            batch = range(start, min(queues, start + 1000))
            sock.sendall(b"".join(b"PUT q%d hello\n" % i for i in batch))
            got = b""
            while got.count(b"\r\n") < len(batch):
                data = sock.recv(1 << 16)
                if not data:
                    raise SystemExit("the server closed the connection while filling")
                got += data


def main(queues: int, loopers: int, seconds: int) -> None:
    server, port = start_in_memory_server("--max-queues", str(max(queues, 1)))
    try:
        fill(port, queues)
        print(f"{queues} queues, {loopers} looping STATS, {seconds} s")
        print("before:", polite(port, 3))
        answered: multiprocessing.Queue = multiprocessing.Queue()
        looping_s = seconds * 1.5 + HEAD_START_S
        children = [multiprocessing.Process(target=loop_stats,
                                            args=(port, looping_s, answered))
                    for _ in range(loopers)]
        for child in children:
            child.start()
        time.sleep(HEAD_START_S)  # the loop is under way (a probe, not a test)
        during = polite(port, seconds)
        print(f"during: {during}")
        print(f"its own STATS meanwhile: {polite_stats(port, seconds / 2)}")
        counts = [answered.get(timeout=looping_s + 60) for _ in children]
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
        print(f"STATS answered to the loopers: {sum(counts)} in {looping_s:g} s "
              f"({', '.join(map(str, counts))})")
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (10000, 1, 10)))
