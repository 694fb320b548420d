"""End to end: queue settings (create_queue, configure_queue, queue_info) and --max-queues.

What is checked: create_queue is idempotent for the same settings and
refuses different ones (QUEUE_EXISTS); a queue made by use becomes explicit
when created; configure_queue changes only what it names; admin commands
never create a queue (QUEUE_NOT_FOUND); every bad setting is refused and
leaves nothing behind; the settings take effect (visibility_timeout, delay);
the queue count is limited.
"""

from __future__ import annotations

import time

import pytest

from wonderq_client import (
    BadArgument,
    InvalidQueueName,
    QueueExists,
    QueueNotFound,
    TooManyQueues,
    connect,
)

EVENT_TIMEOUT_S = 10.0
DEFAULTS = {"visibility_timeout": 0, "max_deliveries": 0, "dead_letter_queue": "", "delay": 0,
            "max_length": 0, "expiry": 0}


def settings_of(reply: dict) -> dict:
    return {name: reply[name] for name in DEFAULTS}


async def test_create_queue_returns_every_setting_and_is_idempotent(server):
    async with connect(server.host, server.port) as client:
        assert settings_of(await client.create_queue("plain")) == DEFAULTS
        wanted = {"visibility_timeout": 5, "max_deliveries": 3, "dead_letter_queue": "c.dead",
                  "delay": 1.5, "max_length": 100, "expiry": 3600}
        assert settings_of(await client.create_queue("c", **wanted)) == wanted
        assert settings_of(await client.create_queue("c", **wanted)) == wanted  # same: fine
        with pytest.raises(QueueExists):
            await client.create_queue("c", **{**wanted, "max_length": 101})
        with pytest.raises(QueueExists):
            await client.create_queue("c")  # the defaults differ from its settings
        info = await client.queue_info("c")
        assert info["queue"] == "c" and info["explicit"] is True
        assert settings_of(info) == wanted


async def test_a_queue_made_by_use_becomes_explicit_when_created(server):
    async with connect(server.host, server.port) as client:
        await client.put("imp", b"x")
        info = await client.queue_info("imp")
        assert info["explicit"] is False and settings_of(info) == DEFAULTS
        assert settings_of(await client.create_queue("imp", max_length=10)) == {
            **DEFAULTS, "max_length": 10}
        info = await client.queue_info("imp")
        assert (info["explicit"], info["max_length"], info["messages"]) == (True, 10, 1)


async def test_configure_queue_changes_only_what_it_names(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("cf", max_length=10, delay=2)
        changed = await client.configure_queue("cf", expiry=60, max_deliveries=2,
                                               dead_letter_queue="cf.dead")
        assert settings_of(changed) == {**DEFAULTS, "max_length": 10, "delay": 2, "expiry": 60,
                                        "max_deliveries": 2, "dead_letter_queue": "cf.dead"}
        with pytest.raises(BadArgument):  # on and off go together
            await client.configure_queue("cf", max_deliveries=0)
        off = await client.configure_queue("cf", max_deliveries=0, dead_letter_queue="",
                                           delay=0)
        assert settings_of(off) == {**DEFAULTS, "max_length": 10, "expiry": 60}
        assert settings_of(await client.queue_info("cf")) == settings_of(off)
        # A queue made by use can be configured, which makes it explicit.
        await client.put("used", b"x")
        assert (await client.configure_queue("used", max_length=5))["max_length"] == 5
        assert (await client.queue_info("used"))["explicit"] is True


async def test_admin_commands_never_create_a_queue(server):
    async with connect(server.host, server.port) as client:
        with pytest.raises(QueueNotFound):
            await client.queue_info("ghost")
        with pytest.raises(QueueNotFound):
            await client.configure_queue("ghost", max_length=1)
        with pytest.raises(QueueNotFound):
            await client.redrive("ghost")
        assert await client.queues() == []
        assert "ghost" not in (await client.stats())["queues"]


async def test_bad_settings_are_refused_and_leave_nothing(server_factory):
    server = server_factory("--max-delay", "100", "--max-visibility-timeout", "200")
    async with connect(server.host, server.port) as client:
        bad_arguments = [
            {"max_deliveries": 3},  # without a dead-letter queue
            {"dead_letter_queue": "b.dead"},  # without max_deliveries
            {"max_deliveries": 1, "dead_letter_queue": "b"},  # itself
            {"max_deliveries": -1, "dead_letter_queue": "b.dead"},
            {"delay": -1}, {"delay": 101}, {"visibility_timeout": 201},
            {"visibility_timeout": -1}, {"expiry": -1}, {"expiry": float("inf")},
            {"max_length": -1}, {"max_length": 1.5},
        ]
        for settings in bad_arguments:
            with pytest.raises(BadArgument):
                await client.create_queue("b", **settings)
        with pytest.raises(InvalidQueueName):
            await client.create_queue("b", max_deliveries=1, dead_letter_queue="bad name!")
        with pytest.raises(InvalidQueueName):
            await client.create_queue("bad name!")
        with pytest.raises(QueueNotFound):
            await client.queue_info("b")
        await client.create_queue("b", delay=100, visibility_timeout=200)
        for settings in bad_arguments:
            with pytest.raises(BadArgument):
                await client.configure_queue("b", **settings)
        assert settings_of(await client.queue_info("b")) == {
            **DEFAULTS, "delay": 100, "visibility_timeout": 200}
        assert [q["queue"] for q in await client.queues()] == ["b"]


async def test_the_visibility_timeout_setting_sets_the_lease(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("vt", visibility_timeout=0.3)
        msg_id = await client.put("vt", b"x")
        [msg] = await client.receive("vt")
        deadline = (await client.message_info("vt", msg_id))["deadline_at"]
        assert deadline == pytest.approx(time.time() + 0.3, abs=0.25)
        # The lease runs out by the queue's setting, not the server's 30 s.
        [again] = await client.receive("vt", wait=EVENT_TIMEOUT_S, visibility=60)
        assert (again.id, again.deliveries) == (msg.id, 2)
        deadline = (await client.message_info("vt", msg_id))["deadline_at"]
        assert deadline == pytest.approx(time.time() + 60, abs=5)  # a receive's own wins


async def test_the_delay_setting_delays_puts_that_give_none(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("qd", delay=0.3)
        delayed = await client.put("qd", b"delayed by the queue")
        at_once = await client.put("qd", b"delay 0 given", delay=0)
        assert [m.id for m in await client.receive("qd", max=10)] == [at_once]
        [msg] = await client.receive("qd", wait=EVENT_TIMEOUT_S)
        assert msg.id == delayed
        assert time.time() >= msg.enqueued_at + 0.3 - 0.01


async def test_the_number_of_queues_is_limited(server_factory):
    server = server_factory("--max-queues", "3")
    async with connect(server.host, server.port) as client:
        await client.put("q1", b"x")
        await client.put("q2", b"x")
        await client.create_queue("q3")
        with pytest.raises(TooManyQueues):
            await client.put("q4", b"x")
        with pytest.raises(TooManyQueues):
            await client.create_queue("q4")
        [stored] = await client.put_many("q1", [b"ok"])  # existing queues go on
        assert isinstance(stored, int)
        assert len(await client.queues()) == 3
        figures = (await client.stats())["server"]
        assert (figures["max_queues"], figures["too_many_queues_total"]) == (3, 2)
        assert await client.delete_queue("q1") == 2
        assert await client.put("q4", b"x")
        assert [q["queue"] for q in await client.queues()] == ["q2", "q3", "q4"]
