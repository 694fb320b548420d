"""Broker.put_many per item, in process: the items make_command produces for 100 bodies.

    python bench/probes/broker_put_many.py
"""

from __future__ import annotations

import timeit

from wonderq_server.broker import Broker
from wonderq_server.commands import Limits, make_command

ROUNDS = 500


def main() -> None:
    command = make_command("put_many", {"queue": "q", "bodies": [b"x" * 100] * 100}, Limits(), 1)
    items = command.args["bodies"]
    best = []
    for _ in range(5):
        broker = Broker()
        best.append(timeit.timeit(lambda b=broker: b.put_many("q", items, 1.7e9),
                                  number=ROUNDS) / ROUNDS / len(items) * 1e6)
    print(f"Broker.put_many: {min(best):.3f} us per item (min of 5)")


if __name__ == "__main__":
    main()
