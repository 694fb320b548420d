"""End to end: text mode over a raw socket, as a person with nc or telnet would use it."""

from __future__ import annotations

import pathlib
import re
import socket

import pytest
from raw_socket import TextSocket as Line


@pytest.fixture
def text(server):
    conn = Line(server.host, server.port)
    yield conn
    conn.close()


def read_messages(conn: Line) -> list[tuple[int, int, int, bytes]]:
    messages = []
    while (line := conn.line()) != b"END":
        word, msg_id, lease, deliveries, _enqueued_at, size = line.split(b" ")
        assert word == b"MSG"
        body = conn.exactly(int(size))
        assert conn.exactly(2) == b"\r\n"
        messages.append((int(msg_id), int(lease), int(deliveries), body))
    return messages


def test_put_get_ack_session(text):
    text.send(b"PUT jobs hello world\r\n")
    ok, msg_id = text.line().split(b" ")
    assert ok == b"OK"
    text.send(b"GET jobs\n")
    [(got_id, lease, deliveries, body)] = read_messages(text)
    assert (got_id, deliveries, body) == (int(msg_id), 1, b"hello world")
    text.send(b"ACK jobs %d %d\r\n" % (got_id, lease))
    assert text.line() == b"OK"
    text.send(b"ACK jobs %d %d\r\n" % (got_id, lease))
    assert text.line().startswith(b"ERR NOT_FOUND ")


def test_receive_several_and_binary_safe_bodies(text, server):
    import asyncio

    from wonderq_client import connect

    async def put() -> None:
        async with connect(server.host, server.port) as client:
            await client.put("bin", b"line1\r\nline2\x00end")
            await client.put("bin", b"")

    asyncio.run(put())
    text.send(b"receive bin max=5 visibility=60\n")
    messages = read_messages(text)
    assert [m[3] for m in messages] == [b"line1\r\nline2\x00end", b""]


def test_stats_lines_and_closing_end(text):
    text.send(b"PUT a x\nPUT a y\nGET a\nSTATS\n")
    text.line()
    text.line()
    read_messages(text)
    stats = dict(line.decode().split(": ", 1) for line in text.until_end())
    assert stats["queues.a.ready"] == "1"
    assert stats["queues.a.in_flight"] == "1"
    assert stats["queues.a.put_total"] == "2"
    assert stats["server.connections"] == "1"
    assert stats["server.version"]
    assert float(stats["server.uptime_s"]) >= 0


def test_nack_touch_ping_quit(text):
    text.send(b"PUT t one\nGET t\n")
    text.line()
    [(msg_id, lease, _, _)] = read_messages(text)
    text.send(b"TOUCH t %d %d visibility=100\n" % (msg_id, lease))
    word, deadline = text.line().split(b" ")
    assert word == b"OK" and float(deadline) > 0
    text.send(b"NACK t %d %d\n" % (msg_id, lease))
    assert text.line() == b"OK"
    text.send(b"GET t\n")
    [(again, _, deliveries, _)] = read_messages(text)
    assert (again, deliveries) == (msg_id, 2)
    text.send(b"ping\nQUIT\n")
    assert text.line() == b"PONG"
    assert text.line() == b"BYE"
    assert text.at_eof()


def test_waiting_get_answers_in_order(text, server):
    """A GET that waits holds the lines after it, so replies stay in order."""
    text.send(b"GET later wait=10\nPING\n")
    other = Line(server.host, server.port)
    try:
        # The PING behind the waiting GET must not be answered yet; STATS on
        # another connection shows the GET parked.
        for _ in range(1000):
            other.send(b"STATS\n")
            stats = dict(line.decode().split(": ", 1) for line in other.until_end())
            if stats.get("queues.later.waiting") == "1":
                break
        assert stats["queues.later.waiting"] == "1"
        other.send(b"PUT later wake\n")
        assert other.line().startswith(b"OK ")
    finally:
        other.close()
    [(_, _, _, body)] = read_messages(text)
    assert body == b"wake"
    assert text.line() == b"PONG"


@pytest.mark.parametrize(("line", "code"), [
    (b"FROB x", b"UNKNOWN_COMMAND"),
    (b"PUT", b"BAD_ARGUMENT"),
    (b"PUT bad/name x", b"INVALID_QUEUE_NAME"),
    (b"ACK q notanumber 1", b"BAD_ARGUMENT"),
    (b"ACK q 1", b"BAD_ARGUMENT"),
    (b"ACK q 1 2", b"NOT_FOUND"),
    (b"GET q max=0", b"BAD_ARGUMENT"),
    (b"GET q max=100000", b"BATCH_TOO_LARGE"),
    (b"GET q wait=nan", b"BAD_ARGUMENT"),
    (b"GET q bogus=1", b"BAD_ARGUMENT"),
    (b"\xff\xfe\x00garbage", b"UNKNOWN_COMMAND"),
])
def test_bad_lines_get_error_and_connection_survives(text, line, code):
    text.send(line + b"\r\n")
    reply = text.line()
    assert reply.startswith(b"ERR " + code + b" "), reply
    text.send(b"PING\r\n")
    assert text.line() == b"PONG"


@pytest.mark.parametrize("line", [
    b"GET q \x1b]0;owned\x07=1",  # a terminal's title, set from a reply
    b"ACK_MANY q \x1b[2J=1 1:2",  # the screen cleared
    b"PUT_MANY q 1 \xc2\x9b31m=1\r\nbody",  # C1's CSI (U+009B), in UTF-8
    b"GET q x\xe2\x80\xaeexe.txt=1",  # U+202E: the rest shown right to left
])
def test_an_error_never_echoes_a_control_character_to_the_terminal(text, line):
    text.send(line + b"\r\n")
    reply = text.line()
    assert reply.startswith(b"ERR BAD_ARGUMENT ")
    assert not [c for c in reply.decode() if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f
                or c == "\u202e"], reply
    assert b"\\x1b" in reply or b"\\x9b" in reply or b"\\u202e" in reply, reply  # escaped
    text.send(b"PING\r\n")
    assert text.line() == b"PONG"


def test_the_bodies_of_a_refused_put_many_are_dropped_not_run(text):
    # A reviewer's bodies "PURGE victim" and "DELETE_QUEUE victim", behind a header with
    # a delay over --max-delay, purged and deleted the queue: read as commands, they ran.
    text.send(b"PUT victim keep me\r\n")
    assert text.line().startswith(b"OK ")
    text.send(b"PUT_MANY victim 2 delay=99999\r\nPURGE victim\r\nDELETE_QUEUE victim\r\n"
              b"QUEUE_INFO victim\r\n")
    refused = text.line()
    assert refused.startswith(b"ERR BAD_ARGUMENT delay ") and refused.endswith(
        b"nothing is stored, and the 2 lines after it are read as its bodies and dropped")
    info = {}
    while (line := text.line()) != b"END":
        name, _, value = line.partition(b": ")
        info[name] = value
    assert info[b"messages"] == b"1"


def queue_info_messages(conn: Line, queue: bytes) -> bytes:
    conn.send(b"QUEUE_INFO " + queue + b"\r\n")
    info = {}
    while (line := conn.line()) != b"END":
        name, _, value = line.partition(b": ")
        info[name] = value
    return info[b"messages"]


@pytest.mark.parametrize("too_long_url", [False, True])
def test_a_browser_post_closes_the_connection_and_runs_none_of_its_body(server_factory,
                                                                         too_long_url):
    # Any web page can make a browser POST a text/plain body to a loopback port
    # (fetch(..., {mode: "no-cors", method: "POST"})). A reviewer's page purged and deleted
    # a queue so: the request line and headers were unknown commands, and the body's lines
    # ran. A request line too long to read (a long URL) is refused as such; the Host header
    # after it ends the connection then.
    server = server_factory("--max-message-bytes", "1000")  # lines of at most 2,024 bytes
    owner = Line(server.host, server.port)
    attacker = Line(server.host, server.port)
    try:
        owner.send(b"PUT victim keep me\r\n")
        assert owner.line().startswith(b"OK ")
        body = b"PURGE victim\nDELETE_QUEUE victim\n"
        path = b"/" + b"a" * 3000 if too_long_url else b"/"
        attacker.send(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nOrigin: http://evil.example\r\n"
                      b"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: %d\r\n\r\n"
                      % (path, server.host.encode(), server.port, len(body)) + body)
        if too_long_url:
            assert attacker.line().startswith(b"ERR LINE_TOO_LONG ")
        refused = attacker.line()
        assert refused.startswith(b"ERR HTTP_REQUEST an HTTP request: this port speaks "), refused
        assert refused.endswith(b"on its --metrics-port")
        assert attacker.at_eof()  # nothing more was answered: nothing more ran
        assert queue_info_messages(owner, b"victim") == b"1"
    finally:
        owner.close()
        attacker.close()
    server.stop()
    assert "an HTTP request from ('127.0.0.1', " in server.log
    assert "answered HTTP_REQUEST and closed" in server.log


def test_the_bodies_of_an_over_long_put_many_header_padded_with_blanks_are_dropped(
        server_factory):
    # A count followed by only blanks past the 4 KiB of an over-long line that are looked
    # at started no block: a reviewer's bodies "PURGE victim", "DELETE_QUEUE victim" ran.
    server = server_factory("--max-message-bytes", "100")  # lines of at most 1,124 bytes
    conn = Line(server.host, server.port)
    try:
        conn.send(b"PUT victim keep me\n")
        assert conn.line().startswith(b"OK ")
        conn.send(b"PUT_MANY victim 2" + b" " * 5000 + b"\nPURGE victim\nDELETE_QUEUE victim\n")
        refused = conn.line()
        assert refused.startswith(b"ERR LINE_TOO_LONG ")
        assert refused.endswith(b"the 2 lines after it are read as its bodies and dropped")
        assert queue_info_messages(conn, b"victim") == b"1"
    finally:
        conn.close()


def test_over_long_line_is_skipped_and_connection_survives(server_factory):
    server = server_factory("--max-message-bytes", "100")
    conn = Line(server.host, server.port)
    try:
        conn.send(b"PUT q " + b"x" * 5000 + b"\nPING\n")
        assert conn.line().startswith(b"ERR LINE_TOO_LONG ")
        assert conn.line() == b"PONG"
        conn.send(b"PUT q " + b"y" * 101 + b"\n")
        assert conn.line().startswith(b"ERR BODY_TOO_LARGE ")
    finally:
        conn.close()


def test_half_close_still_gets_every_reply_under_fsync_always(server_factory, tmp_path):
    """`printf ... | nc -N` half-closes: replies held for the fsync must still arrive."""

    server = server_factory("--data-dir", str(tmp_path / "data"), "--fsync", "always")
    conn = Line(server.host, server.port)
    try:
        conn.send(b"PUT jobs hello\nSTATS\nQUIT\n")
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.line().startswith(b"OK ")
        stats = dict(line.decode().split(": ", 1) for line in conn.until_end())
        assert stats["queues.jobs.ready"] == "1"
        assert conn.line() == b"BYE"
        assert conn.at_eof()
    finally:
        conn.close()


def test_half_close_answers_a_waiting_get_at_once(server):
    """After EOF a waiting GET is answered with what there is (nothing), never kept:
    a peer that closed outright could not read a message handed to it."""
    conn = Line(server.host, server.port)
    try:
        conn.send(b"PUT one x\nGET nothing wait=30\nGET one wait=30\n")
        assert conn.line().startswith(b"OK ")
        conn.sock.shutdown(1)  # SHUT_WR
        assert conn.line() == b"END"
        assert read_messages(conn)[0][3] == b"x"
        assert conn.at_eof()
    finally:
        conn.close()


def test_a_last_line_without_its_newline_is_answered_not_run(server):
    """`printf 'PUT q hello' | nc -N`: the line has no newline; the server says so rather
    than close without a word, and stores nothing."""
    conn = Line(server.host, server.port)
    try:
        conn.send(b"PUT eol first\nGET eol wait=30\nPUT eol hello")
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.line().startswith(b"OK ")
        assert read_messages(conn)[0][3] == b"first"
        assert conn.line().startswith(b"ERR MALFORMED the input ended inside a line")
        assert conn.at_eof()
    finally:
        conn.close()
    check = Line(server.host, server.port)
    try:
        check.send(b"QUEUE_INFO eol\n")
        assert b"messages: 1" in check.until_end()  # "first", leased; not "hello"
    finally:
        check.close()


@pytest.mark.parametrize("start", [b"W", b"WQ"])
def test_a_start_of_the_binary_preamble_then_the_end_is_answered_as_text(server, start):
    # `W`/`WQ` could still become the binary preamble, so the mode was never chosen and
    # the end of input went unanswered; at the end it can only be an unfinished text line.
    conn = Line(server.host, server.port)
    try:
        conn.send(start)
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.line().startswith(b"ERR MALFORMED the input ended inside a line")
        assert conn.at_eof()
    finally:
        conn.close()


def test_a_held_get_that_waits_still_times_out(text):
    """The second GET is held behind the first; when it runs, its deadline must be armed."""
    text.send(b"GET idle wait=0.2\nGET idle wait=0.2\nPING\n")
    assert text.line() == b"END"
    assert text.line() == b"END"
    assert text.line() == b"PONG"


# ------------------------------------------------ PROTOCOL.md's sessions, replayed

PROTOCOL = pathlib.Path(__file__).resolve().parent.parent / "PROTOCOL.md"
LONG_ID = re.compile(r"\d{16,}")
TIME = re.compile(r"\b\d+\.\d+\b")
STATS_LINE = re.compile(r"^(server|queues)\.[\w.-]+: ")


def protocol_sessions() -> list[list[str]]:
    """protocol_sessions: the text-mode sessions of PROTOCOL.md's Text mode section, as
    lines (`>` typed, `<` or nothing the server's); telnet's own lines left out."""
    section = PROTOCOL.read_text().split("## Text mode", 1)[1].split("\n## ", 1)[0]
    sessions = []
    for block in section.split("```")[1::2]:
        lines = [line for line in block.strip("\n").splitlines()
                 if not line.startswith(("$ ", "  (")) and line != "Connection closed by "
                 "foreign host."]
        sessions.append(lines)
    return sessions


def as_compared(line: str) -> str:
    """as_compared: what must match, a stats line's name and any other line's every word
    but times (3 decimals, they differ run to run)."""
    if STATS_LINE.match(line):
        return line.split(": ", 1)[0]
    return TIME.sub("T", line)


@pytest.mark.parametrize("index", range(2))
def test_protocol_md_text_sessions_are_what_the_server_says(server, index):
    """Each documented session is typed into a real server; every reply line matches,
    the message ids the document shows mapped to the ones this server gave."""
    session = protocol_sessions()[index]
    ids: dict[str, str] = {}
    conn = Line(server.host, server.port)
    try:
        for line in session:
            if line.startswith("> "):
                typed = LONG_ID.sub(lambda m: ids.get(m.group(), m.group()), line[2:])
                conn.send(typed.encode() + b"\n")
                continue
            documented = line[2:] if line.startswith("< ") else line
            said = conn.line().decode()
            for doc_id, real_id in zip(LONG_ID.findall(documented), LONG_ID.findall(said),
                                       strict=False):
                assert ids.setdefault(doc_id, real_id) == real_id, (documented, said)
            documented = LONG_ID.sub(lambda m: ids.get(m.group(), m.group()), documented)
            assert as_compared(said) == as_compared(documented)
        assert session[-1] != "< BYE" or conn.at_eof()
    finally:
        conn.close()
