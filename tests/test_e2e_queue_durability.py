"""End to end: issue 4's state across restarts (kill -9 and SIGTERM) with --fsync always.

What an answered request stored must be there after a restart: queue
settings (and deletions), delays (still running, then ending on their own),
dead letters with their delivery counts and origin, redrives, priorities,
headers and expiry times. A lease whose delivery reached max_deliveries and
ran out while the server was down is dead-lettered as soon as the server is
back.

Nothing here sleeps to wait for the server: tests wait for its ready line,
its replies, and long-polling receives. The one wait on the clock is for a
lease deadline to pass while no server runs (no event could mark it).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from crash_load import durable_server
from polling import until

from wonderq_client import LeaseLost, NotFound, QueueNotFound, connect
from wonderq_server.service import REDRIVE_STEP_MESSAGES

EVENT_TIMEOUT_S = 10.0
FSYNC = ("--fsync", "always")


def restart(server_factory, server, data_dir, how: str):
    """restart stops `server` (kill -9, or SIGTERM and a clean exit) and starts another."""
    if how == "kill":
        server.kill()
    else:
        assert server.stop() == 0, server.log
    return durable_server(server_factory, data_dir, *FSYNC)


@pytest.mark.parametrize("how", ["kill", "sigterm"])
async def test_queue_settings_survive_a_restart(server_factory, tmp_path, how):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, *FSYNC)
    wanted = {"visibility_timeout": 5, "max_deliveries": 3, "dead_letter_queue": "s.dead",
              "delay": 0.5, "max_length": 100, "expiry": 3600}
    async with connect(server.host, server.port) as client:
        await client.create_queue("s", **{**wanted, "max_length": 7})
        assert (await client.configure_queue("s", max_length=100))["max_length"] == 100
        await client.create_queue("bare")
        await client.create_queue("gone", max_length=3)
        await client.put("gone", b"x")
        assert await client.delete_queue("gone") == 1
        await client.put("implicit", b"x")
        await client.put("configured", b"x")
        await client.configure_queue("configured", delay=30)  # which makes it explicit
        await client.create_queue("purged")
        purged = await client.put("purged", b"x")
        assert await client.purge("purged") == 1
        before = {q["queue"]: q for q in await client.queues()}

    server = restart(server_factory, server, data_dir, how)
    async with connect(server.host, server.port) as client:
        info = await client.queue_info("s")
        assert info["explicit"] is True
        assert {name: info[name] for name in wanted} == wanted
        assert (await client.queue_info("bare"))["explicit"] is True
        implicit = await client.queue_info("implicit")
        assert (implicit["explicit"], implicit["messages"]) == (False, 1)
        configured = await client.queue_info("configured")
        assert (configured["explicit"], configured["delay"], configured["messages"]) == (
            True, 30, 1)
        with pytest.raises(QueueNotFound):
            await client.queue_info("gone")
        with pytest.raises(NotFound):
            await client.message_info("purged", purged)
        assert {q["queue"]: q for q in await client.queues()} == before
        # The settings are in force: the queue's delay holds back a put that gives none.
        await client.put("s", b"delayed by the setting")
        assert (await client.queue_info("s"))["delayed"] == 1


async def test_a_delayed_message_stays_delayed_across_kill_9(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, *FSYNC)
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("later", b"x", delay=3)
        ready_at = (await client.message_info("later", msg_id))["deadline_at"]
    server = restart(server_factory, server, data_dir, "kill")
    async with connect(server.host, server.port) as client:
        assert time.time() < ready_at, "the restart took longer than the delay"
        info = await client.queue_info("later")
        assert (info["delayed"], info["ready"]) == (1, 0)
        assert await client.receive("later") == []
        assert (await client.message_info("later", msg_id))["deadline_at"] == ready_at
        # Nothing pokes the queue: the delay ends on its own, and the receive is answered.
        [msg] = await client.receive("later", wait=EVENT_TIMEOUT_S)
        assert msg.id == msg_id and time.time() >= ready_at - 0.01


async def test_dead_letters_and_redrives_survive_kill_9(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, *FSYNC)
    async with connect(server.host, server.port) as client:
        await client.create_queue("src", max_deliveries=2, dead_letter_queue="src.dead")
        home_id, dead_id = await client.put_many(
            "src", [b"redriven", b"dead"], priority=-4, headers={"trace": "t-1"})
        for _ in range(2):
            await client.nack_many("src", await client.receive("src", max=2, visibility=30))
        assert await client.redrive("src.dead", max=1) == 1  # the older one goes home
        dead_before = await client.message_info("src.dead", dead_id)
        home_before = await client.message_info("src", home_id)
    assert dead_before["dead_letter"][0] == "src" and dead_before["deliveries"] == 2
    assert (home_before["deliveries"], home_before["dead_letter"]) == (0, None)

    server = restart(server_factory, server, data_dir, "kill")
    async with connect(server.host, server.port) as client:
        assert await client.message_info("src.dead", dead_id) == dead_before
        assert await client.message_info("src", home_id) == home_before
        [dead] = await client.receive("src.dead", visibility=30)
        assert (dead.id, dead.deliveries, dead.priority, dead.headers, dead.dead_letter) == (
            dead_id, 3, -4, {"trace": "t-1"}, tuple(dead_before["dead_letter"]))
        await dead.nack()
        assert await client.redrive("src.dead") == 1
        got = await client.receive("src", max=10, visibility=30)
        assert [(m.id, m.body, m.deliveries, m.dead_letter) for m in got] == [
            (home_id, b"redriven", 1, None), (dead_id, b"dead", 1, None)]


async def test_a_redrive_of_many_steps_is_all_on_disk_when_answered(server_factory, tmp_path):
    # A REDRIVE moves REDRIVE_STEP_MESSAGES a loop turn (service.py), each step's records
    # written between turns; its answer must still mean every move is durable.
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, *FSYNC)
    n = 3 * REDRIVE_STEP_MESSAGES + 7  # within one batch (--max-batch 1,000)
    async with connect(server.host, server.port) as client, \
            connect(server.host, server.port) as other:
        await client.create_queue("many", max_deliveries=1, dead_letter_queue="many.dead")
        ids = await client.put_many("many", [b"m%d" % i for i in range(n)])
        leased = await client.receive("many", max=n, visibility=30)
        await client.nack_many("many", leased)
        assert (await client.queue_info("many.dead"))["messages"] == n
        redrive = asyncio.ensure_future(client.redrive("many.dead"))
        assert await other.ping() == "pong"  # served while it runs, or before
        assert await redrive == n
    server = restart(server_factory, server, data_dir, "kill")
    async with connect(server.host, server.port) as client:
        got = await client.receive("many", max=n, visibility=30)
        assert sorted(m.id for m in got) == sorted(ids)
        assert {m.deliveries for m in got} == {1}


async def last_lease_runs_out_while_down(server_factory, data_dir, queue: str):
    """last_lease_runs_out_while_down: `queue` dead-letters to QUEUE.dead after one delivery;
    a message is received, the server killed, its lease left to run out while it is down,
    and the server started again. Returns (server, message id, lease, deadline)."""
    server = durable_server(server_factory, data_dir, *FSYNC)
    async with connect(server.host, server.port) as client:
        await client.create_queue(queue, max_deliveries=1, dead_letter_queue=f"{queue}.dead")
        msg_id = await client.put(queue, b"x")
        [msg] = await client.receive(queue, visibility=0.1)
        deadline = (await client.message_info(queue, msg_id))["deadline_at"]
    server.kill()
    # No server runs to send an event: let the deadline pass on the clock.
    time.sleep(max(0.0, deadline - time.time()) + 0.01)
    return durable_server(server_factory, data_dir, *FSYNC), msg_id, msg.lease, deadline


async def test_a_lease_that_ran_out_while_the_server_was_down_dead_letters_at_start(
        server_factory, tmp_path):
    server, msg_id, lease, deadline = await last_lease_runs_out_while_down(
        server_factory, tmp_path / "data", "down")
    async with connect(server.host, server.port) as client:
        loop = asyncio.get_running_loop()
        connected_at = loop.time()
        [dead] = await client.receive("down.dead", wait=EVENT_TIMEOUT_S, visibility=30)
        assert loop.time() - connected_at < 2.0, "not dead-lettered right after start"
        assert (dead.id, dead.deliveries, dead.dead_letter[0]) == (msg_id, 2, "down")
        assert dead.dead_letter[1] >= deadline - 0.01
        assert (await client.queue_info("down"))["messages"] == 0
        with pytest.raises(LeaseLost):  # it has left "down", and been received since
            await client.ack("down", msg_id, lease)


async def test_a_late_ack_of_a_last_delivery_that_ran_out_while_down_still_acks(
        server_factory, tmp_path):
    # A user's review: a handler that succeeded while the server was down, its lease (the
    # last allowed delivery's) running out meanwhile, acked after the restart and got
    # NOT_FOUND: the work it had done was dead-lettered. The move keeps the lease.
    data_dir = tmp_path / "data"
    server, msg_id, lease, _ = await last_lease_runs_out_while_down(
        server_factory, data_dir, "late")
    async with connect(server.host, server.port) as client:
        await until(lambda: client.queue_info("late.dead"), lambda i: i["messages"] == 1)
        await client.ack("late", msg_id, lease)  # finds it in the dead-letter queue
        assert (await client.queue_info("late.dead"))["messages"] == 0
    server.kill()  # and the ack is in the journal
    server = durable_server(server_factory, data_dir, *FSYNC)
    async with connect(server.host, server.port) as client:
        with pytest.raises(QueueNotFound):  # made by the move, left empty: not kept
            await client.queue_info("late.dead")


async def test_priorities_headers_and_expiry_survive_kill_9(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, *FSYNC)
    async with connect(server.host, server.port) as client:
        put = [(b"normal", 0, None), (b"urgent", -10, {"a": "1", "ü": "✓"}),
               (b"low", 10, {"b": "2"}), (b"urgent too", -10, None)]
        ids = [await client.put("pri", body, priority=priority, headers=headers, expiry=3600)
               for body, priority, headers in put]
        ids += await client.put_many("pri", [b"batch", {"body": b"batch urgent",
                                                         "priority": -20}], headers={"x": "y"})
        expiries = [(await client.message_info("pri", i))["expires_at"] for i in ids[:4]]
    server = restart(server_factory, server, data_dir, "kill")
    async with connect(server.host, server.port) as client:
        assert [(await client.message_info("pri", i))["expires_at"] for i in ids[:4]] == expiries
        got = await client.receive("pri", max=10, visibility=30)
        assert [(m.id, m.body, m.priority, m.headers) for m in got] == [
            (ids[5], b"batch urgent", -20, {"x": "y"}),
            (ids[1], b"urgent", -10, {"a": "1", "ü": "✓"}),
            (ids[3], b"urgent too", -10, {}),
            (ids[0], b"normal", 0, {}),
            (ids[4], b"batch", 0, {"x": "y"}),
            (ids[2], b"low", 10, {"b": "2"}),
        ]
