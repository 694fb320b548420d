"""End to end: `wonderq-server --metrics-port 0`, scraped over real HTTP as messages move.

The server logs "metrics on http://HOST:PORT/metrics" before its ready line, so
the address is in its log once it is ready. Scrapes go through urllib in a
worker thread (the client's connection stays on the test's loop), and the
text is parsed with prometheus_client's own parser, which also checks the
format. Raw sockets send what urllib would not: garbage and huge heads.

A page is kept for a second after it is rendered (metrics.py's PageCache), so
a test that changes the figures and scrapes again re-scrapes until the new
figures show (polling.until), rather than sleeping out the second.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import resource
import socket
import urllib.error
import urllib.request

import pytest
from polling import until
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess

from wonderq_client import ConnectionClosed, connect

METRICS_LINE = re.compile(r"metrics on http://(\S+):(\d+)/metrics")
TIMEOUT_S = 10.0


def metrics_address(server) -> tuple[str, int]:
    match = METRICS_LINE.search(server.log)
    assert match, "no metrics line in the log:\n" + server.log
    return match.group(1).strip("[]"), int(match.group(2))


def http_get(address: tuple[str, int], path: str, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """http_get makes one request with urllib: (status, headers, body), errors included."""
    request = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}", method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def raw_exchange(address: tuple[str, int], data: bytes, then_eof: bool = False) -> bytes:
    """raw_exchange sends bytes as they are (then EOF if asked) and reads until the
    server closes."""
    with socket.create_connection(address, timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        if then_eof:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


async def scrape(address: tuple[str, int]) -> dict[tuple[str, tuple], float]:
    """scrape reads /metrics into {(sample name, sorted labels): value}."""
    status, headers, body = await asyncio.to_thread(http_get, address, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


async def stats_json(address: tuple[str, int]) -> dict:
    status, headers, body = await asyncio.to_thread(http_get, address, "/stats")
    assert (status, headers["content-type"]) == (200, "application/json")
    return json.loads(body)


def queue_sample(samples: dict, name: str, queue: str) -> float:
    return samples[(name, (("queue", queue),))]


async def test_metrics_follow_messages_as_they_move(server_factory):
    server = server_factory("--metrics-port", "0")
    address = metrics_address(server)
    async with connect(server.host, server.port) as client:
        await client.put_many("jobs", [b"a", b"b", b"c"])
        samples = await scrape(address)
        assert queue_sample(samples, "wonderq_queue_ready_messages", "jobs") == 3
        assert queue_sample(samples, "wonderq_queue_messages", "jobs") == 3
        assert queue_sample(samples, "wonderq_queue_puts_total", "jobs") == 3
        assert queue_sample(samples, "wonderq_queue_acks_total", "jobs") == 0
        assert samples[("wonderq_connections_open", ())] == 1
        assert samples[("wonderq_messages", ())] == 3
        assert samples[("wonderq_stored_bytes", ())] == 3 * (1 + 200)

        [first] = await client.receive("jobs", visibility=60)
        await first.ack()
        [second] = await client.receive("jobs", visibility=60)  # held, not acked
        samples = await until(lambda: scrape(address), lambda samples: queue_sample(
            samples, "wonderq_queue_acks_total", "jobs") == 1)
        assert queue_sample(samples, "wonderq_queue_ready_messages", "jobs") == 1
        assert queue_sample(samples, "wonderq_queue_in_flight_messages", "jobs") == 1
        assert queue_sample(samples, "wonderq_queue_messages", "jobs") == 2

        await second.nack()  # back to ready, and its next delivery is a redelivery
        await client.receive("jobs", max=10, visibility=60)
        samples = await until(lambda: scrape(address), lambda samples: queue_sample(
            samples, "wonderq_queue_redeliveries_total", "jobs") == 1)
        assert queue_sample(samples, "wonderq_queue_in_flight_messages", "jobs") == 2
    assert samples[("wonderq_connections_total", ())] >= 1
    assert samples[("wonderq_uptime_seconds", ())] > 0
    assert ("wonderq_journal_bytes", ()) not in samples  # in memory: no journal figures
    assert ("wonderq_fsync_duration_seconds_count", ()) not in samples
    assert samples[("process_resident_memory_bytes", ())] > 0


async def test_fsync_histogram_counts_every_fsync(server_factory, tmp_path):
    server = server_factory("--metrics-port", "0", "--data-dir", str(tmp_path),
                            "--fsync", "always")
    address = metrics_address(server)
    async with connect(server.host, server.port) as client:
        for i in range(5):
            await client.put("durable", b"%d" % i)
    samples = await scrape(address)
    stats = await stats_json(address)
    fsyncs = samples[("wonderq_fsync_duration_seconds_count", ())]
    assert fsyncs > 0
    assert fsyncs == stats["server"]["fsync_count"]  # nothing was written in between
    assert samples[("wonderq_fsync_duration_seconds_bucket", (("le", "+Inf"),))] == fsyncs
    assert samples[("wonderq_fsync_duration_seconds_sum", ())] > 0
    assert samples[("wonderq_journal_bytes", ())] == stats["server"]["journal_bytes"] > 0
    # For a compaction-stalled alert (an operator's review): 0 until the first one.
    assert samples[("wonderq_last_compaction_timestamp_seconds", ())] == 0.0
    assert samples[("wonderq_server_info", (("fsync_policy", "always"),
                                            ("version", stats["server"]["version"])))] == 1


async def test_the_metrics_line_is_logged_at_any_log_level(server_factory):
    # A newcomer's review: with --log-level warning the line was not logged, so a script
    # could not learn the port --metrics-port 0 picked. It goes with the ready line.
    server = server_factory("--metrics-port", "0", "--log-level", "error")
    address = metrics_address(server)
    assert (await asyncio.to_thread(http_get, address, "/metrics"))[0] == 200


async def test_stats_page_is_the_stats_command_as_json(server_factory):
    server = server_factory("--metrics-port", "0")
    address = metrics_address(server)
    async with connect(server.host, server.port) as client:
        await client.put("q", b"x", delay=60)
        await client.put("q", b"y")
        by_command = await client.stats()
        by_http = await stats_json(address)
    assert by_http.keys() == by_command.keys() == {"server", "queues"}
    assert by_http["server"].keys() == by_command["server"].keys()
    assert by_http["server"]["rss_bytes"] > 0
    figures = ("messages", "ready", "delayed", "in_flight", "put_total")
    assert [by_http["queues"]["q"][f] for f in figures] == [2, 1, 1, 0, 2]
    assert [by_command["queues"]["q"][f] for f in figures] == [2, 1, 1, 0, 2]


async def test_concurrent_scrapes_get_one_render(server_factory):
    """Every render has its own uptime and CPU figures, so equal pages are one render."""
    server = server_factory("--metrics-port", "0")
    address = metrics_address(server)
    async with connect(server.host, server.port) as client:
        await client.put_many("jobs", [b"a", b"b"])
    replies = await asyncio.gather(*(asyncio.to_thread(http_get, address, "/metrics")
                                     for _ in range(16)))
    assert {status for status, _headers, _body in replies} == {200}
    assert len({body for _status, _headers, body in replies}) == 1
    assert b'wonderq_queue_ready_messages{queue="jobs"} 2.0' in replies[0][2]


async def test_a_scraper_that_accepts_gzip_gets_the_same_metrics_gzipped(server_factory):
    server = server_factory("--metrics-port", "0")
    address = metrics_address(server)
    async with connect(server.host, server.port) as client:
        await client.put_many("jobs", [b"a", b"b"])
    status, headers, body = await asyncio.to_thread(
        http_get, address, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert (status, headers["content-encoding"]) == (200, "gzip")
    text = gzip.decompress(body).decode()
    assert len(body) < len(text) / 3
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(text) for sample in family.samples}
    assert queue_sample(samples, "wonderq_queue_ready_messages", "jobs") == 2
    assert (await scrape(address)).keys() == samples.keys()  # plain: the same series
    status, headers, body = await asyncio.to_thread(
        http_get, address, "/stats", headers={"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["queues"]["jobs"]["ready"] == 2


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/", 404),
    ("GET", "/metricsx", 404),
    ("GET", "/metrics/", 404),
    ("GET", "/metrics?name[]=x", 200),  # a query string is ignored
    ("POST", "/metrics", 405),
    ("PUT", "/stats", 405),
    ("DELETE", "/stats", 405),
    ("HEAD", "/metrics", 405),
])
async def test_other_paths_and_methods_are_refused(server_factory, method, path, status):
    server = server_factory("--metrics-port", "0")
    got, headers, _body = await asyncio.to_thread(http_get, metrics_address(server), path,
                                                  method)
    assert got == status
    if status == 405:
        assert headers["allow"] == "GET"


async def test_garbage_and_huge_requests_do_not_hurt_the_server(server_factory):
    server = server_factory("--metrics-port", "0")
    address = metrics_address(server)
    idle = socket.create_connection(address, timeout=TIMEOUT_S)  # says nothing, stays open
    try:
        replies = await asyncio.gather(
            asyncio.to_thread(raw_exchange, address, b"\x00\xffnot http at all\r\n\r\n"),
            asyncio.to_thread(raw_exchange, address, b"GET /metrics HTTP/1.1\r\n"
                              + b"X-Filler: " + b"a" * 100_000 + b"\r\n\r\n"),
            asyncio.to_thread(raw_exchange, address, b"GET /metrics HTTP/1.1\r\n"
                              b"Content-Length: 99999999\r\nHost: x\r\n\r\npartial"),
            asyncio.to_thread(raw_exchange, address, b"WQ\x00\x01", True),  # a client
            # A whole request then EOF, as from `printf ... | nc`: answered all the same.
            asyncio.to_thread(raw_exchange, address, b"GET /stats HTTP/1.0\r\n\r\n", True),
        )
    finally:
        idle.close()
    assert replies[0].startswith(b"HTTP/1.1 400 ")
    assert replies[1].startswith(b"HTTP/1.1 431 ")
    assert replies[2].startswith(b"HTTP/1.1 200 ")  # a body is never waited for
    assert replies[3].startswith(b"HTTP/1.1 400 ")  # at once: it is not HTTP
    assert b"clients connect to the server's --port" in replies[3]
    assert replies[4].startswith(b"HTTP/1.1 200 ") and replies[4].endswith(b"}")
    samples = await scrape(address)  # the endpoint still answers
    assert samples[("wonderq_queues", ())] == 0
    async with connect(server.host, server.port) as client:  # and so does the broker
        assert await client.ping() == "pong"


async def test_a_client_at_the_metrics_port_is_told_at_once_not_left_waiting(server_factory):
    # A newcomer's `wonderq stats --port <the metrics port>` waited its whole timeout:
    # the endpoint waited for an HTTP line end that a client's frames never hold.
    server = server_factory("--metrics-port", "0")
    host, port = metrics_address(server)
    client = await connect(host, port)
    try:
        with pytest.raises(ConnectionClosed) as closed:
            # Bounded only so that a regression fails rather than hangs; the endpoint
            # itself would drop the connection after its own 10 s.
            await asyncio.wait_for(client.ping(), TIMEOUT_S / 2)
    finally:
        await client.close()
    assert "HTTP/1.1 400" in closed.value.message
    assert "is this a WonderQ server's port?" in closed.value.message


async def test_a_client_still_sending_gets_its_refusal_not_a_reset(server_factory):
    # The server refuses the head after 64 KiB but reads and drops the rest until the
    # client is done, so the 431 is not destroyed by a reset (a lingering close).
    server = server_factory("--metrics-port", "0")
    address = metrics_address(server)
    reply = await asyncio.to_thread(raw_exchange, address, b"GET /metrics HTTP/1.1\r\n"
                                    + b"X-Filler: " + b"a" * 4_000_000 + b"\r\n\r\n", True)
    assert reply.startswith(b"HTTP/1.1 431 ")


def listening_ports(pid: int) -> set[int]:
    """listening_ports is the TCP ports process `pid` listens on, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        for row in rows:
            if row[3] == "0A" and row[9] in inodes:  # 0A: LISTEN
                ports.add(int(row[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_metrics_are_off_unless_asked_for(server_factory):
    plain = server_factory()
    assert listening_ports(plain.proc.pid) == {plain.port}
    assert not METRICS_LINE.search(plain.log)
    with_metrics = server_factory(env={"WONDERQ_METRICS_PORT": "0"})
    _host, metrics_port = metrics_address(with_metrics)
    assert listening_ports(with_metrics.proc.pid) == {with_metrics.port, metrics_port}


def test_metrics_port_in_use_stops_start_up_naming_the_flag(server_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"--metrics-port {port}"):
            server_factory("--metrics-port", str(port))


def test_metrics_listen_on_metrics_host_while_clients_stay_on_host(server_factory):
    # An SRE's review: a Prometheus on another machine could not scrape a server whose
    # clients are on loopback, short of opening the broker's port too.
    server = server_factory("--metrics-port", "0", "--metrics-host", "127.0.0.2")
    host, port = metrics_address(server)
    assert host == "127.0.0.2"
    status, _, body = http_get((host, port), "/metrics")
    assert status == 200 and b"wonderq_uptime_seconds" in body
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S).close()
    assert "WARNING" not in server.log  # loopback either way: nobody else can reach it


def test_metrics_host_without_metrics_port_says_it_is_not_used(server_factory):
    server = server_factory("--metrics-host", "127.0.0.2")
    assert "--metrics-host '127.0.0.2' is not used without --metrics-port" in server.log


async def test_a_connection_over_metrics_max_connections_is_answered_503_and_counted(
        server_factory):
    server = server_factory("--metrics-port", "0", "--metrics-max-connections", "1",
                            "--metrics-max-head-bytes", "1K")
    address = metrics_address(server)
    # Connected first, so accepted first: the request below comes on the second connection.
    holder = socket.create_connection(address, timeout=TIMEOUT_S)
    try:
        status, headers, body = await asyncio.to_thread(http_get, address, "/metrics")
    finally:
        holder.close()
    assert (status, headers["retry-after"]) == (503, "1")
    assert b"(--metrics-max-connections)" in body
    async with connect(server.host, server.port) as client:
        assert (await client.stats())["server"]["metrics_connections_refused_total"] == 1
    # Once the server has seen the holder go, the endpoint answers again, and its counter
    # counts every 503 (a scrape that came before that was refused too).
    refusals = 1
    for _ in range(1000):
        status, _headers, body = await asyncio.to_thread(http_get, address, "/metrics")
        if status != 503:
            break
        refusals += 1
    assert status == 200
    samples = {sample.name: sample.value
               for family in text_string_to_metric_families(body.decode())
               for sample in family.samples}
    assert samples["wonderq_metrics_connections_refused_total"] == refusals
    # --metrics-max-head-bytes: a head over 1 KiB is refused, one under it served.
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: "
    reply = await asyncio.to_thread(raw_exchange, address, head + b"a" * 1100 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    reply = await asyncio.to_thread(raw_exchange, address, head + b"a" * 900 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")


async def test_metrics_timeout_drops_a_silent_connection(server_factory):
    server = server_factory("--metrics-port", "0", "--metrics-timeout", "0.2")
    with socket.create_connection(metrics_address(server), timeout=TIMEOUT_S) as silent:
        # Says nothing: the server closes it after 0.2 s (the socket's own timeout, 10 s,
        # only stops a regression from hanging the test).
        assert await asyncio.to_thread(silent.recv, 100) == b""


def test_the_open_file_limit_leaves_room_for_the_metrics_endpoint():
    # Under a hard open-file limit too low for --max-connections, the server serves as
    # many connections as fit beside what it keeps for itself, the metrics endpoint's
    # twice --metrics-max-connections among it (connection_limits.py); before, those were
    # not counted, and scrapers and refusals could take the clients' descriptors.
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))

    with ServerProcess("--max-connections", "1000", "--metrics-port", "0",
                       "--metrics-max-connections", "50", preexec_fn=low_limit) as server:
        # 400 - 64 reserved - 2 x 50 for the metrics endpoint (logged before the ready line)
        assert "allows only 236 connections" in server.log, server.log
        assert "`ulimit -n 1164`" in server.log, server.log
