"""How long start-up's journal reader takes over a tail that is not records.

    python bench/probes/journal_tail.py [TAIL_MIB] [RUNS]     (defaults 16, 5)

A crash can leave a torn write followed by reserved zeros, or bytes that are
no records at all, at the end of a journal; the reader must find that
nothing valid follows before it cuts the tail off. This probe times
`read_records` (journal_format.py) over 100 records followed by such a tail,
for two tails: 10 torn bytes then TAIL_MIB MiB of zeros, and TAIL_MIB MiB of
random bytes. It prints the median of RUNS runs (with min and max), in
seconds, and the peak of Python allocations during a run (tracemalloc, run
apart), which shows whether the tail was copied.

Rules: no server, no disk: the journal is built in memory, as bytes.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]

from _common import whole_numbers  # noqa: E402

from wonderq_server.journal_format import (  # noqa: E402
    FILE_HEADER,
    PUT,
    ReadResult,
    encode_record,
    read_records,
)


def read_all(data: bytes) -> ReadResult:
    result = ReadResult()
    for _ in read_records(data, result):
        pass
    return result


def main() -> None:
    tail_mib, runs = whole_numbers(__doc__ or "", 0, (16, 5))
    records = FILE_HEADER + b"".join(
        encode_record([PUT, "q", 7 + i, b"x" * 100, 1.0]) for i in range(100))
    tails = {
        f"10 torn bytes + {tail_mib} MiB of zeros": b"\x07" * 10 + bytes(tail_mib << 20),
        f"{tail_mib} MiB of random bytes": random.Random(1).randbytes(tail_mib << 20),
    }
    for name, tail in tails.items():
        data = records + tail
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            result = read_all(data)
            times.append(time.perf_counter() - started)
        tracemalloc.start()
        read_all(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{name:34s} {statistics.median(times):7.3f} s [{min(times):.3f}-"
              f"{max(times):.3f}]  torn {result.torn_tail_bytes} B, zeros "
              f"{result.zero_tail_bytes} B, peak allocations {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
