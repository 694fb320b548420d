"""End to end: issue 4's message features through the real client and the real server.

Batches with per-item results, receive max, delays, priorities, headers,
expiry, FULL (a queue's max_length and the server's --max-memory), the
queue-listing commands (queues, peek, purge, delete_queue, message_info) and
the figures stats gained. Queue settings are in test_e2e_queue_settings.py,
dead letters in test_e2e_dead_letters.py, restarts in
test_e2e_queue_durability.py.

Tests wait for events: a delayed message is awaited with a long-polling
receive, which the server answers the moment the message becomes ready.
Where no reply marks the event (a message expiring, a rate being sampled),
a test re-reads the server's figures until they show it, bounded by
EVENT_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from polling import EVENT_TIMEOUT_S, until

from wonderq_client import (
    BadArgument,
    BatchTooLarge,
    BodyTooLarge,
    Full,
    HeadersTooLarge,
    LeaseLost,
    NotFound,
    NotLeasedError,
    QueueNotFound,
    connect,
)

# Upper bound for any single wait; the tests wait for events, and this only
# stops a broken server from hanging the suite.
QUEUE_FIGURES = ("ready", "in_flight", "delayed", "waiting", "messages", "put_total",
                 "acked_total", "redelivered_total", "dead_lettered_total", "expired_total",
                 "oldest_age_s", "put_rate", "ack_rate", "redelivered_rate")




def bodies_of(messages) -> list[bytes]:
    return [m.body for m in messages]


# ----------------------------------------------------------------- batches


async def test_put_many_stores_the_good_items_and_reports_the_bad_one(server_factory):
    server = server_factory("--max-message-bytes", "10")
    async with connect(server.host, server.port) as client:
        results = await client.put_many("pm", [
            b"first", b"x" * 11, {"body": b"third", "priority": -1},
            {"body": b"fourth", "delay": -1}, "fifth"])
        first, too_large, third, bad_option, fifth = results
        assert isinstance(too_large, BodyTooLarge), results
        assert isinstance(bad_option, BadArgument), results
        assert all(isinstance(i, int) for i in (first, third, fifth)), results
        assert first < third < fifth
        got = await client.receive("pm", max=10)
        assert [(m.id, m.body) for m in got] == [
            (third, b"third"), (first, b"first"), (fifth, b"fifth")]
        info = await client.queue_info("pm")
        assert (info["put_total"], info["messages"]) == (3, 3)


async def test_put_many_options_apply_to_items_without_their_own(server):
    async with connect(server.host, server.port) as client:
        plain, own = await client.put_many(
            "pmo", [b"plain", {"body": b"own", "priority": -1, "headers": {"mine": "1"}}],
            priority=3, headers={"batch": "yes"})
        got = await client.receive("pmo", max=10)
        assert [(m.id, m.priority, m.headers) for m in got] == [
            (own, -1, {"mine": "1"}), (plain, 3, {"batch": "yes"})]
        # An item's own empty map is no headers, as its own delay 0 is no delay (a
        # client that always sends the field must not get the batch's instead).
        [bare] = await client.put_many("pmh", [{"body": b"bare", "headers": {}}],
                                       headers={"batch": "yes"})
        [got_bare] = await client.receive("pmh")
        assert (got_bare.id, got_bare.headers) == (bare, {})
        assert (await client.message_info("pmh", bare))["headers"] == {}
        delayed, ready = await client.put_many(
            "pmd", [b"later", {"body": b"now", "delay": 0}], delay=30)
        assert [m.id for m in await client.receive("pmd", max=10)] == [ready]
        assert (await client.message_info("pmd", delayed))["state"] == "delayed"


async def test_whole_batch_errors_raise(server_factory):
    server = server_factory("--max-batch", "3")
    async with connect(server.host, server.port) as client:
        with pytest.raises(BatchTooLarge):
            await client.put_many("wb", [b"a", b"b", b"c", b"d"])
        assert await client.put_many("wb", []) == []  # no round trip (the server refuses)
        await client.put_many("wb", [b"a", b"b", b"c"])
        msgs = await client.receive("wb", max=3)
        with pytest.raises(BatchTooLarge):
            await client.ack_many("wb", [*msgs, (1, 2)])
        assert await client.ack_many("wb", []) == []
        assert await client.nack_many("wb", []) == []
        with pytest.raises(BatchTooLarge):
            await client.receive("wb", max=4)
        assert await client.ack_many("wb", msgs) == [None, None, None]


async def test_ack_many_and_nack_many_settle_each_item_on_its_own(server):
    async with connect(server.host, server.port) as client:
        await client.put("am", b"0")
        [stale] = await client.receive("am", visibility=0.2)
        # The short lease runs out; the message is delivered again under a new lease.
        [fresh] = await client.receive("am", wait=EVENT_TIMEOUT_S, visibility=30)
        assert (fresh.id, fresh.deliveries) == (stale.id, 2)
        ids = await client.put_many("am", [b"1", b"2", b"3", b"4"])
        m1, m2, m3, m4 = await client.receive("am", max=4, visibility=30)
        assert [m1.id, m2.id, m3.id, m4.id] == ids
        await m3.ack()

        results = await client.ack_many("am", [m1, (m3.id, m3.lease), stale,
                                               (fresh.id, fresh.lease)])
        assert results[0] is None and results[3] is None, results
        assert isinstance(results[1], NotFound), results
        assert isinstance(results[2], LeaseLost), results
        results = await client.nack_many("am", [m2, (m1.id, m1.lease), m4], delay=30)
        assert results[0] is None and results[2] is None, results
        assert isinstance(results[1], NotFound), results

        info = await client.queue_info("am")
        assert (info["acked_total"], info["delayed"], info["messages"]) == (3, 2, 2)


async def test_receive_hands_out_at_most_max(server):
    async with connect(server.host, server.port) as client:
        ids = await client.put_many("rm", [b"%d" % i for i in range(5)])
        assert [m.id for m in await client.receive("rm", max=3)] == ids[:3]
        assert [m.id for m in await client.receive("rm", max=10)] == ids[3:]
        assert await client.receive("rm", max=10) == []
        with pytest.raises(BadArgument):
            await client.receive("rm", max=0)


# ------------------------------------------------------------------ delays


async def test_a_delayed_put_becomes_ready_on_its_own(server):
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("dl", b"later", delay=0.3)
        assert await client.receive("dl") == []
        info = await client.queue_info("dl")
        assert (info["ready"], info["delayed"], info["messages"]) == (0, 1, 1)
        assert (await client.stats())["queues"]["dl"]["delayed"] == 1
        described = await client.message_info("dl", msg_id)
        assert described["state"] == "delayed"
        assert described["deadline_at"] == pytest.approx(described["enqueued_at"] + 0.3,
                                                         abs=0.05)
        # A receive that waits is answered the moment the delay ends.
        [msg] = await client.receive("dl", wait=EVENT_TIMEOUT_S)
        assert (msg.id, msg.deliveries) == (msg_id, 1)
        assert time.time() >= msg.enqueued_at + 0.3 - 0.01
        assert (await client.queue_info("dl"))["delayed"] == 0


async def test_a_nack_with_delay_holds_the_message_back(server):
    async with connect(server.host, server.port) as client:
        await client.put("nd", b"x")
        [msg] = await client.receive("nd")
        nacked_at = time.time()
        await msg.nack(delay=0.3)
        assert await client.receive("nd") == []
        assert (await client.queue_info("nd"))["delayed"] == 1
        [again] = await client.receive("nd", wait=EVENT_TIMEOUT_S)
        assert (again.id, again.deliveries) == (msg.id, 2)
        assert time.time() >= nacked_at + 0.3 - 0.01


async def test_a_delayed_message_keeps_its_place_by_priority_and_id(server):
    async with connect(server.host, server.port) as client:
        delayed = await client.put("dp", b"delayed", delay=0.2)
        later = await client.put("dp", b"later")
        [first] = await client.receive("dp", visibility=30)
        assert first.id == later
        await first.nack()
        # Once the delay ends, the older message is ahead of the newer one.
        await until(lambda: client.queue_info("dp"), lambda i: i["ready"] == 2)
        assert [m.id for m in await client.receive("dp", max=2)] == [delayed, later]


# -------------------------------------------------------------- priorities


async def test_lower_priority_numbers_go_first_then_oldest_first(server):
    async with connect(server.host, server.port) as client:
        puts = [(b"a", 5), (b"b", None), (b"c", -1), (b"d", 0), (b"e", 5),
                (b"lowest", -2**31), (b"highest", 2**31 - 1)]
        for body, priority in puts:
            await client.put("pr", body, priority=priority)
        order = [b"lowest", b"c", b"b", b"d", b"a", b"e", b"highest"]
        assert bodies_of(await client.peek("pr", max=10)) == order
        got = await client.receive("pr", max=10, visibility=30)
        assert bodies_of(got) == order
        assert [m.priority for m in got] == [-2**31, -1, 0, 0, 5, 5, 2**31 - 1]
        # A message given back goes back to its place by priority.
        await got[0].nack()
        await got[4].nack()
        assert bodies_of(await client.receive("pr", max=10)) == [b"lowest", b"a"]
        for bad in (2**31, -2**31 - 1, 1.5, "1"):
            with pytest.raises(BadArgument):
                await client.put("pr", b"x", priority=bad)


# ----------------------------------------------------------------- headers


async def test_headers_round_trip(server):
    async with connect(server.host, server.port) as client:
        headers = {"trace-id": "abc123", "ünï": "cödé ✓", "empty": "", "sp ace": "a=b c"}
        msg_id = await client.put("hd", b"x", headers=headers)
        await client.put("hd", b"none")
        await client.put("hd", b"empty map", headers={})
        with_headers, without, empty = await client.receive("hd", max=3)
        assert (with_headers.id, with_headers.headers) == (msg_id, headers)
        assert without.headers == {} and empty.headers == {}
        assert (await client.message_info("hd", msg_id))["headers"] == headers
        await with_headers.nack()
        [peeked] = await client.peek("hd")
        assert peeked.headers == headers


async def test_header_limits(server_factory):
    server = server_factory("--max-headers", "2", "--max-header-bytes", "16")
    async with connect(server.host, server.port) as client:
        assert await client.put("hl", b"ok", headers={"a": "1", "b": "2"})
        assert await client.put("hl", b"ok", headers={"k": "v" * 15})  # 16 bytes
        with pytest.raises(HeadersTooLarge):
            await client.put("hl", b"x", headers={"a": "1", "b": "2", "c": "3"})
        with pytest.raises(HeadersTooLarge):
            await client.put("hl", b"x", headers={"k": "v" * 16})
        with pytest.raises(HeadersTooLarge):  # bytes of UTF-8, not characters
            await client.put("hl", b"x", headers={"k": "é" * 8})
        with pytest.raises(BadArgument):
            await client.put("hl", b"x", headers={"": "no key"})
        with pytest.raises(BadArgument):
            await client.put("hl", b"x", headers={"k": 1})  # type: ignore[dict-item]
        ok, refused = await client.put_many("hl", [
            b"ok", {"body": b"x", "headers": {"a": "1", "b": "2", "c": "3"}}])
        assert isinstance(ok, int) and isinstance(refused, HeadersTooLarge)
        assert (await client.queue_info("hl"))["messages"] == 3


# ------------------------------------------------------------------ expiry


async def test_a_message_expires_after_its_expiry(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("ex", expiry=0.3)
        short = await client.put("ex", b"short", expiry=0.2)
        from_queue = await client.put("ex", b"from the queue setting")
        forever = await client.put("ex", b"never", expiry=0)
        info = await client.message_info("ex", short)
        assert info["expires_at"] == pytest.approx(info["enqueued_at"] + 0.2, abs=0.05)
        assert (await client.message_info("ex", forever))["expires_at"] is None
        info = await until(lambda: client.queue_info("ex"), lambda i: i["expired_total"] == 2)
        assert (info["messages"], info["ready"]) == (1, 1)
        with pytest.raises(NotFound):
            await client.message_info("ex", from_queue)
        [msg] = await client.receive("ex", max=10)
        assert msg.id == forever
        assert (await client.stats())["queues"]["ex"]["expired_total"] == 2


async def test_a_leased_message_is_not_taken_from_its_consumer_by_expiry(server):
    async with connect(server.host, server.port) as client:
        held = await client.put("el", b"held", expiry=0.3)
        lapsed = await client.put("el", b"lease runs out", expiry=0.3)
        await client.put("el", b"never received", expiry=0.3)
        [held_msg] = await client.receive("el", visibility=30)
        [lapsed_msg] = await client.receive("el", visibility=1.0)
        assert (held_msg.id, lapsed_msg.id) == (held, lapsed)
        # The unleased one expires first: by then the others' expiry has passed too.
        await until(lambda: client.queue_info("el"), lambda i: i["expired_total"] == 1)
        assert (await client.queue_info("el"))["in_flight"] == 2
        await held_msg.ack()  # its consumer may still ack it
        # The other's lease ends without an ack: it is dropped then, not delivered again.
        info = await until(lambda: client.queue_info("el"), lambda i: i["expired_total"] == 2)
        assert (info["messages"], info["acked_total"], info["redelivered_total"]) == (0, 1, 0)
        assert await client.receive("el", max=10) == []


async def test_bad_expiry_and_delay_are_refused(server_factory):
    server = server_factory("--max-delay", "100")
    async with connect(server.host, server.port) as client:
        for options in ({"expiry": -1}, {"expiry": float("inf")}, {"delay": -1},
                        {"delay": 101}, {"delay": float("nan")}):
            with pytest.raises(BadArgument):
                await client.put("be", b"x", **options)
        assert await client.put("be", b"x", delay=100, expiry=1e6)
        assert (await client.queue_info("be"))["messages"] == 1


# -------------------------------------------------------------------- FULL


async def test_a_queue_at_its_max_length_refuses_puts_and_drops_nothing(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("ml", max_length=3)
        results = await client.put_many("ml", [b"a", b"b", b"c", b"d", b"e"])
        assert all(isinstance(r, int) for r in results[:3]), results
        assert all(isinstance(r, Full) for r in results[3:]), results
        # Each refusal is about its own item: the batch's first three were stored.
        assert "this message was not stored" in results[3].message, results[3].message
        [leased] = await client.receive("ml", visibility=30)
        with pytest.raises(Full):  # a leased message still takes its place
            await client.put("ml", b"f")
        info = await client.queue_info("ml")
        assert (info["messages"], info["put_total"]) == (3, 3)
        await leased.ack()
        g = await client.put("ml", b"g")
        got = await client.receive("ml", max=10)
        assert [(m.id, m.body) for m in got] == [
            (results[1], b"b"), (results[2], b"c"), (g, b"g")]


async def test_the_server_at_max_memory_refuses_puts_and_drops_nothing(server_factory):
    # Each message is accounted as its body and headers plus 200 bytes: three of
    # these take 3 * 1200 = 3600 bytes of 4096, a fourth would not fit.
    server = server_factory("--max-memory", "4K")
    async with connect(server.host, server.port) as client:
        ids = [await client.put(f"mm{i}", bytes(1000)) for i in range(3)]
        with pytest.raises(Full):
            await client.put("mm0", bytes(1000))
        [refused] = await client.put_many("mm1", [bytes(1000)])
        assert isinstance(refused, Full)
        assert "this message was not stored" in refused.message, refused.message
        info = (await client.stats())["server"]
        assert (info["max_memory"], info["stored_bytes"], info["messages"]) == (4096, 3600, 3)
        assert info["full_refusals_total"] == 2
        [msg] = await client.receive("mm0")
        assert msg.id == ids[0]
        await msg.ack()
        assert (await client.stats())["server"]["stored_bytes"] == 2400
        assert await client.put("mm0", bytes(1000)) > ids[2]
        for i in (1, 2):
            [msg] = await client.receive(f"mm{i}")
            assert msg.id == ids[i]


# ----------------------------------------------------- queues, peek, purge, ...


async def test_queues_lists_every_queue_by_name(server):
    async with connect(server.host, server.port) as client:
        assert await client.queues() == []
        await client.put("qc", b"later", delay=30)
        await client.put_many("qb", [b"1", b"2"])
        await client.receive("qb", visibility=30)
        await client.create_queue("qa")
        assert await client.queues() == [
            {"queue": "qa", "explicit": True, "messages": 0, "ready": 0, "in_flight": 0,
             "delayed": 0},
            {"queue": "qb", "explicit": False, "messages": 2, "ready": 1, "in_flight": 1,
             "delayed": 0},
            {"queue": "qc", "explicit": False, "messages": 1, "ready": 0, "in_flight": 0,
             "delayed": 1},
        ]


async def test_peek_shows_what_receive_would_hand_out_and_leases_nothing(server):
    async with connect(server.host, server.port) as client:
        a = await client.put("pk", b"a")
        b = await client.put("pk", b"b", priority=-1, headers={"h": "v"})
        c = await client.put("pk", b"c")
        await client.put("pk", b"delayed", delay=30)
        peeked = await client.peek("pk", max=10)
        assert [m.id for m in peeked] == [b, a, c]
        assert [(m.lease, m.deliveries) for m in peeked] == [(None, 0)] * 3
        assert (peeked[0].priority, peeked[0].headers) == (-1, {"h": "v"})
        assert [m.id for m in await client.peek("pk")] == [b]
        info = await client.queue_info("pk")
        assert (info["ready"], info["in_flight"]) == (3, 0)
        with pytest.raises(NotLeasedError):
            await peeked[0].ack()
        [first] = await client.receive("pk", visibility=30)
        assert (first.id, first.deliveries) == (b, 1)
        assert [m.id for m in await client.peek("pk", max=10)] == [a, c]
        with pytest.raises(QueueNotFound):
            await client.peek("no-such-queue")
        assert "no-such-queue" not in [q["queue"] for q in await client.queues()]


async def test_purge_removes_every_message_and_keeps_the_queue(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("pg", max_length=10)
        await client.put_many("pg", [b"1", b"2", b"3", b"4"])
        [leased] = await client.receive("pg", visibility=30)
        [delayed] = await client.receive("pg", visibility=30)
        await delayed.nack(delay=30)
        assert await client.purge("pg") == 4
        with pytest.raises(NotFound):
            await leased.ack()
        info = await client.queue_info("pg")
        assert (info["messages"], info["ready"], info["in_flight"], info["delayed"]) == (
            0, 0, 0, 0)
        assert (info["explicit"], info["max_length"]) == (True, 10)
        assert await client.purge("pg") == 0
        with pytest.raises(QueueNotFound):
            await client.purge("no-such-queue")


async def test_delete_queue_removes_it_and_answers_waiting_receives(server):
    async with connect(server.host, server.port) as client, \
            connect(server.host, server.port) as consumer:
        await client.create_queue("del", max_length=5)
        await client.put_many("del", [b"1", b"2"], delay=30)
        waiting = asyncio.create_task(consumer.receive("del", wait=EVENT_TIMEOUT_S))
        await consumer.ping()  # the receive before it is parked on the server
        assert (await client.queue_info("del"))["waiting"] == 1
        assert await client.delete_queue("del") == 2
        loop = asyncio.get_running_loop()
        deleted_at = loop.time()
        assert await asyncio.wait_for(waiting, EVENT_TIMEOUT_S) == []
        assert loop.time() - deleted_at < EVENT_TIMEOUT_S / 2  # answered, not timed out
        for admin in (client.queue_info, client.purge, client.delete_queue, client.peek):
            with pytest.raises(QueueNotFound):
                await admin("del")
        with pytest.raises(QueueNotFound):
            await client.configure_queue("del", max_length=1)
        assert "del" not in [q["queue"] for q in await client.queues()]
        # Naming it again makes a new, implicit queue with the default settings.
        await client.put("del", b"new")
        info = await client.queue_info("del")
        assert (info["explicit"], info["max_length"], info["messages"]) == (False, 0, 1)


async def test_message_info_describes_one_message(server):
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("mi", b"hello", priority=4, headers={"a": "b"}, expiry=60)
        info = await client.message_info("mi", msg_id)
        assert info == {
            "id": msg_id, "queue": "mi", "state": "ready", "deliveries": 0, "priority": 4,
            "enqueued_at": info["enqueued_at"], "deadline_at": None,
            "expires_at": pytest.approx(info["enqueued_at"] + 60, abs=0.05),
            "body_bytes": 5, "headers": {"a": "b"}, "dead_letter": None}
        assert info["enqueued_at"] == pytest.approx(time.time(), abs=5)
        [msg] = await client.receive("mi", visibility=30)
        leased = await client.message_info("mi", msg_id)
        assert (leased["state"], leased["deliveries"]) == ("leased", 1)
        assert leased["deadline_at"] == pytest.approx(time.time() + 30, abs=5)
        await msg.nack(delay=20)
        delayed = await client.message_info("mi", msg_id)
        assert delayed["state"] == "delayed"
        assert delayed["deadline_at"] == pytest.approx(time.time() + 20, abs=5)
        with pytest.raises(NotFound):
            await client.message_info("mi", msg_id + 1)
        with pytest.raises(QueueNotFound):
            await client.message_info("no-such-queue", msg_id)


# ------------------------------------------------------------------- stats


async def test_stats_show_the_new_figures(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("empty")
        await client.put_many("st", [b"a" * 10, b"b" * 10, b"c"], headers={"k": "vv"})
        [msg] = await client.receive("st", visibility=30)
        await msg.ack()
        # Rates are sampled once a second; wait for the first sample.
        stats = await until(client.stats, lambda s: s["queues"]["st"]["put_rate"] > 0
                            and s["queues"]["st"]["ack_rate"] > 0
                            and s["queues"]["st"]["oldest_age_s"] > 0)
        q = stats["queues"]["st"]
        assert set(QUEUE_FIGURES) <= set(q), q
        assert (q["dead_lettered_total"], q["expired_total"], q["redelivered_rate"]) == (0, 0, 0)
        assert q["oldest_age_s"] < EVENT_TIMEOUT_S + 5
        assert stats["queues"]["empty"]["oldest_age_s"] == 0
        server_figures = stats["server"]
        assert server_figures["queue_count"] == 2
        # Two messages left: 10 + 1 body bytes, 3 header bytes each and 128 + 64 for
        # the objects that hold them (message.py), 200 each.
        assert server_figures["stored_bytes"] == 11 + 2 * (3 + 128 + 64) + 2 * 200
        assert server_figures["max_memory"] > 0
        info = await client.queue_info("st")
        assert set(QUEUE_FIGURES) <= set(info), info
        assert info["put_rate"] > 0
