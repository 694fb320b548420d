"""Tests of text_codec.py: command lines in, reply lines out."""

from __future__ import annotations

import pytest

from wonderq_server.broker import Broker
from wonderq_server.commands import Command, Limits, Rejected
from wonderq_server.errors import (
    BAD_ARGUMENT,
    BATCH_TOO_LARGE,
    INVALID_QUEUE_NAME,
    LINE_TOO_LONG,
    NOT_FOUND,
    UNKNOWN_COMMAND,
    CommandError,
)
from wonderq_server.text_codec import TEXT_COMMANDS, TextDecoder, TextEncoder, flatten

LIMITS = Limits()
SHORT = Limits(max_message_bytes=16)  # max_line_bytes == 1040
KNOWN = "PUT GET RECEIVE ACK NACK TOUCH STATS PING QUIT"


def decode(data: bytes, limits: Limits = LIMITS) -> list[Command | Rejected]:
    return TextDecoder(limits).feed(data)


def one(data: bytes, limits: Limits = LIMITS) -> Command | Rejected:
    items = decode(data, limits)
    assert len(items) == 1, items
    return items[0]


def command(line: bytes) -> tuple[str, dict]:
    item = one(line)
    assert isinstance(item, Command), item
    assert item.request_id is None
    return item.name, item.args


def rejection(line: bytes, limits: Limits = LIMITS) -> tuple[str, str]:
    item = one(line, limits)
    assert isinstance(item, Rejected), item
    assert type(item.error) is CommandError
    assert item.request_id is None
    return item.error.code, item.error.message


RECEIVE_DEFAULTS = {"max": 1, "wait": 0.0, "visibility": None}


# ------------------------------------------------------------------- commands

@pytest.mark.parametrize(("line", "expected"), [
    (b"PUT q hello", ("put", {"queue": "q", "body": b"hello"})),
    (b"GET q", ("receive", {"queue": "q", **RECEIVE_DEFAULTS})),
    (b"RECEIVE q", ("receive", {"queue": "q", **RECEIVE_DEFAULTS})),
    (b"ACK q 1 2", ("ack", {"queue": "q", "id": 1, "lease": 2})),
    (b"NACK q 1 2", ("nack", {"queue": "q", "id": 1, "lease": 2, "delay": 0.0})),
    (b"TOUCH q 1 2", ("touch", {"queue": "q", "id": 1, "lease": 2, "visibility": None})),
    (b"STATS", ("stats", {})),
    (b"PING", ("ping", {})),
    (b"QUIT", ("quit", {})),
])
@pytest.mark.parametrize("case", [bytes.upper, bytes.lower, bytes.title])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_every_command_word(line, expected, case, ending):
    word, _, rest = line.partition(b" ")
    assert command(case(word) + (b" " + rest if rest else b"") + ending) == expected


def test_command_words_table():
    assert b" ".join(TEXT_COMMANDS).decode() == KNOWN
    assert set(TEXT_COMMANDS.values()) == {"put", "receive", "ack", "nack", "touch", "stats",
                                           "ping", "quit"}


def test_one_byte_at_a_time():
    stream = b"PUT jobs a b c\r\nGET jobs max=2\nACK jobs 5 6\r\nPING\n"
    decoder = TextDecoder(LIMITS)
    items = []
    for index, byte in enumerate(stream):
        got = decoder.feed(bytes([byte]))
        if byte != ord("\n"):
            assert got == [], index
        items.extend(got)
    assert [(i.name, i.args) for i in items] == [
        ("put", {"queue": "jobs", "body": b"a b c"}),
        ("receive", {"queue": "jobs", "max": 2, "wait": 0.0, "visibility": None}),
        ("ack", {"queue": "jobs", "id": 5, "lease": 6}),
        ("ping", {}),
    ]


def test_many_lines_in_one_chunk_and_a_partial_line_kept():
    decoder = TextDecoder(LIMITS)
    items = decoder.feed(b"PING\nSTATS\r\nPI")
    assert [i.name for i in items] == ["ping", "stats"]
    assert decoder.feed(b"NG") == []
    assert [i.name for i in decoder.feed(b"\r\n")] == ["ping"]


def test_cr_split_from_its_lf():
    decoder = TextDecoder(LIMITS)
    assert decoder.feed(b"PUT q body\r") == []
    assert [(i.name, i.args) for i in decoder.feed(b"\n")] == [
        ("put", {"queue": "q", "body": b"body"})]


# ------------------------------------------------------------------------ PUT

@pytest.mark.parametrize(("line", "body"), [
    (b"PUT q hello world\n", b"hello world"),
    (b"PUT q  two leading spaces\n", b" two leading spaces"),
    (b"PUT q trailing  \r\n", b"trailing  "),
    (b"PUT q tab\there\n", b"tab\there"),
    (b"PUT q max=5 wait=1\n", b"max=5 wait=1"),
    (b"PUT q \xff\xfe\x00raw\n", b"\xff\xfe\x00raw"),
    (b"PUT q \n", b""),
    (b"PUT q\n", b""),
    (b"put q PUT q x\n", b"PUT q x"),
])
def test_put_body_is_the_rest_of_the_line(line, body):
    assert command(line) == ("put", {"queue": "q", "body": body})


def test_put_without_a_queue():
    assert rejection(b"PUT\n") == (BAD_ARGUMENT, "PUT needs a queue: PUT <queue> <body>")
    assert rejection(b"PUT  body\n") == (BAD_ARGUMENT, "PUT needs a queue: PUT <queue> <body>")


@pytest.mark.parametrize("line", [b"PUT a/b x\n", b"PUT \xffq x\n", b"PUT " + b"q" * 129 + b" x\n"])
def test_put_with_an_invalid_queue(line):
    code, message = rejection(line)
    assert code == INVALID_QUEUE_NAME
    assert message.startswith("queue names are 1-128 characters")


# ------------------------------------------------------------------ arguments

@pytest.mark.parametrize(("line", "expected"), [
    (b"GET q 5", ("receive", {"queue": "q", "max": 5, "wait": 0.0, "visibility": None})),
    (b"GET q 5 2.5", ("receive", {"queue": "q", "max": 5, "wait": 2.5, "visibility": None})),
    (b"GET q 5 2.5 10", ("receive", {"queue": "q", "max": 5, "wait": 2.5, "visibility": 10.0})),
    (b"GET q wait=3", ("receive", {"queue": "q", "max": 1, "wait": 3.0, "visibility": None})),
    (b"GET q visibility=4 max=2",
     ("receive", {"queue": "q", "max": 2, "wait": 0.0, "visibility": 4.0})),
    (b"GET q 3 visibility=9",
     ("receive", {"queue": "q", "max": 3, "wait": 0.0, "visibility": 9.0})),
    (b"GET queue=q", ("receive", {"queue": "q", **RECEIVE_DEFAULTS})),
    (b"GET   q    2  ", ("receive", {"queue": "q", "max": 2, "wait": 0.0, "visibility": None})),
    (b"NACK q 1 2 3", ("nack", {"queue": "q", "id": 1, "lease": 2, "delay": 3.0})),
    (b"NACK q 1 2 delay=0.5", ("nack", {"queue": "q", "id": 1, "lease": 2, "delay": 0.5})),
    (b"TOUCH q 1 2 60", ("touch", {"queue": "q", "id": 1, "lease": 2, "visibility": 60.0})),
    (b"TOUCH q 1 2 visibility=1e1",
     ("touch", {"queue": "q", "id": 1, "lease": 2, "visibility": 10.0})),
    (b"ACK queue=q id=1 lease=2", ("ack", {"queue": "q", "id": 1, "lease": 2})),
    (b"ACK lease=2 id=1 queue=q", ("ack", {"queue": "q", "id": 1, "lease": 2})),
    (b"  PING", ("ping", {})),
    (b"ACK q 1\t2", ("ack", {"queue": "q", "id": 1, "lease": 2})),
])
def test_arguments_positional_and_named(line, expected):
    assert command(line + b"\r\n") == expected


@pytest.mark.parametrize(("line", "message"), [
    (b"GET", "RECEIVE needs queue: RECEIVE <queue>"),
    (b"RECEIVE max=2", "RECEIVE needs queue: RECEIVE <queue>"),
    (b"ACK", "ACK needs queue, id, lease: ACK <queue> <id> <lease>"),
    (b"ACK q 1", "ACK needs lease: ACK <queue> <id> <lease>"),
    (b"NACK q delay=1", "NACK needs id, lease: NACK <queue> <id> <lease>"),
    (b"TOUCH q", "TOUCH needs id, lease: TOUCH <queue> <id> <lease>"),
])
def test_missing_arguments(line, message):
    assert rejection(line + b"\n") == (BAD_ARGUMENT, message)


@pytest.mark.parametrize(("line", "message"), [
    (b"ACK q 1 2 3", "too many arguments for ACK: ACK <queue> <id> <lease>"),
    (b"GET q 1 2 3 4",
     "too many arguments for RECEIVE: RECEIVE <queue> <max> <wait> <visibility>"),
    (b"NACK q 1 2 3 4", "too many arguments for NACK: NACK <queue> <id> <lease> <delay>"),
    (b"PING now", "too many arguments for PING: PING "),
    (b"QUIT now", "too many arguments for QUIT: QUIT "),
    (b"STATS q", "too many arguments for STATS: STATS "),
])
def test_too_many_arguments(line, message):
    assert rejection(line + b"\n") == (BAD_ARGUMENT, message)


@pytest.mark.parametrize(("line", "code", "message"), [
    (b"GET q max=1 max=2", BAD_ARGUMENT, "max given twice"),
    (b"GET q 1 max=2", BAD_ARGUMENT, "max given twice"),
    (b"GET q maxx=2", BAD_ARGUMENT, "receive has no field maxx"),
    (b"GET q =2", BAD_ARGUMENT, "receive has no field "),
    (b"NACK q 1 2 dealy=5", BAD_ARGUMENT, "nack has no field dealy"),
    (b"PING x=1", BAD_ARGUMENT, "ping has no field x"),
    (b"ACK q x 2", BAD_ARGUMENT, "id must be an integer, got 'x'"),
    (b"ACK q 1 2.0", BAD_ARGUMENT, "lease must be an integer, got '2.0'"),
    (b"ACK q -1 2", BAD_ARGUMENT, "id must not be negative, got -1"),
    (b"GET q max=0", BAD_ARGUMENT, "max must be at least 1, got 0"),
    (b"GET q max=", BAD_ARGUMENT, "max must be an integer, got ''"),
    (b"GET q wait=soon", BAD_ARGUMENT, "wait must be a number of seconds, got 'soon'"),
    (b"GET q wait=nan", BAD_ARGUMENT, "wait must be a finite number of seconds >= 0, got nan"),
    (b"GET q wait=inf", BAD_ARGUMENT, "wait must be a finite number of seconds >= 0, got inf"),
    (b"GET q wait=-1", BAD_ARGUMENT, "wait must be a finite number of seconds >= 0, got -1.0"),
    (b"GET q wait=301", BAD_ARGUMENT, "wait is 301.0 s, over the limit of 300 s (--max-wait)"),
    (b"GET q max=1001", BATCH_TOO_LARGE, "max is 1001, over the limit of 1000 (--max-batch)"),
    (b"FOO bar", UNKNOWN_COMMAND, f"unknown command 'FOO'; known: {KNOWN}"),
    (b"PUT_MANY q a", UNKNOWN_COMMAND, f"unknown command 'PUT_MANY'; known: {KNOWN}"),
    (b"PINGX", UNKNOWN_COMMAND, f"unknown command 'PINGX'; known: {KNOWN}"),
])
def test_bad_lines(line, code, message):
    assert rejection(line + b"\r\n") == (code, message)


def test_bad_line_does_not_stop_the_next():
    items = decode(b"FOO\nACK q\nPING\n")
    assert [type(i) for i in items] == [Rejected, Rejected, Command]
    assert [i.error.code for i in items[:2]] == [UNKNOWN_COMMAND, BAD_ARGUMENT]
    assert items[2].name == "ping"


def test_empty_lines_are_ignored():
    items = decode(b"\n\r\n   \n \t \r\n\nPING\n\n\r\nQUIT\r\n")
    assert [(i.name, i.args) for i in items] == [("ping", {}), ("quit", {})]
    assert decode(b"\n\n\r\n") == []


# -------------------------------------------------------------- over-long lines

def test_max_line_bytes_of_the_small_limits():
    assert SHORT.max_line_bytes == 1040


def test_over_long_line_in_one_chunk():
    items = decode(b"PUT q " + b"x" * 2000 + b"\r\nPING\r\n", SHORT)
    assert len(items) == 2
    assert isinstance(items[0], Rejected)
    assert items[0].error.code == LINE_TOO_LONG
    assert items[0].error.message == "line is over the limit of 1040 bytes; skipped to its end"
    assert items[1].name == "ping"


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1039, 1040, 1041, 5000])
def test_over_long_line_is_reported_once_and_the_next_line_parses(chunk_size):
    stream = b"PING\n" + b"PUT q " + b"y" * 3000 + b"\nPUT q after\nSTATS\n"
    decoder = TextDecoder(SHORT)
    items = []
    for start in range(0, len(stream), chunk_size):
        items.extend(decoder.feed(stream[start:start + chunk_size]))
    assert [type(i) for i in items] == [Command, Rejected, Command, Command]
    assert items[0].name == "ping"
    assert items[1].error.code == LINE_TOO_LONG
    assert (items[2].name, items[2].args) == ("put", {"queue": "q", "body": b"after"})
    assert items[3].name == "stats"


def test_over_long_line_reported_before_its_end_arrives():
    decoder = TextDecoder(SHORT)
    assert decoder.feed(b"z" * 1040) == []
    items = decoder.feed(b"z")
    assert len(items) == 1
    assert items[0].error.code == LINE_TOO_LONG
    assert decoder.feed(b"z" * 10000) == []
    assert decoder.feed(b"z" * 10000 + b"\n") == []
    assert [i.name for i in decoder.feed(b"PING\n")] == ["ping"]


def test_two_over_long_lines_are_two_errors():
    items = decode((b"x" * 1100 + b"\n") * 2 + b"PING\n", SHORT)
    assert [getattr(i, "name", None) or i.error.code for i in items] == [
        LINE_TOO_LONG, LINE_TOO_LONG, "ping"]


def test_line_of_exactly_the_limit_parses():
    line = b"PUT q " + b"b" * (1040 - 6)
    assert len(line) == 1040
    decoder = TextDecoder(SHORT)
    items = []
    for byte in line + b"\n":
        items.extend(decoder.feed(bytes([byte])))
    assert [(i.name, i.args) for i in items] == [("put", {"queue": "q", "body": b"b" * 1034})]


# ---------------------------------------------------------------- non-UTF-8

@pytest.mark.parametrize(("line", "code"), [
    (b"\xff\xfe", UNKNOWN_COMMAND),
    (b"P\xc3T q x", UNKNOWN_COMMAND),
    (b"GET \xff", INVALID_QUEUE_NAME),
    (b"ACK q \xff 1", BAD_ARGUMENT),
    (b"GET q max=\xff", BAD_ARGUMENT),
    (b"GET q \xff=1", BAD_ARGUMENT),
    (b"\x00", UNKNOWN_COMMAND),
    (b"\xc3\xa9", UNKNOWN_COMMAND),
])
def test_non_utf8_bytes_are_rejected_not_raised(line, code):
    assert rejection(line + b"\n")[0] == code


def test_unknown_command_message_shows_the_bytes_replaced():
    code, message = rejection(b"\xffX\n")
    assert (code, message) == (UNKNOWN_COMMAND, f"unknown command '\ufffdX'; known: {KNOWN}")


# -------------------------------------------------------------------- encoder

def test_put_reply():
    assert TextEncoder().result(Command("put", {}), 1234567) == b"OK 1234567\r\n"


@pytest.mark.parametrize("name", ["ack", "nack"])
def test_ack_and_nack_replies(name):
    assert TextEncoder().result(Command(name, {}), None) == b"OK\r\n"


def test_touch_reply():
    assert TextEncoder().result(Command("touch", {}), 1030.25) == b"OK 1030.250\r\n"


def test_ping_and_quit_replies():
    encoder = TextEncoder()
    assert encoder.result(Command("ping", {}), "pong") == b"PONG\r\n"
    assert encoder.result(Command("quit", {}), None) == b"BYE\r\n"


def test_receive_reply_blocks():
    broker = Broker()
    broker.put("q", b"hello world", 1000.0)
    broker.put("q", b"line\r\nEND\r\n\xff", 1000.25)
    messages = broker.receive("q", 10, None, 1001.0)
    a, b = messages
    reply = TextEncoder().result(Command("receive", {}), messages)
    assert reply == (
        b"MSG %d %d 1 1000.000 11\r\nhello world\r\n" % (a.id, a.lease)
        + b"MSG %d %d 1 1000.250 12\r\nline\r\nEND\r\n\xff\r\n" % (b.id, b.lease)
        + b"END\r\n"
    )


def test_receive_reply_counts_redeliveries():
    broker = Broker(visibility_timeout_s=1.0)
    broker.put("q", b"x", 1000.0)
    broker.receive("q", 1, None, 1000.0)
    broker.advance(1001.0)
    [message] = broker.receive("q", 1, None, 1001.0)
    reply = TextEncoder().result(Command("receive", {}), [message])
    assert reply == b"MSG %d %d 2 1000.000 1\r\nx\r\nEND\r\n" % (message.id, message.lease)


def test_empty_receive_reply():
    assert TextEncoder().result(Command("receive", {}), []) == b"END\r\n"


def test_stats_reply():
    stats = {
        "server": {"version": "0.1.0", "uptime_s": 1.5, "messages": 3},
        "queues": {"jobs": {"ready": 2, "in_flight": 1}, "other.q": {"ready": 0}},
    }
    assert TextEncoder().result(Command("stats", {}), stats) == (
        b"server.version: 0.1.0\r\n"
        b"server.uptime_s: 1.5\r\n"
        b"server.messages: 3\r\n"
        b"queues.jobs.ready: 2\r\n"
        b"queues.jobs.in_flight: 1\r\n"
        b"queues.other.q.ready: 0\r\n"
        b"END\r\n"
    )


def test_stats_reply_with_no_queues():
    assert TextEncoder().result(Command("stats", {}), {"server": {}, "queues": {}}) == b"END\r\n"


def test_error_reply():
    error = CommandError(NOT_FOUND, "no message 5 in queue 'q'")
    assert TextEncoder().error(None, error) == b"ERR NOT_FOUND no message 5 in queue 'q'\r\n"


def test_error_reply_has_no_line_breaks_inside():
    error = CommandError(BAD_ARGUMENT, "one\r\ntwo\nthree\rfour")
    reply = TextEncoder().error(7, error)
    assert reply == b"ERR BAD_ARGUMENT one  two three four\r\n"
    assert reply.count(b"\n") == 1 and reply.count(b"\r") == 1


def test_every_decoder_rejection_encodes_as_one_line():
    stream = (b"FOO\nACK q\nGET \xff\nGET q\x0bx\nPUT a\nb x\n" + b"x" * 1100 + b"\n"
              + b"GET q max=\n\n")
    encoder = TextEncoder()
    for item in decode(stream, SHORT):
        if isinstance(item, Rejected):
            reply = encoder.error(None, item.error)
            assert reply.startswith(b"ERR " + item.error.code.encode() + b" ")
            assert reply.endswith(b"\r\n")
            assert b"\n" not in reply[:-2] and b"\r" not in reply[:-2]


def test_flatten():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": "x"}}, "f": {}}) == [
        ("a", 1), ("b.c", 2), ("b.d.e", "x")]
