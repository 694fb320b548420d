"""Puts through a broker with its journal, in process: µs and journal bytes per put, and
the start-up time of the journal they leave, when 1, 4 or 100 single puts come between
two journal writes (one loop iteration of S1, of S3's four producers, of a pipelining
client). The journal's put runs (journal.py) turn the puts of one write into one record.

    python bench/probes/journal_put_runs.py [PUTS] [RESTART_PUTS]

For a before/after, run it in both trees (a `git worktree` of the older commit).
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import time

from _common import whole_numbers

from wonderq_server.broker import Broker
from wonderq_server.journal import Journal
from wonderq_server.main import GC_YOUNG_THRESHOLD

BODY = b"x" * 100
PER_WRITE = (1, 4, 100)
ROUNDS = 9  # per-put cost: the best of these
RESTARTS = 3  # start-up time: the median of these


def puts(directory: str, count: int, per_write: int) -> tuple[float, float]:
    """puts: `count` single puts into a fresh journal, written every `per_write`; returns
    (µs per put, journal bytes per put)."""
    broker = Broker(visibility_timeout_s=30.0)
    journal = Journal(directory, fsync="never")
    journal.open(broker, 1.0)
    started = time.perf_counter()
    for _ in range(count // per_write):
        for _ in range(per_write):
            broker.put("q", BODY, 1.0)
        journal.write_pending()
    elapsed = time.perf_counter() - started
    done = count // per_write * per_write
    size = journal.size
    journal.close()
    return elapsed / done * 1e6, size / done


def start_up(directory: str) -> float:
    """start_up: seconds to open the journal in `directory` into a fresh broker."""
    gc.collect()
    started = time.perf_counter()
    journal = Journal(directory, fsync="never")
    journal.open(Broker(visibility_timeout_s=30.0), 2.0)
    elapsed = time.perf_counter() - started
    journal.close()
    return elapsed


def fresh(function, *args):
    directory = tempfile.mkdtemp(prefix="wonderq-probe-")
    try:
        return function(directory, *args)
    finally:
        shutil.rmtree(directory)


def restart_after(directory: str, count: int, per_write: int) -> list[float]:
    puts(directory, count, per_write)
    return [start_up(directory) for _ in range(RESTARTS)]


def main() -> None:
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])  # as the server runs
    count, restart_count = whole_numbers(__doc__, 0, (50_000, 1_000_000))
    for per_write in PER_WRITE:
        runs = [fresh(puts, count, per_write) for _ in range(ROUNDS)]
        restarts = fresh(restart_after, restart_count, per_write)
        print(f"{per_write:>3} puts per write: {min(r[0] for r in runs):.2f} us per put "
              f"(best of {ROUNDS}), {runs[0][1]:.1f} journal bytes per put; start-up with "
              f"{restart_count:,} of them {statistics.median(restarts):.2f} s "
              f"(median of {RESTARTS})")


if __name__ == "__main__":
    main()
