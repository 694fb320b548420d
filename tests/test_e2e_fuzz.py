"""End to end: hostile connections fuzz the real server while valid clients use it.

For WONDERQ_FUZZ_SECONDS (default 8), HOSTILE_CONNECTIONS raw sockets send
random bytes, mutated binary frames and mutated text lines (fuzz_inputs.py
draws them), some slowly, some never reading their replies, ending with a
close, a reset, a half-close or a cut mid-frame, and reconnect when the
server closes on them. Meanwhile two producers and two consumers, each on
its own connection with the real client, put varied bodies (empty, binary,
str, at the size limit, just over it) and receive and ack them. Then:

* the server is alive, answers stats, and its log has no traceback;
* no hostile reply was INTERNAL or undecodable; every half-closed connection
  was closed in time (no hang), and every whole frame of a binary session
  that kept in step got exactly one reply;
* the rarer error codes were reached (CODES_EXPECTED), so the fuzz still
  explores the limit paths;
* every message put was delivered with exactly its body, headers and
  priority, nothing was delivered that was not put, and delivery counts rose
  by one per delivery;
* nothing acked reappears: the acked lease of each message is its latest
  (leases grow, so a delivery after a successful ack would show up), and a
  long poll past the visibility timeout finds nothing; the queue's figures
  say 0 messages, every put counted and every message acked once;
* resident memory stayed under RSS_BOUND_BYTES;
* with a journal: the server stops cleanly and restarts on what the fuzz
  left, with the valid queue empty.

The run is bounded in time and in count (messages, sessions). The seed is
printed at the start (pytest shows it when the test fails); set
WONDERQ_FUZZ_SEED to send the same bytes again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

import pytest
from fuzz_inputs import FuzzLimits, LeasePool, SessionPlan, plan_session
from polling import EVENT_TIMEOUT_S

from wonderq_client import BodyTooLarge, LeaseLost, connect
from wonderq_client.codec import ReplyDecoder

FUZZ_SECONDS = float(os.environ.get("WONDERQ_FUZZ_SECONDS", "8"))
SEED = int(os.environ.get("WONDERQ_FUZZ_SEED") or random.SystemRandom().randrange(2**32))

LIMITS = FuzzLimits(max_message_bytes=4096, max_batch=20, max_frame_bytes=128 * 1024,
                    max_headers=4, max_header_bytes=256, max_wait_s=3.0)
SERVER_FLAGS = [*LIMITS.flags(), "--max-queues", "64", "--max-delay", "5",
                "--max-visibility-timeout", "60"]
# The valid traffic's queue. Hostile requests name queues starting "fuzz"; a
# mutation that turned one into this 30-character name would need some twenty
# particular bytes at once, so no hostile request ever touches it.
VALID_QUEUE = "valid-traffic-0123456789abcdef"
VISIBILITY_S = 1.5  # short, so that a message whose ack was lost would come back in the test

HOSTILE_CONNECTIONS = 8
SESSIONS_PER_CONNECTION_MAX = 5000
PRODUCERS = 2
CONSUMERS = 2
VALID_MESSAGES_MAX = 20_000
SLOW_PIECES_MAX = 50  # per message of a slow session: slow, but still bounded in time
WRITE_TIMEOUT_S = 2.0
HALF_CLOSE_TIMEOUT_S = 10.0  # a half-closed connection must be answered and closed by then
RSS_BOUND_BYTES = 256 * 1024 * 1024  # a run takes about 40 MiB
# Error codes the hostile traffic must reach, or the fuzzer has stopped exploring.
CODES_EXPECTED = {"MALFORMED", "BAD_ARGUMENT", "UNKNOWN_COMMAND", "INVALID_QUEUE_NAME",
                  "FRAME_TOO_LARGE", "BODY_TOO_LARGE", "BATCH_TOO_LARGE", "LINE_TOO_LONG",
                  "HEADERS_TOO_LARGE", "NOT_FOUND"}
# A shorter run may miss the rarer codes (and counted sessions) by chance.
CODES_CHECKED_FROM_S = 5.0
TEXT_ERROR = re.compile(rb"^ERR ([A-Z_]+) ", re.MULTILINE)


# ------------------------------------------------------------------ hostile

@dataclass
class Findings:
    """What the hostile side saw that a correct server never does, and the codes it reached."""

    problems: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    counted: int = 0  # half-closed sessions whose replies were counted (`answers_all`)


class ReplyWatcher:
    """Reads one hostile connection's replies: looks for INTERNAL, counts error codes,
    feeds the LeasePool."""

    def __init__(self, plan: SessionPlan, pool: LeasePool, findings: Findings) -> None:
        self.plan = plan
        self.pool = pool
        self.findings = findings
        self.decoder: ReplyDecoder | None = ReplyDecoder() if plan.kind == "binary" else None
        self.tail = b""  # the last bytes read, so a word split between reads is still seen
        self.replies = 0  # binary reply frames read

    async def read_all(self, reader: asyncio.StreamReader) -> None:
        """read_all returns when the server closes the connection (or resets it)."""
        try:
            while chunk := await reader.read(65536):
                self._replies(chunk)
        except ConnectionError:
            pass

    def _replies(self, chunk: bytes) -> None:
        data = self.tail + chunk
        # Looked for in the raw bytes, so that it is found in either mode (random bytes
        # may start either). Hostile requests never contain the word, so no reply echoes it.
        at = data.find(b"INTERNAL")
        if at >= 0:
            self.findings.problems.append(f"INTERNAL reply: {data[max(at - 40, 0):at + 200]!r}")
        if self.decoder is None:  # text mode (or random bytes, which the server reads as text)
            lines = data.split(b"\r\n")
            self.tail = lines.pop()[-256:]
            for line in lines:
                match = TEXT_ERROR.match(line)
                if match:
                    self.findings.codes[match.group(1).decode()] += 1
            return
        self.tail = chunk[-16:]
        try:
            replies = self.decoder.feed(chunk)
        except Exception as exc:
            self.findings.problems.append(f"undecodable reply frame: {exc!r}")
            self.decoder = None
            return
        self.replies += len(replies)
        for request_id, error, result in replies:
            if error is not None:
                self.findings.codes[str(error[0])] += 1
            elif type(request_id) is int and request_id in self.plan.request_queues:
                self._harvest(self.plan.request_queues[request_id], result)

    def _harvest(self, queue: str, result: object) -> None:
        if type(result) is int:
            self.pool.add_id(queue, result)
        elif isinstance(result, list):
            for row in result:
                if type(row) is int:  # a put_many id
                    self.pool.add_id(queue, row)
                elif isinstance(row, list) and len(row) == 2 and isinstance(row[0], str):
                    self.findings.codes[row[0]] += 1  # one item's error in a batch's result
                elif isinstance(row, list) and len(row) >= 3 and type(row[2]) is int:
                    self.pool.add_lease(queue, row[0], row[2])


def pieces(rng: random.Random, data: bytes) -> list[bytes]:
    """pieces cuts the start of data into small random pieces (a slow client, partial
    frames), at most SLOW_PIECES_MAX of them, and sends the rest whole."""
    out, at = [], 0
    while at < len(data) and len(out) < SLOW_PIECES_MAX:
        step = rng.randrange(1, 64)
        out.append(data[at:at + step])
        at += step
    if at < len(data):
        out.append(data[at:])
    return out


async def hostile_session(host: str, port: int, rng: random.Random, plan: SessionPlan,
                          pool: LeasePool, findings: Findings, stop_at: float) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, port)
    watcher = ReplyWatcher(plan, pool, findings)
    # A client that does not read gets a reader that never finishes (cancelled below).
    never = asyncio.Event().wait
    reading = asyncio.create_task(watcher.read_all(reader) if plan.reads else never())
    messages = list(plan.messages)
    if plan.ending == "cut":
        messages[-1] = messages[-1][:rng.randrange(max(len(messages[-1]), 1))]
    written = 0  # whole messages written (the preamble is one)
    try:
        for message in messages:
            if reading.done():
                break  # the server closed the connection (a protocol error, QUIT)
            if loop.time() >= stop_at:
                break  # the fuzz is over; the session still ends as planned
            for piece in pieces(rng, message) if plan.slow else [message]:
                writer.write(piece)
                # Bounded: the server stops reading a client that does not read its replies.
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
                if plan.slow:
                    # Pacing to imitate a slow client, not synchronisation.
                    await asyncio.sleep(rng.uniform(0, 0.003))
            written += 1
        if plan.ending in ("reset", "cut"):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif plan.ending == "half_close" and not reading.done():
            writer.write_eof()
            try:
                await asyncio.wait_for(asyncio.shield(reading), HALF_CLOSE_TIMEOUT_S)
            except TimeoutError:
                findings.problems.append(
                    f"no close {HALF_CLOSE_TIMEOUT_S} s after a half-close ({plan.kind})")
            # At end of input the server answers every request it has read, then closes.
            # written == 0: the fuzz ended before even the preamble went out.
            if plan.answers_all and written > 0:
                findings.counted += 1
                if watcher.replies != written - 1:
                    findings.problems.append(
                        f"{written - 1} whole frames got {watcher.replies} replies: "
                        f"{plan.messages[1:written]!r:.1000}")
    except (ConnectionError, OSError, TimeoutError):
        pass  # the server closed on us mid-write (after protocol errors), or stopped reading
    finally:
        writer.close()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def hostile_connection(index: int, host: str, port: int, stop_at: float,
                             findings: Findings) -> None:
    """hostile_connection runs sessions one after another until stop_at, reconnecting."""
    rng = random.Random(f"{SEED}-hostile-{index}")
    pool = LeasePool()
    request_ids = itertools.count(1)
    loop = asyncio.get_running_loop()
    for _ in range(SESSIONS_PER_CONNECTION_MAX):
        if loop.time() >= stop_at:
            return
        plan = plan_session(rng, LIMITS, pool, request_ids)
        await hostile_session(host, port, rng, plan, pool, findings, stop_at)
        findings.sessions += 1


# -------------------------------------------------------------------- valid

@dataclass(frozen=True)
class Sent:
    body: bytes
    headers: dict[str, str]
    priority: int


@dataclass(frozen=True)
class Delivery:
    id: int
    lease: int
    deliveries: int
    sent: Sent  # as received


@dataclass
class Ledger:
    """Exactly what the valid clients put, received and acked, as the server answered."""

    sent: dict[int, Sent] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    acked: dict[int, int] = field(default_factory=dict)  # id -> the lease that acked it
    lease_lost: int = 0
    refused: int = 0  # bodies over the limit, refused with BODY_TOO_LARGE as they must be
    producing: bool = True


def valid_body(rng: random.Random, tag: bytes) -> tuple[bytes | str, bytes]:
    """valid_body: a body to put and the bytes it must come back as (unique by its tag)."""
    kind = rng.randrange(10)
    if kind == 0:
        return b"", b""
    if kind == 1:  # every byte value
        return tag + bytes(range(256)), tag + bytes(range(256))
    if kind == 2:  # exactly at the limit
        data = tag + rng.randbytes(LIMITS.max_message_bytes - len(tag))
        return data, data
    if kind == 3:  # sent as a msgpack str, stored as its UTF-8
        text = tag.decode() + "é中\u0000 \n" * rng.randrange(5)
        return text, text.encode()
    data = tag + rng.randbytes(rng.randrange(200))
    return data, data


def valid_options(rng: random.Random) -> tuple[dict[str, str], int]:
    if rng.random() < 0.8:
        return {}, 0
    return {"trace": str(rng.randrange(10**6)), "ü": "\u2028"}, rng.randrange(-3, 4)


async def produce(index: int, host: str, port: int, stop_at: float, ledger: Ledger) -> None:
    rng = random.Random(f"{SEED}-producer-{index}")
    loop = asyncio.get_running_loop()
    count = 0
    started = loop.time()
    # Messages per second that spread this producer's share of the bound over the run.
    rate = VALID_MESSAGES_MAX / PRODUCERS / FUZZ_SECONDS
    async with connect(host, port) as client:
        while loop.time() < stop_at and len(ledger.sent) < VALID_MESSAGES_MAX:
            ahead_s = count / rate - (loop.time() - started)
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)  # pacing: valid traffic for the whole run
            headers, priority = valid_options(rng)
            batch = []
            for _ in range(rng.choice([1, 1, 5, LIMITS.max_batch])):
                count += 1
                batch.append(valid_body(rng, f"p{index}-{count}:".encode()))
            if rng.random() < 0.02:  # a body one byte over the limit: refused, never stored
                batch[0] = (b"x" * (LIMITS.max_message_bytes + 1), b"")
            bodies = [wire for wire, _ in batch]
            kwargs = {"headers": headers or None, "priority": priority or None}
            if len(batch) == 1:
                try:
                    results: list = [await client.put(VALID_QUEUE, bodies[0], **kwargs)]
                except BodyTooLarge as exc:
                    results = [exc]
            else:
                results = await client.put_many(VALID_QUEUE, bodies, **kwargs)
            for (wire, expected), result in zip(batch, results, strict=True):
                if len(wire) > LIMITS.max_message_bytes:
                    assert isinstance(result, BodyTooLarge), result
                    ledger.refused += 1
                else:
                    assert isinstance(result, int), result
                    ledger.sent[result] = Sent(expected, headers, priority)


async def consume(index: int, host: str, port: int, ledger: Ledger) -> None:
    rng = random.Random(f"{SEED}-consumer-{index}")
    async with connect(host, port) as client:
        while ledger.producing or not ledger.sent.keys() <= ledger.acked.keys():
            messages = await client.receive(VALID_QUEUE, max=rng.choice([1, 7, LIMITS.max_batch]),
                                            wait=0.2)
            for msg in messages:
                ledger.deliveries.append(Delivery(msg.id, msg.lease, msg.deliveries,
                                                  Sent(msg.body, msg.headers, msg.priority)))
            if len(messages) > 1 and rng.random() < 0.5:
                results = await client.ack_many(VALID_QUEUE, messages)
            else:
                results = []
                for msg in messages:
                    try:
                        await msg.ack()
                        results.append(None)
                    except LeaseLost as exc:  # its lease ran out and it was delivered again
                        results.append(exc)
            for msg, result in zip(messages, results, strict=True):
                if result is None:
                    assert msg.id not in ledger.acked, f"message {msg.id} acked twice"
                    ledger.acked[msg.id] = msg.lease
                else:
                    assert isinstance(result, LeaseLost), result
                    ledger.lease_lost += 1


def check_ledger(ledger: Ledger) -> None:
    """check_ledger: every put delivered exactly as sent, and nothing after its ack."""
    assert ledger.sent, "the valid producers put nothing"
    unknown = {d.id for d in ledger.deliveries} - ledger.sent.keys()
    assert not unknown, f"delivered but never put: {sorted(unknown)[:10]}"
    assert ledger.acked.keys() == ledger.sent.keys()
    leases: dict[int, list[Delivery]] = {}
    for delivery in ledger.deliveries:
        assert delivery.sent == ledger.sent[delivery.id], f"message {delivery.id} changed"
        leases.setdefault(delivery.id, []).append(delivery)
    for msg_id, seen in leases.items():
        seen.sort(key=lambda d: d.lease)
        assert [d.deliveries for d in seen] == list(range(1, len(seen) + 1)), seen
        # Leases grow with time: a delivery after the successful ack has a larger lease.
        assert ledger.acked[msg_id] == seen[-1].lease, f"message {msg_id} came back after " \
            f"its ack: {seen}"


# --------------------------------------------------------------------- test

def journal_flags(mode: str, tmp_path) -> list[str]:
    if mode == "memory":
        return ["--in-memory"]
    # A small compaction threshold, so the journal is also rewritten under the fuzz.
    return ["--data-dir", str(tmp_path / "data"), "--fsync", "never",
            "--compact-min-bytes", str(256 * 1024)]


def check_log(log: str) -> None:
    assert "Traceback" not in log, log[-5000:]
    assert "internal error" not in log, log[-5000:]


@pytest.mark.timeout(FUZZ_SECONDS + 110)
@pytest.mark.parametrize("mode", ["memory", "journal"])
async def test_fuzzed_server_stays_up_and_valid_traffic_is_exact(server_factory, tmp_path,
                                                                 mode):
    print(f"fuzz seed {SEED} (replay with WONDERQ_FUZZ_SEED={SEED}), {FUZZ_SECONDS} s, {mode}")
    flags = [*SERVER_FLAGS, *journal_flags(mode, tmp_path)]
    server = server_factory(*flags)
    host, port = server.host, server.port
    async with connect(host, port) as client:
        await client.create_queue(VALID_QUEUE, visibility_timeout=VISIBILITY_S)
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + FUZZ_SECONDS
        findings, ledger = Findings(), Ledger()
        hostile = [hostile_connection(i, host, port, stop_at, findings)
                   for i in range(HOSTILE_CONNECTIONS)]
        producers = [produce(i, host, port, stop_at, ledger) for i in range(PRODUCERS)]
        consumers = asyncio.gather(*(consume(i, host, port, ledger) for i in range(CONSUMERS)))
        try:
            await asyncio.wait_for(asyncio.gather(*hostile, *producers),
                                   FUZZ_SECONDS + HALF_CLOSE_TIMEOUT_S + EVENT_TIMEOUT_S)
            ledger.producing = False
            await asyncio.wait_for(consumers, EVENT_TIMEOUT_S * 3)
        finally:
            consumers.cancel()
            await asyncio.gather(consumers, return_exceptions=True)

        print(f"{findings.sessions} hostile sessions ({findings.counted} counted), "
              f"codes {dict(findings.codes)}; "
              f"{len(ledger.sent)} valid messages, {len(ledger.deliveries)} deliveries, "
              f"{ledger.lease_lost} lease lost, {ledger.refused} refused")
        assert server.proc is not None and server.proc.poll() is None, server.log[-5000:]
        assert not findings.problems, findings.problems[:10]
        missing = CODES_EXPECTED - findings.codes.keys()
        assert not missing or FUZZ_SECONDS < CODES_CHECKED_FROM_S, \
            f"the fuzz never reached {missing}"
        assert findings.counted or FUZZ_SECONDS < CODES_CHECKED_FROM_S
        check_ledger(ledger)
        # Past the visibility timeout of the last lease: a message whose ack was
        # lost would be ready again and end this long poll.
        assert await client.receive(VALID_QUEUE, max=LIMITS.max_batch,
                                    wait=VISIBILITY_S + 1.0) == []
        stats = await client.stats()
        print(f"server rss {stats['server']['rss_bytes'] / 2**20:.1f} MiB, last compaction at "
              f"{stats['server'].get('last_compaction_at')}")
        figures = stats["queues"][VALID_QUEUE]
        assert (figures["messages"], figures["put_total"], figures["acked_total"]) == \
            (0, len(ledger.sent), len(ledger.sent))
        assert stats["server"]["rss_bytes"] < RSS_BOUND_BYTES, stats["server"]
    check_log(server.log)
    if mode == "journal":
        assert server.stop() == 0, server.log[-5000:]
        again = server_factory(*flags)
        async with connect(again.host, again.port) as client:
            assert await client.receive(VALID_QUEUE) == []
            figures = (await client.stats())["queues"][VALID_QUEUE]
            assert figures["messages"] == 0, figures
        check_log(again.log)
