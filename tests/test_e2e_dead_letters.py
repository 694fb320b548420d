"""End to end: dead letters (max_deliveries, dead_letter_queue) and redrive.

A message whose delivery ends without an ack (its lease runs out, or it is
nacked) once it has been delivered max_deliveries times moves, at that
moment, into the dead-letter queue: same id, body, headers, priority and
delivery count, with its origin (queue, time of the move). redrive moves
ready dead letters back to their origin queues with their counts reset.

Waiting: a move caused by a lease running out is awaited with a long-polling
receive on the dead-letter queue, which nobody else triggers; a move caused
by a nack has happened by the time the nack is answered.
"""

from __future__ import annotations

import time

import pytest
from polling import EVENT_TIMEOUT_S, until

from wonderq_client import Full, LeaseLost, QueueNotFound, connect


async def test_a_message_whose_leases_run_out_is_dead_lettered_at_once(server):
    async with connect(server.host, server.port) as client, \
            connect(server.host, server.port) as dead_consumer:
        await client.create_queue("work", max_deliveries=2, dead_letter_queue="work.dead")
        msg_id = await client.put("work", b"poison", priority=3, headers={"k": "v"})
        await client.receive("work", visibility=0.2)
        second_from = time.time()
        [second] = await client.receive("work", wait=EVENT_TIMEOUT_S, visibility=0.2)
        assert (second.id, second.deliveries) == (msg_id, 2)
        # Nobody asks "work" for anything again: the second lease running out is
        # what moves the message, and a receive on the dead-letter queue gets it.
        [dead] = await dead_consumer.receive("work.dead", wait=EVENT_TIMEOUT_S, visibility=30)
        received_at = time.time()
        assert (dead.id, dead.body, dead.priority, dead.headers) == (
            msg_id, b"poison", 3, {"k": "v"})
        assert dead.deliveries == 3  # its two deliveries are kept; this is the third
        origin, moved_at = dead.dead_letter
        assert origin == "work"
        assert second_from + 0.2 - 0.01 <= moved_at <= received_at + 0.01
        info = await client.queue_info("work")
        assert (info["dead_lettered_total"], info["messages"]) == (1, 0)
        assert (await client.stats())["queues"]["work"]["dead_lettered_total"] == 1
        dead_info = await client.queue_info("work.dead")
        assert (dead_info["explicit"], dead_info["in_flight"]) == (False, 1)
        described = await client.message_info("work.dead", msg_id)
        assert described["dead_letter"] == ["work", moved_at]
        assert (described["state"], described["deliveries"]) == ("leased", 3)
        with pytest.raises(LeaseLost):  # the dead-letter queue's consumer holds it now
            await second.ack()
        await dead.ack()
        assert (await client.queue_info("work.dead"))["messages"] == 0


async def test_a_nack_at_the_limit_dead_letters_at_once(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("nk", max_deliveries=2, dead_letter_queue="nk.dead")
        ids = await client.put_many("nk", [b"a", b"b", b"c"], priority=-7)
        first = await client.receive("nk", max=3, visibility=30)
        assert await client.nack_many("nk", first) == [None] * 3  # below the limit: stay
        assert (await client.queue_info("nk"))["ready"] == 3
        a, b, c = await client.receive("nk", max=3, visibility=30)
        assert [m.deliveries for m in (a, b, c)] == [2, 2, 2]
        await a.nack()
        await b.nack(delay=30)  # at the limit, a delay does not hold the move back
        assert await client.nack_many("nk", [c], delay=5) == [None]
        dead = await client.peek("nk.dead", max=10)
        assert [(m.id, m.deliveries, m.priority) for m in dead] == [(i, 2, -7) for i in ids]
        assert {m.dead_letter[0] for m in dead} == {"nk"}
        assert all(m.dead_letter[1] <= time.time() + 0.01 for m in dead)
        dead_info = await client.queue_info("nk.dead")
        assert (dead_info["ready"], dead_info["delayed"]) == (3, 0)
        info = await client.queue_info("nk")
        assert (info["messages"], info["dead_lettered_total"]) == (0, 3)


async def test_moves_ignore_the_dead_letter_queues_max_length(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("small.dead", max_length=1)
        await client.create_queue("src", max_deliveries=1, dead_letter_queue="small.dead")
        await client.put_many("src", [b"1", b"2", b"3"])
        results = await client.nack_many("src", await client.receive("src", max=3))
        assert results == [None] * 3
        assert (await client.queue_info("small.dead"))["messages"] == 3
        with pytest.raises(Full):  # puts still respect it
            await client.put("small.dead", b"x")


async def test_a_moved_message_takes_the_dead_letter_queues_expiry(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("exp.dead", expiry=0.3)
        await client.create_queue("keep.dead")
        await client.create_queue("exp.src", max_deliveries=1, dead_letter_queue="exp.dead")
        await client.create_queue("keep.src", max_deliveries=1, dead_letter_queue="keep.dead")
        expiring = await client.put("exp.src", b"x", expiry=60)
        kept = await client.put("keep.src", b"y", expiry=60)
        for queue in ("exp.src", "keep.src"):
            [msg] = await client.receive(queue)
            await msg.nack()
        info = await client.message_info("exp.dead", expiring)
        assert info["expires_at"] == pytest.approx(info["dead_letter"][1] + 0.3, abs=0.05)
        assert (await client.message_info("keep.dead", kept))["expires_at"] is None
        await until(lambda: client.queue_info("exp.dead"), lambda i: i["expired_total"] == 1)
        assert (await client.queue_info("exp.dead"))["messages"] == 0
        assert (await client.queue_info("keep.dead"))["messages"] == 1


async def test_redrive_moves_ready_dead_letters_home_oldest_first(server):
    async with connect(server.host, server.port) as client:
        for home in ("home1", "home2"):
            await client.create_queue(home, max_deliveries=1, dead_letter_queue="rd.dead")
        a, b, c = await client.put_many("home1", [b"a", b"b", b"c"], headers={"h": "1"})
        d = await client.put("home2", b"d", priority=2)
        await client.nack_many("home1", await client.receive("home1", max=3))
        await client.nack("home2", d, (await client.receive("home2"))[0].lease)
        no_origin = await client.put("rd.dead", b"put here directly")
        [held] = await client.receive("rd.dead", visibility=30)  # oldest: a; leased
        assert held.id == a

        assert await client.redrive("rd.dead", max=1) == 1  # b, the oldest ready one
        assert [m.id for m in await client.peek("home1", max=10)] == [b]
        assert await client.redrive("rd.dead") == 2  # c and d; not the leased one
        assert await client.redrive("rd.dead") == 0
        left = await client.queue_info("rd.dead")
        assert (left["messages"], left["in_flight"], left["ready"]) == (2, 1, 1)
        assert [m.id for m in await client.peek("rd.dead")] == [no_origin]

        got = await client.receive("home1", max=10, visibility=30)
        assert [(m.id, m.deliveries, m.dead_letter, m.headers) for m in got] == [
            (b, 1, None, {"h": "1"}), (c, 1, None, {"h": "1"})]
        [from_home2] = await client.receive("home2", visibility=30)
        assert (from_home2.id, from_home2.deliveries, from_home2.priority) == (d, 1, 2)
        info = await client.message_info("home2", d)
        assert info["dead_letter"] is None
        # Counts start again: one more unacked delivery dead-letters it again.
        await from_home2.nack()
        assert [m.id for m in await client.peek("rd.dead", max=10)] == [no_origin, d]
        # The held message, given back, can be redriven too.
        await held.nack()
        assert await client.redrive("rd.dead") == 2
        assert [m.id for m in await client.peek("home1", max=10)] == [a]
        with pytest.raises(QueueNotFound):
            await client.redrive("no-such-queue")


async def test_redrive_skips_messages_whose_origin_is_full(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("fh", max_deliveries=1, dead_letter_queue="fh.dead")
        ids = await client.put_many("fh", [b"1", b"2"])
        await client.nack_many("fh", await client.receive("fh", max=2))
        await client.configure_queue("fh", max_length=1)
        blocker = await client.put("fh", b"fills it")
        assert await client.redrive("fh.dead") == 0
        [msg] = await client.receive("fh")
        assert msg.id == blocker
        await msg.ack()
        assert await client.redrive("fh.dead") == 1  # room for one
        assert [m.id for m in await client.peek("fh")] == [ids[0]]
        assert [m.id for m in await client.peek("fh.dead")] == [ids[1]]


async def test_redrive_is_not_stopped_by_a_message_given_back_late(server):
    """End to end, a reviewer's: x, whose origin is full, was given back by a late nack
    (a second entry on the ready heap), and REDRIVE answered 0 where y could go back."""
    async with connect(server.host, server.port) as client:
        await client.create_queue("ra", max_deliveries=1, dead_letter_queue="rdlq",
                                  max_length=1)
        await client.create_queue("rb", max_deliveries=1, dead_letter_queue="rdlq")
        x = await client.put("ra", b"x")
        [mx] = await client.receive("ra")
        await mx.nack()  # its last delivery: x moves to rdlq
        y = await client.put("rb", b"y")
        [my] = await client.receive("rb")
        await my.nack()  # y moves to rdlq, after x
        [look] = await client.receive("rdlq", visibility=0.05)
        assert look.id == x
        await until(lambda: client.message_info("rdlq", x),
                    lambda info: info["state"] == "ready")  # its lease ran out
        await look.nack()  # late: x gets a second entry
        await client.put("ra", b"filler")  # ra is at its max_length: x must stay
        assert await client.redrive("rdlq") == 1
        assert [m.id for m in await client.receive("rb")] == [y]
        assert [m.id for m in await client.peek("rdlq")] == [x]
