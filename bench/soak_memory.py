"""The soak's memory watch: RSS, queue depth and journal size over time, and the growth check.

Design decision: every `--sample-every` seconds the soak reads the running
server's resident memory (VmRSS from /proc/PID/status), the queue's depth
(the `stats` command, on a connection of its own) and the size of the
journal files on disk. A sample is taken only while an incarnation is up;
one taken while the server was being killed is dropped. The samples are
grouped by incarnation, because every restart begins again from a replay.

The steady-state check, per incarnation: leave out the samples of its first
WARMUP_S seconds (the replay's garbage, the allocator's first arenas, the
connections coming back), and if at least MIN_CHECKED_SAMPLES remain, compare
the highest RSS of the second half of them with the highest RSS of the first
half. Highest, not mean: CPython's allocator keeps freed arenas, so a healthy
server's RSS climbs to the high-water mark of its working set and stays
there, while a leak keeps raising that mark. Growth is flagged when it is
more than the tolerance:

    GROWTH_TOLERANCE_BYTES (4 MiB: the allocator takes memory in arenas of
    1 MiB and the kernel and uvloop buffers of a dozen connections move by
    some hundreds of KiB; a compaction's slices come and go)
  + the backlog allowance: max_backlog * (body + BACKLOG_OVERHEAD_BYTES)
    (the queue may hold few messages in one half, filling up after the
    first start, and the producers' ceiling in the other; each stored
    message costs its body plus about 250 B in the server, 300 B is said
    with room)

What that can see: a leak of L bytes per message shows as L times the
messages that passed between the halves (about half of the checked span).
At the soak's 1,000 or so messages a second, an incarnation of 30 s (25 s
checked) flags leaks from about 400 B a message; one incarnation of
10 minutes (`--kill-every 0`) from about 20 B a message.

Rules:
* Sampling is bounded: one sample per interval, at most MAX_SAMPLES.
* The analysis is pure (samples in, rows out); the sampler does the I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

from soak_server import SoakServer
from soak_workers import QUEUE

from wonderq_client import Client, ConnectionClosed, WonderQError, connect

WARMUP_S = 5.0
MIN_CHECKED_SAMPLES = 4
GROWTH_TOLERANCE_BYTES = 4 << 20
BACKLOG_OVERHEAD_BYTES = 300
MAX_SAMPLES = 100_000
STATS_TIMEOUT_S = 2.0
MIB = 1 << 20


@dataclass
class Sample:
    at: float  # soak seconds
    incarnation: int
    rss_bytes: int
    queue_messages: int | None  # None when stats did not answer in time
    journal_bytes: int
    puts: int  # answered puts so far (the whole soak)
    acks: int  # confirmed acks so far

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class IncarnationMemory:
    """The memory figures of one incarnation and its growth check."""

    incarnation: int
    samples: int
    rss_first: int
    rss_max: int
    rss_last: int
    depth_max: int
    journal_max: int
    checked: bool  # long enough to check
    first_half_max: int = 0
    second_half_max: int = 0
    growth: int = 0
    tolerance: int = 0

    @property
    def flagged(self) -> bool:
        return self.checked and self.growth > self.tolerance


async def sample_memory(server: SoakServer, ledger, every_s: float, stop: asyncio.Event,
                        samples: list[Sample], clock) -> None:
    """sample_memory appends a Sample every `every_s` seconds until `stop` is set."""
    client: Client | None = None
    try:
        for _ in range(MAX_SAMPLES):
            try:
                await asyncio.wait_for(stop.wait(), every_s)
                return
            except TimeoutError:
                pass
            inc = server.current
            rss = server.rss_bytes()
            if inc is None or rss is None or inc.end != "running" or not inc.ready_s:
                continue
            if client is None or client.closed:
                client = await _connect_quietly(server)
            depth = await _depth(client)
            if server.rss_bytes() is None or server.current is not inc:
                continue  # killed while we asked: not a sample of a live server
            samples.append(Sample(round(clock(), 3), inc.number, rss, depth,
                                  server.journal_bytes(), ledger.answered,
                                  ledger.acks_confirmed))
    finally:
        if client is not None:
            await client.close()


async def _connect_quietly(server: SoakServer) -> Client | None:
    try:
        return await connect(server.host, server.port, timeout=STATS_TIMEOUT_S)
    except (OSError, TimeoutError, ConnectionClosed):
        return None


async def _depth(client: Client | None) -> int | None:
    if client is None:
        return None
    try:
        stats = await asyncio.wait_for(client.stats(), STATS_TIMEOUT_S)
    except (TimeoutError, ConnectionClosed, WonderQError):
        return None
    return int(stats["queues"].get(QUEUE, {}).get("messages", 0))


def growth_tolerance(max_backlog: int, body_size: int) -> int:
    """growth_tolerance is the RSS growth allowed between halves (see the module docstring)."""
    return GROWTH_TOLERANCE_BYTES + max_backlog * (body_size + BACKLOG_OVERHEAD_BYTES)


def by_incarnation(samples: list[Sample], ready_at: dict[int, float],
                   tolerance: int) -> list[IncarnationMemory]:
    """by_incarnation summarises each incarnation's samples and checks it for growth."""
    rows = []
    for number in sorted({s.incarnation for s in samples}):
        mine = [s for s in samples if s.incarnation == number]
        rss = [s.rss_bytes for s in mine]
        row = IncarnationMemory(
            number, len(mine), rss[0], max(rss), rss[-1],
            max((s.queue_messages or 0) for s in mine), max(s.journal_bytes for s in mine),
            checked=False, tolerance=tolerance)
        settled = [s.rss_bytes for s in mine if s.at - ready_at.get(number, 0.0) >= WARMUP_S]
        if len(settled) >= MIN_CHECKED_SAMPLES:
            half = len(settled) // 2
            row.checked = True
            row.first_half_max = max(settled[:half])
            row.second_half_max = max(settled[half:])
            row.growth = row.second_half_max - row.first_half_max
        rows.append(row)
    return rows
