"""Tests of text_codec.py: command lines in, reply lines out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wonderq_server.commands import Command, Limits, Rejected
from wonderq_server.errors import (
    BAD_ARGUMENT,
    BATCH_TOO_LARGE,
    BODY_TOO_LARGE,
    FULL,
    HEADERS_TOO_LARGE,
    HTTP_REQUEST,
    INVALID_QUEUE_NAME,
    LEASE_LOST,
    LINE_TOO_LONG,
    MALFORMED,
    NOT_FOUND,
    UNKNOWN_COMMAND,
    CommandError,
    ProtocolError,
)
from wonderq_server.text_codec import TEXT_COMMANDS, TextDecoder, TextEncoder, flatten
from wonderq_server.text_replies import info_lines

LIMITS = Limits()
SHORT = Limits(max_message_bytes=16)  # max_line_bytes == 1040
KNOWN = ("PUT PUT_MANY GET RECEIVE ACK ACK_MANY NACK NACK_MANY TOUCH CREATE_QUEUE "
         "CONFIGURE_QUEUE QUEUE_INFO QUEUES PEEK PURGE DELETE_QUEUE REDRIVE MESSAGE_INFO STATS "
         "PING QUIT AUTH")
PUT_DEFAULTS = {"delay": None, "priority": 0, "headers": None, "expiry": None}
SETTINGS_NONE = {"visibility_timeout": None, "max_deliveries": None, "dead_letter_queue": None,
                 "delay": None, "max_length": None, "expiry": None}


def put_args(queue: str, body: bytes, **options) -> dict:
    return {"queue": queue, "body": body, **PUT_DEFAULTS, **options}


def item(body: bytes, **options) -> bytes | dict:
    """item: a put_many item as checked: a bare body stays bare; one with options is a map."""
    return {"body": body, **PUT_DEFAULTS, **options} if options else body


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
    (b"PUT q hello", ("put", put_args("q", b"hello"))),
    (b"GET q", ("receive", {"queue": "q", **RECEIVE_DEFAULTS})),
    (b"RECEIVE q", ("receive", {"queue": "q", **RECEIVE_DEFAULTS})),
    (b"ACK q 1 2", ("ack", {"queue": "q", "id": 1, "lease": 2})),
    (b"NACK q 1 2", ("nack", {"queue": "q", "id": 1, "lease": 2, "delay": 0.0,
                              "unseen": False})),
    (b"TOUCH q 1 2", ("touch", {"queue": "q", "id": 1, "lease": 2, "visibility": None})),
    (b"ACK_MANY q 1:2", ("ack_many", {"queue": "q", "items": [(1, 2)]})),
    (b"NACK_MANY q 1:2", ("nack_many", {"queue": "q", "items": [(1, 2)], "delay": 0.0,
                                        "unseen": False})),
    (b"CREATE_QUEUE q", ("create_queue", {"queue": "q", **SETTINGS_NONE})),
    (b"CONFIGURE_QUEUE q", ("configure_queue", {"queue": "q", **SETTINGS_NONE})),
    (b"QUEUE_INFO q", ("queue_info", {"queue": "q"})),
    (b"QUEUES", ("queues", {})),
    (b"PEEK q", ("peek", {"queue": "q", "max": 1})),
    (b"PURGE q", ("purge", {"queue": "q"})),
    (b"DELETE_QUEUE q", ("delete_queue", {"queue": "q"})),
    (b"REDRIVE q", ("redrive", {"queue": "q", "max": None})),
    (b"MESSAGE_INFO q 7", ("message_info", {"queue": "q", "id": 7})),
    (b"STATS", ("stats", {})),
    (b"PING", ("ping", {})),
    (b"QUIT", ("quit", {})),
    (b"AUTH s3cr=t", ("auth", {"token": b"s3cr=t"})),
])
@pytest.mark.parametrize("case", [bytes.upper, bytes.lower, bytes.title])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_every_command_word(line, expected, case, ending):
    word, _, rest = line.partition(b" ")
    assert command(case(word) + (b" " + rest if rest else b"") + ending) == expected


def test_command_words_table():
    assert b" ".join(TEXT_COMMANDS).decode() == KNOWN
    assert set(TEXT_COMMANDS.values()) == {
        "put", "put_many", "receive", "ack", "ack_many", "nack", "nack_many", "touch",
        "create_queue", "configure_queue", "queue_info", "queues", "peek", "purge",
        "delete_queue", "redrive", "message_info", "stats", "ping", "quit", "auth"}


@pytest.mark.parametrize(("line", "token"), [
    (b"AUTH abc", b"abc"),
    (b"AUTH   abc==  ", b"abc=="),  # the rest of the line: `=` is no option here
    (b"AUTH token=abc", b"token=abc"),
    (b"auth \xff\x00x", b"\xff\x00x"),  # bytes as they are; the server's check decides
])
def test_auth_token_is_the_rest_of_the_line(line, token):
    assert command(line + b"\n") == ("auth", {"token": token})


@pytest.mark.parametrize("line", [b"AUTH", b"AUTH   "])
def test_auth_without_a_token(line):
    assert rejection(line + b"\n") == (BAD_ARGUMENT, "auth needs the field 'token'")


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
        ("put", put_args("jobs", b"a b c")),
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


@pytest.mark.parametrize(("tail", "said"), [
    (b"PUT q hello", "inside a line"),
    (b"PING\nPUT q hello", "inside a line"),
    (b"PUT_MANY q 3\na\nb", "after 1 of the PUT_MANY's 3 body lines"),
    (b"PUT_MANY q 2\na\n", "after 1 of the PUT_MANY's 2 body lines"),
    (b"PUT_MANY q 2\na\n" + b"x" * 5000, "after 1 of the PUT_MANY's 2 body lines"),
])
def test_what_the_end_of_input_leaves_unfinished_is_answered_not_run(tail, said):
    decoder = TextDecoder(LIMITS)
    ran = decoder.feed(tail)
    assert all(isinstance(i, Command) and i.name == "ping" for i in ran)
    [left] = decoder.end_of_input()
    assert isinstance(left, Rejected) and left.error.code == MALFORMED
    assert said in str(left.error)
    assert decoder.end_of_input() == []  # said once


@pytest.mark.parametrize("tail", [b"", b"PING\n", b"PING\r\n  \t", b"x" * 2000])
def test_a_finished_input_leaves_nothing_at_its_end(tail):
    decoder = TextDecoder(SHORT)
    decoder.feed(tail)  # an over-long line was answered LINE_TOO_LONG already
    assert decoder.end_of_input() == []


def test_cr_split_from_its_lf():
    decoder = TextDecoder(LIMITS)
    assert decoder.feed(b"PUT q body\r") == []
    assert [(i.name, i.args) for i in decoder.feed(b"\n")] == [
        ("put", put_args("q", b"body"))]


# ------------------------------------------------------------------------ PUT

@pytest.mark.parametrize(("line", "body"), [
    (b"PUT q hello world\n", b"hello world"),
    (b"PUT q  two leading spaces\n", b" two leading spaces"),
    (b"PUT q trailing  \r\n", b"trailing  "),
    (b"PUT q tab\there\n", b"tab\there"),
    (b"PUT q -- max=5 wait=1\n", b"max=5 wait=1"),
    (b"PUT q Max=5 wait=1\n", b"Max=5 wait=1"),
    (b"PUT q =5\n", b"=5"),
    (b"PUT q 5=5\n", b"5=5"),
    (b"PUT q \xff\xfe\x00raw\n", b"\xff\xfe\x00raw"),
    (b"PUT q \n", b""),
    (b"PUT q\n", b""),
    (b"put q PUT q x\n", b"PUT q x"),
    (b"PUT  q two spaces before the queue, as between any words\n",
     b"two spaces before the queue, as between any words"),
])
def test_put_body_is_the_rest_of_the_line(line, body):
    assert command(line) == ("put", put_args("q", body))


def test_put_without_a_queue():
    usage = "PUT needs a queue: PUT <queue> [option=value ...] [--] <body>"
    assert rejection(b"PUT\n") == (BAD_ARGUMENT, usage)
    assert rejection(b"PUT   \n") == (BAD_ARGUMENT, usage)


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
    (b"NACK q 1 2 3", ("nack", {"queue": "q", "id": 1, "lease": 2, "delay": 3.0,
                                "unseen": False})),
    (b"NACK q 1 2 delay=0.5", ("nack", {"queue": "q", "id": 1, "lease": 2, "delay": 0.5,
                                        "unseen": False})),
    (b"NACK q 1 2 unseen=true", ("nack", {"queue": "q", "id": 1, "lease": 2, "delay": 0.0,
                                          "unseen": True})),
    (b"NACK_MANY q unseen=yes 1:2", ("nack_many", {"queue": "q", "items": [(1, 2)],
                                                   "delay": 0.0, "unseen": True})),
    (b"TOUCH q 1 2 60", ("touch", {"queue": "q", "id": 1, "lease": 2, "visibility": 60.0})),
    (b"TOUCH q 1 2 visibility=1e1",
     ("touch", {"queue": "q", "id": 1, "lease": 2, "visibility": 10.0})),
    (b"ACK queue=q id=1 lease=2", ("ack", {"queue": "q", "id": 1, "lease": 2})),
    (b"ACK lease=2 id=1 queue=q", ("ack", {"queue": "q", "id": 1, "lease": 2})),
    (b"  PING", ("ping", {})),
    (b"ACK q 1\t2", ("ack", {"queue": "q", "id": 1, "lease": 2})),
    # A tab ends the command word too: "GET\tq" was an unknown command 'GET\tq'.
    (b"GET\tq\t10", ("receive", {"queue": "q", "max": 10, "wait": 0.0, "visibility": None})),
    (b"PUT\tq a\tb", ("put", put_args("q", b"a\tb"))),
])
def test_arguments_positional_and_named(line, expected):
    assert command(line + b"\r\n") == expected


@pytest.mark.parametrize(("line", "message"), [
    # A reviewer typed GET and was told what RECEIVE needs, without its options.
    (b"GET", "GET needs queue: GET <queue> [max=...] [wait=...] [visibility=...]"),
    # In the words the user typed: RECEIVE, not its alias GET.
    (b"RECEIVE max=2", "RECEIVE needs queue: RECEIVE <queue> [max=...] [wait=...] "
                       "[visibility=...]"),
    (b"receive q 1 2 3 4", "too many arguments for RECEIVE: RECEIVE <queue> [max=...] "
                           "[wait=...] [visibility=...]"),
    (b"ACK", "ACK needs queue, id, lease: ACK <queue> <id> <lease>"),
    (b"ACK q 1", "ACK needs lease: ACK <queue> <id> <lease>"),
    (b"NACK q delay=1", "NACK needs id, lease: NACK <queue> <id> <lease> [delay=...] "
                        "[unseen=...]"),
    (b"TOUCH q", "TOUCH needs id, lease: TOUCH <queue> <id> <lease> [visibility=...]"),
    # ...and `PING x` said "too many arguments for PING: PING" (a trailing space).
    (b"PING x", "too many arguments for PING: PING"),
    (b"GET q =5", "a word starts with '=' (='5'): options are name=value"),
])
def test_missing_arguments(line, message):
    assert rejection(line + b"\n") == (BAD_ARGUMENT, message)


@pytest.mark.parametrize(("line", "message"), [
    (b"ACK q 1 2 3", "too many arguments for ACK: ACK <queue> <id> <lease>"),
    (b"GET q 1 2 3 4",
     "too many arguments for GET: GET <queue> [max=...] [wait=...] [visibility=...]"),
    (b"NACK q 1 2 3 true 5",
     "too many arguments for NACK: NACK <queue> <id> <lease> [delay=...] [unseen=...]"),
    (b"PING now", "too many arguments for PING: PING"),
    (b"QUIT now", "too many arguments for QUIT: QUIT"),
    (b"STATS q", "too many arguments for STATS: STATS"),
])
def test_too_many_arguments(line, message):
    assert rejection(line + b"\n") == (BAD_ARGUMENT, message)


HTTP_REFUSAL = ("an HTTP request: this port speaks WonderQ's protocol (PROTOCOL.md), not HTTP, "
                "and closes the connection; the server serves /metrics and /stats on its "
                "--metrics-port")


@pytest.mark.parametrize(("line", "code", "message"), [
    (b"GET q max=1 max=2", BAD_ARGUMENT, "max given twice"),
    (b"GET q 1 max=2", BAD_ARGUMENT, "max given twice"),
    # A word in the place of a field named before it (a reviewer had only "max given
    # twice" for a queue written after its options):
    (b"GET max=5 q", BAD_ARGUMENT, "max given twice: by name, and as the word 'q' in its "
     "place: GET <queue> [max=...] [wait=...] [visibility=...]"),
    (b"GET q maxx=2", BAD_ARGUMENT, "receive has no field maxx"),
    (b"GET q =2", BAD_ARGUMENT, "a word starts with '=' (='2'): options are name=value"),
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
    (b"GET q wait=1e400", BAD_ARGUMENT, "wait must be a finite number of seconds >= 0, "
     "got 1e400 (too large for a number of seconds)"),
    (b"GET q visibility=1e-300", BAD_ARGUMENT, "visibility must be at least 0.001 s, got "
     "1e-300 (a lease over at once would hand the message out again): leave it out for "
     "the queue's setting, or nack to give a message back now"),
    (b"GET q wait=301", BAD_ARGUMENT, "wait is 301.0 s, over the limit of 300 s (--max-wait)"),
    (b"GET q max=1001", BATCH_TOO_LARGE, "max is 1001, over the limit of 1000 (--max-batch)"),
    (b"FOO bar", UNKNOWN_COMMAND, f"unknown command 'FOO'; known: {KNOWN}"),
    (b"PUT_MANYX q a", UNKNOWN_COMMAND, f"unknown command 'PUT_MANYX'; known: {KNOWN}"),
    (b"PINGX", UNKNOWN_COMMAND, f"unknown command 'PINGX'; known: {KNOWN}"),
])
def test_bad_lines(line, code, message):
    assert rejection(line + b"\r\n") == (code, message)


@pytest.mark.parametrize("line", [
    # A browser or scraper at the message port (a newcomer's review had "max must be an
    # integer, got 'HTTP/1.1'" for the first):
    b"GET / HTTP/1.1", b"POST /metrics HTTP/1.0", b"OPTIONS * HTTP/2",
    # The Host header, for a request line refused as too long before it (a reviewer):
    b"Host: 127.0.0.1:7711", b"host:localhost", b"HOST: x",
])
def test_an_http_request_is_a_protocol_error_that_closes_the_connection(line):
    item = one(line + b"\r\n")
    assert isinstance(item, Rejected)
    assert type(item.error) is ProtocolError and item.error.closes_connection
    assert (item.error.code, item.error.message) == (HTTP_REQUEST, HTTP_REFUSAL)


@pytest.mark.parametrize("line", [
    # Lines that run are never looked at, and refused ones only when they are HTTP's.
    b"GET hosts", b"PUT q Host: me", b"PUT q GET / HTTP/1.1",
])
def test_commands_that_mention_http_words_run(line):
    assert isinstance(one(line + b"\n"), Command)


def test_a_refused_line_that_only_looks_like_http_keeps_the_connection():
    assert rejection(b"GET / HTTP/x\n")[0] == BAD_ARGUMENT  # max must be an integer
    assert rejection(b"hostname: x\n")[0] == UNKNOWN_COMMAND


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
    assert items[0].error.message == (
        "line is over the limit of 1040 bytes (--max-message-bytes + 1024); skipped to its end")
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
    assert (items[2].name, items[2].args) == ("put", put_args("q", b"after"))
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


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
@pytest.mark.parametrize("chunk_size", [1, 1040, 1041, 2000])
def test_line_of_exactly_the_limit_parses(end, chunk_size):
    # The limit does not count the line's end: with CRLF a line of exactly the limit was
    # LINE_TOO_LONG, with LF it parsed (a reviewer).
    line = b"PUT q " + b"b" * (1040 - 6)
    assert len(line) == 1040
    stream = line + end + b"PING" + end
    decoder = TextDecoder(SHORT)
    items = []
    for start in range(0, len(stream), chunk_size):
        items.extend(decoder.feed(stream[start:start + chunk_size]))
    assert [(i.name, i.args) for i in items] == [("put", put_args("q", b"b" * 1034)),
                                                  ("ping", {})]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r\r\n"])
@pytest.mark.parametrize("chunk_size", [1, 1041, 5000])
def test_line_one_byte_over_the_limit_is_too_long_whatever_its_end(end, chunk_size):
    line = b"PUT q " + b"b" * (1041 - 6)  # with CRCRLF: 1040 bytes and a CR that counts
    if end == b"\r\r\n":
        line = line[:-1]
    stream = line + end + b"PING" + end
    decoder = TextDecoder(SHORT)
    items = []
    for start in range(0, len(stream), chunk_size):
        items.extend(decoder.feed(stream[start:start + chunk_size]))
    assert [getattr(i, "name", None) or i.error.code for i in items] == [
        LINE_TOO_LONG, "ping"]


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


# ---------------------------------------------------------------- PUT options

@pytest.mark.parametrize(("line", "args"), [
    (b"PUT q delay=5 hello", put_args("q", b"hello", delay=5.0)),
    (b"PUT q priority=-3 expiry=60 hello world", put_args("q", b"hello world", priority=-3,
                                                          expiry=60.0)),
    (b"PUT q expiry=0 delay=0 x", put_args("q", b"x", delay=0.0, expiry=0.0)),
    (b"PUT q header.trace=abc header.user=42 body",
     put_args("q", b"body", headers={"trace": "abc", "user": "42"})),
    (b"PUT q header.a%20b=c%3Dd%0A%25 x", put_args("q", b"x", headers={"a b": "c=d\n%"})),
    (b"PUT q header.k=v=w x", put_args("q", b"x", headers={"k": "v=w"})),
    (b"PUT q header.%C3%A9=%E2%9C%93 x", put_args("q", b"x", headers={"é": "✓"})),
    (b"PUT q header.empty= x", put_args("q", b"x", headers={"empty": ""})),
    (b"PUT q -- delay=5 is the body", put_args("q", b"delay=5 is the body")),
    (b"PUT q delay=1 -- -- x", put_args("q", b"-- x", delay=1.0)),
    (b"PUT q delay=1 --", put_args("q", b"", delay=1.0)),
    (b"PUT q --", put_args("q", b"")),
    (b"PUT q delay=5", put_args("q", b"", delay=5.0)),
    (b"PUT q delay=5 ", put_args("q", b"", delay=5.0)),
    (b"PUT q delay=5  two spaces", put_args("q", b" two spaces", delay=5.0)),
    (b"PUT q body delay=5", put_args("q", b"body delay=5")),
    (b"PUT q Delay=5 x", put_args("q", b"Delay=5 x")),
    (b"PUT q -- delays=5 x", put_args("q", b"delays=5 x")),
    (b"PUT q delay=1 -- visibility=5 x", put_args("q", b"visibility=5 x", delay=1.0)),
    (b"PUT q x delays=5", put_args("q", b"x delays=5")),
    (b"PUT q ---", put_args("q", b"---")),
])
def test_put_options(line, args):
    assert command(line + b"\r\n") == ("put", args)


@pytest.mark.parametrize(("line", "code", "message"), [
    (b"PUT q delay=soon x", BAD_ARGUMENT, "delay must be a number of seconds, got 'soon'"),
    (b"PUT q delay= x", BAD_ARGUMENT, "delay must be a number of seconds, got ''"),
    (b"PUT q delay=1_0 x", BAD_ARGUMENT, "delay must be a number of seconds, got '1_0'"),
    (b"PUT q delay=\xd9\xa1 x", BAD_ARGUMENT, "delay must be a number of seconds, got '\u0661'"),
    (b"PUT q delay=43201 x", BAD_ARGUMENT,
     "delay is 43201.0 s, over the limit of 43200 s (--max-delay)"),
    (b"PUT q priority=1.5 x", BAD_ARGUMENT, "priority must be an integer, got '1.5'"),
    (b"PUT q priority=2147483648 x", BAD_ARGUMENT,
     "priority must be from -2147483648 to 2147483647, got 2147483648"),
    (b"PUT q expiry=-1 x", BAD_ARGUMENT,
     "expiry must be a finite number of seconds >= 0, got -1.0"),
    (b"PUT q delay=1 delay=2 x", BAD_ARGUMENT, "delay given twice"),
    (b"PUT q header.a=1 header.a=2 x", BAD_ARGUMENT, "header 'a' given twice"),
    (b"PUT q header.a=1 header.%61=2 x", BAD_ARGUMENT, "header 'a' given twice"),
    (b"PUT q header.=1 x", BAD_ARGUMENT, "headers keys must not be empty"),
    (b"PUT q header.%ff=1 x", BAD_ARGUMENT,
     "header key is not UTF-8 once percent-decoded: b'%ff'"),
    (b"PUT q header.k=\xff x", BAD_ARGUMENT,
     "header 'k' is not UTF-8 once percent-decoded: b'\\xff'"),
    # A reviewer's %zz was stored as those three characters and sent back as %25zz.
    (b"PUT q header.k=%zz x", BAD_ARGUMENT,
     "header 'k' has a % not followed by two hex digits (write % as %25): b'%zz'"),
    (b"PUT q header.k%=1 x", BAD_ARGUMENT,
     "header key has a % not followed by two hex digits (write % as %25): b'k%'"),
    (b"PUT q header.k=%4 x", BAD_ARGUMENT,
     "header 'k' has a % not followed by two hex digits (write % as %25): b'%4'"),
    (b"PUT q " + b" ".join(b"header.h%d=" % i for i in range(33)) + b" x", HEADERS_TOO_LARGE,
     "headers has 33 entries, over the limit of 32 (--max-headers)"),
    (b"PUT q header.k=" + b"v" * 4096 + b" x", HEADERS_TOO_LARGE,
     "headers are 4097 bytes, over the limit of 4096 (--max-header-bytes)"),
    (b"PUT bad/q delay=1 x", INVALID_QUEUE_NAME, None),
    # A misspelt option started the body: stored as part of it, its default used, no word
    # said (a newcomer's review). Unknown option-like words are refused, as in binary mode.
    (b"PUT q dealy=30 hello", BAD_ARGUMENT,
     "PUT has no field dealy; its options are delay=, priority=, expiry= and "
     "header.KEY= (a body that starts with such a word goes after --: "
     "PUT <queue> -- <body>)"),
    (b"PUT q delay=1 visibility=5 x", BAD_ARGUMENT, "PUT has no field visibility; "),
    (b"PUT q headers.k=v x", BAD_ARGUMENT, "PUT has no field headers.k; "),
    (b"PUT q max=5 wait=1", BAD_ARGUMENT, "PUT has no field max; "),
    (b"PUT q a=b", BAD_ARGUMENT, "PUT has no field a; "),
])
def test_bad_put_options(line, code, message):
    got_code, got_message = rejection(line + b"\n")
    assert got_code == code
    if message is not None and message.endswith("; "):
        assert got_message.startswith(message)
    elif message is not None:
        assert got_message == message


def test_put_options_one_byte_at_a_time():
    stream = b"PUT q priority=2 header.x=%20 -- body\r\nPING\n"
    decoder = TextDecoder(LIMITS)
    items = []
    for byte in stream:
        items.extend(decoder.feed(bytes([byte])))
    assert [(i.name, i.args) for i in items] == [
        ("put", put_args("q", b"body", priority=2, headers={"x": " "})), ("ping", {})]


# ------------------------------------------------------------------- PUT_MANY

def test_put_many_collects_its_body_lines():
    items = decode(b"PUT_MANY q 3\r\nfirst body\r\n\r\n  spaced  \nPING\n")
    assert [(i.name, i.args) for i in items] == [
        ("put_many", {"queue": "q", "bodies": [item(b"first body"), item(b""),
                                               item(b"  spaced  ")], **PUT_DEFAULTS}),
        ("ping", {}),
    ]


def test_put_many_body_lines_are_bodies_whatever_they_say():
    items = decode(b"PUT_MANY q 2\nPING\nPUT_MANY q 5\nQUIT\n")
    assert [(i.name, i.args) for i in items] == [
        ("put_many", {"queue": "q", "bodies": [item(b"PING"), item(b"PUT_MANY q 5")],
                      **PUT_DEFAULTS}),
        ("quit", {}),
    ]


def test_put_many_options_apply_to_every_body():
    [got] = decode(b"put_many jobs 2 delay=3 priority=-1 expiry=9 header.k=v%20w\na\nb\n")
    options = {"delay": 3.0, "priority": -1, "headers": {"k": "v w"}, "expiry": 9.0}
    assert (got.name, got.args) == ("put_many", {
        "queue": "jobs", "bodies": [item(b"a", **options), item(b"b", **options)], **options})


def test_put_many_whitespace_between_header_words():
    [got] = decode(b"PUT_MANY   q\t1  priority=4 \nx\n")
    assert got.args["bodies"] == [item(b"x", priority=4)]


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 13, 1000])
def test_put_many_in_any_chunks(chunk_size):
    stream = b"PING\nPUT_MANY q 3 priority=1\r\none\r\ntwo\n\r\nSTATS\r\n"
    decoder = TextDecoder(LIMITS)
    items = []
    for start in range(0, len(stream), chunk_size):
        items.extend(decoder.feed(stream[start:start + chunk_size]))
    assert [(i.name, i.args) for i in items] == [
        ("ping", {}),
        ("put_many", {"queue": "q", "bodies": [item(b"one", priority=1),
                                               item(b"two", priority=1),
                                               item(b"", priority=1)],
                      **PUT_DEFAULTS, "priority": 1}),
        ("stats", {}),
    ]


def test_put_many_waits_for_its_last_line():
    decoder = TextDecoder(LIMITS)
    assert decoder.feed(b"PUT_MANY q 2\n") == []
    assert decoder.feed(b"a\n") == []
    assert decoder.feed(b"b") == []
    [got] = decoder.feed(b"\n")
    assert got.args["bodies"] == [item(b"a"), item(b"b")]


def test_put_many_body_keeps_binary_bytes():
    [got] = decode(b"PUT_MANY q 1\n\xff\x00 \t x\r\n")
    assert got.args["bodies"] == [item(b"\xff\x00 \t x")]


@pytest.mark.parametrize(("header", "code", "message"), [
    (b"PUT_MANY", BAD_ARGUMENT,
     "PUT_MANY needs queue, count: PUT_MANY <queue> <count> [option=value ...]"),
    (b"PUT_MANY q", BAD_ARGUMENT,
     "PUT_MANY needs count: PUT_MANY <queue> <count> [option=value ...]"),
    (b"PUT_MANY q two", BAD_ARGUMENT, "count must be an integer, got 'two'"),
    (b"PUT_MANY q 0", BAD_ARGUMENT, "count must be at least 1, got 0"),
    (b"PUT_MANY q -2", BAD_ARGUMENT, "count must be at least 1, got -2"),
])
def test_a_put_many_header_without_a_count_swallows_nothing(header, code, message):
    # No telling where its bodies would end: the lines after it are read as commands.
    items = decode(header + b"\r\nPING\r\nACK q 1 2\r\n")
    assert len(items) == 3, items
    rejected, ping, ack = items
    assert isinstance(rejected, Rejected)
    assert (rejected.error.code, rejected.error.message) == (code, message)
    assert (ping.name, ack.name) == ("ping", "ack")


DROPPED = "; nothing is stored, and the 2 lines after it are read as its bodies and dropped"


@pytest.mark.parametrize(("header", "code", "message"), [
    (b"PUT_MANY q 1001", BATCH_TOO_LARGE, "count is 1001, over the limit of 1000 (--max-batch)"),
    (b"PUT_MANY q 2 body", BAD_ARGUMENT,
     "too many arguments for PUT_MANY: PUT_MANY <queue> <count> [option=value ...]"),
    (b"PUT_MANY q 2 max=3", BAD_ARGUMENT, "PUT_MANY has no field max"),
    (b"PUT_MANY q 2 =5", BAD_ARGUMENT, "a word starts with '=' (='5'): options are name=value"),
    (b"PUT_MANY q 2 delay=x", BAD_ARGUMENT, "delay must be a number of seconds, got 'x'"),
    (b"PUT_MANY q 2 priority=1 priority=2", BAD_ARGUMENT, "priority given twice"),
    (b"PUT_MANY q 2 header.=x", BAD_ARGUMENT, "headers keys must not be empty"),
    (b"PUT_MANY bad/q 2", INVALID_QUEUE_NAME, None),
])
def test_a_refused_put_many_header_with_a_count_drops_its_bodies(header, code, message):
    # A reviewer's PUT_MANY with a bad option had the bodies "PURGE victim" and
    # "DELETE_QUEUE victim": read as commands, they purged and deleted the queue.
    # The header is answered at once; its count of lines are its bodies, dropped.
    count = 1001 if b"1001" in header else 2
    bodies = b"".join((b"PURGE victim\r\n", b"DELETE_QUEUE victim\r\n")[i % 2]
                      for i in range(count))
    decoder = TextDecoder(Limits())
    [rejected] = decoder.feed(header + b"\r\n")
    assert isinstance(rejected, Rejected) and rejected.error.code == code
    if message is not None:
        assert rejected.error.message == message + DROPPED.replace("2", str(count))
    assert decoder.feed(bodies) == []
    assert [i.name for i in decoder.feed(b"PING\nACK q 1 2\n")] == ["ping", "ack"]


def test_a_refused_put_many_header_says_one_line_and_its_cut_body_is_dropped_quietly():
    decoder = TextDecoder(Limits())
    [rejected] = decoder.feed(b"PUT_MANY q 1 delay=x\n")
    assert rejected.error.message.endswith(
        "; nothing is stored, and the line after it is read as its body and dropped")
    assert decoder.feed(b"PURGE q") == []
    assert decoder.end_of_input() == []  # answered already: no MALFORMED for its body


def test_a_refused_count_over_the_batch_limit_keeps_no_body():
    decoder = TextDecoder(Limits())
    [rejected] = decoder.feed(b"PUT_MANY q 50000\n")
    assert rejected.error.code == BATCH_TOO_LARGE
    assert decoder.feed(b"x" * 100 + b"\n" * 40_000) == []
    assert decoder._block is not None and decoder._block.bodies == []
    assert decoder.feed(b"\n" * 9_999) == []
    assert [i.name for i in decoder.feed(b"\nPING\n")] == ["ping"]


def test_a_refused_count_with_leading_zeros_still_drops_its_bodies():
    # A reviewer's `PUT_MANY bad/name 000000002` ran its body "PURGE victim": the header
    # parser reads that count, so the refusal must too.
    items = decode(b"PUT_MANY bad/name 000000002\nPURGE victim\nPURGE victim\nPING\n")
    assert [getattr(i, "name", None) or i.error.code for i in items] == [
        INVALID_QUEUE_NAME, "ping"]


def test_a_count_no_request_could_have_drops_nothing():
    # A reviewer's 20-digit count made every later line a dropped body, QUIT included,
    # for good. No block can carry more bodies than --max-frame-bytes has bytes: such a
    # count is a typo, and the lines after it are commands.
    limits = Limits()
    for count in (b"99999999999999999999", b"%d" % (limits.max_frame_bytes + 1)):
        items = decode(b"PUT_MANY q " + count + b"\nPING\nQUIT\n", limits)
        assert [getattr(i, "name", None) or i.error.code for i in items] == [
            BATCH_TOO_LARGE, "ping", "quit"]
        assert "dropped" not in items[0].error.message


def test_put_many_count_uses_the_decoders_limits():
    code, message = rejection(b"PUT_MANY q 4\n", Limits(max_batch=3))
    assert (code, message) == (BATCH_TOO_LARGE, "count is 4, over the limit of 3 (--max-batch)"
                               + DROPPED.replace("2", "4"))
    [got] = decode(b"PUT_MANY q 3\na\nb\nc\n", Limits(max_batch=3))
    assert len(got.args["bodies"]) == 3


def test_an_over_long_line_starts_no_block_unless_it_is_a_put_many_with_a_count():
    items = decode(b"PUT q " + b"x" * 1100 + b"\nPING\nPING\n", SHORT)
    assert [getattr(i, "name", None) or i.error.code for i in items] == [
        LINE_TOO_LONG, "ping", "ping"]
    items = decode(b"PUT_MANY q " + b"x" * 1100 + b"\nPING\n", SHORT)  # no count
    assert [getattr(i, "name", None) or i.error.code for i in items] == [
        LINE_TOO_LONG, "ping"]


@pytest.mark.parametrize("chunk_size", [1, 700, 100_000])
@pytest.mark.parametrize("after_count", [
    b" header.k=" + b"v" * 1100,
    # Only whitespace after the count, past the 4 KiB looked at (another reviewer): the
    # count is still whole, as a space follows it there.
    b" " * 5000, b"\t" * 1100,
], ids=["headers", "spaces", "tabs"])
def test_an_over_long_put_many_header_still_drops_its_bodies(chunk_size, after_count):
    # A reviewer's header with 30 headers of about 3 KB (within --max-header-bytes but over
    # the line limit of a small --max-message-bytes) was LINE_TOO_LONG, and its bodies
    # "PURGE victim" and "DELETE_QUEUE victim" ran as commands.
    stream = (b"PUT_MANY victim 2" + after_count
              + b"\nPURGE victim\nDELETE_QUEUE victim\nPING\n")
    decoder = TextDecoder(SHORT)
    items = []
    for start in range(0, len(stream), chunk_size):
        items.extend(decoder.feed(stream[start:start + chunk_size]))
    [rejected, ping] = items
    assert rejected.error.code == LINE_TOO_LONG
    assert rejected.error.message == (
        "line is over the limit of 1040 bytes (--max-message-bytes + 1024); skipped to its end; "
        "nothing is stored, and "
        "the 2 lines after it are read as its bodies and dropped")
    assert ping.name == "ping"


@pytest.mark.parametrize("chunk_size", [1, 100, 1041, 5000])
def test_over_long_body_line_is_that_bodys_error(chunk_size):
    stream = b"PUT_MANY q 3\nok\n" + b"y" * 3000 + b"\nlast\nPING\n"
    decoder = TextDecoder(SHORT)
    items = []
    for start in range(0, len(stream), chunk_size):
        items.extend(decoder.feed(stream[start:start + chunk_size]))
    assert [i.name for i in items] == ["put_many", "ping"]
    first, bad, last = items[0].args["bodies"]
    assert (first, last) == (item(b"ok"), item(b"last"))
    assert type(bad) is CommandError
    assert bad.code == BODY_TOO_LARGE
    assert bad.message == ("body line is over 1040 bytes, over the limit of 16 "
                           "(--max-message-bytes); skipped")


def test_over_long_last_body_line_counts_once_it_ends():
    # Skipped as it comes (nothing of it is kept), but the block runs only once the line
    # has ended: a line the input never ends leaves the block short (end_of_input).
    decoder = TextDecoder(SHORT)
    assert decoder.feed(b"PUT_MANY q 1\n") == []
    assert decoder.feed(b"z" * 1041) == []
    assert decoder.feed(b"z" * 5000) == []
    [got] = decoder.feed(b"z\n")
    assert got.args["bodies"][0].code == BODY_TOO_LARGE
    assert [i.name for i in decoder.feed(b"PING\n")] == ["ping"]


def test_a_block_counts_as_held_memory_only_the_bodies_it_keeps():
    # buffered_bytes is what the server's --max-client-memory counts for a connection. The
    # lines of a refused header, and those of a block past --max-frame-bytes, are dropped
    # as they come, yet were counted: a reviewer's connection holding nothing was cut off
    # as the biggest holder after 5 MB of dropped lines.
    limits = Limits(max_message_bytes=100, max_frame_bytes=250, max_batch=10)
    kept = TextDecoder(limits)
    assert kept.feed(b"PUT_MANY q 3\n" + b"b" * 100 + b"\n" + b"c" * 50 + b"\n") == []
    assert kept.buffered_bytes() == 150
    refused = TextDecoder(limits)
    [answer] = refused.feed(b"PUT_MANY q 20\n")  # over --max-batch: its 20 lines dropped
    assert answer.error.code == BATCH_TOO_LARGE
    assert refused.feed((b"d" * 100 + b"\n") * 19 + b"d" * 10) == []
    assert refused.buffered_bytes() == 10  # the last line's start, not yet ended
    too_big = TextDecoder(limits)
    assert too_big.feed(b"PUT_MANY q 5\n" + (b"e" * 100 + b"\n") * 4) == []
    assert too_big.buffered_bytes() == 0  # past 250 bytes together: nothing is kept
    [answer] = too_big.feed(b"e\n")
    assert answer.error.code == BATCH_TOO_LARGE


def test_put_many_bodies_over_the_frame_limit_together_are_refused_whole():
    limits = Limits(max_message_bytes=100, max_frame_bytes=250)
    decoder = TextDecoder(limits)
    items = decoder.feed(b"PUT_MANY q 4\n" + (b"b" * 100 + b"\n") * 4 + b"PING\n")
    assert len(items) == 2
    assert isinstance(items[0], Rejected)
    assert items[0].error.code == BATCH_TOO_LARGE
    assert items[0].error.message == ("the 4 bodies are over 250 bytes together "
                                      "(--max-frame-bytes); nothing was stored")
    assert items[1].name == "ping"
    [got] = decoder.feed(b"PUT_MANY q 2\n" + (b"b" * 100 + b"\n") * 2)
    assert got.name == "put_many"


# ------------------------------------------------------------ ACK_MANY, NACK_MANY

@pytest.mark.parametrize(("line", "expected"), [
    (b"ACK_MANY q 1:2 3:4", ("ack_many", {"queue": "q", "items": [(1, 2), (3, 4)]})),
    (b"ack_many q 18446744073709551615:0",
     ("ack_many", {"queue": "q", "items": [(2**64 - 1, 0)]})),
    (b"ACK_MANY queue=q 1:2", ("ack_many", {"queue": "q", "items": [(1, 2)]})),
    (b"NACK_MANY q delay=5 1:2 3:4",
     ("nack_many", {"queue": "q", "items": [(1, 2), (3, 4)], "delay": 5.0, "unseen": False})),
    (b"NACK_MANY q 1:2 delay=0.5",
     ("nack_many", {"queue": "q", "items": [(1, 2)], "delay": 0.5, "unseen": False})),
])
def test_lease_item_commands(line, expected):
    assert command(line + b"\n") == expected


def test_unreadable_lease_items_are_their_own_errors():
    [got] = decode(b"ACK_MANY q 1:2 x 3: :4 -1:2 5:6:7 1.5:2 8:9\n")
    items = got.args["items"]
    assert items[0] == (1, 2) and items[-1] == (8, 9)
    assert [(e.code, e.message) for e in items[1:-1]] == [
        (BAD_ARGUMENT, "items[1] must be <id>:<lease>, got 'x'"),
        (BAD_ARGUMENT, "items[2].lease must be an integer, got ''"),
        (BAD_ARGUMENT, "items[3].id must be an integer, got ''"),
        (BAD_ARGUMENT, "items[4].id must not be negative, got -1"),
        (BAD_ARGUMENT, "items[5].lease must be an integer, got '6:7'"),
        (BAD_ARGUMENT, "items[6].id must be an integer, got '1.5'"),
    ]


@pytest.mark.parametrize(("line", "code", "message"), [
    (b"ACK_MANY", BAD_ARGUMENT, "ACK_MANY needs queue: ACK_MANY <queue> <id>:<lease> ..."),
    (b"NACK_MANY delay=1", BAD_ARGUMENT,
     "NACK_MANY needs queue: NACK_MANY <queue> [delay=S] <id>:<lease> ..."),
    (b"ACK_MANY q", BAD_ARGUMENT, "items must not be empty"),
    (b"ACK_MANY q delay=1 1:2", BAD_ARGUMENT, "ack_many has no field delay"),
    (b"ACK_MANY q items=1:2", BAD_ARGUMENT, "ACK_MANY takes its items as <id>:<lease> words"),
    (b"NACK_MANY q delay=x 1:2", BAD_ARGUMENT, "delay must be a number of seconds, got 'x'"),
    (b"NACK_MANY q delay=1 delay=2 1:2", BAD_ARGUMENT, "delay given twice"),
    (b"ACK_MANY bad/q 1:2", INVALID_QUEUE_NAME, None),
    (b"ACK_MANY q " + b" ".join([b"1:2"] * 1001), BATCH_TOO_LARGE,
     "items has 1001 items, over the limit of 1000 (--max-batch)"),
])
def test_bad_lease_item_lines(line, code, message):
    got_code, got_message = rejection(line + b"\n")
    assert got_code == code
    if message is not None:
        assert got_message == message


@pytest.mark.parametrize(("line", "reader", "code", "message"), [
    (b"ACK_MANY q " + b"x " * 5000, "_lease_item", BATCH_TOO_LARGE,
     "items has 5000 items, over the limit of 1000 (--max-batch)"),
    (b"NACK_MANY q delay=1 " + b"1:2 " * 1001, "_lease_item", BATCH_TOO_LARGE,
     "items has 1001 items, over the limit of 1000 (--max-batch)"),
    (b"PUT q " + b" ".join(b"header.k%d=v" % i for i in range(5000)) + b" body",
     "_percent_decoded", HEADERS_TOO_LARGE,
     "headers has 5000 entries, over the limit of 32 (--max-headers)"),
    (b"PUT q " + b" ".join(b"header.k%d=v" % i for i in range(40)) + b" delay=1 -- body",
     "_percent_decoded", HEADERS_TOO_LARGE,
     "headers has 40 entries, over the limit of 32 (--max-headers)"),
], ids=["ack_many", "nack_many", "put_5000_headers", "put_40_headers_then_options"])
def test_counts_are_checked_before_the_words_they_count_are_read(monkeypatch, line, reader,
                                                                  code, message):
    # A reviewer's 262 KB ACK_MANY line of 131,000 malformed items took 0.2 s of the
    # event loop, an error object each, before its count was refused; 20 such lines, sent
    # before AUTH, held every other client for 4 s. PUT's headers likewise.
    from wonderq_server import text_arguments
    calls = []
    real = getattr(text_arguments, reader)
    monkeypatch.setattr(text_arguments, reader, lambda *a: calls.append(a) or real(*a))
    assert rejection(line + b"\n") == (code, message)
    assert len(calls) <= 2 * LIMITS.max_headers  # a header's key and value: 2 reads each


def test_put_many_headers_are_counted_before_they_are_read(monkeypatch):
    from wonderq_server import text_arguments
    calls = []
    real = text_arguments._percent_decoded
    monkeypatch.setattr(text_arguments, "_percent_decoded",
                        lambda *a: calls.append(a) or real(*a))
    line = b"PUT_MANY q 1 " + b" ".join(b"header.k%d=v" % i for i in range(3000))
    assert rejection(line + b"\n") == (
        HEADERS_TOO_LARGE, "headers has 3000 entries, over the limit of 32 (--max-headers)"
        "; nothing is stored, and the line after it is read as its body and dropped")
    assert len(calls) == 2 * LIMITS.max_headers


# ------------------------------------------------------------ queue commands

@pytest.mark.parametrize(("line", "expected"), [
    (b"CREATE_QUEUE q visibility_timeout=60 max_deliveries=5 dead_letter_queue=q.dlq "
     b"delay=2 max_length=1000 expiry=86400",
     ("create_queue", {"queue": "q", "visibility_timeout": 60.0, "max_deliveries": 5,
                       "dead_letter_queue": "q.dlq", "delay": 2.0, "max_length": 1000,
                       "expiry": 86400.0})),
    (b"CONFIGURE_QUEUE q max_length=0", ("configure_queue", {"queue": "q", **SETTINGS_NONE,
                                                             "max_length": 0})),
    (b"CONFIGURE_QUEUE q max_deliveries=0 dead_letter_queue=",
     ("configure_queue", {"queue": "q", **SETTINGS_NONE, "max_deliveries": 0,
                          "dead_letter_queue": ""})),
    (b"CREATE_QUEUE queue=q expiry=0", ("create_queue", {"queue": "q", **SETTINGS_NONE,
                                                         "expiry": 0.0})),
    (b"PEEK q 10", ("peek", {"queue": "q", "max": 10})),
    (b"PEEK q max=10", ("peek", {"queue": "q", "max": 10})),
    (b"REDRIVE q 5000", ("redrive", {"queue": "q", "max": 5000})),
    (b"REDRIVE q max=1", ("redrive", {"queue": "q", "max": 1})),
    (b"MESSAGE_INFO q id=18446744073709551615", ("message_info", {"queue": "q",
                                                                  "id": 2**64 - 1})),
])
def test_queue_commands(line, expected):
    assert command(line + b"\n") == expected


@pytest.mark.parametrize(("line", "code", "message"), [
    (b"CREATE_QUEUE", BAD_ARGUMENT,
     "CREATE_QUEUE needs queue: CREATE_QUEUE <queue> [setting=value ...]"),
    (b"CREATE_QUEUE q 60", BAD_ARGUMENT,
     "too many arguments for CREATE_QUEUE: CREATE_QUEUE <queue> [setting=value ...]"),
    (b"CONFIGURE_QUEUE q 60", BAD_ARGUMENT,
     "too many arguments for CONFIGURE_QUEUE: CONFIGURE_QUEUE <queue> [setting=value ...]"),
    (b"CREATE_QUEUE q max_lenght=3", BAD_ARGUMENT, "create_queue has no field max_lenght"),
    (b"CREATE_QUEUE q max_length=-1", BAD_ARGUMENT, "max_length must not be negative, got -1"),
    (b"CREATE_QUEUE q max_deliveries=x", BAD_ARGUMENT,
     "max_deliveries must be an integer, got 'x'"),
    (b"CREATE_QUEUE q visibility_timeout=43201", BAD_ARGUMENT,
     "visibility_timeout is 43201.0 s, over the limit of 43200 s (--max-visibility-timeout)"),
    (b"CREATE_QUEUE q expiry=inf", BAD_ARGUMENT,
     "expiry must be a finite number of seconds >= 0, got inf"),
    (b"CREATE_QUEUE q dead_letter_queue=bad/name", INVALID_QUEUE_NAME, None),
    (b"QUEUE_INFO", BAD_ARGUMENT, "QUEUE_INFO needs queue: QUEUE_INFO <queue>"),
    (b"QUEUE_INFO q x", BAD_ARGUMENT, "too many arguments for QUEUE_INFO: QUEUE_INFO <queue>"),
    (b"QUEUES q", BAD_ARGUMENT, "too many arguments for QUEUES: QUEUES"),
    (b"PEEK q 1001", BATCH_TOO_LARGE, "max is 1001, over the limit of 1000 (--max-batch)"),
    (b"PEEK q 0", BAD_ARGUMENT, "max must be at least 1, got 0"),
    (b"PURGE", BAD_ARGUMENT, "PURGE needs queue: PURGE <queue>"),
    (b"DELETE_QUEUE q now", BAD_ARGUMENT,
     "too many arguments for DELETE_QUEUE: DELETE_QUEUE <queue>"),
    (b"REDRIVE q 0", BAD_ARGUMENT, "max must be at least 1, got 0"),
    (b"MESSAGE_INFO q", BAD_ARGUMENT, "MESSAGE_INFO needs id: MESSAGE_INFO <queue> <id>"),
    (b"MESSAGE_INFO q x", BAD_ARGUMENT, "id must be an integer, got 'x'"),
])
def test_bad_queue_command_lines(line, code, message):
    got_code, got_message = rejection(line + b"\n")
    assert got_code == code
    if message is not None:
        assert got_message == message


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


class FakeMessage:
    """What the encoder reads of a delivered message (server Message attributes)."""

    def __init__(self, id, body, lease=None, deliveries=1, enqueued_at=1000.0, priority=0,
                 headers=None, origin=None):
        self.id, self.body, self.lease, self.deliveries = id, body, lease, deliveries
        self.enqueued_at, self.priority, self.headers, self.origin = (
            enqueued_at, priority, headers, origin)


def test_receive_reply_blocks():
    a = FakeMessage(11, b"hello world", lease=12, enqueued_at=1000.0)
    b = FakeMessage(13, b"line\r\nEND\r\n\xff", lease=14, deliveries=3, enqueued_at=1000.25)
    reply = TextEncoder().result(Command("receive", {}), [a, b])
    assert reply == (
        b"MSG 11 12 1 1000.000 11\r\nhello world\r\n"
        b"MSG 13 14 3 1000.250 12\r\nline\r\nEND\r\n\xff\r\n"
        b"END\r\n"
    )


def test_msg_line_extras_only_when_not_default():
    m = FakeMessage(5, b"x", lease=6, deliveries=2, enqueued_at=1.0, priority=-4,
                    headers={"trace id": "a=b", "é": "1\r\n2", "k": ""},
                    origin=("jobs.in", 1700000000.1234))
    reply = TextEncoder().result(Command("receive", {}), [m])
    assert reply == (
        b"MSG 5 6 2 1.000 1 priority=-4 dead_letter=jobs.in dead_lettered_at=1700000000.123 "
        b"header.trace%20id=a%3Db header.%C3%A9=1%0D%0A2 header.k=\r\nx\r\nEND\r\n")
    plain = TextEncoder().result(Command("receive", {}), [FakeMessage(5, b"x", lease=6,
                                                                       headers={})])
    assert plain == b"MSG 5 6 1 1000.000 1\r\nx\r\nEND\r\n"


def test_msg_line_positive_priority_and_headers_alone():
    m = FakeMessage(5, b"", lease=6, priority=2**31 - 1)
    assert TextEncoder().result(Command("receive", {}), [m]) == (
        b"MSG 5 6 1 1000.000 0 priority=2147483647\r\n\r\nEND\r\n")
    m = FakeMessage(5, b"", lease=6, headers={"/": "%"})
    assert TextEncoder().result(Command("receive", {}), [m]) == (
        b"MSG 5 6 1 1000.000 0 header.%2F=%25\r\n\r\nEND\r\n")


def test_peek_reply_prints_lease_zero():
    # A peeked message may hold a stale lease from an earlier delivery; it is never shown.
    m = FakeMessage(5, b"abc", lease=99, deliveries=1, priority=1)
    assert TextEncoder().result(Command("peek", {}), [m]) == (
        b"MSG 5 0 1 1000.000 3 priority=1\r\nabc\r\nEND\r\n")
    assert TextEncoder().result(Command("peek", {}), []) == b"END\r\n"


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


# ------------------------------------------------------------ new reply shapes

def test_put_many_reply_one_line_per_item():
    results = [101, CommandError(BODY_TOO_LARGE, "message body is 9 bytes"), 102,
               CommandError(FULL, "queue 'q' holds\r\n10 messages")]
    assert TextEncoder().result(Command("put_many", {}), results) == (
        b"OK 101\r\n"
        b"ERR BODY_TOO_LARGE message body is 9 bytes\r\n"
        b"OK 102\r\n"
        b"ERR FULL queue 'q' holds  10 messages\r\n"
        b"END\r\n")


@pytest.mark.parametrize("name", ["ack_many", "nack_many"])
def test_lease_item_replies_one_line_per_item(name):
    results = [None, CommandError(NOT_FOUND, "no message 5 in queue 'q'"), None,
               CommandError(LEASE_LOST, "delivered again")]
    assert TextEncoder().result(Command(name, {}), results) == (
        b"OK\r\n"
        b"ERR NOT_FOUND no message 5 in queue 'q'\r\n"
        b"OK\r\n"
        b"ERR LEASE_LOST delivered again\r\n"
        b"END\r\n")


@pytest.mark.parametrize("name", ["purge", "delete_queue", "redrive"])
def test_count_replies(name):
    assert TextEncoder().result(Command(name, {}), 0) == b"OK 0\r\n"
    assert TextEncoder().result(Command(name, {}), 1234) == b"OK 1234\r\n"


@pytest.mark.parametrize("name", ["create_queue", "configure_queue"])
def test_settings_reply(name):
    settings = {"visibility_timeout": 0.0, "max_deliveries": 5, "dead_letter_queue": "q.dlq",
                "delay": 2.5, "max_length": 0, "expiry": 0.0}
    assert TextEncoder().result(Command(name, {}), settings) == (
        b"visibility_timeout: 0.0\r\n"
        b"max_deliveries: 5\r\n"
        b"dead_letter_queue: q.dlq\r\n"
        b"delay: 2.5\r\n"
        b"max_length: 0\r\n"
        b"expiry: 0.0\r\n"
        b"END\r\n")
    settings["dead_letter_queue"] = ""
    assert b"\r\ndead_letter_queue: \r\n" in TextEncoder().result(Command(name, {}), settings)


def test_queue_info_reply():
    info = {"queue": "jobs", "explicit": False, "max_length": 10, "ready": 3, "put_rate": 0.4,
            "oldest_age_s": 12.25}
    assert TextEncoder().result(Command("queue_info", {}), info) == (
        b"queue: jobs\r\n"
        b"explicit: false\r\n"
        b"max_length: 10\r\n"
        b"ready: 3\r\n"
        b"put_rate: 0.4\r\n"
        b"oldest_age_s: 12.25\r\n"
        b"END\r\n")


def test_message_info_reply():
    info = {"id": 5, "queue": "q", "state": "leased", "deliveries": 2, "priority": -1,
            "enqueued_at": 1000.5, "deadline_at": 1030.1234, "expires_at": None,
            "body_bytes": 11, "headers": {"trace id": "a\r\nb", "k": "v"},
            "dead_letter": ["jobs", 1020.0]}
    assert TextEncoder().result(Command("message_info", {}), info) == (
        b"id: 5\r\n"
        b"queue: q\r\n"
        b"state: leased\r\n"
        b"deliveries: 2\r\n"
        b"priority: -1\r\n"
        b"enqueued_at: 1000.500\r\n"
        b"deadline_at: 1030.123\r\n"
        b"expires_at: \r\n"
        b"body_bytes: 11\r\n"
        b"headers.trace%20id: a%0D%0Ab\r\n"
        b"headers.k: v\r\n"
        b"dead_letter: jobs\r\n"
        b"dead_lettered_at: 1020.000\r\n"
        b"END\r\n")


def test_message_info_reply_without_headers_or_origin():
    info = {"id": 5, "headers": {}, "dead_letter": None, "deadline_at": None}
    assert TextEncoder().result(Command("message_info", {}), info) == (
        b"id: 5\r\n"
        b"dead_letter: \r\n"
        b"dead_lettered_at: \r\n"
        b"deadline_at: \r\n"
        b"END\r\n")


def test_stats_names_that_look_special_are_not():
    # Only a message's own "headers" and "dead_letter" are rendered specially.
    stats = {"server": {"queues": 2}, "queues": {"headers": {"ready": 1},
                                                 "dead_letter": {"ready": 0}}}
    assert TextEncoder().result(Command("stats", {}), stats) == (
        b"server.queues: 2\r\n"
        b"queues.headers.ready: 1\r\n"
        b"queues.dead_letter.ready: 0\r\n"
        b"END\r\n")


def test_queues_reply():
    rows = [{"queue": "a", "explicit": True, "messages": 3, "ready": 1, "in_flight": 1,
             "delayed": 1},
            {"queue": "b.dlq", "explicit": False, "messages": 0, "ready": 0, "in_flight": 0,
             "delayed": 0}]
    assert TextEncoder().result(Command("queues", {}), rows) == (
        b"QUEUE a messages=3 ready=1 in_flight=1 delayed=1 explicit=true\r\n"
        b"QUEUE b.dlq messages=0 ready=0 in_flight=0 delayed=0 explicit=false\r\n"
        b"END\r\n")
    assert TextEncoder().result(Command("queues", {}), []) == b"END\r\n"


@pytest.mark.parametrize("line", [
    b"ACK q " + b"9" * 5000 + b" 1",            # past int()'s 4300-digit limit
    b"ACK q 1 " + b"1" * 21,                    # more digits than any u64 has
    b"RECEIVE q max=" + b"7" * 4400,
    b"PUT_MANY q " + b"1" * 4400,
    b"CREATE_QUEUE q max_length=18446744073709551616",  # 2**64: the journal cannot hold it
    b"ACK q 18446744073709551616 1",
])
def test_integers_out_of_range_are_bad_arguments_not_crashes(line: bytes) -> None:
    [item] = TextDecoder(Limits()).feed(line + b"\r\n")
    assert isinstance(item, Rejected)
    assert item.error.code == BAD_ARGUMENT


@pytest.mark.parametrize("line", [b"PING\t\n", b"\tPING\n", b"PING \t\n", b"PING\t\r\n"])
def test_spaces_and_tabs_around_the_command_word(line):
    assert command(line) == ("ping", {})


_VALUES = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                    st.text(alphabet="abc .:_-", max_size=5))
_NAMES = st.text(alphabet="abq._", min_size=1, max_size=6).map(lambda name: name + "_at") | \
    st.text(alphabet="abq._", min_size=1, max_size=6)
_TREES = st.recursive(_VALUES, lambda children: st.dictionaries(_NAMES, children, max_size=4),
                      max_leaves=30)


@given(st.dictionaries(_NAMES.filter(lambda name: name not in ("headers", "dead_letter")),
                       _TREES, max_size=5))
def test_name_value_replies_are_info_lines_written_out(tree):
    # The writer STATS uses (written straight into one list, for speed) says what
    # info_lines, the rules' reference, says: for every kind of value and nesting.
    expected = "".join(f"{name}: {text}\r\n" for name, text in info_lines(tree)) + "END\r\n"
    assert TextEncoder().result(Command("stats", {}), tree) == expected.encode()
