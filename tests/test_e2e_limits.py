"""End to end: the connection limits against the real server (connection_limits.py).

Too many connections, a client that sends without reading, a client that does
not read the replies it is owed, idle connections. Each test checks the
limit's visible effect, its stats counter, and that other clients go on
being served; none of them times anything (bench/probes/slow_clients.py
measures the latency of well-behaved clients next to bad ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct

import pytest
from certificates import TlsFiles
from polling import until_stats, until_true
from raw_socket import PREAMBLE, frame
from raw_socket import BinarySocket as Raw
from raw_socket import TextSocket as Text
from tcp_table import tcp_timer

from wonderq_client import ConnectionClosed, Full, connect
from wonderq_server.peer_state import enable_keepalive


async def in_thread(function, *args):
    """in_thread runs a blocking raw-socket call without stopping the test's event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


# ---------------------------------------------------------------- max connections

async def test_the_connection_over_the_limit_is_told_why_and_the_others_go_on(server_factory):
    server = server_factory("--max-connections", "3")
    clients = [await connect(server.host, server.port) for _ in range(3)]
    try:
        for client in clients:
            assert await client.ping() == "pong"
        extra = await connect(server.host, server.port)
        with pytest.raises(ConnectionClosed, match="TOO_MANY_CONNECTIONS"):
            await extra.ping()
        await extra.close()
        text = Text(server.host, server.port)
        text.send(b"PING\r\n")
        assert (await in_thread(text.line)).startswith(b"ERR TOO_MANY_CONNECTIONS ")
        assert await in_thread(text.at_eof)
        text.close()
        info = (await clients[0].stats())["server"]
        assert (info["connections"], info["max_connections"]) == (3, 3)
        assert info["connections_refused_total"] == 2
        for client in clients:  # untouched
            assert await client.put("mc", b"still here") > 0
        await clients.pop().close()
        await until_stats(clients[0], lambda s: s["server"]["connections"] == 2)
        clients.append(await connect(server.host, server.port))
        assert await clients[-1].ping() == "pong"
    finally:
        for client in clients:
            await client.close()


async def test_a_refused_connection_that_sends_nothing_is_closed(server_factory):
    server = server_factory("--max-connections", "1")
    async with connect(server.host, server.port) as client:
        assert await client.ping() == "pong"
        silent = socket.create_connection((server.host, server.port), timeout=10)
        try:
            assert await in_thread(silent.recv, 100) == b""  # closed, unanswered
        finally:
            silent.close()
        assert (await client.stats())["server"]["connections_refused_total"] == 1


async def test_one_address_may_hold_only_its_share_of_the_connections(server_factory):
    server = server_factory("--max-connections-per-address", "2")
    clients = [await connect(server.host, server.port) for _ in range(2)]
    other = Text(server.host, server.port, source="127.0.0.2")
    try:
        for client in clients:
            assert await client.ping() == "pong"
        extra = await connect(server.host, server.port)  # a third from 127.0.0.1
        with pytest.raises(ConnectionClosed, match="TOO_MANY_CONNECTIONS.*2 connections "
                           r"from 127\.0\.0\.1 \(--max-connections-per-address\)"):
            await extra.ping()
        await extra.close()
        # Another address is served meanwhile, and its connections are its own.
        other.send(b"PING\r\n")
        assert await in_thread(other.line) == b"PONG"
        third = Text(server.host, server.port, source="127.0.0.2")
        third.send(b"PING\r\n")
        assert await in_thread(third.line) == b"PONG"
        fourth = Text(server.host, server.port, source="127.0.0.2")
        fourth.send(b"PING\r\n")
        assert (await in_thread(fourth.line)).startswith(b"ERR TOO_MANY_CONNECTIONS ")
        assert await in_thread(fourth.at_eof)
        for sock in (third, fourth):
            sock.close()
        info = (await clients[0].stats())["server"]
        assert info["max_connections_per_address"] == 2
        assert info["connections_refused_per_address_total"] == 2
        assert info["connections_refused_total"] == 2
        assert info["connections_most_from_one_address"] == 2
        await until_true(lambda: "(--max-connections-per-address)" in server.log)
        # A slot that is given back is free for the same address again.
        await clients.pop().close()
        await until_stats(clients[0], lambda s: s["server"]["connections"] == 2)
        clients.append(await connect(server.host, server.port))
        assert await clients[-1].ping() == "pong"
    finally:
        other.close()
        for client in clients:
            await client.close()


async def admitted(server, sources: list[str]) -> list[Text]:
    """admitted: a text connection from each source address, each answered a PING (so
    accepted, admitted and in text mode)."""
    connections = [Text(server.host, server.port, source=source) for source in sources]
    for raw in connections:
        raw.send(b"PING\r\n")
        assert await in_thread(raw.line) == b"PONG"
    return connections


async def answered_refusal(server, source: str) -> Text:
    """answered_refusal: a connection from `source` that is refused and told why."""
    refused = Text(server.host, server.port, source=source)
    refused.send(b"PING\r\n")
    assert (await in_thread(refused.line)).startswith(b"ERR TOO_MANY_CONNECTIONS ")
    return refused


async def test_one_hosts_flood_of_refused_connections_leaves_room_for_anothers(
        server_factory):
    # A reviewer: refused connections waiting for their first bytes (to be answered in
    # their mode) had 32 places in all, so one host's silent refused ones took them and
    # another host's refusal was cut off without an answer. Each address has a few.
    server = server_factory("--max-connections-per-address", "1")
    async with connect(server.host, server.port) as client:
        held = await admitted(server, ["127.0.0.5", "127.0.0.6"])
        flood = [Text(server.host, server.port, source="127.0.0.5") for _ in range(40)]
        try:
            await until_stats(
                client, lambda s: s["server"]["connections_refused_per_address_total"] == 40)
            flood.append(await answered_refusal(server, "127.0.0.6"))
            answered = 0
            for raw in flood[:40]:
                try:
                    raw.send(b"PING\r\n")
                    answered += (await in_thread(raw.line)).startswith(b"ERR ")
                except (OSError, EOFError):  # cut off without an answer
                    pass
            assert answered == 4
        finally:
            for raw in [*held, *flood]:
                raw.close()


async def test_refused_floods_from_many_addresses_still_leave_room_for_another(
        server_factory):
    # A reviewer: 8 addresses x 4 took all 32 places, and a refusal from a ninth was cut
    # off without an answer. A newcomer takes a place from the address holding the most.
    server = server_factory("--max-connections-per-address", "1")
    sources = [f"127.0.0.{10 + i}" for i in range(10)] + ["127.0.0.60"]
    async with connect(server.host, server.port) as client:
        held = await admitted(server, sources)
        flood = [Text(server.host, server.port, source=source)
                 for source in sources[:10] for _ in range(5)]
        try:
            await until_stats(
                client, lambda s: s["server"]["connections_refused_per_address_total"] == 50)
            flood.append(await answered_refusal(server, "127.0.0.60"))
            info = (await client.stats())["server"]
            assert info["connections"] == 12  # the cut-off ones are not counted as served
        finally:
            for raw in [*held, *flood]:
                raw.close()


async def test_no_limit_per_address_with_zero(server_factory):
    server = server_factory("--max-connections-per-address", "0", "--max-connections", "3")
    clients = [await connect(server.host, server.port) for _ in range(3)]
    try:
        for client in clients:
            assert await client.ping() == "pong"
        info = (await clients[0].stats())["server"]
        assert (info["max_connections_per_address"], info["connections"]) == (0, 3)
        assert info["connections_most_from_one_address"] == 3  # counted, not limited
    finally:
        for client in clients:
            await client.close()


def test_max_connections_below_one_is_refused_at_start(server_factory):
    with pytest.raises(RuntimeError, match="--max-connections"):
        server_factory("--max-connections", "0")


# ------------------------------------------- a client that sends without reading

BIG = 200 * 1024
FLOOD_REQUESTS = 1500  # 300 MB of replies if the server buffered them all


async def test_a_client_that_sends_without_reading_is_paused_not_served_into_memory(server):
    async with connect(server.host, server.port) as client:
        await client.put("big", b"B" * BIG)
        rss_before = (await client.stats())["server"]["rss_bytes"]
        flood = Raw(server.host, server.port)
        flood.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        flood.send(PREAMBLE + b"".join(frame([i, "peek", {"queue": "big"}])
                                       for i in range(FLOOD_REQUESTS)))
        info = (await until_stats(client, lambda s: s["server"]["connections_paused"] == 1))
        # Others are served while it is paused, and stats can say so.
        for i in range(20):
            msg_id = await client.put("other", b"%d" % i)
            [msg] = await client.receive("other")
            assert (msg.id, msg.body) == (msg_id, b"%d" % i)
            await msg.ack()
        info = (await client.stats())["server"]
        assert info["connections_paused"] == 1
        # Paused means its replies are not piling up in the server (300 MB if they were).
        assert info["rss_bytes"] - rss_before < 64 * 1024 * 1024
        assert info["slow_reader_disconnects_total"] == 0

        def read_every_reply() -> list[int]:
            ids = []
            for _ in range(FLOOD_REQUESTS):
                request_id, error, [row] = flood.reply()
                assert error is None and row[1] == b"B" * BIG
                ids.append(request_id)
            return ids

        # Nothing was dropped: once it reads, every reply arrives, in order.
        assert await in_thread(read_every_reply) == list(range(FLOOD_REQUESTS))
        flood.close()
        await until_stats(client, lambda s: s["server"]["connections_paused"] == 0)


async def test_text_lines_behind_a_waiting_receive_are_held_within_the_limit(server_factory):
    server = server_factory("--max-request-buffer-bytes", "4096")
    async with connect(server.host, server.port) as client:
        text = Text(server.host, server.port)
        text.send(b"GET held wait=30\r\n")
        await until_stats(client, lambda s: s["queues"].get("held", {}).get("waiting") == 1)
        pings = 20_000  # 120 KB of lines: far past the limit, so reading stops
        sender = asyncio.ensure_future(in_thread(text.send, b"PING\r\n" * pings))
        await until_stats(client, lambda s: s["server"]["connections_paused"] == 1)
        msg_id = await client.put("held", b"at last")
        assert (await in_thread(text.line)).startswith(b"MSG %d " % msg_id)

        def read_the_rest() -> int:
            assert text.line() == b"at last"
            assert text.line() == b"END"
            return sum(text.line() == b"PONG" for _ in range(pings))

        assert await in_thread(read_the_rest) == pings
        await sender
        text.close()


async def test_a_client_that_parks_receive_after_receive_is_paused(server):
    # Each waiting receive is about a kilobyte the server holds for up to --max-wait;
    # without a bound, one connection sending them as fast as it can grows the server
    # without limit (500,000 of them were 520 MB).
    async with connect(server.host, server.port) as client:
        parker = Raw(server.host, server.port)
        parker.sock.settimeout(0.5)
        requests = PREAMBLE + b"".join(frame([i, "receive", {"queue": "parked", "wait": 3}])
                                       for i in range(50_000))

        def send_until_the_server_stops_reading() -> None:
            # Times out once the server stops reading and the socket buffers are full.
            with contextlib.suppress(TimeoutError):
                parker.sock.sendall(requests)

        await in_thread(send_until_the_server_stops_reading)
        # Paused once --max-request-buffer-bytes' worth of waits (1024) wait, and what one
        # read brought (or, on the way there, once what it sent behind its turn's share,
        # TURN_SECONDS, passed that limit as raw bytes).
        info = await until_stats(client, lambda s: s["server"]["connections_paused"] == 1
                                 and s["queues"]["parked"]["waiting"] > 1024)
        assert info["queues"]["parked"]["waiting"] < 20_000
        parker.close()  # seen once its waits end and the server reads again
        await until_stats(client, lambda s: s["server"]["connections"] == 1)


async def test_the_client_librarys_waits_fit_a_lower_request_buffer(server_factory):
    # Under --max-request-buffer-bytes 65536 (64 waits), the client library's 100 waiting
    # receives (it keeps up to 1,000 on the server) made the server stop reading: the
    # ping behind them, an ack or a cancel likewise, waited out a receive's whole wait.
    server = server_factory("--max-request-buffer-bytes", "65536")
    async with connect(server.host, server.port) as client, \
            connect(server.host, server.port) as observer:
        waits = [asyncio.ensure_future(client.receive("empty", wait=60)) for _ in range(100)]
        await until_stats(observer, lambda s: s["queues"].get("empty", {}).get("waiting")
                          == 100)
        try:
            assert await asyncio.wait_for(client.ping(), 10) == "pong"
            stats = await observer.stats()
            assert stats["server"]["connections_paused"] == 0
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


async def test_a_client_that_closes_while_paused_for_its_waits_takes_no_message(
        server_factory):
    # The server is not reading from the parker, so it cannot see its FIN; before it
    # leases to one of its waits it asks the socket (peer_state.py). Without that, every
    # message below went to the closed connection, for the lease's 60 s.
    # --max-request-buffer-bytes 4096 still lets 1,024 wait (MIN_WAITS_ROOM_BYTES), then
    # reading pauses.
    server = server_factory("--max-request-buffer-bytes", "4096")
    async with connect(server.host, server.port) as client:
        parker = Raw(server.host, server.port)
        parker.send(PREAMBLE + b"".join(
            frame([i, "receive", {"queue": "parked", "wait": 60, "visibility": 60}])
            for i in range(1100)))
        await until_stats(client, lambda s: s["server"]["connections_paused"] == 1
                          and s["queues"]["parked"]["waiting"] > 1024)
        parker.close()
        ids = await client.put_many("parked", [b"m%d" % i for i in range(10)])
        await until_stats(client, lambda s: s["server"]["connections"] == 1)
        got = await client.receive("parked", max=10)
        assert sorted(m.id for m in got) == sorted(ids)  # none leased to the parker


def _over(conn, context):
    """_over: `conn` (a Raw or Text socket) speaking TLS when `context` is given."""
    if context is not None:
        conn.sock = context.wrap_socket(conn.sock, server_hostname="127.0.0.1")
    return conn


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("put_first", [False, True], ids=["closes-then-put", "put-then-closes"])
async def test_waits_of_clients_that_close_as_a_put_arrives_take_no_message(
        server_factory, tmp_path, tls, put_first):
    # A reviewer closed 100 of 200 waiting text GETs (half by reset) and put 150 messages
    # at once: 44 went to the dead connections, leased for their timeout. The server is
    # frozen here while the closes and the put arrive, so it reads them in one batch,
    # in either order. asyncio knew of none of these closes in time: a reset's
    # connection_lost comes a loop turn after the read that finds it, a close after the
    # put in the batch is not read yet, and over TLS neither is seen until the TLS layer
    # gives up. So the server asks the socket before it leases to a waiting receive.
    tls_files = TlsFiles.make(tmp_path) if tls else None
    context = tls_files.client_context() if tls_files else None
    server = server_factory(*(tls_files.server_flags() if tls_files else []))
    async with connect(server.host, server.port, ssl=context) as client:
        waits = []
        for i in range(40):
            if i % 2:
                conn = _over(Text(server.host, server.port), context)
                conn.send(b"GET reset wait=60 visibility=60\n")
            else:
                conn = _over(Raw(server.host, server.port), context)
                conn.send(PREAMBLE + frame([1, "receive", {"queue": "reset", "wait": 60,
                                                           "visibility": 60}]))
            waits.append(conn)
        await until_stats(client, lambda s: s["queues"].get("reset", {}).get("waiting") == 40)
        live, dead = waits[:8], waits[8:]
        putter = _over(Raw(server.host, server.port), context)
        putter.send(PREAMBLE)
        put = frame([1, "put_many", {"queue": "reset", "bodies": [b"m%d" % i for i in range(40)]}])
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            if put_first:
                putter.send(put)
            for index, conn in enumerate(dead):
                if index % 4 < 3:  # a reset; the others close as usual (FIN)
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                conn.close()
            if not put_first:
                putter.send(put)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        [_, _, ids] = await in_thread(putter.reply)
        assert len(ids) == 40
        info = await until_stats(client, lambda s: s["server"]["connections"] == 1 + 8 + 1)
        assert info["queues"]["reset"]["in_flight"] == 8  # the live waits' only
        assert info["queues"]["reset"]["ready"] == 32
        for conn in live:
            conn.close()
        putter.close()


# ------------------------------------------- a client that does not read what it is owed

async def test_a_client_owed_more_than_the_reply_buffer_is_cut_off(server_factory):
    server = server_factory("--max-reply-buffer-bytes", "1000000")
    async with connect(server.host, server.port) as client:
        slow = Raw(server.host, server.port)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.send(PREAMBLE + b"".join(
            frame([i, "receive", {"queue": "owed", "max": 10, "wait": 30,
                                  "visibility": 1}]) for i in range(50)))
        await until_stats(client, lambda s: s["queues"].get("owed", {}).get("waiting") == 50)
        bodies = [b"%04d" % i + b"x" * 100_000 for i in range(300)]
        for start in range(0, len(bodies), 50):
            await client.put_many("owed", bodies[start:start + 50])
        await until_stats(client,
                          lambda s: s["server"]["slow_reader_disconnects_total"] == 1)
        # The log is read by another thread: wait for the line, not only the count.
        await until_true(lambda: "--max-reply-buffer-bytes" in server.log)
        assert 'disconnecting' in server.log
        slow.close()
        # What it was handed comes back when its leases run out: nothing is lost.
        seen = set()
        while len(seen) < len(bodies):
            got = await client.receive("owed", max=100, wait=5)
            assert got, f"only {len(seen)} of {len(bodies)} came back"
            for msg in got:
                seen.add(msg.body)
                await msg.ack()
        assert seen == set(bodies)


async def test_over_the_client_memory_limit_the_connection_holding_most_is_cut_off(
        server_factory):
    # Each connection's own limits held, but together they did not: a reviewer's 34
    # connections, each with 60 MiB of a frame sent, took the server past 2 GiB.
    server = server_factory("--max-client-memory", "4M")
    big, small = Raw(server.host, server.port), Raw(server.host, server.port)
    payload = frame([1, "put_many", {"queue": "held", "bodies": [b"x" * (100 << 10)] * 100}])
    big.send(PREAMBLE + payload[:3 << 20])  # 3 MiB of a 10 MiB frame
    second = frame([1, "put_many", {"queue": "held", "bodies": [b"y" * (100 << 10)] * 20}])
    small.send(PREAMBLE + second[:-1000])  # about 2 MiB of its frame
    async with connect(server.host, server.port) as client:
        stats = await until_stats(
            client, lambda s: s["server"]["client_memory_disconnects_total"] == 1)
        assert stats["server"]["max_client_memory"] == 4 << 20
        assert stats["server"]["client_memory_bytes"] <= 4 << 20
        await until_true(lambda: "--max-client-memory" in server.log)
        with contextlib.suppress(ConnectionResetError):
            big.sock.settimeout(5)
            assert big.sock.recv(100) == b""  # cut off, without a word (abort)
        small.send(second[-1000:])  # the rest: the small one was kept
        request_id, error, ids = small.reply()
        assert (request_id, error, len(ids)) == (1, None, 20)
        assert (await client.queue_info("held"))["messages"] == 20
    big.close()
    small.close()


# ----------------------------------------------------------------- idle timeout
# ----------------------------------------------------------------- idle timeout

async def test_idle_connections_are_told_and_closed_and_waiting_ones_are_not(server_factory):
    server = server_factory("--idle-timeout", "0.3")
    text = Text(server.host, server.port)
    binary = Raw(server.host, server.port)
    binary.send(PREAMBLE)
    assert (await in_thread(text.line)).startswith(b"ERR IDLE_TIMEOUT ")
    assert await in_thread(text.at_eof)
    [request_id, [code, _message], _] = await in_thread(binary.reply)
    assert (request_id, code) == (None, "IDLE_TIMEOUT")
    assert await in_thread(binary.at_eof)
    text.close()
    binary.close()
    async with connect(server.host, server.port) as waiting:
        # A receive that waits longer than the idle timeout is activity all along.
        assert await waiting.receive("idle", wait=1.0) == []
        assert await waiting.ping() == "pong"
        info = (await waiting.stats())["server"]
        assert info["idle_disconnects_total"] == 2


async def test_an_idle_client_that_does_not_read_is_gone_soon_after_its_timeout(server_factory):
    # Its replies fill the socket; a close would wait for it to read them for ever.
    server = server_factory("--idle-timeout", "0.5")
    async with connect(server.host, server.port) as client:
        await client.put("big", b"B" * BIG)
        silent = Text(server.host, server.port)
        silent.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        silent.send(b"PEEK big\r\n" * 50)  # 10 MB of replies, never read
        await until_stats(client, lambda s: s["server"]["idle_disconnects_total"] == 1)
        await until_stats(client, lambda s: s["server"]["connections"] == 1)
        silent.close()


def test_a_bad_idle_timeout_is_refused_at_start(server_factory):
    with pytest.raises(RuntimeError, match="--idle-timeout"):
        server_factory("--idle-timeout", "-1")


# ---------------------------------------------------------------- vanished clients

@pytest.mark.parametrize(("flags", "kind", "seconds"), [
    ((), 2, 300),  # the default, Redis' tcp-keepalive
    (("--tcp-keepalive", "45"), 2, 45),
    (("--tcp-keepalive", "0"), 0, 0),
])
def test_tcp_keepalive_probes_silent_clients_after_the_flag_s_seconds(server_factory, flags,
                                                                      kind, seconds):
    # A client whose host vanished sends no FIN: without keepalive its connection (and its
    # --max-connections slot) stayed for ever. The kernel's keepalive timer on the
    # server's socket is the real thing to look at (a vanished host cannot be made here).
    server = server_factory(*flags)
    client = Text(server.host, server.port)
    try:
        client.send(b"PING\r\n")
        assert client.line() == b"PONG"  # accepted and set up
        timer_kind, left_s = tcp_timer(server.port, client.sock.getsockname()[1])
        assert timer_kind == kind
        assert seconds - 5 <= left_s <= seconds
    finally:
        client.close()


def test_a_bad_tcp_keepalive_is_refused_at_start(server_factory):
    with pytest.raises(RuntimeError, match="--tcp-keepalive"):
        server_factory("--tcp-keepalive", "40000")


def test_keepalive_probes_every_third_of_the_idle_time_three_times():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()

    class Transport:
        def get_extra_info(self, name):
            return accepted if name == "socket" else None

    try:
        enable_keepalive(Transport(), 300)
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 300
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 100
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        for sock in (accepted, client, listener):
            sock.close()


# ---------------------------------------------------------------- values per frame

def peak_resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_a_frame_of_millions_of_tiny_values_is_refused_without_building_them(server):
    # 16 MiB of 1-byte empty maps, in arrays of 1000: decoded whole, 16 million dicts
    # (about 1.2 GB) would be built before any check; counted, the decode stops early.
    raw = Raw(server.host, server.port)
    raw.send(PREAMBLE)
    raw.send(frame([0, "ping", {}]))
    assert raw.reply() == [0, None, "pong"]
    before_kib = peak_resident_kib(server.proc.pid)
    groups = 16 * 1024
    payload = (b"\x93\x01\xa8put_many\x82\xa5queue\xa1q\xa6bodies\xdd" + groups.to_bytes(4, "big")
               + (b"\xdc\x03\xe8" + b"\x80" * 1000) * groups)
    raw.send(len(payload).to_bytes(4, "big") + payload)
    request_id, error, result = raw.reply()
    assert (request_id, error[0], result) == (1, "BATCH_TOO_LARGE", None)
    grown_mib = (peak_resident_kib(server.proc.pid) - before_kib) / 1024
    assert grown_mib < 300, f"the server's peak memory grew by {grown_mib:.0f} MiB"
    raw.send(frame([2, "ping", {}]))  # the stream is still in step
    assert raw.reply() == [2, None, "pong"]
    raw.close()


async def test_puts_refused_full_leave_no_queues_holding_max_queues_places(server_factory):
    # A reviewer: each new name put to while the server was full (--max-memory) stayed as
    # an empty queue, so once consumers had freed the memory, a put to a new name was
    # still refused TOO_MANY_QUEUES.
    server = server_factory("--max-memory", "4300", "--max-queues", "3")
    async with connect(server.host, server.port) as client:
        await client.put("filler", b"x" * 4000)
        for name in ("new0", "new1", "new2", "new3"):
            with pytest.raises(Full):
                await client.put(name, b"y")
        assert [q["queue"] for q in await client.queues()] == ["filler"]
        await client.purge("filler")
        assert await client.put("important", b"z") > 0
        assert (await client.queue_info("important"))["messages"] == 1


# ------------------------------------ commands whose cost grows with the queues

async def test_stats_pipelined_on_a_server_with_many_queues_wait_their_turns(server_factory):
    # With thousands of queues one STATS takes milliseconds of the loop, so each waits
    # for its turn (admin_pace.py): answered whole, one after another, counted; a binary
    # request after them does not wait for them.
    server = server_factory("--max-queues", "3000")
    async with connect(server.host, server.port) as client:
        await asyncio.gather(*(client.put(f"q{i}", b"x") for i in range(3000)))
        raw = Raw(server.host, server.port)
        try:
            raw.send(PREAMBLE + b"".join(frame([i, "stats", {}]) for i in range(5))
                     + frame([5, "put", {"queue": "q0", "body": b"after"}]))
            replies = [await in_thread(raw.reply) for _ in range(6)]
        finally:
            raw.close()
        order = [reply[0] for reply in replies]
        assert sorted(order) == [0, 1, 2, 3, 4, 5]
        assert [i for i in order if i != 5] == [0, 1, 2, 3, 4]  # the STATS in turn
        assert order.index(5) < order.index(4)  # the put did not wait for them all
        stats = [reply[2] for reply in replies if reply[0] != 5]
        assert all(len(figures["queues"]) == 3000 for figures in stats)
        paced = (await client.stats())["server"]["paced_commands_total"]
        assert paced >= 4  # the first may run at once; the four after it came too soon


async def test_one_host_sending_many_stats_does_not_hold_up_another_hosts(server_factory):
    # A reviewer's flood: one host opens many connections, sends STATS on each and
    # half-closes (each close waits for its STATS). Turns go round the addresses, so a
    # client on another host waits for one of them, not for all.
    server = server_factory("--max-queues", "2000")
    async with connect(server.host, server.port) as client:
        await asyncio.gather(*(client.put(f"q{i}", b"x") for i in range(2000)))
        *flood, control = await admitted(server, ["127.0.0.5"] * 11)
        try:
            for raw in flood:
                raw.send(b"STATS\r\n")
                raw.sock.shutdown(socket.SHUT_WR)
            control.send(b"PING\r\n")  # answered after the server has read every STATS
            assert await in_thread(control.line) == b"PONG"
            figures = await client.stats()  # from 127.0.0.1
            # Built in its turn: most of the flood's STATS were still waiting then.
            assert figures["server"]["paced_commands_waiting"] >= 6
            for raw in flood:  # and each of theirs is answered, in its turn
                lines = await in_thread(raw.until_end)
                assert any(line.startswith(b"server.paced_commands_total: ") for line in lines)
                assert await in_thread(raw.at_eof)
        finally:
            for raw in [*flood, control]:
                raw.close()


async def test_waits_whose_request_ids_are_arrays_count_what_they_hold(server_factory):
    # A waiting receive is kept with its request id. A reviewer's ids of 65,000 empty maps
    # held 4.5 MB a wait, counted as 1 KiB against --max-client-memory: such ids are now at
    # most 256 bytes packed (refused above that), and a wait whose id is an array or a map
    # counts COSTLY_ID_WAIT_BYTES, what 256 bytes of empty maps decode to.
    server = server_factory("--max-client-memory", "512K")
    hog = Raw(server.host, server.port)
    plain = Raw(server.host, server.port)
    try:
        hog.send(PREAMBLE + frame([[{}] * 65_000, "receive", {"queue": "w", "wait": 60.0}]))
        request_id, error, _ = hog.reply()
        assert (request_id, error[0]) == (None, "BAD_ARGUMENT")
        # 20 waits with integer ids: 20 KiB counted, well within the limit.
        plain.send(PREAMBLE + b"".join(frame([i, "receive", {"queue": "w", "wait": 60.0}])
                                       for i in range(20)))
        async with connect(server.host, server.port) as client:
            await until_stats(client, lambda s: s["server"]["waiting_consumers"] == 20)
            # 40 waits with ids of 250 empty maps: about 700 KiB held, over the limit.
            hog.send(b"".join(frame([[{}] * 250, "receive", {"queue": "w", "wait": 60.0}])
                              for _ in range(40)))
            stats = await until_stats(
                client, lambda s: s["server"]["client_memory_disconnects_total"] == 1)
            assert stats["server"]["waiting_consumers"] == 20  # the plain ones stay
            with contextlib.suppress(ConnectionResetError):  # cut off: reset, or closed
                assert hog.at_eof()
    finally:
        hog.close()
        plain.close()


def test_a_client_still_sending_its_oversized_frame_reads_the_refusal_then_the_end(
        server_factory):
    # Closed with the client's input unread, the socket answered the rest of a frame over
    # --max-frame-bytes with a reset: a client still writing got EPIPE and lost the
    # FRAME_TOO_LARGE before reading it (CI, once). The server now ends its side and drops
    # what still comes, until the client closes (Connection._close_lingering).
    server = server_factory("--max-frame-bytes", "100000")
    raw = Raw(server.host, server.port)
    try:
        head = (150_000).to_bytes(4, "big") + b"\x93\x01\xa3put"  # id 1 in its first bytes
        raw.send(PREAMBLE + head + b"x" * 20_000)
        [request_id, error, _] = raw.reply()
        assert (request_id, error[0]) == (1, "FRAME_TOO_LARGE")
        assert raw.at_eof()  # the server's side is ended
        raw.send(b"x" * 2_000_000)  # the rest, and more: read and dropped, no reset
    finally:
        raw.close()
