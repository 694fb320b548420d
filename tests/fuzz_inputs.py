"""What the fuzz test's hostile connections send: seeded, pure, bytes out.

Design decision: every hostile session is planned up front as a list of byte
strings (`plan_session`), from one `random.Random`, so a seed names the exact
bytes each connection sends (the timing of the real server still varies, so
a replay sends the same bytes, not necessarily in the same interleaving). The
test (test_e2e_fuzz.py) only writes the plan to a socket and reads replies.

A session is one of four kinds:

* `random`: random bytes, sometimes starting with part of the binary preamble
  or a preamble of another version;
* `binary`: the preamble, then request frames built from PROTOCOL.md's frame
  format, each either valid or mutated (bit flips, truncations, duplicated
  or spliced pieces, huge claimed lengths, wrong types in fields, random
  msgpack values, deep nesting);
* `text`: command lines, valid or mutated (words replaced, junk bytes,
  extreme numbers, overlong lines, PUT_MANY blocks cut short);
* any of those written slowly in small pieces (`slow`), by a client that
  never reads its replies (`reads` false), and ended by close, reset or
  half-close, sometimes mid-frame.

Rules:
* Every queue a hostile request names starts with "fuzz" (`QUEUE_PREFIX`);
  only a mutation can change a name, and the valid traffic's queue name is
  long and distinctive so that no mutation of these short names reaches it.
* Ids and leases come from `LeasePool`, filled from the server's replies, so
  acks, nacks and touches sometimes hit real messages (success, LEASE_LOST,
  late acks), not only NOT_FOUND.
* Sizes are drawn around the server's limits (`FuzzLimits`, the flags the
  test starts the server with), so every limit's error path is reached.

Must not know: sockets, asyncio, the server's modules (it builds frames the
way any client would).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

PREAMBLE = b"WQ\x00\x01"
QUEUE_PREFIX = "fuzz"
QUEUES = [f"{QUEUE_PREFIX}-{i}" for i in range(6)] + [f"{QUEUE_PREFIX}.dlq"]

MESSAGES_PER_SESSION_MAX = 40
TEXT_WORDS = ["PUT", "PUT_MANY", "GET", "RECEIVE", "ACK", "ACK_MANY", "NACK", "NACK_MANY",
              "TOUCH", "CREATE_QUEUE", "CONFIGURE_QUEUE", "QUEUE_INFO", "QUEUES", "PEEK",
              "PURGE", "DELETE_QUEUE", "REDRIVE", "MESSAGE_INFO", "STATS", "PING", "QUIT"]
# Numbers that sit on the edges of what a field may hold.
EDGE_NUMBERS = [0, 1, -1, 2**31 - 1, -(2**31), 2**31, 2**63 - 1, -(2**63), 2**64 - 1,
                0.0, -0.0, 1e-9, 1e308, float("inf"), float("-inf"), float("nan")]
EDGE_TEXT_NUMBERS = ["0", "-0", "1", "-1", "2147483648", "-2147483649", "18446744073709551615",
                     "18446744073709551616", "9" * 25, "1e400", "nan", "inf", "-inf", "0x10",
                     "1_000", "+5", "٣", "", "=", "1.5", "-1.5", "1e-320"]


@dataclass(frozen=True)
class FuzzLimits:
    """The limit flags the fuzzed server runs with (kept small so limits are reached)."""

    max_message_bytes: int
    max_batch: int
    max_frame_bytes: int
    max_headers: int
    max_header_bytes: int
    max_wait_s: float

    def flags(self) -> list[str]:
        return ["--max-message-bytes", str(self.max_message_bytes),
                "--max-batch", str(self.max_batch),
                "--max-frame-bytes", str(self.max_frame_bytes),
                "--max-headers", str(self.max_headers),
                "--max-header-bytes", str(self.max_header_bytes),
                "--max-wait", str(self.max_wait_s)]


class LeasePool:
    """(queue, id, lease) of messages hostile receives got, and ids hostile puts got."""

    SIZE = 200  # keep the latest few: old leases are mostly acked or lost already

    def __init__(self) -> None:
        self.leases: list[tuple[str, int, int]] = []
        self.ids: list[tuple[str, int]] = []

    def add_lease(self, queue: str, msg_id: int, lease: int) -> None:
        self.leases.append((queue, msg_id, lease))
        del self.leases[:-self.SIZE]

    def add_id(self, queue: str, msg_id: int) -> None:
        self.ids.append((queue, msg_id))
        del self.ids[:-self.SIZE]


# ------------------------------------------------------------------ values

def random_value(rng: random.Random, depth: int = 0) -> Any:
    """random_value is any msgpack value: the wrong type for whatever field it lands in."""
    kind = rng.randrange(12 if depth < 3 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(EDGE_NUMBERS)
    if kind == 3:
        return rng.randrange(-(2**63), 2**64)
    if kind == 4:
        return rng.uniform(-1e6, 1e6)
    if kind == 5:
        return "".join(rng.choice(string.printable + "éß中\u0000\u2028")
                       for _ in range(rng.randrange(12)))
    if kind == 6:
        return rng.randbytes(rng.randrange(16))
    if kind == 7:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(9)))
    if kind == 8:
        return msgpack.Timestamp(rng.randrange(2**34), rng.randrange(10**9))
    if kind in (9, 10):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["queue", "body", "id", "max", "x", ""]) if rng.random() < 0.7
            else rng.randrange(100): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def queue_name(rng: random.Random) -> str:
    """queue_name: a hostile queue, now and then an invalid one (still starting "fuzz")."""
    roll = rng.random()
    if roll < 0.8:
        return rng.choice(QUEUES)
    if roll < 0.9:  # many names, so that --max-queues is reached
        return f"{QUEUE_PREFIX}-many-{rng.randrange(100)}"
    return rng.choice([QUEUE_PREFIX + " x", QUEUE_PREFIX + "/x", QUEUE_PREFIX * 40,
                       QUEUE_PREFIX + "\u00e9", QUEUE_PREFIX + "\n", QUEUE_PREFIX + "-" * 124])


def body(rng: random.Random, limits: FuzzLimits) -> bytes:
    """body: mostly small, sometimes at or just over --max-message-bytes."""
    roll = rng.random()
    if roll < 0.75:
        size = rng.randrange(64)
    elif roll < 0.9:
        size = rng.randrange(limits.max_message_bytes + 1)
    else:
        size = limits.max_message_bytes + rng.randrange(1, 64)
    return rng.randbytes(size)


def headers(rng: random.Random, limits: FuzzLimits) -> dict[str, str]:
    """headers: a map, often over --max-headers or --max-header-bytes."""
    count = rng.randrange(limits.max_headers + 2)
    size = rng.choice([4, 16, limits.max_header_bytes // max(count, 1) + 2])
    return {f"k{i}": "v" * rng.randrange(size) for i in range(count)}


def seconds(rng: random.Random, upper: float) -> float | int:
    """seconds: a duration, mostly short, sometimes just over its limit."""
    roll = rng.random()
    if roll < 0.6:
        return 0
    if roll < 0.9:
        return round(rng.uniform(0, 1.5), 3)
    return upper + rng.choice([0.001, 1, 1e9])


# ---------------------------------------------------------------- requests

def request_args(rng: random.Random, limits: FuzzLimits, pool: LeasePool) -> tuple[str, dict]:
    """request_args is one request of the right shape (command, fields) on a hostile queue;
    its values are drawn around the limits, so many are refused."""
    name = rng.choice(["put", "put", "put", "put_many", "receive", "receive", "ack", "ack_many",
                       "nack", "nack_many", "touch", "create_queue", "configure_queue",
                       "queue_info", "queues", "peek", "purge", "delete_queue", "redrive",
                       "message_info", "stats", "ping", "quit"])
    queue = queue_name(rng)
    if name == "put":
        args: dict[str, Any] = {"queue": queue, "body": body(rng, limits)}
        for field, make in (("delay", lambda: seconds(rng, 5)),
                            ("priority", lambda: rng.choice(EDGE_NUMBERS[:9])),
                            ("headers", lambda: headers(rng, limits)),
                            ("expiry", lambda: seconds(rng, 5))):
            if rng.random() < 0.3:
                args[field] = make()
        return name, args
    if name == "put_many":
        count = rng.choice([0, 1, rng.randrange(1, limits.max_batch + 1),
                            limits.max_batch, limits.max_batch + 1])
        items = [body(rng, limits) if rng.random() < 0.7 else
                 {"body": body(rng, limits), "priority": rng.randrange(-5, 5),
                  "headers": headers(rng, limits)} for _ in range(count)]
        return name, {"queue": queue, "bodies": items}
    if name in ("receive", "peek"):
        args = {"queue": queue, "max": rng.choice([1, 2, limits.max_batch,
                                                   limits.max_batch + 1])}
        if name == "receive":
            args["wait"] = seconds(rng, limits.max_wait_s) if rng.random() < 0.3 else 0
            args["visibility"] = rng.choice([0, 0.05, 0.5, 30, 1e9])
        return name, args
    if name in ("ack", "nack", "touch"):
        q, msg_id, lease = _lease(rng, pool, queue)
        return name, {"queue": q, "id": msg_id, "lease": lease}
    if name in ("ack_many", "nack_many"):
        items = [list(_lease(rng, pool, queue)[1:]) for _ in range(rng.randrange(1, 5))]
        return name, {"queue": queue, "items": items}
    if name in ("create_queue", "configure_queue"):
        args = {"queue": queue}
        if rng.random() < 0.5:
            args.update(max_deliveries=rng.randrange(3), dead_letter_queue=rng.choice(QUEUES))
        for field in ("visibility_timeout", "delay", "expiry"):
            if rng.random() < 0.3:
                args[field] = seconds(rng, 5)
        if rng.random() < 0.3:
            args["max_length"] = rng.randrange(50)
        return name, args
    if name == "message_info":
        ids = [i for q, i in pool.ids if q == queue]
        return name, {"queue": queue, "id": rng.choice(ids) if ids else rng.randrange(2**64)}
    if name == "redrive":
        return name, {"queue": queue, "max": rng.choice([None, 1, 10])}
    if name in ("queue_info", "purge", "delete_queue"):
        return name, {"queue": queue}
    return name, {}


def _lease(rng: random.Random, pool: LeasePool, queue: str) -> tuple[str, int, int]:
    if pool.leases and rng.random() < 0.7:
        return rng.choice(pool.leases)
    return queue, rng.randrange(2**64), rng.randrange(2**64)


def mutate_request(rng: random.Random, request: list[Any]) -> Any:
    """mutate_request changes the request's structure: wrong types, missing or extra parts."""
    request_id, name, args = request
    kind = rng.randrange(8)
    if kind == 0 and args:  # a field of the wrong type
        args[rng.choice(list(args))] = random_value(rng)
    elif kind == 1:  # a field the command does not have
        args[rng.choice(["visibilty", "bodies", "id", "", "QUEUE"])] = random_value(rng)
    elif kind == 2 and args:  # a required field left out
        del args[rng.choice(list(args))]
    elif kind == 3:
        name = rng.choice([name.upper(), name + "\x00", "", random_value(rng)])
    elif kind == 4:
        args = random_value(rng)
    elif kind == 5:
        request_id = random_value(rng)
    elif kind == 6:
        return [request_id, name, args, random_value(rng)][:rng.choice([0, 1, 2, 4])]
    else:
        return random_value(rng)
    return [request_id, name, args]


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# mutate_bytes' kinds that leave a whole frame, so the stream stays in step.
IN_STEP_MUTATIONS = (0, 2, 7, 8)


def mutate_bytes(rng: random.Random, frame: bytes, other: bytes, limits: FuzzLimits,
                 in_step: bool = False) -> bytes:
    """mutate_bytes damages an encoded frame (its length prefix included, unless in_step)."""
    payload = frame[4:]
    kind = rng.choice(IN_STEP_MUTATIONS) if in_step else rng.randrange(9)
    if kind == 0:  # bit flips in the msgpack, length kept: the stream stays in step
        data = bytearray(payload)
        for _ in range(rng.randrange(1, 4)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return framed(bytes(data))
    if kind == 1:  # bit flips anywhere, the length too: the stream may lose step
        data = bytearray(frame)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:  # the msgpack cut short, length fixed
        return framed(payload[:rng.randrange(len(payload) + 1)])
    if kind == 3:  # the frame cut short, length not fixed: the next frame is read into it
        return frame[:rng.randrange(len(frame))]
    if kind == 4:  # a piece duplicated
        cut = rng.randrange(len(frame) + 1)
        return frame[:cut] + frame[rng.randrange(len(frame)):]
    if kind == 5:  # two frames spliced
        return frame[:rng.randrange(len(frame) + 1)] + other[rng.randrange(len(other) + 1):]
    if kind == 6:  # a huge claimed length, then some bytes
        size = rng.choice([limits.max_frame_bytes, limits.max_frame_bytes + 1, 2**31, 2**32 - 1])
        return size.to_bytes(4, "big") + payload[:rng.randrange(64)]
    if kind == 7:  # deep nesting
        return framed(b"\x91" * rng.choice([10, 1000, 100_000]) + b"\xc0")
    return framed(rng.randbytes(rng.randrange(64)))  # garbage


def binary_messages(rng: random.Random, limits: FuzzLimits, pool: LeasePool,
                    ids: Iterator[int], in_step: bool) -> tuple[list[bytes], dict[int, str], bool]:
    """binary_messages: the frames of one binary session; request id -> queue of the
    intact ones with integer ids (so replies can feed the LeasePool); and whether the
    server must answer every frame once (`answers_all`). With `in_step`, every frame is
    whole and none is a quit, so it must."""
    frames: list[bytes] = []
    queues: dict[int, str] = {}
    quits = False
    previous = framed(pack([0, "ping", {}]))
    for _ in range(rng.randrange(1, MESSAGES_PER_SESSION_MAX)):
        request_id = next(ids)
        name, args = request_args(rng, limits, pool)
        if in_step and name == "quit":
            name, args = "ping", {}
        quits = quits or name == "quit"
        request = [request_id, name, args]
        roll = rng.random()
        if roll < 0.5:
            queues[request_id] = args.get("queue", "")
            frame = framed(pack(request))
        elif roll < 0.75:
            frame = framed(pack(mutate_request(rng, request)))
        else:
            frame = mutate_bytes(rng, framed(pack(request)), previous, limits, in_step)
        frames.append(frame)
        previous = frame
    return frames, queues, not quits and all(whole_frame(f, limits) for f in frames)


def whole_frame(frame: bytes, limits: FuzzLimits) -> bool:
    """whole_frame: its length prefix says exactly its length, within the limit. A stream of
    whole frames stays in step, however damaged their msgpack, and each gets one reply."""
    return len(frame) >= 4 and int.from_bytes(frame[:4], "big") == len(frame) - 4 \
        <= limits.max_frame_bytes


# -------------------------------------------------------------------- text

def text_line(rng: random.Random, limits: FuzzLimits, pool: LeasePool) -> list[bytes]:
    """text_line: one command (a PUT_MANY brings its body lines), maybe mutated."""
    name, args = request_args(rng, limits, pool)
    word = {"receive": "GET"}.get(name, name.upper())
    queue = str(args.get("queue", ""))
    if name == "put":
        opts = [f"delay={args['delay']}"] if "delay" in args else []
        opts += [f"header.{k}={v}" for k, v in args.get("headers", {}).items()]
        content = args["body"].replace(b"\n", b" ").replace(b"\r", b" ")
        lines = [f"PUT {queue} {' '.join(opts)} -- ".encode() + content]
    elif name == "put_many":
        count = len(args["bodies"])
        # Sometimes fewer body lines than announced: the block swallows what follows.
        given = count if rng.random() < 0.8 else rng.randrange(count + 1)
        lines = [f"PUT_MANY {queue} {count}".encode()]
        lines += [rng.randbytes(rng.randrange(32)).replace(b"\n", b"") for _ in range(given)]
    elif name in ("ack_many", "nack_many"):
        pairs = " ".join(f"{i}:{lease}" for i, lease in args["items"])
        lines = [f"{word} {queue} {pairs}".encode()]
    else:
        words = [word] + [f"{k}={v}" if k not in ("queue", "id", "lease") else str(v)
                          for k, v in args.items() if v is not None]
        lines = [" ".join(words).encode()]
    if rng.random() < 0.4:
        lines[0] = mutate_line(rng, lines[0], limits)
    return lines


def mutate_line(rng: random.Random, line: bytes, limits: FuzzLimits) -> bytes:
    words = line.split(b" ")
    kind = rng.randrange(8)
    if kind == 0:  # a word replaced by an edge number
        words[rng.randrange(len(words))] = rng.choice(EDGE_TEXT_NUMBERS).encode()
    elif kind == 1:  # an option with an edge value
        words.append(rng.choice([b"max=", b"wait=", b"visibility=", b"delay=", b"priority=",
                                 b"header.%ZZ=", b"header.=", b"header.k="])
                     + rng.choice(EDGE_TEXT_NUMBERS).encode())
    elif kind == 2:  # junk bytes: NUL, high bytes, a lone CR
        at = rng.randrange(len(line) + 1)
        return line[:at] + rng.choice([b"\x00", b"\xff\xfe", b"\r", b"\t", b"%"]) + line[at:]
    elif kind == 3:  # an overlong line
        return line + b"x" * (limits.max_message_bytes + 1024 + rng.randrange(2, 4096))
    elif kind == 4:
        words = [w.lower() if rng.random() < 0.5 else w for w in words]
    elif kind == 5 and len(words) > 1:
        del words[rng.randrange(1, len(words))]
    elif kind == 6:
        words[0] = rng.choice(TEXT_WORDS).encode()
    else:
        return rng.randbytes(rng.randrange(80)).replace(b"\n", b"")
    return b" ".join(words)


def text_messages(rng: random.Random, limits: FuzzLimits, pool: LeasePool) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(rng.randrange(1, MESSAGES_PER_SESSION_MAX)):
        end = rng.choice([b"\n", b"\r\n"])
        out.append(b"".join(line + end for line in text_line(rng, limits, pool)))
    return out


# ----------------------------------------------------------------- session

@dataclass
class SessionPlan:
    kind: str  # "random", "binary" or "text"
    messages: list[bytes]  # written in this order (each in one write unless slow)
    request_queues: dict[int, str]  # binary: request id -> queue, for the LeasePool
    slow: bool  # write in small pieces with short pauses
    reads: bool  # false: never read a reply (the server must stop reading, not buffer)
    answers_all: bool  # binary, whole frames, no quit: each frame written gets one reply
    ending: str  # "close", "reset", "half_close" or "cut" (reset mid-message)


def plan_session(rng: random.Random, limits: FuzzLimits, pool: LeasePool,
                 ids: Iterator[int]) -> SessionPlan:
    """plan_session draws one hostile connection's whole input and how it ends."""
    kind = rng.choice(["random", "binary", "binary", "text", "text"])
    queues: dict[int, str] = {}
    answers_all = False
    reads = rng.random() < 0.9
    endings = ["close", "close", "reset", "half_close", "cut"] if reads else ["close", "reset"]
    if kind == "random":
        head = rng.choice([b"", b"W", b"WQ", b"WQ\x00", b"WQ\x00\x02", b"WQ\x00\x00"])
        messages = [head + rng.randbytes(rng.randrange(1, 4096))]
    elif kind == "binary":
        # A third of binary sessions keep in step and half-close, so that their
        # replies can be counted: every frame must get one.
        in_step = rng.random() < 0.33
        if in_step:
            reads, endings = True, ["half_close"]
        frames, queues, answers_all = binary_messages(rng, limits, pool, ids, in_step)
        messages = [PREAMBLE, *frames]
    else:
        messages = text_messages(rng, limits, pool)
    return SessionPlan(kind, messages, queues, slow=rng.random() < 0.15, reads=reads,
                       answers_all=answers_all, ending=rng.choice(endings))
