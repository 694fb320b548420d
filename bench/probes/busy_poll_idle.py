"""What busy polling costs a server and a client that are mostly idle: CPU while one client
pings now and then.

    python bench/probes/busy_poll_idle.py [SERVER_US] [CLIENT_US] [RUNS]
                                          (defaults 300, 0, 3)

Busy polling (wonderq_server/busy_poll.py, wonderq_client/busy_poll.py)
keeps an event loop turning for a window after input instead of sleeping. A
client that works in round trips finds the other side awake; one that sends
now and then would buy a window of polling it does not use with every
request, but for the back-off after windows that found nothing.
This probe runs, on fresh in-memory servers started with `--busy-poll 0` and
`--busy-poll SERVER_US`, one client (`busy_poll` of CLIENT_US microseconds)
that pings back to back, then once every 1, 5 and 50 ms (an asyncio sleep
between pings; uvloop's timers count whole milliseconds), each for
PHASE_S seconds, and prints the pings per second and the CPU of the server
(from /proc) and of this process, in per cent of a core: medians of RUNS,
runs interleaved. Every phase is bounded by PHASE_S; every server is stopped
by its PID. Needs nothing but this repository.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from _common import on_fresh_server, server_cpu_s, whole_numbers  # noqa: E402
from systems import wonderq  # noqa: E402

from wonderq_client import connect  # noqa: E402

PHASE_S = 3.0
INTERVALS_MS = (0, 1, 5, 50)  # 0: back to back


async def phase(port: int, pid: int, interval_ms: int, client_us: int) -> tuple[float, ...]:
    """phase: pings/s, server CPU % and this process's CPU % over PHASE_S seconds."""
    async with connect("127.0.0.1", port, busy_poll=client_us / 1e6) as client:
        await client.ping()
        server_before, own_before = server_cpu_s(pid), time.process_time()
        started, pings = time.perf_counter(), 0
        while time.perf_counter() - started < PHASE_S:
            await client.ping()
            pings += 1
            if interval_ms:
                await asyncio.sleep(interval_ms / 1000)
        elapsed = time.perf_counter() - started
        return (pings / elapsed, 100 * (server_cpu_s(pid) - server_before) / elapsed,
                100 * (time.process_time() - own_before) / elapsed)


def main() -> None:
    server_us, client_us, runs = whole_numbers(__doc__ or "", 0, (300, 0, 3))
    windows = (0, server_us) if server_us else (0,)
    figures: dict[tuple[int, int], list[tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for window in windows if run % 2 == 0 else windows[::-1]:
                def argv(port: int, data_dir: Path, window: int = window) -> list[str]:
                    return [*wonderq.server_argv(port, data_dir, "memory"),
                            "--busy-poll", str(window)]

                async def measure(server, port: int) -> list[tuple[float, ...]]:
                    await server.wait_ready(lambda: wonderq.probe(port), 30)
                    return [await phase(port, server.pid, i, client_us) for i in INTERVALS_MS]

                results = on_fresh_server(tmp, f"window{window}", run, argv, measure)
                for interval, result in zip(INTERVALS_MS, results, strict=True):
                    figures.setdefault((window, interval), []).append(result)
    polls = f"busy_poll {client_us} us" if client_us else "busy_poll off"
    print(f"one client pinging ({polls}), {PHASE_S:g} s a phase, medians of {runs}: "
          f"pings/s, server CPU, client CPU (% of a core)")
    for window in windows:
        cells = []
        for interval in INTERVALS_MS:
            rate, server, own = (statistics.median(f[k] for f in figures[(window, interval)])
                                 for k in range(3))
            label = "back to back" if not interval else f"every {interval} ms"
            cells.append(f"{label}: {rate:,.0f}/s {server:.1f}% {own:.1f}%")
        print(f"--busy-poll {window:5d}  " + " | ".join(cells))


if __name__ == "__main__":
    main()
