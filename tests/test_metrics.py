"""Unit tests of the metrics layers: the collector against a Broker driven with numbers as
the clock (no HTTP), the journal's fsync hook, the page cache (renders counted, its clock
a number too), and metrics_http.py on a loopback listener of the test's own loop with
made-up pages (the 500, bound and timeout paths that the end-to-end tests cannot reach).
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

import pytest
from broker_helpers import T0
from prometheus_client.parser import text_string_to_metric_families

from wonderq_server import metrics_http
from wonderq_server.broker import Broker
from wonderq_server.errors import TOO_MANY_QUEUES, CommandError
from wonderq_server.journal import Journal
from wonderq_server.metrics import PAGE_FRESH_S, Metrics, MetricsEndpoint
from wonderq_server.metrics_http import HttpEndpoint, accepts_gzip
from wonderq_server.service import BrokerService


def server_info(now: float) -> dict[str, Any]:
    return {"version": "9.9.9", "uptime_s": now - T0, "connections": 2,
            "connections_total": 7, "rss_bytes": 1, "data_dir": "",
            "fsync_policy": "none (in memory)", "busy_poll_us": 300}


class Clock:
    def __init__(self) -> None:
        self.now = T0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker() -> Broker:
    return Broker(visibility_timeout_s=30.0, max_message_bytes=1024, max_memory_bytes=10_000)


class Scraper:
    """Scraper takes the stats snapshot and encodes it, as one scrape of /metrics does."""

    def __init__(self, broker: Broker, clock: Clock, journal: Journal | None = None) -> None:
        self.service = BrokerService(broker, server_info)
        self.clock = clock
        self.metrics = Metrics(journal)

    def exposition(self, accept: str = "") -> tuple[str, bytes]:
        return self.metrics.exposition(self.service.stats(self.clock.now), accept)

    def samples(self) -> dict[tuple[str, tuple], float]:
        _content_type, body = self.exposition()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(body.decode())
                for sample in family.samples}


@pytest.fixture
def metrics(broker: Broker, clock: Clock) -> Scraper:
    return Scraper(broker, clock)


def value(metrics: Scraper, name: str, **labels: str) -> float | None:
    return metrics.samples().get((name, tuple(sorted(labels.items()))))


def test_collector_reads_the_broker_at_each_scrape(broker, clock, metrics):
    assert value(metrics, "wonderq_queues") == 0
    assert value(metrics, "wonderq_queue_ready_messages", queue="q") is None  # no queue yet
    ids = broker.put_many("q", [b"1", b"2", b"3"], T0)
    broker.put("q", b"later", T0, delay=60.0)
    clock.now = T0 + 4.0
    assert value(metrics, "wonderq_queue_ready_messages", queue="q") == 3
    assert value(metrics, "wonderq_queue_delayed_messages", queue="q") == 1
    assert value(metrics, "wonderq_queue_messages", queue="q") == 4
    assert value(metrics, "wonderq_queue_puts_total", queue="q") == 4
    assert value(metrics, "wonderq_queue_oldest_message_age_seconds", queue="q") == 4.0
    [first, _second] = broker.receive("q", 2, 10.0, T0 + 4.0)
    broker.ack("q", ids[0], first.lease, T0 + 5.0)
    clock.now = T0 + 20.0
    broker.advance(T0 + 20.0)  # the second lease ran out: ready again
    broker.receive("q", 1, 10.0, T0 + 20.0)
    assert value(metrics, "wonderq_queue_acks_total", queue="q") == 1
    assert value(metrics, "wonderq_queue_redeliveries_total", queue="q") == 1
    assert value(metrics, "wonderq_queue_in_flight_messages", queue="q") == 1
    assert value(metrics, "wonderq_queue_ready_messages", queue="q") == 1
    assert value(metrics, "wonderq_queue_waiting_consumers", queue="q") == 0
    assert value(metrics, "wonderq_uptime_seconds") == 20.0
    # STATS says microseconds; a metric is in base units (Prometheus' conventions).
    assert value(metrics, "wonderq_busy_poll_seconds") == pytest.approx(0.0003)
    assert value(metrics, "wonderq_connections_open") == 2
    assert value(metrics, "wonderq_connections_total") == 7
    assert value(metrics, "wonderq_max_memory_bytes") == 10_000
    assert value(metrics, "wonderq_stored_bytes") == broker.stored_bytes > 0
    assert value(metrics, "wonderq_server_info", version="9.9.9",
                 fsync_policy="none (in memory)") == 1
    # In memory: no journal figures and no fsync histogram, rather than zeros.
    assert value(metrics, "wonderq_journal_bytes") is None
    assert value(metrics, "wonderq_fsync_duration_seconds_count") is None


def test_queue_limit_and_its_refusals(clock):
    broker = Broker(max_queues=1)
    metrics = Scraper(broker, clock)
    broker.put("q", b"1", T0)
    assert value(metrics, "wonderq_max_queues") == 1
    assert value(metrics, "wonderq_too_many_queues_refusals_total") == 0
    for name in ("a", "b"):
        with pytest.raises(CommandError) as refused:
            broker.put(name, b"1", T0)
        assert refused.value.code == TOO_MANY_QUEUES
    assert value(metrics, "wonderq_too_many_queues_refusals_total") == 2


def test_each_queue_is_a_label_value(broker, metrics):
    broker.put("emails.dead-letters_2", b"1", T0)
    broker.put("q", b"1", T0)
    content_type, body = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b'wonderq_queue_ready_messages{queue="emails.dead-letters_2"} 1.0\n' in body
    assert b'wonderq_queue_ready_messages{queue="q"} 1.0\n' in body


def test_openmetrics_when_the_scraper_asks_for_it(metrics):
    content_type, body = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_fsync_histogram_observes_each_journal_sync(tmp_path, broker, clock):
    journal = Journal(tmp_path, "always")
    journal.open(broker, T0)
    try:
        metrics = Scraper(broker, clock, journal)
        assert journal.fsync_observer is not None
        journal.sync()
        journal.sync()
        assert value(metrics, "wonderq_fsync_duration_seconds_count") == 2
        assert value(metrics, "wonderq_fsync_duration_seconds_sum") > 0
    finally:
        journal.close()


def test_the_server_imports_no_metrics_library_unless_asked():
    code = ("import sys; import wonderq_server.main, wonderq_server.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('prometheus_client', 'h11') or m.startswith('wonderq_server.metrics')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ the page cache

OPENMETRICS = {"accept": "application/openmetrics-text; version=1.0.0"}


class Endpoint:
    """Endpoint is a MetricsEndpoint on the broker, its cache on the test's clock; `reads`
    counts the broker's stats read, once per render."""

    def __init__(self, broker: Broker, clock: Clock) -> None:
        service = BrokerService(broker, server_info)
        self.reads = 0

        def stats() -> dict[str, Any]:
            self.reads += 1
            return service.stats(clock.now)

        self.endpoint = MetricsEndpoint(stats, None, clock=lambda: clock.now)

    @property
    def renders(self) -> int:
        return self.endpoint.pages.renders

    async def metrics(self, headers: dict[str, str] | None = None) -> tuple[str, bytes]:
        return await self.endpoint._metrics_page(headers or {})

    async def stats(self) -> tuple[str, bytes]:
        return await self.endpoint._stats_page({})


def ready(body: bytes, queue: str) -> float:
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "wonderq_queue_ready_messages" and sample.labels == {"queue": queue}:
                return sample.value
    raise AssertionError(f"no ready figure for {queue!r}")


async def test_concurrent_scrapes_share_one_render_until_the_page_goes_stale(broker, clock):
    scraper = Endpoint(broker, clock)
    broker.put("q", b"1", T0)
    pages = await asyncio.gather(*(scraper.metrics() for _ in range(20)))
    assert scraper.renders == 1 and scraper.reads == 1
    assert len(set(pages)) == 1 and ready(pages[0][1], "q") == 1

    broker.put("q", b"2", T0)
    clock.now = T0 + PAGE_FRESH_S / 2  # still fresh: the same page, not re-read
    assert await scraper.metrics() == pages[0]
    assert scraper.renders == 1

    clock.now = T0 + PAGE_FRESH_S  # stale: rendered again, with the new figures
    _content_type, body = await scraper.metrics()
    assert scraper.renders == 2 and ready(body, "q") == 2


async def test_each_format_and_the_stats_page_are_cached_apart(broker, clock):
    scraper = Endpoint(broker, clock)
    text = await scraper.metrics()
    openmetrics, stats = await asyncio.gather(scraper.metrics(OPENMETRICS), scraper.stats())
    assert text[0].startswith("text/plain")
    assert openmetrics[0].startswith("application/openmetrics-text")
    assert stats[0] == "application/json"
    assert scraper.renders == 3
    assert await scraper.metrics(OPENMETRICS) == openmetrics and await scraper.stats() == stats
    assert await scraper.metrics() == text
    assert scraper.renders == 3


async def test_the_versions_scrapers_name_share_the_two_formats_pages(broker, clock):
    # Cached by the version each scraper's Accept named, every new one was a render and a
    # page kept for good: a reviewer's 100 scrapes took the server from 38 to 171 MB and
    # 16 s of renders. An unreadable version ("x") was a 500 and a traceback each.
    scraper = Endpoint(broker, clock)
    broker.put("q", b"1", T0)
    pages = [await scraper.metrics({"accept": f"application/openmetrics-text; version=1.0.{n}"})
             for n in range(80)]
    assert scraper.renders == 1 and len(set(pages)) == 1
    assert pages[0][0].startswith("application/openmetrics-text; version=1.0.0")
    for accept in ("application/openmetrics-text; version=x", "text/plain; version=0.0.4",
                   "application/openmetrics-text; version=0.0.1", "*/*"):
        content_type, body = await scraper.metrics({"accept": accept})
        assert content_type.startswith("text/plain") and ready(body, "q") == 1
    assert scraper.renders == 2


async def test_only_one_render_runs_at_a_time(broker, clock):
    """A /stats render waits while a /metrics encoding holds a worker thread."""
    scraper = Endpoint(broker, clock)
    encoding, release = threading.Event(), threading.Event()
    exposition = scraper.endpoint.metrics.exposition

    def held_exposition(snapshot: Any, accept: str = "") -> tuple[str, bytes]:
        encoding.set()
        assert release.wait(10)
        return exposition(snapshot, accept)

    scraper.endpoint.metrics.exposition = held_exposition  # type: ignore[method-assign]
    metrics_page = asyncio.create_task(scraper.metrics())
    try:
        assert await asyncio.to_thread(encoding.wait, 10)
        stats_page = asyncio.create_task(scraper.stats())
        late_scrapes = [asyncio.create_task(scraper.metrics()) for _ in range(5)]
        for _ in range(20):  # turns of the loop in which /stats could start if it were let
            await asyncio.sleep(0)
        assert scraper.reads == 1 and scraper.renders == 1
    finally:
        release.set()
    pages = await asyncio.gather(metrics_page, stats_page, *late_scrapes)
    assert scraper.reads == 2 and scraper.renders == 2
    assert all(page == pages[0] for page in [pages[0], *pages[2:]])


async def test_a_scraper_that_goes_does_not_cancel_the_shared_render(broker, clock):
    scraper = Endpoint(broker, clock)
    leaving, staying = (asyncio.create_task(scraper.metrics()) for _ in range(2))
    await asyncio.sleep(0)  # both are waiting on the one render
    leaving.cancel()
    content_type, body = await staying
    assert content_type.startswith("text/plain") and body
    assert leaving.cancelled() and scraper.renders == 1


async def test_a_failed_render_is_not_kept(broker, clock):
    scraper = Endpoint(broker, clock)
    stats = scraper.endpoint.stats
    scraper.endpoint.stats = lambda: {"not": "a stats map"}
    results = await asyncio.gather(scraper.metrics(), scraper.metrics(), return_exceptions=True)
    assert all(isinstance(result, KeyError) for result in results)
    assert scraper.renders == 1
    scraper.endpoint.stats = stats
    content_type, _body = await scraper.metrics()  # at once, not after PAGE_FRESH_S
    assert content_type.startswith("text/plain") and scraper.renders == 2


async def test_scrapes_over_http_share_one_render(broker, clock):
    scraper = Endpoint(broker, clock)
    broker.put("q", b"1", T0)
    http = scraper.endpoint.http
    address = await http.start(asyncio.get_running_loop(), "127.0.0.1", 0)
    try:
        replies = await asyncio.gather(*(
            exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(16)))
    finally:
        scraper.endpoint.close()
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    assert len(set(replies)) == 1 and scraper.renders == 1
    assert ready(replies[0].split(b"\r\n\r\n", 1)[1], "q") == 1


# ------------------------------------------------------------------ metrics_http.py


@pytest.fixture
async def endpoint():
    async def fine(headers):
        return "text/plain", b"fine"

    async def broken(headers):
        raise RuntimeError("a bug in a page")

    async def slow(headers):
        http.slow_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            http.slow_cancelled.set()
            raise
        return "text/plain", b"too late"

    big_page = b"wonderq_queue_ready_messages 1.0\n" * 200  # one object, as a cached page

    async def big(headers):
        return "text/plain", big_page

    async def fresh(headers):  # a new object each time, as a page rendered again
        return "text/plain", bytes(bytearray(big_page))

    http = HttpEndpoint({"/ok": fine, "/broken": broken, "/slow": slow, "/big": big,
                         "/fresh": fresh})
    http.slow_started, http.slow_cancelled = asyncio.Event(), asyncio.Event()
    address = await http.start(asyncio.get_running_loop(), "127.0.0.1", 0)
    yield http, address
    http.close()


async def exchange(address: tuple[str, int], *chunks: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


async def test_a_page_that_raises_is_answered_500_and_logged(endpoint, caplog):
    _http, address = endpoint
    reply = await exchange(address, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 500 ")
    assert "a bug in a page" in caplog.text
    reply = await exchange(address, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nfine")


async def test_a_connection_that_opens_after_close_is_dropped(endpoint):
    # A TLS connection reaches connection_made only after its handshake, which may end
    # after the server's stop closed the endpoint: it must not be served then.
    http, _address = endpoint
    http.close()

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    transport = Transport()
    metrics_http.HttpConnection(http, asyncio.get_running_loop()).connection_made(transport)
    assert transport.aborted and not http.connections


async def test_a_head_in_small_pieces_is_bounded_too(endpoint):
    _http, address = endpoint
    pieces = [b"GET /ok HTTP/1.1\r\n"] + [b"X-A: " + b"b" * 100 + b"\r\n"] * 100
    reply = await exchange(address, *pieces)
    assert reply.startswith(b"HTTP/1.1 431 ")


async def until_true(check, timeout_s: float = 10.0) -> None:
    """until_true waits, turn by turn of the loop, for the endpoint to have done something."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0)


async def read_or_reset(address: tuple[str, int], request: bytes) -> bytes:
    """read_or_reset is exchange(), where a connection aborted at once reads as b""."""
    try:
        return await exchange(address, request)
    except ConnectionResetError:
        return b""


GET_OK = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_connection_beyond_the_limit_is_answered_503_and_counted(endpoint):
    http, address = endpoint
    http.max_connections = 1
    _reader, holder = await asyncio.open_connection(*address)
    try:
        await until_true(lambda: http.connections)  # accepted on the next loop turns
        reply = await exchange(address, GET_OK)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nretry-after: 1" in head and b"\r\nconnection: close" in head
        assert body == (b"too many connections to the metrics endpoint: 1 are open "
                        b"(--metrics-max-connections); try again\n")
        assert f"content-length: {len(body)}".encode() in head
        assert http.refused == 1
    finally:
        holder.close()
    await until_true(lambda: not http.connections and not http.refusing)
    assert (await exchange(address, GET_OK)).startswith(b"HTTP/1.1 200 ")
    assert http.refused == 1


async def test_refusals_waiting_for_their_peer_are_bounded_too(endpoint):
    # A 503 waits for its peer to close (a lingering close): a peer that never does holds
    # a socket, so past max_connections of those a connection is aborted unanswered.
    http, address = endpoint
    http.max_connections = 1
    _reader, holder = await asyncio.open_connection(*address)
    refused_reader, refused_writer = await asyncio.open_connection(*address)
    try:
        await until_true(lambda: http.connections and http.refusing)
        assert (await refused_reader.read()).startswith(b"HTTP/1.1 503 ")  # then our EOF
        assert await read_or_reset(address, GET_OK) == b""
        assert http.refused == 2 and len(http.refusing) == 1
    finally:
        holder.close()
        refused_writer.close()
    await until_true(lambda: not http.connections and not http.refusing)


async def test_a_refusal_whose_peer_stays_is_dropped_after_the_timeout(endpoint):
    http, address = endpoint
    http.max_connections = 1
    _reader, holder = await asyncio.open_connection(*address)
    try:
        await until_true(lambda: http.connections)
        http.timeout_s = 0.05  # for the refusal only: the holder was given 10 s
        reader, writer = await asyncio.open_connection(*address)
        try:
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 503 ")
            await until_true(lambda: not http.refusing)  # we never closed: the timeout did
        finally:
            writer.close()
    finally:
        holder.close()


async def test_a_head_over_max_head_bytes_is_answered_431(endpoint):
    http, address = endpoint
    http.max_head_bytes = 100
    small = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await exchange(address, small)).startswith(b"HTTP/1.1 200 ")
    big = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 100 + b"\r\n\r\n"
    assert (await exchange(address, big)).startswith(b"HTTP/1.1 431 ")
    assert http.refused == 0


async def test_a_silent_connection_is_dropped_after_the_timeout(endpoint):
    http, address = endpoint
    http.timeout_s = 0.05
    reader, writer = await asyncio.open_connection(*address)
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert not http.connections


async def test_a_page_is_cancelled_when_its_connection_goes(endpoint):
    http, address = endpoint
    _reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(http.slow_started.wait(), 10)
    sock = writer.get_extra_info("socket")  # close with a reset, not a half-close (EOF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await asyncio.wait_for(http.slow_cancelled.wait(), 10)


async def test_a_request_then_eof_still_gets_its_response(endpoint):
    _http, address = endpoint
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /ok HTTP/1.0\r\n\r\n")
    writer.write_eof()  # as `printf 'GET /ok HTTP/1.0\r\n\r\n' | nc host port` does
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"fine")


def response_parts(reply: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
    return headers, body


def get(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode()


async def test_a_big_page_goes_gzipped_to_a_client_that_accepts_it(endpoint):
    _http, address = endpoint
    headers, body = response_parts(await exchange(address, get("/big", "Accept-Encoding: gzip")))
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "accept-encoding"
    assert int(headers["content-length"]) == len(body) < 200
    assert gzip.decompress(body) == b"wonderq_queue_ready_messages 1.0\n" * 200
    # Without Accept-Encoding, or with gzip refused, it goes as it is.
    for refusing in ((), ("Accept-Encoding: gzip;q=0",), ("Accept-Encoding: identity",)):
        headers, body = response_parts(await exchange(address, get("/big", *refusing)))
        assert "content-encoding" not in headers and headers["vary"] == "accept-encoding"
        assert body == b"wonderq_queue_ready_messages 1.0\n" * 200


async def test_a_small_page_is_not_gzipped(endpoint):
    _http, address = endpoint
    headers, body = response_parts(await exchange(address, get("/ok", "Accept-Encoding: gzip")))
    assert "content-encoding" not in headers and body == b"fine"


async def test_the_same_page_is_gzipped_once_however_many_ask(endpoint):
    http, address = endpoint
    asks = [exchange(address, get("/big", "Accept-Encoding: gzip")) for _ in range(8)]
    bodies = {response_parts(reply)[1] for reply in await asyncio.gather(*asks)}
    assert len(bodies) == 1 and http.compressions == 1
    await exchange(address, get("/big", "Accept-Encoding: gzip"))
    assert http.compressions == 1  # the same page object: its gzip is kept
    for expected in (2, 3):  # a page rendered again is compressed again
        reply = await exchange(address, get("/fresh", "Accept-Encoding: gzip"))
        assert gzip.decompress(response_parts(reply)[1]).count(b"\n") == 200
        assert http.compressions == expected


@pytest.mark.parametrize(("accept_encoding", "allowed"), [
    ("gzip", True), ("GZIP", True), ("x-gzip", True), ("gzip, deflate, br", True),
    ("deflate, gzip;q=0.5", True), ("*", True), (" gzip ; q=1.0 ", True),
    ("", False), ("identity", False), ("br", False), ("gzip;q=0", False),
    ("gzip;q=0.000", False), ("*;q=0", False), ("*, gzip;q=0", False),
    ("gzip;q=nonsense", False), ("gzipped", False),
])
def test_accept_encoding_is_read_as_rfc_9110_says(accept_encoding, allowed):
    assert accepts_gzip(accept_encoding) is allowed
