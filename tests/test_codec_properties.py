"""Property tests of both codecs: any bytes in any chunks, and round trips."""

from __future__ import annotations

from urllib.parse import quote

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from wonderq_client.codec import NotAReply, ReplyDecoder
from wonderq_server.binary_codec import PREAMBLE, BinaryDecoder, BinaryEncoder, encode_request
from wonderq_server.commands import COMMANDS, MIN_LEASE_S, Command, Limits, Rejected, make_command
from wonderq_server.errors import CommandError, ProtocolError
from wonderq_server.text_codec import TEXT_COMMANDS, TextDecoder, TextEncoder

# Small limits, so random input reaches the edges: a 1040-byte line, a 4 KiB frame.
LIMITS = Limits(max_message_bytes=16, max_batch=50, max_frame_bytes=4096)
DEFAULT_LIMITS = Limits()
FIELDS = sorted({f for required, optional in COMMANDS.values() for f in (*required, *optional)})


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def feed_all(decoder, chunks: list[bytes]) -> list[Command | Rejected]:
    items: list[Command | Rejected] = []
    for chunk in chunks:
        got = decoder.feed(chunk)
        assert isinstance(got, list)
        items.extend(got)
    return items


def summary(item) -> tuple:
    """summary is an item as comparable values (repr, because NaN != NaN)."""
    if isinstance(item, Command):
        return ("command", item.name, repr(item.args), repr(item.request_id))
    assert isinstance(item, Rejected), item
    assert isinstance(item.error, CommandError | ProtocolError), item.error
    return ("rejected", type(item.error).__name__, item.error.code, repr(item.request_id))


# ------------------------------------------------------------------ strategies

wire_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
text_values = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = (st.none() | st.booleans() | wire_ints | st.floats()
           | text_values | st.binary(max_size=12))
values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(text_values | wire_ints, children, max_size=4)),
    max_leaves=8,
)
field_values = (values | st.integers(0, 2000) | st.floats(-1, 500) | st.sampled_from(
    ["q", "jobs", "bad name", ""]) | st.lists(st.binary(max_size=4), max_size=60))
requests = st.tuples(
    values,
    st.sampled_from([*COMMANDS, "bogus", "PUT"]) | values,
    st.dictionaries(st.sampled_from([*FIELDS, "extra"]), field_values, max_size=5) | values,
).map(list)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


binary_pieces = st.one_of(
    st.deferred(lambda: st.tuples(request_ids, valid_commands()).map(
        lambda r: encode_request(r[0], r[1][0], r[1][1]))),
    requests.map(lambda r: frame(msgpack.packb(r, use_bin_type=True))),
    values.map(lambda v: frame(msgpack.packb(v, use_bin_type=True))),
    st.binary(max_size=40).map(frame),
    st.binary(max_size=8),
)
binary_streams = st.lists(binary_pieces, max_size=12).map(b"".join)

text_words = st.sampled_from([
    b"PUT", b"get", b"Receive", b"ACK", b"nack", b"TOUCH", b"stats", b"PING", b"QUIT", b"FOO",
    b"q", b"jobs", b"1", b"-1", b"0", b"2.5", b"nan", b"inf", b"max=2", b"wait=1", b"wait=",
    b"visibility=x", b"delay=3", b"=", b"\xff", b"\r", b"\t", b"", b" ", b"x" * 600,
    b"PUT_MANY", b"put_many", b"ACK_MANY", b"nack_many", b"CREATE_QUEUE", b"QUEUES", b"PEEK",
    b"REDRIVE", b"MESSAGE_INFO", b"2", b"3", b"1:2", b"1:", b"x:y", b"--", b"priority=-1",
    b"header.a=b", b"header.%ff=1", b"header.=", b"expiry=5", b"dead_letter_queue=",
    b"max_length=3", b"\n", b"\r\n",
])
text_lines = st.lists(text_words | st.binary(max_size=6), max_size=8).map(b" ".join)
text_streams = st.lists(
    st.tuples(text_lines, st.sampled_from([b"\n", b"\r\n", b"", b"\r"])).map(b"".join)
    | st.deferred(lambda: text_commands().map(lambda t: t[0])),
    max_size=10,
).map(b"".join) | st.binary(max_size=3000)

cut_lists = st.lists(st.integers(0, 4000), max_size=25)


# --------------------------------------------------- feed never raises

@settings(max_examples=300, deadline=None)
@given(binary_streams, cut_lists)
def test_binary_decoder_takes_any_bytes_in_any_chunks(data, cuts):
    stream = PREAMBLE + data
    items = feed_all(BinaryDecoder(LIMITS), chunks_of(stream, cuts))
    whole = [summary(i) for i in BinaryDecoder(LIMITS).feed(stream)]
    assert [summary(i) for i in items] == whole
    # After a ProtocolError nothing more is decoded.
    for index, item in enumerate(items):
        if isinstance(item, Rejected) and isinstance(item.error, ProtocolError):
            assert index == len(items) - 1


@settings(max_examples=300, deadline=None)
@given(st.lists(binary_pieces, max_size=12))
def test_binary_decoder_reads_one_frame_per_read_as_the_whole_stream(pieces):
    """A read that is exactly one frame (the usual one) takes feed's short way; the
    items are those of the same bytes fed at once."""
    for limits in (LIMITS, Limits(max_frame_bytes=24)):  # the second refuses most frames
        items = feed_all(BinaryDecoder(limits), [PREAMBLE, *pieces])
        whole = BinaryDecoder(limits).feed(PREAMBLE + b"".join(pieces))
        assert [summary(i) for i in items] == [summary(i) for i in whole]


reply_errors = st.none() | st.tuples(st.text(max_size=8), st.text(max_size=8)).map(list)
reply_frames = st.tuples(st.none() | st.integers(0, 2**63), reply_errors, values).map(
    lambda r: frame(msgpack.packb(list(r), use_bin_type=True)))


def client_replies(chunks: list[bytes]) -> list:
    """client_replies feeds the client's decoder; a refusal ends the list, named."""
    decoder, replies = ReplyDecoder(), []
    for chunk in chunks:
        try:
            replies += decoder.feed(chunk)
        except NotAReply:
            return [*map(repr, replies), "NotAReply"]
    return [repr(reply) for reply in replies]  # repr: NaN is a value here, equal to itself


@settings(max_examples=300, deadline=None)
@given(st.lists(reply_frames, max_size=10), cut_lists)
def test_the_clients_decoder_reads_replies_in_any_chunks(frames, cuts):
    """Whole reads (one reply each, feed's usual case, read from the bytes as they came),
    a frame cut across reads (kept in its buffer), several in one read: the same replies."""
    stream = b"".join(frames)
    whole = client_replies([stream])
    assert whole == [repr(msgpack.unpackb(f[4:], strict_map_key=False)) for f in frames]
    assert client_replies(frames) == whole
    assert client_replies(chunks_of(stream, cuts)) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(reply_frames | st.binary(max_size=8), max_size=10), cut_lists)
def test_the_clients_decoder_refuses_the_same_bytes_in_any_chunks(pieces, cuts):
    """Refused or not, whatever the cuts (a refusal loses the replies of its own read)."""
    stream = b"".join(pieces)
    whole, chunked = client_replies([stream]), client_replies(chunks_of(stream, cuts))
    assert ("NotAReply" in chunked) == ("NotAReply" in whole)
    if "NotAReply" not in whole:
        assert chunked == whole


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), cut_lists)
def test_binary_decoder_takes_raw_noise_after_the_preamble(data, cuts):
    for limits in (LIMITS, DEFAULT_LIMITS):
        items = feed_all(BinaryDecoder(limits), chunks_of(PREAMBLE + data, cuts))
        for item in items:
            summary(item)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=12), cut_lists)
def test_binary_decoder_takes_any_preamble(data, cuts):
    decoder = BinaryDecoder(LIMITS)
    items = feed_all(decoder, chunks_of(data, cuts))
    for item in items:
        summary(item)
    if len(data) >= 4 and data[:4] != PREAMBLE:
        assert [summary(i)[2] for i in items] == ["UNSUPPORTED_VERSION"]
        assert decoder.broken


@settings(max_examples=300, deadline=None)
@given(text_streams, cut_lists)
def test_text_decoder_takes_any_bytes_in_any_chunks(data, cuts):
    items = feed_all(TextDecoder(LIMITS), chunks_of(data, cuts))
    whole = [summary(i) for i in TextDecoder(LIMITS).feed(data)]
    assert [summary(i) for i in items] == whole
    for item in items:
        assert item.request_id is None


@settings(max_examples=100, deadline=None)
@given(text_streams)
def test_text_decoder_one_byte_at_a_time(data):
    decoder = TextDecoder(LIMITS)
    items = feed_all(decoder, [data[i:i + 1] for i in range(len(data))])
    assert [summary(i) for i in items] == [summary(i) for i in TextDecoder(LIMITS).feed(data)]


# ----------------------------------------------------------- valid requests

QUEUE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
queue_names = st.text(alphabet=QUEUE_CHARS, min_size=1, max_size=128)
ids = st.integers(0, 2**64 - 1)


def seconds(upper: float):
    return st.integers(0, int(upper)) | st.floats(0, upper, allow_nan=False)


header_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8)
headers_maps = st.dictionaries(header_text.filter(bool), header_text, max_size=4)
OPTIONAL_VALUES = {
    "max": st.integers(1, DEFAULT_LIMITS.max_batch),
    "wait": seconds(DEFAULT_LIMITS.max_wait_s),
    "visibility": st.none() | seconds(DEFAULT_LIMITS.max_visibility_s).filter(
        lambda s: s >= MIN_LEASE_S),
    "delay": seconds(DEFAULT_LIMITS.max_delay_s),
    "priority": st.integers(-(2**31), 2**31 - 1),
    "headers": headers_maps,
    "expiry": seconds(DEFAULT_LIMITS.max_expiry_s),
    "visibility_timeout": seconds(DEFAULT_LIMITS.max_visibility_s).filter(
        lambda s: s == 0 or s >= MIN_LEASE_S),  # 0 is the server's default
    "max_deliveries": st.integers(0, 2**64 - 1),
    "dead_letter_queue": st.just("") | queue_names,
    "max_length": st.integers(0, 2**64 - 1),
    "unseen": st.booleans(),
}
ITEM_OPTIONS = ("delay", "priority", "headers", "expiry")
put_items = st.fixed_dictionaries(
    {"body": st.binary(max_size=16)},
    optional={option: OPTIONAL_VALUES[option] for option in ITEM_OPTIONS})
REQUIRED_VALUES = {
    "queue": queue_names,
    "body": st.binary(max_size=64),
    "bodies": st.lists(st.binary(max_size=16) | put_items, min_size=1, max_size=20),
    "items": st.lists(st.tuples(ids, ids) | st.lists(ids, min_size=2, max_size=2),
                      min_size=1, max_size=20),
    "id": ids,
    "lease": ids,
    # One word, as a configured token is (auth.check_token): text mode sends it so.
    "token": st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc", "Z")),
                     min_size=1, max_size=20),
    "request": wire_ints | text_values,  # a receive's request id
}


def expected_value(field: str, value):
    """expected_value is what make_command turns a valid value into."""
    if field == "headers":
        return dict(value) or None
    if field in ("max", "priority", "max_deliveries", "max_length", "dead_letter_queue",
                 "unseen"):
        return value
    return float(value)


def expected_items(field: str, value, batch: dict):
    if field == "items":
        return [tuple(pair) for pair in value]
    if field == "bodies":
        # A batch gives its items nothing when its options are all defaults: no delay
        # or expiry (None), priority 0 and no headers. Bare bodies then stay bare.
        gives = not (batch["delay"] is None and batch["expiry"] is None
                     and not batch["priority"] and not batch["headers"])
        items = []
        for raw in value:
            if not isinstance(raw, dict) and not gives:
                items.append(raw)
                continue
            raw = raw if isinstance(raw, dict) else {"body": raw}
            item = {"body": raw["body"]}
            for option in ITEM_OPTIONS:
                own = raw.get(option)
                if option == "headers" and own == {}:
                    item[option] = {}  # its own empty map: no headers, not the batch's
                    continue
                own = None if own is None else expected_value(option, own)
                item[option] = batch[option] if own is None and gives else own
            items.append(item)
        return items
    if field == "token":
        return value.encode()
    return value


TEXT_MODE_COMMANDS = tuple(TEXT_COMMANDS.values())  # all but CANCEL (binary only)


@st.composite
def valid_commands(draw, names=tuple(COMMANDS)):
    name = draw(st.sampled_from(names))
    required, optional = COMMANDS[name]
    args = {field: draw(REQUIRED_VALUES[field]) for field in required}
    for field in optional:
        if draw(st.booleans()):
            args[field] = draw(OPTIONAL_VALUES[field])
    expected = dict(args)
    for field, default in optional.items():
        value = args.get(field)
        expected[field] = default if value is None else expected_value(field, value)
    for field in required:
        expected[field] = expected_items(field, args[field], expected)
    return name, args, expected


request_ids = st.none() | wire_ints | text_values | st.lists(wire_ints, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(request_ids, valid_commands()), min_size=1, max_size=8), cut_lists)
def test_encode_request_round_trips(batch, cuts):
    stream = PREAMBLE + b"".join(encode_request(rid, name, args) for rid, (name, args, _) in batch)
    items = feed_all(BinaryDecoder(DEFAULT_LIMITS), chunks_of(stream, cuts))
    assert len(items) == len(batch)
    for item, (request_id, (name, args, expected)) in zip(items, batch, strict=True):
        assert isinstance(item, Command), item
        assert (item.name, item.args, item.request_id) == (name, expected, request_id)
        assert item.args == make_command(name, args, DEFAULT_LIMITS).args


def text_line(draw, name: str, args: dict) -> bytes:
    required, optional = COMMANDS[name]
    word = {"receive": draw(st.sampled_from(["GET", "RECEIVE"]))}.get(name, name.upper())
    word = draw(st.sampled_from([word, word.lower(), word.title()]))
    named = [f"{f}={args[f]!r}" for f in optional
             if args.get(f) is not None and f not in ("headers", "dead_letter_queue")]
    if args.get("dead_letter_queue") is not None:
        named.append(f"dead_letter_queue={args['dead_letter_queue']}")
    named.extend(f"header.{quote(k, safe='')}={quote(v, safe='')}"
                 for k, v in (args.get("headers") or {}).items())
    named = draw(st.permutations(named))
    if name == "put":
        body = args["body"]
        first_word = body.partition(b" ")[0]
        # A first word that could read as an option needs the `--` before it.
        dash = ["--"] if b"=" in first_word or first_word == b"--" or draw(
            st.booleans()) else []
        return " ".join([word, args["queue"], *named, *dash, ""]).encode() + body
    if name == "put_many":
        header = " ".join([word, args["queue"], str(len(args["bodies"])), *named]).encode()
        return b"\n".join([header, *args["bodies"]])
    if name in ("ack_many", "nack_many"):
        pairs = [f"{message_id}:{lease}" for message_id, lease in args["items"]]
        return " ".join([word, args["queue"], *_keep_order(draw, pairs, named)]).encode()
    parts = [str(args[f]) for f in required]
    return " ".join([word, *parts, *named]).encode()


def _keep_order(draw, pairs: list[str], named: list[str]) -> list[str]:
    """_keep_order mixes named words in among the items without reordering the items."""
    words = list(pairs)
    for option in named:
        words.insert(draw(st.integers(0, len(words))), option)
    return words


def text_safe(body: bytes) -> bytes:
    """text_safe: a body as a text line can carry it (no line break, no trailing CR)."""
    return body.replace(b"\n", b"").rstrip(b"\r")


@st.composite
def text_commands(draw):
    name, args, expected = draw(valid_commands(TEXT_MODE_COMMANDS))
    if name == "put":
        args["body"] = expected["body"] = text_safe(args["body"])
    if name == "put_many":  # text mode: plain bodies only; the options are batch-wide
        bodies = [text_safe(b if isinstance(b, bytes) else b["body"]) for b in args["bodies"]]
        args["bodies"] = bodies
        expected["bodies"] = expected_items("bodies", bodies, expected)
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return text_line(draw, name, args) + ending, name, expected


@settings(max_examples=300, deadline=None)
@given(st.lists(text_commands(), min_size=1, max_size=8), cut_lists)
def test_text_lines_round_trip(batch, cuts):
    stream = b"".join(line for line, _, _ in batch)
    items = feed_all(TextDecoder(DEFAULT_LIMITS), chunks_of(stream, cuts))
    assert [(i.name, i.args) if isinstance(i, Command) else i for i in items] == [
        (name, expected) for _, name, expected in batch]


# ---------------------------------------------------------------- encoders

results = st.recursive(
    st.none() | st.booleans() | wire_ints
    | st.floats(allow_nan=False) | text_values | st.binary(max_size=12),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(text_values, children, max_size=4)),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(request_ids, st.sampled_from(sorted(set(COMMANDS) - {
    "receive", "peek", "put_many", "ack_many", "nack_many"})), results)
def test_binary_result_frames_round_trip(request_id, name, result):
    data = BinaryEncoder().result(Command(name, {}, request_id), result)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert msgpack.unpackb(data[4:], raw=False, strict_map_key=False) == [
        request_id, None, result]


@settings(max_examples=200, deadline=None)
@given(request_ids, st.sampled_from(["NOT_FOUND", "BAD_ARGUMENT", "INTERNAL"]), text_values)
def test_error_replies(request_id, code, message):
    error = CommandError(code, message)
    data = BinaryEncoder().error(request_id, error)
    assert msgpack.unpackb(data[4:], raw=False, strict_map_key=False) == [
        request_id, [code, message], None]
    line = TextEncoder().error(request_id, error)
    assert line.startswith(f"ERR {code} ".encode())
    assert line.endswith(b"\r\n")
    assert b"\n" not in line[:-2] and b"\r" not in line[:-2]
