"""Prometheus metrics for `--metrics-port`: the broker's figures, read when scraped.

Design decision: nothing is counted on the message path for the sake of
metrics. The broker already keeps every figure the `stats` command returns
(depths, per-queue totals since the start, the server's figures), so each
scrape takes that same map once, on the event loop's thread like any other
command, and turns it into metric families. The map is a fresh snapshot of
plain values, so encoding it (prometheus_client's text writer, the costly
part: about 0.1 ms per queue) runs in a worker thread: with thousands of
queues the loop keeps serving, sharing the GIL with it, instead of stopping
for it (taking the map itself costs about 4 µs per queue).

Encoding still holds the GIL, so the loop is slowed while it runs (one
scrape of 5,000 queues is about 0.3 s of encoding), and the cost must not
multiply with scrapers: pages go through a PageCache. At most one page is
rendered at a time; a request that arrives while its page is rendering
waits for that render and gets its result; and a rendered page is served
again for PAGE_FRESH_S after its render ended, so however many scrapers
come, the loop shares the GIL with at most one render in every PAGE_FRESH_S
plus one render's time. The price is staleness: a page may be up to
PAGE_FRESH_S plus one render old, which Prometheus (scraping every 15 s or
so) never notices.

The one thing `stats` cannot give is a distribution: fsync durations are
observed into a Histogram once per fsync, through the journal's
`fsync_observer` hook, in the worker thread that ran the fsync
(prometheus_client's metrics are thread-safe; the journal never imports
prometheus).

Rules:
* A private CollectorRegistry for the live metrics (the histogram, the
  process' figures), never the global one: nothing in the process adds
  metrics to it by being imported, and two servers in one process (in tests)
  do not collide. A scrape encodes a Scrape: the snapshot's families, then
  that registry's.
* Names follow Prometheus' conventions: a `wonderq_` prefix, base units
  (seconds, bytes), `_total` on counters, a `queue` label on per-queue
  series. The tables below are the whole mapping from stats figures to
  metrics; a figure missing from the map (the journal's, in memory) is a
  metric left out, not a zero.
* Per-queue totals are counters counting from this server's start: a restart
  resets them, which Prometheus' rate() and increase() expect; a deleted
  queue's series simply end.
* The process' own figures (resident memory, CPU seconds, open files) come
  from prometheus_client's ProcessCollector as the usual `process_*`
  series, also read only when scraped.
* Pages are cached by what they hold: /metrics per content type (the
  Prometheus text format and OpenMetrics are two pages), /stats as one.
  A failed render is not cached: each of its waiters gets the error (500).
* This module is imported only when --metrics-port is given, so the server
  starts and serves without prometheus_client and h11 otherwise.

Must not know: HTTP (metrics_http.py) or the broker's insides: it reads the
`stats` map (PROTOCOL.md's stats section is its contract).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .metrics_http import Authorized, Headers, HttpEndpoint, HttpLimits

if TYPE_CHECKING:
    from ssl import SSLContext

    from .journal import Journal

Stats = Callable[[], dict[str, Any]]
Rendered = tuple[str, bytes]  # (content type, body)

# How long a rendered page is served again; see the module's docstring.
PAGE_FRESH_S = 1.0

# (stats figure, metric name, help). Per queue, labelled queue="<name>".
QUEUE_GAUGES = [
    ("ready", "wonderq_queue_ready_messages", "Messages a receive would get now."),
    ("in_flight", "wonderq_queue_in_flight_messages", "Messages leased to a consumer."),
    ("delayed", "wonderq_queue_delayed_messages",
     "Messages put or nacked with a delay, not yet ready."),
    ("waiting", "wonderq_queue_waiting_consumers", "Receives parked waiting on the queue."),
    ("messages", "wonderq_queue_messages", "Messages stored in the queue, in any state."),
    ("oldest_age_s", "wonderq_queue_oldest_message_age_seconds",
     "Seconds since the put of the oldest stored message (0 when empty)."),
]
# Counter names without `_total`: prometheus_client adds it to the sample.
QUEUE_COUNTERS = [
    ("put_total", "wonderq_queue_puts", "Messages put since the server started."),
    ("acked_total", "wonderq_queue_acks", "Messages acked since the server started."),
    ("redelivered_total", "wonderq_queue_redeliveries",
     "Deliveries after a message's first (lease ran out or nacked) since the start."),
    ("dead_lettered_total", "wonderq_queue_dead_lettered",
     "Messages moved to the dead-letter queue since the start."),
    ("expired_total", "wonderq_queue_expired", "Messages dropped by expiry since the start."),
]
SERVER_GAUGES = [
    ("connections", "wonderq_connections_open", "Open client connections."),
    ("messages", "wonderq_messages", "Messages stored in all queues, in any state."),
    ("queue_count", "wonderq_queues", "Queues that exist now."),
    ("max_queues", "wonderq_max_queues", "--max-queues: no queue is created beyond it."),
    ("stored_bytes", "wonderq_stored_bytes",
     "Memory accounted to stored messages: body + 200 per message + headers with "
     "their objects (--max-memory bounds it)."),
    ("max_memory", "wonderq_max_memory_bytes",
     "--max-memory: puts are refused with FULL beyond it (0: no limit)."),
    ("journal_bytes", "wonderq_journal_bytes",
     "Bytes of records in the live journal file (reserved zeros not counted)."),
    ("last_compaction_at", "wonderq_last_compaction_timestamp_seconds",
     "When the last compaction of the journal finished, seconds since the epoch (0: none "
     "since the start); with wonderq_journal_bytes growing, a stalled compaction."),
    ("max_connections", "wonderq_max_connections",
     "--max-connections as enforced (lowered if the open-file limit is too small)."),
    ("max_connections_per_address", "wonderq_max_connections_per_address",
     "--max-connections-per-address: most connections from one address (0: no limit)."),
    ("connections_most_from_one_address", "wonderq_connections_most_from_one_address",
     "The most open connections one client address holds now."),
    ("paced_commands_waiting", "wonderq_paced_commands_waiting",
     "Connections whose STATS or QUEUES waits its turn now."),
    ("connections_paused", "wonderq_connections_paused",
     "Connections the server is not reading from now (flow control)."),
    ("client_memory_bytes", "wonderq_client_memory_bytes",
     "Bytes all client connections held in buffers at the last check (once a second)."),
    ("max_client_memory", "wonderq_max_client_memory_bytes",
     "--max-client-memory: past it the connections holding the most are cut off."),
    ("uptime_s", "wonderq_uptime_seconds", "Seconds since the server started."),
    ("busy_poll_us", "wonderq_busy_poll_seconds",
     "--busy-poll: how long the loop polls after input before it sleeps (0: off)."),
]
# Stats figures that are not in base units, and what turns them into base units.
TO_BASE_UNITS = {"busy_poll_us": 1e-6}
SERVER_COUNTERS = [
    ("connections_total", "wonderq_connections", "Client connections accepted since start."),
    ("journal_write_errors", "wonderq_journal_write_errors",
     "Journal writes that failed (answered with STORAGE_ERROR) since start."),
    ("compactions_failed_total", "wonderq_compactions_failed",
     "Journal compactions abandoned (writing the new file failed) since start."),
    ("connections_refused_total", "wonderq_connections_refused",
     "Connections refused with TOO_MANY_CONNECTIONS (over --max-connections or "
     "--max-connections-per-address) since start."),
    ("connections_refused_per_address_total", "wonderq_connections_refused_per_address",
     "Connections refused with TOO_MANY_CONNECTIONS over --max-connections-per-address "
     "since start."),
    ("auth_timeouts_total", "wonderq_auth_timeouts",
     "Connections closed with AUTH_TIMEOUT (no AUTH within --auth-timeout) since start."),
    ("gc_freezes_total", "wonderq_gc_freezes",
     "Times the server froze what survived a middle-generation garbage collection "
     "(--gc-freeze) since start."),
    ("idle_disconnects_total", "wonderq_idle_disconnects",
     "Connections closed by --idle-timeout since start."),
    ("slow_reader_disconnects_total", "wonderq_slow_reader_disconnects",
     "Connections cut off for leaving over --max-reply-buffer-bytes unsent since start."),
    ("client_memory_disconnects_total", "wonderq_client_memory_disconnects",
     "Connections cut off, holding the most, while all together held over "
     "--max-client-memory, since start."),
    ("too_many_queues_total", "wonderq_too_many_queues_refusals",
     "Queues not created because --max-queues was reached (TOO_MANY_QUEUES) since start."),
    ("full_refusals_total", "wonderq_full_refusals",
     "Puts refused with FULL (a queue's max_length or --max-memory) since start."),
    ("auth_failures_total", "wonderq_auth_failures",
     "AUTH commands with a wrong token since start (each closed its connection)."),
    ("tls_handshake_failures_total", "wonderq_tls_handshake_failures",
     "TLS handshakes that failed since start (plain clients, untrusted certificates)."),
    ("paced_commands_total", "wonderq_paced_commands",
     "STATS and QUEUES commands that waited for their share of the loop since start."),
    ("commit_waits_total", "wonderq_commit_waits",
     "Fsyncs put off to read the next request of a client the last fsync answered "
     "(--group-commit-wait) since start."),
    ("metrics_connections_refused_total", "wonderq_metrics_connections_refused",
     "Connections to this endpoint refused with 503 (over --metrics-max-connections) "
     "since start."),
]
# From about a tenth of a millisecond (a fast SSD) to seconds (a stalled disk).
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))


def stats_families(snapshot: Mapping[str, Any]) -> Iterator[Metric]:
    """stats_families is a `stats` map as metric families, by the tables above."""
    server, queues = snapshot["server"], snapshot["queues"]
    for figure, name, text in SERVER_GAUGES:
        if figure in server:
            yield GaugeMetricFamily(name, text,
                                    value=server[figure] * TO_BASE_UNITS.get(figure, 1))
    for figure, name, text in SERVER_COUNTERS:
        if figure in server:
            yield CounterMetricFamily(name, text, value=server[figure])
    info = GaugeMetricFamily("wonderq_server_info", "The server's version and fsync policy, "
                             "as labels; always 1.", labels=["version", "fsync_policy"])
    info.add_metric([str(server["version"]), str(server["fsync_policy"])], 1)
    yield info
    yield from _per_queue(queues, QUEUE_GAUGES, GaugeMetricFamily)
    yield from _per_queue(queues, QUEUE_COUNTERS, CounterMetricFamily)


def _per_queue(queues: Mapping[str, Mapping[str, Any]], table: list[tuple[str, str, str]],
               family: type[GaugeMetricFamily] | type[CounterMetricFamily]) -> Iterator[Metric]:
    for figure, name, text in table:
        metric = family(name, text, labels=["queue"])
        for queue, figures in queues.items():
            metric.add_metric([queue], figures[figure])
        yield metric


class Scrape(Collector):
    """Scrape is what one scrape encodes: a stats snapshot's families, then the live
    metrics of the private registry (the process' figures, the fsync histogram)."""

    def __init__(self, snapshot: Mapping[str, Any], live: CollectorRegistry) -> None:
        self.snapshot = snapshot
        self.live = live

    def collect(self) -> Iterator[Metric]:
        yield from stats_families(self.snapshot)
        yield from self.live.collect()


class Metrics:
    """Metrics holds the private registry of live metrics: the process' figures and,
    with a journal, the fsync histogram (hooked into the journal here)."""

    def __init__(self, journal: Journal | None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.fsync_seconds: Histogram | None = None
        if journal is not None:
            self.fsync_seconds = Histogram(
                "wonderq_fsync_duration_seconds", "Time each fsync of the journal took.",
                buckets=FSYNC_BUCKETS_S, registry=self.registry)
            journal.fsync_observer = self.fsync_seconds.observe

    def exposition(self, snapshot: Mapping[str, Any], accept: str = "") -> tuple[str, bytes]:
        """exposition encodes a stats snapshot and the live metrics in the format the
        scraper's Accept header asks for: Prometheus text by default, OpenMetrics when
        asked. It only reads the snapshot, so it may run in a worker thread."""
        encode, content_type = choose_encoder(accept)
        return content_type, encode(Scrape(snapshot, self.registry))


# The one OpenMetrics version pages are rendered in, whatever version a scraper names.
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"


def exposition_accept(accept: str) -> str:
    """exposition_accept is the Accept a page is rendered for and cached by: the
    OpenMetrics one when the scraper takes OpenMetrics, else "" (Prometheus text). Cached
    by the scraper's own version, each new one was a render and a page kept for good (a
    reviewer's 100 requests: 38 -> 171 MB, 16 s of renders); a version prometheus_client
    cannot read ("version=x") raised, a 500 and a traceback a request."""
    try:
        _encode, content_type = choose_encoder(accept)
    except Exception:  # prometheus_client compares the version it was given with ints
        return ""
    return OPENMETRICS_ACCEPT if content_type.startswith("application/openmetrics-text") \
        else ""


class PageCache:
    """PageCache renders pages one at a time, shares a render among the requests that
    arrive during it, and serves a rendered page again until `fresh_s` after its render
    ended (by `clock`, injectable so tests need no sleeps).

    Invariants: at most one render runs (one lock for every page), and at most one
    render per key is pending (self._running). A render is a task of its own, shielded
    from its waiters: a scraper that hangs up does not cancel what others wait for.
    `renders` counts the renders started, for tests and debugging.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 fresh_s: float = PAGE_FRESH_S) -> None:
        self.clock = clock
        self.fresh_s = fresh_s
        self.renders = 0
        self._pages: dict[str, tuple[float, Rendered]] = {}  # key -> (fresh until, page)
        self._running: dict[str, asyncio.Task[Rendered]] = {}
        self._one_at_a_time = asyncio.Lock()

    async def get(self, key: str, render: Callable[[], Awaitable[Rendered]]) -> Rendered:
        """get is the page for `key`: the kept one while fresh, else the pending render's
        result, else a new render's (started by this call)."""
        kept = self._pages.get(key)
        if kept is not None and self.clock() < kept[0]:
            return kept[1]
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(self._render(key, render))
            self._running[key] = task
            task.add_done_callback(functools.partial(self._rendered, key))
        return await asyncio.shield(task)

    async def _render(self, key: str, render: Callable[[], Awaitable[Rendered]]) -> Rendered:
        async with self._one_at_a_time:
            self.renders += 1
            page = await render()
        self._pages[key] = (self.clock() + self.fresh_s, page)
        return page

    def _rendered(self, key: str, task: asyncio.Task[Rendered]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # its waiters were given it; with none left, it is not "lost"

    def close(self) -> None:
        """close cancels pending renders (an encoding already in a thread runs out)."""
        for task in list(self._running.values()):
            task.cancel()


class MetricsEndpoint:
    """MetricsEndpoint is what the server starts for --metrics-port: the live metrics (made
    at once, so the first fsync is observed), the page cache and the HTTP listener
    (started later). `clock` and `fresh_s` are the cache's (tests change them)."""

    def __init__(self, stats: Stats, journal: Journal | None, *,
                 clock: Callable[[], float] = time.monotonic,
                 fresh_s: float = PAGE_FRESH_S,
                 authorized: Authorized | None = None,
                 limits: HttpLimits | None = None) -> None:
        self.stats = stats
        self.metrics = Metrics(journal)
        self.pages = PageCache(clock, fresh_s)
        self.http = HttpEndpoint({"/metrics": self._metrics_page, "/stats": self._stats_page},
                                 authorized, **(limits or {}))

    async def _metrics_page(self, headers: Headers) -> Rendered:
        accept = exposition_accept(headers.get("accept", ""))

        async def render() -> Rendered:
            snapshot = self.stats()  # on the loop's thread: the one read of the broker
            return await asyncio.to_thread(self.metrics.exposition, snapshot, accept)

        return await self.pages.get(accept or "text", render)

    async def _stats_page(self, headers: Headers) -> Rendered:
        async def render() -> Rendered:
            snapshot = self.stats()
            return "application/json", await asyncio.to_thread(_json, snapshot)

        return await self.pages.get("stats", render)

    async def start(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                    ssl: SSLContext | None = None,
                    handshake_timeout_s: float | None = None) -> tuple[str, int]:
        """start listens on host:port (over TLS with `ssl`, HttpEndpoint.start); returns the
        (host, port) bound."""
        try:
            return await self.http.start(loop, host, port, ssl, handshake_timeout_s)
        except OSError as exc:  # say which of the server's two ports it was
            raise OSError(exc.errno, f"--metrics-port {port} on {host!r} (--metrics-host, "
                          f"else --host): {exc.strerror}") from exc

    def close(self) -> None:
        self.http.close()
        self.pages.close()


def _json(snapshot: Mapping[str, Any]) -> bytes:
    return json.dumps(snapshot).encode()
