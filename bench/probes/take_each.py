"""Broker receive(max=100) + ack_many per message, by where the messages come from, in process.

    python bench/probes/take_each.py

Three queues of 20,000 messages, drained 100 at a time: messages put with a
priority and messages given back by nack (both come off the ready heap one by
one: `Broker._take_each`), and a plain backlog (a slice of the table's run:
`_take_from_run`). Either way a receive of several is one lease batch
(lease_batch.py). No codec, no I/O. Prints the min and median of 7 runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from wonderq_server.broker import Broker

NOW = 1.8e9
COUNT = 20_000
BATCH = 100
BODY = b"x" * 100


def drain(broker: Broker) -> float:
    """drain receives and acks the queue 100 at a time; µs per message."""
    started = time.perf_counter()
    for _ in range(COUNT // BATCH):
        got = broker.receive("q", BATCH, 30.0, NOW)
        broker.ack_many("q", [(m.id, m.lease) for m in got], NOW)
    return (time.perf_counter() - started) / COUNT * 1e6


def prioritised() -> float:
    broker = Broker()
    for i in range(COUNT):
        broker.put("q", BODY, NOW, priority=1 + i % 3)
    return drain(broker)


def redelivered() -> float:
    broker = Broker()
    broker.put_many("q", [BODY] * COUNT, NOW)
    for _ in range(COUNT // BATCH):
        got = broker.receive("q", BATCH, 30.0, NOW)
        broker.nack_many("q", [(m.id, m.lease) for m in got], 0.0, NOW)
    return drain(broker)


def backlog() -> float:
    broker = Broker()
    broker.put_many("q", [BODY] * COUNT, NOW)
    return drain(broker)


def main() -> None:
    cases: list[tuple[str, Callable[[], float]]] = [
        ("prioritised", prioritised), ("redelivered", redelivered), ("backlog", backlog)]
    parts = []
    for name, case in cases:
        runs = [case() for _ in range(7)]
        parts.append(f"{name} {min(runs):.3f}/{statistics.median(runs):.3f}")
    print("receive(100) + ack_many, us per message (min/median of 7): " + ", ".join(parts))


if __name__ == "__main__":
    main()
