"""What one fsync of a journal-sized append costs, alone, by how the file is laid out.

    python bench/probes/fsync_cost.py [DIR] [RECORDS] [ROUNDS]

Writes RECORDS (default 3,000) records of 150 bytes, each followed by an
fsync, to a fresh file in DIR (default: a temporary directory), for each
layout in turn, ROUNDS (default 5) times interleaved; prints the median of
the rounds' median wall time and the CPU time per fsync:

* append:    the file grows with every write, as the journal's does;
* fallocate: the file's blocks and size reserved up front (posix_fallocate),
             so no write changes the size;
* zeroed:    the space written with zeros up front, then fdatasync.

It measures the disk alone, with no server and no other load: the question
it answers is whether reserving the journal's space is worth a format
change (group_commit.py's docstring says what the server under load showed).
Bounded: RECORDS x 3 layouts x ROUNDS fsyncs.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

RECORD = b"x" * 150


def _append(fd: int, size: int) -> None:
    pass


def _fallocate(fd: int, size: int) -> None:
    os.posix_fallocate(fd, 0, size)
    os.fsync(fd)


def _zeroed(fd: int, size: int) -> None:
    os.pwrite(fd, bytes(size), 0)
    os.fsync(fd)


LAYOUTS: dict[str, tuple[Callable[[int, int], None], Callable[[int], None]]] = {
    "append": (_append, os.fsync),
    "fallocate": (_fallocate, os.fsync),
    "zeroed": (_zeroed, os.fdatasync),
}


def one_round(path: str, records: int, prepare: Callable[[int, int], None],
              sync: Callable[[int], None]) -> tuple[float, float]:
    """one_round: (median wall µs, mean CPU µs) per write + sync of `records` records."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        prepare(fd, records * len(RECORD) + 4096)
        walls = []
        cpu_before = time.process_time()
        for _ in range(records):
            os.write(fd, RECORD)
            started = time.perf_counter()
            sync(fd)
            walls.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu_before
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(walls) * 1e6, cpu / records * 1e6


def main(directory: str | None, records: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(dir=directory) as where:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in LAYOUTS}
        for _ in range(rounds):
            for name, (prepare, sync) in LAYOUTS.items():
                results[name].append(one_round(os.path.join(where, name), records,
                                               prepare, sync))
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{name:9s} fsync {wall:6.1f} us (median of {rounds} rounds' medians; rounds "
              f"{min(r[0] for r in runs):.1f}-{max(r[0] for r in runs):.1f}), "
              f"CPU {cpu:5.1f} us per write + sync")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None,
         int(sys.argv[2]) if len(sys.argv) > 2 else 3000,
         int(sys.argv[3]) if len(sys.argv) > 3 else 5)
