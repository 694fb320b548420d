"""Broker.receive(max=100) from a backlog put in order, in process: µs per message.

    python bench/probes/receive_batch.py

The S4c consumer's half that is all broker: lease the oldest 100 of a
100,000-message backlog, 1,000 times, no acks, no codec, no I/O. Prints the
minimum of 9 runs.
"""

from __future__ import annotations

import time

from wonderq_server.broker import Broker

NOW = 1.8e9


def one_run() -> float:
    broker = Broker()
    broker.put_many("q", [b"x" * 100] * 100_000, NOW)
    started = time.perf_counter()
    for _ in range(1000):
        broker.receive("q", 100, None, NOW)
    return (time.perf_counter() - started) / 100_000 * 1e6


if __name__ == "__main__":
    print(f"receive(max=100) {min(one_run() for _ in range(9)):.3f} us/msg (min of 9)")
