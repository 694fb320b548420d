"""Another host's STATS while one host floods the server with STATS-and-close: how long a
client waits for its turn when one address queues many paced commands.

    python bench/probes/stats_flood.py [QUEUES] [FLOOD] [RUNS] (defaults 3000, 100, 3)

Starts `python -m wonderq_server --in-memory` on a free loopback port (the
wonderq_server that python imports: run it from outside a source tree and
set PYTHONPATH to measure another tree), puts one message into each of
QUEUES queues, then, RUNS times: FLOOD text connections from 127.0.0.5 each
send STATS and half-close (the server runs each in its turn, then closes);
once the server has read them all (a PING from 127.0.0.5 answered after
them), a client from 127.0.0.1 sends one STATS and times its answer; then
every flood connection's reply is read to its end, and the time until the
last is answered is the flood's. Prints, per run, the client's wait and the
flood's; then their medians. Bounded: every socket has a timeout, and the
server is stopped by its PID. No peer needed.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import start_in_memory_server, whole_numbers
from stats_fairness import fill

FLOOD_ADDRESS = "127.0.0.5"
TIMEOUT_S = 120.0


def read_stats(sock: socket.socket) -> None:
    """read_stats reads one text STATS reply, to its END line."""
    reply = b""
    while not reply.endswith(b"END\r\n"):
        data = sock.recv(1 << 20)
        if not data:
            raise SystemExit("the server closed a connection before its STATS reply")
        reply += data


def ping(sock: socket.socket) -> None:
    sock.sendall(b"PING\r\n")
    if sock.recv(64) != b"PONG\r\n":
        raise SystemExit("no PONG")


def one_run(port: int, flood: int) -> tuple[float, float]:
    """one_run: (the other host's wait for its STATS, the flood's time to its last) in s."""
    senders = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S,
                                        source_address=(FLOOD_ADDRESS, 0))
               for _ in range(flood + 1)]
    try:
        for sock in senders:  # each one accepted, in text mode
            ping(sock)
        started = time.perf_counter()
        for sock in senders[:flood]:
            sock.sendall(b"STATS\r\n")
            sock.shutdown(socket.SHUT_WR)
        ping(senders[flood])  # the server has read every STATS before this
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as other:
            asked = time.perf_counter()
            other.sendall(b"STATS\r\n")
            read_stats(other)
            waited = time.perf_counter() - asked
        for sock in senders[:flood]:
            read_stats(sock)
        return waited, time.perf_counter() - started
    finally:
        for sock in senders:
            sock.close()


def main(queues: int, flood: int, runs: int) -> None:
    server, port = start_in_memory_server("--max-queues", str(max(queues, 1)))
    try:
        fill(port, queues)
        print(f"{queues} queues; {flood} connections from {FLOOD_ADDRESS} send STATS and "
              "close; then one STATS from 127.0.0.1")
        waits, floods = [], []
        for run in range(1, runs + 1):
            waited, flooded = one_run(port, flood)
            waits.append(waited)
            floods.append(flooded)
            print(f"run {run}: the other host's STATS {waited:.3f} s; the flood's last "
                  f"{flooded:.2f} s")
        print(f"median: the other host's STATS {statistics.median(waits):.3f} s "
              f"[{min(waits):.3f}-{max(waits):.3f}]; the flood's last "
              f"{statistics.median(floods):.2f} s")
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (3000, 100, 3)))
