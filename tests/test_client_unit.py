"""Tests of the client's argument handling and reply parsing, with a fake transport.

`FakeServer` stands where the socket would be: it collects the frames the
client writes and answers each with the reply a test gives. No server, no
sockets: what these check is what goes on the wire (options left None are
not sent, misspelt settings never leave the client) and how replies are read
(per-item results, deliveries with or without the fields added in issue 4).
The one socket, for connect's timeout, is a loopback listener that never answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from wonderq_client import (
    AuthFailed,
    AuthRequired,
    BodyTooLarge,
    ConnectionClosed,
    FrameTooLarge,
    Full,
    HeadersTooLarge,
    LeaseLost,
    Message,
    NotFound,
    NotLeasedError,
    QueueExists,
    QueueNotFound,
    TooManyQueues,
    WonderQError,
)
from wonderq_client import client as client_module
from wonderq_client.client import Client, _ClientProtocol, connect
from wonderq_client.codec import PREAMBLE, NotAReply, ReplyDecoder
from wonderq_client.errors import error_from_wire


class FakeServer:
    """The transport under a client: decodes written requests, answers on request."""

    def __init__(self) -> None:
        self.buffer = b""
        self.requests: list[list[Any]] = []
        self.protocol: _ClientProtocol | None = None
        self.answered_out_of_turn: set[Any] = set()

    def write(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.startswith(PREAMBLE):
            self.buffer = self.buffer[len(PREAMBLE):]
        while len(self.buffer) >= 4:
            size = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < 4 + size:
                break
            self.requests.append(msgpack.unpackb(self.buffer[4:4 + size], raw=False))
            self.buffer = self.buffer[4 + size:]

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> None:
        return None  # no socket: nothing for keepalive to set

    def close(self) -> None:
        assert self.protocol is not None
        self.protocol.connection_lost(None)

    def reply(self, result: Any = None, error: list[str] | None = None) -> None:
        """reply answers the oldest request not yet answered."""
        while self.requests[self.answered][0] in self.answered_out_of_turn:
            self.answered += 1
        request_id = self.requests[self.answered][0]
        self.answered += 1
        self.reply_to(request_id, result, error)

    def reply_to(self, request_id: Any, result: Any = None,
                 error: list[str] | None = None) -> None:
        """reply_to answers one request, out of turn if it is not the oldest."""
        self.answered_out_of_turn.add(request_id)
        payload = msgpack.packb([request_id, error, result], use_bin_type=True)
        assert self.protocol is not None
        self.protocol.data_received(len(payload).to_bytes(4, "big") + payload)

    def probes(self) -> list[int]:
        """probes: the ids of receives sent without a wait, as a held receive's is."""
        return [r[0] for r in self.requests if r[1] == "receive" and "wait" not in r[2]]

    answered = 0


@pytest.fixture
async def fake():
    loop = asyncio.get_running_loop()
    server = FakeServer()
    protocol = _ClientProtocol(loop)
    server.protocol = protocol
    protocol.connection_made(server)  # type: ignore[arg-type]
    return Client(protocol, "fake", 0), server


async def call(server: FakeServer, coro, result: Any = None,
               error: list[str] | None = None) -> tuple[Any, list[Any]]:
    """call runs one client call, answers it with `result`; returns (value, request sent)."""
    task = asyncio.ensure_future(coro)
    for _ in range(10):
        await asyncio.sleep(0)  # the client writes at the end of the loop turn
        if len(server.requests) > server.answered:
            break
    request = server.requests[server.answered]
    server.reply(result, error)
    return await task, request


# ------------------------------------------------------------------- put


async def test_put_sends_only_the_options_given(fake):
    client, server = fake
    value, request = await call(server, client.put("q", b"x"), 7)
    assert value == 7
    assert request[1:] == ["put", {"queue": "q", "body": b"x"}]
    _, request = await call(server, client.put("q", "text", delay=1.5, priority=-3,
                                               headers={"k": "v"}, expiry=60), 8)
    assert request[2] == {"queue": "q", "body": "text", "delay": 1.5, "priority": -3,
                          "headers": {"k": "v"}, "expiry": 60}
    _, request = await call(server, client.put("q", b"x", priority=0, delay=0), 9)
    assert request[2] == {"queue": "q", "body": b"x", "delay": 0, "priority": 0}


async def test_put_many_items_options_and_per_item_results(fake):
    client, server = fake
    bodies = [b"a", "b", {"body": b"c", "priority": 2, "delay": None},
              {"body": b"d", "headers": {"h": "1"}}]
    value, request = await call(
        server, client.put_many("q", bodies, expiry=30),
        [11, ["BODY_TOO_LARGE", "too big"], 13, ["FULL", "queue q is full"]])
    assert request[1] == "put_many"
    assert request[2] == {"queue": "q", "expiry": 30, "bodies": [
        b"a", "b", {"body": b"c", "priority": 2}, {"body": b"d", "headers": {"h": "1"}}]}
    assert bodies[2] == {"body": b"c", "priority": 2, "delay": None}  # the caller's list kept
    assert value[0] == 11 and value[2] == 13
    assert isinstance(value[1], BodyTooLarge) and value[1].message == "too big"
    assert isinstance(value[3], Full) and value[3].code == "FULL"


async def test_put_many_takes_any_iterable(fake):
    client, server = fake
    _, request = await call(server, client.put_many("q", (b"%d" % i for i in range(3))),
                            [1, 2, 3])
    assert request[2] == {"queue": "q", "bodies": [b"0", b"1", b"2"]}


async def test_whole_batch_errors_raise(fake):
    client, server = fake
    with pytest.raises(WonderQError) as info:
        await call(server, client.put_many("q", [b"x"]), None,
                   ["BATCH_TOO_LARGE", "too many"])
    assert info.value.code == "BATCH_TOO_LARGE"


# ------------------------------------------------------------ deliveries


async def test_receive_reads_the_appended_delivery_fields(fake):
    client, server = fake
    rows = [[1, b"plain", 100, 1, 1.7e9, 0, None, None],
            [2, b"rich", 101, 3, 1.7e9, -5, {"a": "b"}, ["origin", 1.8e9]],
            [3, b"old server", 102, 1, 1.7e9],
            [4, b"newer server", 103, 1, 1.7e9, 1, None, None, "something new"],
            [5, b"issue 4 server", 104, 1, 1.7e9, 2],
            [6, b"issue 4 server", 105, 1, 1.7e9, 2, {"c": "d"}]]
    msgs, _ = await call(server, client.receive("dlq", max=6), rows)
    plain, rich, old, newer, six, seven = msgs
    assert (six.priority, six.headers, six.dead_letter) == (2, {}, None)
    assert (seven.priority, seven.headers, seven.dead_letter) == (2, {"c": "d"}, None)
    assert (plain.priority, plain.headers, plain.dead_letter) == (0, {}, None)
    assert (rich.priority, rich.headers, rich.dead_letter) == (-5, {"a": "b"}, ("origin", 1.8e9))
    assert (old.id, old.lease, old.priority, old.headers, old.dead_letter) == (3, 102, 0, {}, None)
    assert (newer.id, newer.priority) == (4, 1)
    assert plain.headers is not old.headers  # never a shared dict
    assert "priority=-5" in repr(rich) and "origin" in repr(rich)


async def test_a_cancelled_waiting_receive_is_cancelled_on_the_server(fake):
    client, server = fake
    waiting = asyncio.ensure_future(client.receive("q", wait=20))
    at_once = asyncio.ensure_future(client.receive("q"))
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 2:
            break
    [[wait_id, _, _], [at_once_id, _, _]] = server.requests
    waiting.cancel()
    at_once.cancel()  # answered at once by the server: nothing to cancel there
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 3:
            break
    assert server.requests[2][1:] == ["cancel", {"request": wait_id}]
    # The replies come; the wait's is empty, the other's messages are given back.
    server.reply([])
    server.reply([[5, b"x", 9, 1, 1.0, 0, None, None]])
    server.reply(1)
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 4:
            break
    # Given back as unseen: nobody looked at it, so the delivery must not count.
    assert [r[1:] for r in server.requests[3:]] == [
        ["nack", {"queue": "q", "id": 5, "lease": 9, "unseen": True}]]
    # A server older than `unseen` refuses the field: the nack goes again without it.
    server.reply(None, ["BAD_ARGUMENT", "nack has no field unseen"])
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 5:
            break
    assert server.requests[4][1:] == ["nack", {"queue": "q", "id": 5, "lease": 9}]
    server.reply(None)
    assert at_once_id != wait_id and client._protocol._pending == {}
    # That server is remembered: later give-backs on this connection are plain nacks.
    client._protocol.give_back("q", [[6, b"y", 10, 1, 1.0, 0, None, None]])
    await asyncio.sleep(0)
    assert server.requests[5][1:] == ["nack", {"queue": "q", "id": 6, "lease": 10}]


async def test_waits_past_the_limit_are_held_until_one_on_the_server_ends(fake, monkeypatch):
    # The server stops reading a connection with more than about 1,024 waiting
    # receives, and then its cancels wait too: a reviewer's 1,100 abandoned waits on
    # one connection went on taking messages. The client keeps the extra ones.
    monkeypatch.setattr(client_module, "MAX_WAITS_ON_SERVER", 2)
    client, server = fake
    waits = [asyncio.ensure_future(client.receive("q", wait=5)) for _ in range(4)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # Two wait on the server; the two held are each asked once without a wait.
    assert [(r[1], "wait" in r[2]) for r in server.requests] == [
        ("receive", True), ("receive", True), ("receive", False), ("receive", False)]
    waits[2].cancel()  # held: dropped here, nothing to cancel on the server
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(server.requests) == 4 and waits[2].cancelled()
    for probe in server.probes():
        server.reply_to(probe, [])  # nothing ready: the held one stays held
    await asyncio.sleep(0)
    assert not waits[3].done() and len(client._protocol._waits_held) == 1
    server.reply([])  # the first wait ends: the oldest held one goes out
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 5:
            break
    assert await waits[0] == []
    held_id = server.requests[4][0]
    assert server.requests[4][1] == "receive" and "wait" in server.requests[4][2]
    assert held_id > server.requests[1][0]
    assert client._protocol._waits_held == {} and len(client._protocol._waits_on_server) == 2
    server.close()
    for wait in (waits[1], waits[3]):
        with pytest.raises(ConnectionClosed):
            await wait


async def test_a_held_receive_over_the_frame_limit_is_refused_as_a_sent_one_is(
        fake, monkeypatch):
    # A receive held behind the waits on the server skipped the client's max_frame_bytes
    # check that every sent request has: its probe, and later the receive, went out
    # over the limit, for the server to close the connection over.
    monkeypatch.setattr(client_module, "MAX_WAITS_ON_SERVER", 1)
    client, server = fake
    client._protocol.max_frame_bytes = 300
    first = asyncio.ensure_future(client.receive("q", wait=30))
    await asyncio.sleep(0)
    for wait in (None, 30):  # sent at once, and held
        with pytest.raises(FrameTooLarge, match="max_frame_bytes of 300"):
            await client.receive("q" * 400, wait=wait)
    for _ in range(3):
        await asyncio.sleep(0)
    assert [request[2]["queue"] for request in server.requests] == ["q"]
    assert client._protocol._waits_held == {} and not first.done()
    first.cancel()


ROW = [5, b"x", 9, 1, 1.0, 0, None, None]


async def test_a_held_receive_takes_what_its_queue_has_ready_at_once(fake, monkeypatch):
    # A reviewer's receive on a queue with messages, held behind 1,000 waits on empty
    # queues, waited out its whole wait.
    monkeypatch.setattr(client_module, "MAX_WAITS_ON_SERVER", 1)
    client, server = fake
    first = asyncio.ensure_future(client.receive("empty", wait=30))
    held = asyncio.ensure_future(client.receive("ready", wait=30, max=5))
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 2:
            break
    assert server.requests[1][1:] == ["receive", {"queue": "ready", "max": 5}]  # no wait
    server.reply_to(server.requests[1][0], [ROW])
    [message] = await asyncio.wait_for(held, 10)
    assert (message.id, message.lease, message.queue) == (5, 9, "ready")
    assert client._protocol._waits_held == {} and client._protocol.replies_not_taken == set()
    assert not first.done() and len(server.requests) == 2  # it never went out to wait


async def test_a_held_receive_ended_by_its_probes_error_or_gone_before_its_answer(
        fake, monkeypatch):
    monkeypatch.setattr(client_module, "MAX_WAITS_ON_SERVER", 1)
    client, server = fake
    first = asyncio.ensure_future(client.receive("empty", wait=30))
    refused = asyncio.ensure_future(client.receive("q", wait=30, visibility=-1))
    cancelled = asyncio.ensure_future(client.receive("q", wait=30))
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 3:
            break
    refused_probe, cancelled_probe = server.probes()
    server.reply_to(refused_probe, None, ["BAD_ARGUMENT", "visibility must be seconds"])
    with pytest.raises(client_module.BadArgument):  # as the wait would have been
        await asyncio.wait_for(refused, 10)
    cancelled.cancel()  # dropped while its probe is on its way
    await asyncio.sleep(0)
    server.reply_to(cancelled_probe, [ROW])  # its messages, for nobody: given back
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 4:
            break
    assert server.requests[3][1:] == ["nack", {"queue": "q", "id": 5, "lease": 9,
                                               "unseen": True}]
    assert not first.done()


async def test_a_held_receive_cancelled_as_its_probe_brings_messages_sends_no_cancel(
        fake, monkeypatch):
    # A reviewer: the probe's messages were given back, and then a CANCEL went out for
    # the held receive's id, which the server had never been sent.
    monkeypatch.setattr(client_module, "MAX_WAITS_ON_SERVER", 1)
    client, server = fake
    first = asyncio.ensure_future(client.receive("empty", wait=30))
    held = asyncio.ensure_future(client.receive("q", wait=30))
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 2:
            break
    server.reply_to(server.requests[1][0], [ROW])
    held.cancel()  # in the same loop step as the probe's answer
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 3:
            break
    assert held.cancelled() and not first.done()
    assert [r[1] for r in server.requests[2:]] == ["nack"]  # given back; nothing to cancel


async def test_a_held_wait_waits_no_longer_than_it_asked(fake, monkeypatch):
    # A reviewer's receive(wait=0.2), held behind 1,000 waits of 3 s, returned after 3 s.
    monkeypatch.setattr(client_module, "MAX_WAITS_ON_SERVER", 1)
    client, server = fake
    first = asyncio.ensure_future(client.receive("q", wait=30))
    short = asyncio.ensure_future(client.receive("q", wait=0.05))
    longer = asyncio.ensure_future(client.receive("q", wait=20))
    assert await asyncio.wait_for(short, 10) == []  # its own wait ran out, still held
    assert not first.done() and [(r[1], "wait" in r[2]) for r in server.requests] == [
        ("receive", True), ("receive", False), ("receive", False)]  # and the probes
    for probe in server.probes():
        server.reply_to(probe, [])
    server.reply([])  # the first wait ends: the held one goes out with what is left
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 4:
            break
    assert 15 < server.requests[3][2]["wait"] <= 20
    assert await first == []
    server.reply([])
    assert await longer == []
    assert client._protocol._pending == {} and client._protocol._waits_held == {}


async def test_a_wait_the_server_would_refuse_is_sent_not_held(fake, monkeypatch):
    # Held behind the waits on the server, a reviewer's wait=-1 returned [] at once, nan and
    # inf hung until a slot freed, and '1' raised TypeError: each is sent at once now, for
    # the server's BAD_ARGUMENT, as it is when nothing else waits.
    monkeypatch.setattr(client_module, "MAX_WAITS_ON_SERVER", 1)
    client, server = fake
    first = asyncio.ensure_future(client.receive("q", wait=30))
    await asyncio.sleep(0)
    bad = [asyncio.ensure_future(client.receive("q", wait=wait))
           for wait in (-1, float("nan"), float("inf"), "1")]
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 5:
            break
    assert [r[2]["wait"] for r in server.requests[1:]][::3] == [-1, "1"]
    assert client._protocol._waits_held == {}
    # A float subclass (numpy's float64, say) is seconds: held, as a float is (a reviewer:
    # sent past the limit, it stalled the connection).
    class Seconds(float):
        pass

    held = asyncio.ensure_future(client.receive("q", wait=Seconds(0.01)))
    assert await asyncio.wait_for(held, 10) == [] and len(server.requests) == 6
    assert server.probes() == [server.requests[5][0]]  # held: asked once without a wait
    server.reply([])
    for _ in bad:
        server.reply(None, ["BAD_ARGUMENT", "wait must be seconds"])
    server.reply([])  # the probe's answer, for nobody now
    assert await first == []
    for call in bad:
        with pytest.raises(client_module.BadArgument):
            await call


async def test_close_waits_for_give_backs_that_an_older_server_may_refuse(fake):
    # Closing at once dropped the server's answer, so against an older server the
    # plain nack was never sent and the message stayed leased for its whole lease.
    client, server = fake
    client._protocol.give_back("q", [[5, b"x", 9, 1, 1.0, 0, None, None]])
    closing = asyncio.ensure_future(client.close())
    for _ in range(10):
        await asyncio.sleep(0)
        if server.requests:
            break
    assert server.requests[0][1:] == ["nack", {"queue": "q", "id": 5, "lease": 9,
                                               "unseen": True}]
    assert not closing.done()
    # A late reply to a cancelled receive starts another give-back meanwhile.
    client._protocol.give_back("q", [[6, b"y", 10, 1, 1.0, 0, None, None]])
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 2:
            break
    server.reply(None, ["BAD_ARGUMENT", "nack has no field unseen"])
    server.reply(None, ["BAD_ARGUMENT", "nack has no field unseen"])
    await closing
    assert [r[1:] for r in server.requests[2:]] == [
        ["nack", {"queue": "q", "id": 5, "lease": 9}],
        ["nack", {"queue": "q", "id": 6, "lease": 10}]]


async def test_calls_made_once_close_began_are_refused_and_not_sent(fake):
    # A reviewer's receive, made by another task while close() waited for the answer
    # to a waiting receive's cancel, went out; close() then dropped the connection
    # under it, and the message the server leased to it stayed leased to nobody.
    client, server = fake
    waiting = asyncio.ensure_future(client.receive("q", wait=20))
    await asyncio.sleep(0)
    assert [r[1] for r in server.requests] == ["receive"]
    closing = asyncio.ensure_future(client.close())
    for _ in range(10):
        await asyncio.sleep(0)
        if len(server.requests) == 2:
            break
    assert server.requests[1][1] == "cancel" and not closing.done()
    for call_made_during_close in (client.receive("q", wait=5), client.receive("q"),
                                   client.put("q", b"x"), client.stats()):
        with pytest.raises(ConnectionClosed, match="closing"):
            await call_made_during_close
    await asyncio.sleep(0)
    assert len(server.requests) == 2  # none of them went out
    server.reply([])  # the waiting receive's answer, then the cancel's
    server.reply(None)
    await closing
    with pytest.raises(ConnectionClosed):
        await waiting


async def test_ack_many_and_nack_many_take_pairs_and_messages(fake):
    client, server = fake
    [msg], _ = await call(server, client.receive("q"), [[5, b"x", 50, 1, 1.7e9, 0, None, None]])
    value, request = await call(
        server, client.ack_many("q", [(1, 10), msg, [2, 20]]),
        [None, None, ["LEASE_LOST", "delivered again"]])
    assert request[1:] == ["ack_many", {"queue": "q", "items": [[1, 10], [5, 50], [2, 20]]}]
    assert value[:2] == [None, None] and isinstance(value[2], LeaseLost)
    value, request = await call(server, client.nack_many("q", [msg], delay=2.5),
                                [["NOT_FOUND", "gone"]])
    assert request[2] == {"queue": "q", "items": [[5, 50]], "delay": 2.5}
    assert isinstance(value[0], NotFound)


async def test_peeked_messages_cannot_be_settled(fake):
    client, server = fake
    [peeked], request = await call(server, client.peek("q", max=3),
                                   [[5, b"x", None, 0, 1.7e9, 0, None, None]])
    assert request[1:] == ["peek", {"queue": "q", "max": 3}]
    assert peeked.lease is None and peeked.queue == "q"
    sent = len(server.requests)
    for settle in (peeked.ack(), peeked.nack(delay=1), peeked.touch()):
        with pytest.raises(NotLeasedError, match="peeked"):
            await settle
    with pytest.raises(NotLeasedError):
        await client.ack_many("q", [(1, 2), peeked])
    with pytest.raises(NotLeasedError):
        await client.nack_many("q", [peeked])
    await asyncio.sleep(0)
    assert len(server.requests) == sent  # nothing went out


# ---------------------------------------------------------------- admin


async def test_queue_settings_are_keywords_and_none_is_not_sent(fake):
    client, server = fake
    settings = {"visibility_timeout": 5, "max_deliveries": 3, "dead_letter_queue": "dlq",
                "delay": 0, "max_length": 0, "expiry": 0}
    value, request = await call(server, client.create_queue(
        "q", max_deliveries=3, dead_letter_queue="dlq", visibility_timeout=5), settings)
    assert value == settings
    assert request[1:] == ["create_queue", {"queue": "q", "visibility_timeout": 5,
                                            "max_deliveries": 3, "dead_letter_queue": "dlq"}]
    _, request = await call(server, client.configure_queue("q", max_length=0, expiry=2.5),
                            settings)
    assert request[1:] == ["configure_queue", {"queue": "q", "max_length": 0, "expiry": 2.5}]
    sent = len(server.requests)
    with pytest.raises(TypeError):
        await client.create_queue("q", visibilty_timeout=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        await client.configure_queue("q", dead_letter="x")  # type: ignore[call-arg]
    await asyncio.sleep(0)
    assert len(server.requests) == sent


@pytest.mark.parametrize(("method", "args", "wire"), [
    ("queue_info", ("q",), ["queue_info", {"queue": "q"}]),
    ("queues", (), ["queues", {}]),
    ("purge", ("q",), ["purge", {"queue": "q"}]),
    ("delete_queue", ("q",), ["delete_queue", {"queue": "q"}]),
    ("redrive", ("dlq",), ["redrive", {"queue": "dlq"}]),
    ("redrive", ("dlq", 5), ["redrive", {"queue": "dlq", "max": 5}]),
    ("message_info", ("q", 42), ["message_info", {"queue": "q", "id": 42}]),
])
async def test_admin_commands_on_the_wire(fake, method, args, wire):
    client, server = fake
    value, request = await call(server, getattr(client, method)(*args), "the reply")
    assert request[1:] == wire
    assert value == "the reply"


@pytest.mark.parametrize(("code", "cls"), [
    ("FULL", Full), ("QUEUE_NOT_FOUND", QueueNotFound), ("QUEUE_EXISTS", QueueExists),
    ("HEADERS_TOO_LARGE", HeadersTooLarge), ("TOO_MANY_QUEUES", TooManyQueues),
    ("AUTH_REQUIRED", AuthRequired), ("AUTH_FAILED", AuthFailed)])
def test_new_codes_have_their_classes(code, cls):
    error = error_from_wire(code, "why")
    assert type(error) is cls and error.code == code and str(error) == f"{code}: why"


def test_a_message_made_by_hand_still_works():
    msg = Message(None, "q", 1, b"x", 2, 1, 1.7e9)  # type: ignore[arg-type]
    assert (msg.priority, msg.headers, msg.dead_letter) == (0, {}, None)


async def test_connect_timeout_covers_auth_and_leaves_no_connection_open():
    """A peer that accepts and never answers: connect gives up after its timeout, AUTH
    included, and drops the connection rather than leave it half open."""
    accepted: list[asyncio.StreamWriter] = []
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # until the client drops the connection
        closed.set()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await connect("127.0.0.1", port, timeout=0.2, auth_token="t")
        await asyncio.wait_for(closed.wait(), 10)
        assert len(accepted) == 1
    finally:
        listener.close()
        for writer in accepted:
            writer.close()


# ------------------------------------------------ a peer that is not WonderQ

def reply_frame(reply: list[Any]) -> bytes:
    payload = msgpack.packb(reply, use_bin_type=True)
    return len(payload).to_bytes(4, "big") + payload


def test_the_decoder_reads_reply_frames_in_any_pieces():
    data = reply_frame([1, None, "pong"]) + reply_frame([2, ["NOT_FOUND", "gone"], None])
    decoder, replies = ReplyDecoder(), []
    for byte in data:
        replies += decoder.feed(bytes([byte]))
    assert replies == [[1, None, "pong"], [2, ["NOT_FOUND", "gone"], None]]


@pytest.mark.parametrize("data", [
    b"220 smtp.example ESMTP ready\r\n",  # a mail server's banner: "220 " is 842 MB
    PREAMBLE + b"\x00\x00",                  # an echo of what the client sent: 1.4 GB
    b"HTTP/1.1 400 Bad Request\r\n",
    b"\x00\x00\x00\x00",                     # an empty frame
    b"\x00\x00\x00\x02\x93\xc1",             # a 3-array that is not msgpack after all
])
def test_bytes_that_are_no_reply_are_refused_at_once(data):
    with pytest.raises(NotAReply):
        ReplyDecoder().feed(data)


async def test_calls_to_a_server_that_is_not_wonderq_fail_with_the_reason():
    # A reviewer's calls hung for as long as the other end stayed open.
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 smtp.example.test ESMTP ready\r\n")
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await connect("127.0.0.1", port)
        with pytest.raises(ConnectionClosed, match="not a WonderQ reply"):
            await asyncio.wait_for(client.ping(), 10)
        await client.close()
    finally:
        server.close()
        await server.wait_closed()
