"""What one queue_info (the per-queue part of STATS) costs with a big queue, in process.

    python bench/probes/stats_cost.py [MESSAGES]     (default 1,000,000)

STATS, queue_info and a metrics scrape each compute every queue's oldest
message (oldest_age_s). This fills one queue with MESSAGES leased messages
and another with MESSAGES messages put with a priority (both live in the
table's `others`, not in its run: message_table.py), then times queue_info
on each, and once more right after an ack of the oldest (which makes the
table look for its new oldest). Prints medians of 5 calls in milliseconds.
Bounded by MESSAGES.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from _common import whole_numbers

from wonderq_server.broker import Broker

NOW = 1.8e9
BODY = b"x" * 100


def median_ms(call: Callable[[], object], times: int = 5) -> float:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1e3)
    return statistics.median(took)


def main(n: int) -> None:
    broker = Broker()
    for start in range(0, n, 1000):
        broker.put_many("leased", [BODY] * min(1000, n - start), NOW)
    leased = []
    while len(leased) < n:
        leased += broker.receive("leased", 1000, 3600.0, NOW)
    for i in range(n):
        broker.put("prioritised", BODY, NOW, priority=1 + i % 5)
    oldest_first = iter(leased)

    def ack_oldest_then_ask() -> None:
        msg = next(oldest_first)
        broker.ack("leased", msg.id, msg.lease, NOW)
        broker.queue_info("leased", NOW)

    print(f"queue_info with {n:,} leased {median_ms(lambda: broker.queue_info('leased', NOW)):.3f}"
          f" ms, {n:,} prioritised "
          f"{median_ms(lambda: broker.queue_info('prioritised', NOW)):.3f} ms, "
          f"just after an ack of the oldest {median_ms(ack_oldest_then_ask):.3f} ms "
          "(medians of 5)")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (1_000_000,)))
