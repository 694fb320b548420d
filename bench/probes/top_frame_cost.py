"""The CPU one `wonderq top` frame costs with many queues: every queue's row, against the
rows a 40-line terminal shows (the busiest); and what `wonderq stats` draws (every row).

    python bench/probes/top_frame_cost.py [QUEUES] (default 3000)

Renders `top`'s frame (wonderq_cli.top.frame) for QUEUES made-up queues, with two polls of
history, five times each way, into a string of a 160-column console: the median and range
of the process CPU time per frame. In process; needs no server.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import whole_numbers

from wonderq_cli.stats_view import stats_view
from wonderq_cli.top import History, frame


def main(queue_count: int) -> None:
    queues = {f"q{i:05d}": {"messages": i, "put_total": i, "acked_total": i // 2}
              for i in range(queue_count)}
    history = History()
    history.update(queues, 0.0)
    history.update(queues, 1.0)
    snapshot = {"server": {}, "queues": queues}
    shapes = (
        ("top, every row", lambda: frame(snapshot, history, "top", 160, True, None)),
        ("top, a 40-line terminal", lambda: frame(snapshot, history, "top", 160, True, 40)),
        ("`wonderq stats` (every row, no sparklines)", lambda: stats_view(snapshot, width=160)),
    )
    for label, view in shapes:
        times = []
        for _ in range(5):
            console = Console(file=io.StringIO(), width=160)
            started = time.process_time()
            console.print(view())
            times.append(time.process_time() - started)
        print(f"{queue_count} queues, {label}: median {statistics.median(times) * 1000:.1f} ms "
              f"CPU a frame [{min(times) * 1000:.1f}-{max(times) * 1000:.1f}]")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (3000,)))
