"""End to end: wonderq_client.Worker against the real wonderq-server subprocess.

Each test waits for events (a handler reached, a long poll answered, a count reached), not
for time. Where a lease must run out or be renewed, the test's own long-polling receive is
the clock: it waits on the server for several leases and must come back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import functools
import math
import os
import random
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
from fault_proxy import FaultProxy
from polling import EVENT_TIMEOUT_S, until, until_stats, until_true
from server_process import ServerProcess

import wonderq_client.busy_poll
import wonderq_client.worker
from wonderq_client import (
    BadArgument,
    LeaseLost,
    Message,
    Retry,
    UnsupportedVersion,
    Worker,
    WorkerCounts,
    connect,
)
from wonderq_client.worker import delay_limit, reconnect_delay, retry_backoff


async def until_counts(worker: Worker, check: Callable[[WorkerCounts], bool]) -> None:
    """until_counts waits until the worker's own counts satisfy `check`."""
    await until_true(lambda: check(worker.counts))


async def start_stuck_worker(server: ServerProcess, queue: str,
                             **options: Any) -> tuple[Worker, asyncio.Task[None]]:
    """start_stuck_worker runs a Worker on `queue` whose handler never finishes by itself,
    with hour-long leases and grace unless `options` say otherwise, and returns once a
    handler has started (so a message must be there)."""
    started = asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    worker = Worker(queue, handler, host=server.host, port=server.port,
                    **{"visibility": 3600, "shutdown_grace": 3600, **options})
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
    return worker, task


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """running runs the worker in a task; on leaving, stops it and checks it ended cleanly."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)


# ------------------------------------------------------------------ pure parts


def test_retry_backoff_doubles_per_delivery_up_to_its_cap():
    def delivered(times: int) -> Message:
        return Message(None, "q", 1, b"", 2, times, 0.0)  # type: ignore[arg-type]

    assert [retry_backoff(delivered(n)) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_backoff(delivered(10)) == 300.0
    assert retry_backoff(delivered(10**6)) == 300.0  # no overflow for absurd counts
    assert retry_backoff(delivered(3), first=0.5, most=1.5) == 1.5


def test_reconnect_delay_has_equal_jitter_under_a_cap():
    assert reconnect_delay(0, 0.1, 10.0, lambda: 0.0) == pytest.approx(0.05)
    assert reconnect_delay(0, 0.1, 10.0, lambda: 1.0) == pytest.approx(0.1)
    assert reconnect_delay(3, 0.1, 10.0, lambda: 1.0) == pytest.approx(0.8)
    assert reconnect_delay(50, 0.1, 10.0, lambda: 0.0) == pytest.approx(5.0)
    assert reconnect_delay(10**9, 0.1, 10.0, lambda: 1.0) == pytest.approx(10.0)
    for attempt in range(12):
        delay = reconnect_delay(attempt, 0.1, 10.0, random.random)
        step = min(0.1 * 2**attempt, 10.0)
        assert step / 2 <= delay <= step


@pytest.mark.parametrize("options", [
    {"concurrency": 0}, {"visibility": 0}, {"wait": 0}, {"shutdown_grace": -1},
    {"reconnect_first": 0}, {"reconnect_first": 5, "reconnect_most": 1},
    {"max_messages": 0}, {"busy_poll": -0.001}, {"busy_poll": 1},
    # A reviewer's concurrency of 2.5 was taken, and run() ended with the server's error.
    {"concurrency": 2.5}, {"concurrency": True}, {"max_messages": 1.5},
    {"visibility": math.inf}, {"wait": math.nan}, {"retry_delay": math.inf},
])
def test_worker_refuses_settings_that_cannot_work(options):
    async def handler(msg: Message) -> None:
        pass

    with pytest.raises(ValueError):
        Worker("q", handler, **options)


@pytest.mark.parametrize("name, value", [
    ("visibility", None), ("visibility", "30"), ("wait", None), ("reply_timeout", True),
    ("retry_delay", "5"), ("shutdown_grace", None), ("reconnect_first", None),
    ("reconnect_most", "10"),
])
def test_worker_names_a_setting_in_seconds_that_is_no_number(name, value):
    # Before, each was the comparison's own TypeError ("'>' not supported between
    # instances of 'NoneType' and 'int'"), naming neither the setting nor the value.
    async def handler(msg: Message) -> None:
        pass

    with pytest.raises(TypeError, match=f"^{name} must be a number of seconds, not "
                                        f"{re.escape(repr(value))}"):
        Worker("q", handler, **{name: value})


def test_worker_takes_any_real_seconds_and_inf_where_it_means_never():
    # Before the type checks came these worked, and must still (a reviewer): inf as
    # "never cancel the handlers" or "no cap on the back-off", a Fraction or numpy's
    # numbers for settings the Worker only waits by.
    async def handler(msg: Message) -> None:
        pass

    worker = Worker("q", handler, shutdown_grace=math.inf, reconnect_most=math.inf,
                    reconnect_first=fractions.Fraction(1, 4),
                    retry_delay=fractions.Fraction(2))
    assert (worker.shutdown_grace, worker.reconnect_most) == (math.inf, math.inf)


@pytest.mark.parametrize(("unseen", "taken"), [(True, True), (False, False), (1, True),
                                               (0, False)])
def test_retry_takes_unseen_as_a_bool(unseen, taken):
    assert Retry(unseen=unseen).unseen is taken


@pytest.mark.parametrize("unseen", ["false", None, [1]])
def test_retry_refuses_an_unseen_that_is_no_bool(unseen):
    # Sent as it was, nack() refused it after the handler had ended: the job failed, its
    # message left leased for the Worker's whole visibility (a reviewer).
    with pytest.raises(TypeError, match=r"^Retry: unseen must be True or False"):
        Retry(unseen=unseen)


def test_worker_visibility_none_says_why_the_worker_needs_the_lease_length():
    async def handler(msg: Message) -> None:
        pass

    with pytest.raises(TypeError, match=r"renews each lease.*visibility_timeout"):
        Worker("q", handler, visibility=None)


def test_a_decorated_async_handler_is_taken_and_a_decorated_plain_one_refused():
    def logged(function):
        @functools.wraps(function)
        def wrapper(*args):
            return function(*args)
        return wrapper

    @logged
    async def handler(msg: Message) -> None:
        pass

    @logged
    def plain(msg: Message) -> None:
        pass

    Worker("q", handler)  # a reviewer: refused, "must be an async function (async def)"
    with pytest.raises(TypeError):
        Worker("q", plain)


async def test_busy_poll_reaches_the_workers_connections(server):
    # connect()'s busy_poll, passed through: the Worker's requests keep this loop polling.
    loop = asyncio.get_running_loop()
    async with connect(server.host, server.port) as client:
        await client.put_many("polled", [b"job"] * 20)
    assert loop not in wonderq_client.busy_poll._pollers  # nothing polled so far

    async def handler(msg: Message) -> None:
        pass

    worker = Worker("polled", handler, host=server.host, port=server.port, burst=True,
                    busy_poll=0.001)
    await worker.run()
    assert worker.counts.acked == 20
    assert wonderq_client.busy_poll._pollers[loop].turns > 0


# --------------------------------------------------------------------- the work


async def test_worker_handles_every_message_once_within_its_concurrency(server):
    handled: list[bytes] = []
    running_now = 0
    most_at_once = 0

    async def handler(msg: Message) -> None:
        nonlocal running_now, most_at_once
        running_now += 1
        most_at_once = max(most_at_once, running_now)
        await asyncio.sleep(0)  # let the others start: concurrency is what is tested
        handled.append(msg.body)
        running_now -= 1

    async with connect(server.host, server.port) as client:
        bodies = [f"job {i}".encode() for i in range(200)]
        await client.put_many("jobs", bodies)
        worker = Worker("jobs", handler, host=server.host, port=server.port, concurrency=7)
        async with running(worker):
            await until_counts(worker, lambda c: c.acked == 200)
        assert sorted(handled) == sorted(bodies)
        assert 1 < most_at_once <= 7
        queue = (await client.stats())["queues"]["jobs"]
        assert (queue["messages"], queue["acked_total"]) == (0, 200)
        assert worker.counts.received == 200
        assert (worker.counts.failed, worker.counts.unsettled, worker.counts.lease_lost) \
            == (0, 0, 0)


async def test_a_handler_that_raises_nacks_with_its_delay_until_the_dead_letter_queue(server):
    async def handler(msg: Message) -> None:
        raise RuntimeError(f"cannot do {msg.body!r}")

    async with connect(server.host, server.port) as client:
        await client.create_queue("poison-dead")
        await client.create_queue("poison", max_deliveries=3, dead_letter_queue="poison-dead")
        msg_id = await client.put("poison", b"bad")
        delays: list[int] = []

        def no_wait(msg: Message) -> float:
            delays.append(msg.deliveries)
            return 0.0

        worker = Worker("poison", handler, host=server.host, port=server.port,
                        retry_delay=no_wait)
        async with running(worker):
            [dead] = await client.receive("poison-dead", wait=EVENT_TIMEOUT_S)
        # It keeps its count: three deliveries from "poison", this one from the DLQ.
        assert (dead.id, dead.deliveries, dead.dead_letter[0]) == (msg_id, 4, "poison")
        assert delays == [1, 2, 3]
        assert worker.counts.failed == 3
        assert worker.counts.acked == 0


async def test_a_fixed_retry_delay_keeps_the_failed_message_invisible(server):
    attempts = 0

    async def handler(msg: Message) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("try later")

    async with connect(server.host, server.port) as client:
        msg_id = await client.put("later", b"x")
        worker = Worker("later", handler, host=server.host, port=server.port,
                        retry_delay=600.0)
        async with running(worker):
            await until_counts(worker, lambda c: c.failed == 1)
        info = await client.message_info("later", msg_id)
        assert info["state"] == "delayed"
        assert info["deadline_at"] > info["enqueued_at"] + 590
        assert attempts == 1


async def test_the_heartbeat_keeps_a_long_handler_s_lease_alive(server):
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await release.wait()

    async with connect(server.host, server.port) as client:
        await client.put("long", b"slow work")
        worker = Worker("long", handler, host=server.host, port=server.port, visibility=0.4)
        async with running(worker):
            await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
            # Four leases long: without touches the message would come back within it.
            assert await client.receive("long", wait=1.6) == []
            release.set()
            await until_counts(worker, lambda c: c.acked == 1)
        assert worker.counts.touched >= 3
        assert worker.counts.lease_lost == 0
        assert (await client.queue_info("long"))["messages"] == 0


async def test_stop_lets_running_handlers_finish_within_the_grace(server):
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await release.wait()

    async with connect(server.host, server.port) as client:
        await client.put("graceful", b"finish me")
        worker = Worker("graceful", handler, host=server.host, port=server.port,
                        shutdown_grace=EVENT_TIMEOUT_S)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
        worker.stop()
        release.set()
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert (worker.counts.acked, worker.counts.given_back) == (1, 0)
        assert (await client.queue_info("graceful"))["messages"] == 0


async def test_stop_after_the_grace_gives_unfinished_work_back_at_once(server):
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("stuck", b"never done")
        worker, task = await start_stuck_worker(server, "stuck", shutdown_grace=0)
        worker.stop()
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert worker.counts.given_back == 1
        # Given back, not left to its hour-long lease: another consumer has it now.
        [msg] = await client.receive("stuck", wait=EVENT_TIMEOUT_S)
        assert (msg.id, msg.deliveries) == (msg_id, 2)


async def test_a_second_stop_ends_the_grace(server):
    async with connect(server.host, server.port) as client:
        await client.put("hurry", b"x")
        worker, task = await start_stuck_worker(server, "hurry")
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert worker.counts.given_back == 1
        assert len(await client.receive("hurry", wait=EVENT_TIMEOUT_S)) == 1


async def test_a_stopped_worker_leaves_no_wait_behind_to_take_messages(server):
    async def handler(msg: Message) -> None:
        raise AssertionError("nothing was put before the worker stopped")

    async with connect(server.host, server.port) as client:
        worker = Worker("idle", handler, host=server.host, port=server.port, wait=300)
        async with running(worker):
            await until(client.stats, lambda s: s["server"]["waiting_consumers"] == 1)
        await client.put("idle", b"after the worker left")
        [msg] = await client.receive("idle", wait=EVENT_TIMEOUT_S)
        assert msg.deliveries == 1
        assert worker.counts.received == 0


async def test_run_cancelled_from_outside_gives_work_back_and_raises(server):
    async with connect(server.host, server.port) as client:
        await client.put("cancelled", b"x")
        worker, task = await start_stuck_worker(server, "cancelled")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert worker.counts.given_back == 1
        assert len(await client.receive("cancelled", wait=EVENT_TIMEOUT_S)) == 1


async def test_a_setting_the_server_refuses_ends_run_with_its_error(server_factory):
    server = server_factory("--max-wait", "5")

    async def handler(msg: Message) -> None:
        pass

    worker = Worker("q", handler, host=server.host, port=server.port, wait=20)
    with pytest.raises(BadArgument, match="wait"):
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)


async def test_a_concurrency_over_the_server_s_max_batch_is_received_in_smaller_batches(
        server_factory):
    server = server_factory("--max-batch", "3")
    release = asyncio.Event()
    started = 0

    async def handler(msg: Message) -> None:
        nonlocal started
        started += 1
        await release.wait()

    async with connect(server.host, server.port) as client:
        await client.put_many("small", [b"x"] * 3)
        await client.put_many("small", [b"y"] * 3)
        worker = Worker("small", handler, host=server.host, port=server.port, concurrency=8)
        async with running(worker):
            await until_true(lambda: started == 6)
            release.set()
            await until_counts(worker, lambda c: c.acked == 6)


# ------------------------------------------------------------------ reconnecting


async def test_the_worker_lives_through_a_server_crash_and_settles_work_in_progress(
        server_factory, tmp_path):
    server = server_factory("--data-dir", str(tmp_path), "--fsync", "always")
    port = server.port
    first_started = asyncio.Event()
    release_first = asyncio.Event()
    handled: list[bytes] = []

    async def handler(msg: Message) -> None:
        if msg.body == b"first":
            first_started.set()
            await release_first.wait()
        handled.append(msg.body)

    async with connect(server.host, port) as client:
        await client.put("crash", b"first")
    worker = Worker("crash", handler, host=server.host, port=port, concurrency=1,
                    visibility=3600, reconnect_first=0.05, reconnect_most=0.2)
    async with running(worker):
        await asyncio.wait_for(first_started.wait(), EVENT_TIMEOUT_S)
        # The ack of "first" goes out to a server that reads nothing (SIGSTOP), and is
        # still unanswered when the server dies (SIGKILL): it must be sent again on the
        # worker's next connection, to the restarted server.
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        release_first.set()
        await until_true(lambda: handled == [b"first"])
        server.kill()
        restarted = server_factory("--data-dir", str(tmp_path), "--fsync", "always",
                                   "--port", str(port))
        async with connect(restarted.host, port) as client:
            await client.put_many("crash", [b"second", b"third"])
            await until_counts(worker, lambda c: c.acked == 3)
            assert (await client.queue_info("crash"))["messages"] == 0
    assert handled == [b"first", b"second", b"third"]
    assert worker.counts.reconnects >= 1
    assert (worker.counts.unsettled, worker.counts.lease_lost) == (0, 0)


async def test_the_worker_waits_for_a_server_that_is_not_up_yet(tmp_path):
    """The worker starts first, on a port nobody listens on; it keeps trying until a server
    comes up there. (The port is free when chosen; nothing else on loopback takes it.)"""
    chooser = ServerProcess().start()
    port = chooser.port
    chooser.kill()  # a port the kernel just handed out, now free
    handled = asyncio.Event()

    async def handler(msg: Message) -> None:
        handled.set()

    worker = Worker("early", handler, port=port, reconnect_first=0.05, reconnect_most=0.2)
    async with running(worker):
        with ServerProcess("--port", str(port)) as server:
            async with connect(server.host, port) as client:
                await client.put("early", b"x")
            await asyncio.wait_for(handled.wait(), EVENT_TIMEOUT_S)
            await until_counts(worker, lambda c: c.acked == 1)


# ------------------------------------------------------- review: what must not happen


async def test_a_plain_function_handler_is_refused_and_a_non_awaitable_result_ends_run(server):
    def plain(msg: Message) -> None:
        pass

    with pytest.raises(TypeError, match="async"):
        Worker("q", plain)

    class Sync:  # a callable object: only its result can tell
        def __call__(self, msg: Message) -> None:
            return None

    async with connect(server.host, server.port) as client:
        msg_id = await client.put("sync", b"x")
        worker = Worker("sync", Sync(), host=server.host, port=server.port, visibility=3600)
        with pytest.raises(TypeError, match="not an awaitable"):
            await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
        assert worker.counts.given_back == 1
        [msg] = await client.receive("sync", wait=EVENT_TIMEOUT_S)  # given back at once
        assert msg.id == msg_id


async def test_a_retry_delay_that_raises_or_that_the_server_refuses_still_nacks(server_factory):
    server = server_factory("--max-delay", "60")

    def broken(msg: Message) -> float:
        raise ZeroDivisionError("bug in retry_delay")

    async def handler(msg: Message) -> None:
        raise RuntimeError("fail")

    async with connect(server.host, server.port) as client:
        first = await client.put("broken-delay", b"x")
        worker = Worker("broken-delay", handler, host=server.host, port=server.port,
                        visibility=3600, retry_delay=broken)
        async with running(worker):
            await until_counts(worker, lambda c: c.failed == 1)
        info = await client.message_info("broken-delay", first)
        assert info["state"] == "delayed"  # retry_backoff's 1 s, not the hour-long lease
        assert info["deadline_at"] < info["enqueued_at"] + 60

        second = await client.put("refused-delay", b"y")
        worker = Worker("refused-delay", handler, host=server.host, port=server.port,
                        visibility=3600, retry_delay=600)  # over --max-delay 60
        async with running(worker):
            await until_counts(worker, lambda c: c.failed >= 1)
        info = await client.message_info("refused-delay", second)
        # Nacked again at the server's limit, 60 s: not 0, which would spin it.
        assert (info["state"], info["deliveries"], worker.counts.failed) == ("delayed", 1, 1)
        assert info["enqueued_at"] + 55 < info["deadline_at"] <= info["enqueued_at"] + 61


async def test_counts_add_up_and_no_ack_is_lost_when_stopping_busy_handlers(server):
    async def handler(msg: Message) -> None:
        if int(msg.body) % 2:
            await asyncio.Event().wait()  # never finishes: given back at the stop
        await asyncio.sleep(0)

    async with connect(server.host, server.port) as client:
        await client.put_many("busy", [str(i).encode() for i in range(400)])
        worker = Worker("busy", handler, host=server.host, port=server.port, concurrency=50,
                        visibility=3600, shutdown_grace=0)
        async with running(worker):
            await until_counts(worker, lambda c: c.received >= 100)
        counts = worker.counts
        assert counts.received == sum(getattr(counts, o) for o in
                                      ("acked", "failed", "retried", "given_back",
                                       "lease_lost", "unsettled"))
        assert (counts.failed, counts.lease_lost, counts.unsettled) == (0, 0, 0)
        queue = (await client.stats())["queues"]["busy"]
        assert queue["acked_total"] == counts.acked
        assert queue["in_flight"] == 0  # everything not acked was given back
        assert queue["messages"] == 400 - counts.acked


async def test_an_ack_unanswered_at_stop_is_sent_again_after_the_server_restarts(
        server_factory, tmp_path):
    server = server_factory("--data-dir", str(tmp_path), "--fsync", "always")
    port = server.port
    started, release = asyncio.Event(), asyncio.Event()
    returned: list[bool] = []

    async def handler(msg: Message) -> None:
        started.set()
        await release.wait()
        returned.append(True)  # the ack is written in this same step

    async with connect(server.host, port) as client:
        await client.put("stopped-ack", b"x")
    assert server.proc is not None
    worker = Worker("stopped-ack", handler, host=server.host, port=port, visibility=3600,
                    shutdown_grace=0, reconnect_first=0.05, reconnect_most=0.2)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
    os.kill(server.proc.pid, signal.SIGSTOP)  # the ack goes out and is never answered
    release.set()
    await until_true(lambda: bool(returned))
    worker.stop()  # past the grace at once: the ack must not be cancelled
    server.kill()
    restarted = server_factory("--data-dir", str(tmp_path), "--fsync", "always",
                               "--port", str(port))
    await asyncio.wait_for(task, EVENT_TIMEOUT_S)
    assert (worker.counts.acked, worker.counts.unsettled) == (1, 0)
    async with connect(restarted.host, port) as client:
        assert (await client.queue_info("stopped-ack"))["messages"] == 0


async def test_acks_held_up_by_an_outage_go_out_together_when_it_ends(server_factory,
                                                                       tmp_path):
    # A user's review: 200 acks that waited out an outage went out as 100 ack_many of 2:
    # the connect lock woke one waiting settle per loop turn. They wait for the attempt
    # together now, and go out in one.
    count = 20
    server = server_factory("--data-dir", str(tmp_path), "--fsync", "always")
    port = server.port
    all_started, release = asyncio.Event(), asyncio.Event()
    running: list[int] = []

    async def handler(msg: Message) -> None:
        running.append(msg.id)
        if len(running) == count:
            all_started.set()
        await release.wait()

    async with connect(server.host, port) as client:
        await client.put_many("outage", [b"x"] * count)
    worker = Worker("outage", handler, host=server.host, port=port, concurrency=count,
                    visibility=3600, reconnect_first=0.05, reconnect_most=0.2)
    batches: list[int] = []  # the size of each ack_many the worker sends
    send_acks = worker._send_acks

    def counted_send_acks() -> None:
        batches.append(len(worker._acks_out))
        send_acks()

    worker._send_acks = counted_send_acks  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(all_started.wait(), EVENT_TIMEOUT_S)
        server.kill()
        release.set()  # every handler ends while the server is down
        await until_true(lambda: worker.counts.reconnects == 0 and len(batches) >= 1)
        restarted = server_factory("--data-dir", str(tmp_path), "--fsync", "always",
                                   "--port", str(port))
        await until_true(lambda: worker.counts.acked == count)
        assert batches[-1] == count, batches  # after the outage: one ack_many for all
    finally:
        worker.stop()
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
    async with connect(restarted.host, port) as client:
        assert (await client.queue_info("outage"))["messages"] == 0


async def test_stop_with_the_server_down_returns_without_waiting_for_leases(
        server_factory, tmp_path):
    server = server_factory("--data-dir", str(tmp_path))
    started = asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    async with connect(server.host, server.port) as client:
        await client.put("down", b"x")
    worker = Worker("down", handler, host=server.host, port=server.port, visibility=3600,
                    shutdown_grace=3600, reply_timeout=0.5, reconnect_first=0.05,
                    reconnect_most=0.1)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
    server.kill()
    worker.stop()
    worker.stop()  # hurried: the give-back waits reply_timeout for a connection, not an hour
    await asyncio.wait_for(task, EVENT_TIMEOUT_S)
    assert worker.counts.unsettled == 1


async def test_cancelling_run_during_the_grace_gives_work_back(server):
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("grace-cancel", b"x")
        worker, task = await start_stuck_worker(server, "grace-cancel")
        worker.stop()
        await until(client.stats, lambda s: s["server"]["waiting_consumers"] == 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert (worker.in_progress, worker.counts.given_back) == (0, 1)
        [msg] = await client.receive("grace-cancel", wait=EVENT_TIMEOUT_S)
        assert msg.id == msg_id


async def test_a_worker_can_run_again_after_a_stop(server):
    seen: list[bytes] = []

    async def handler(msg: Message) -> None:
        seen.append(msg.body)

    async with connect(server.host, server.port) as client:
        worker = Worker("again", handler, host=server.host, port=server.port)
        for body in (b"first run", b"second run"):
            await client.put("again", body)
            async with running(worker):
                await until_true(lambda b=body: b in seen)
        assert seen == [b"first run", b"second run"]


def test_a_worker_runs_again_under_another_event_loop(server):
    # A reviewer's second asyncio.run(worker.run()) failed: the Worker's Events and Lock
    # were bound to the first loop.
    seen: list[bytes] = []

    async def handler(msg: Message) -> None:
        seen.append(msg.body)

    async def put(body: bytes) -> None:
        async with connect(server.host, server.port) as client:
            await client.put("loops", body)

    worker = Worker("loops", handler, host=server.host, port=server.port, burst=True)
    for body in (b"first loop", b"second loop"):
        asyncio.run(put(body))
        asyncio.run(asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S))
    assert seen == [b"first loop", b"second loop"]


async def test_a_server_that_refuses_the_connection_is_not_hammered(server_factory):
    server = server_factory("--max-connections", "1")

    async def handler(msg: Message) -> None:
        pass

    async with connect(server.host, server.port) as holder:  # the one slot
        worker = Worker("q", handler, host=server.host, port=server.port,
                        reconnect_first=0.1, reconnect_most=0.2)
        async with running(worker):
            # The holder's own long poll is the clock: one second of refusals.
            await holder.receive("clock", wait=1.0)
            refused = (await holder.stats())["server"]["connections_refused_total"]
    assert 1 <= refused <= 25, refused  # backed off: 0.05-0.2 s apart, not thousands


@pytest.mark.parametrize("auth_token", [None, "secret"])
async def test_a_server_speaking_another_version_ends_run(auth_token):
    frames = 0

    async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A server of another protocol version: the error frame WonderQ's server sends
        about the whole connection (request id nil), then close."""
        nonlocal frames
        frames += 1
        await reader.readexactly(4)
        payload = msgpack.packb([None, ["UNSUPPORTED_VERSION", "speaks version 9"], None])
        writer.write(len(payload).to_bytes(4, "big") + payload)
        await writer.drain()
        writer.close()

    async def handler(msg: Message) -> None:
        pass

    listener = await asyncio.start_server(stand_in, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        # With a token, AUTH (inside connect) is the request that meets the refusal.
        worker = Worker("q", handler, port=port, auth_token=auth_token)
        with pytest.raises(UnsupportedVersion, match="version 9"):
            await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
        assert frames == 1
    finally:
        listener.close()


async def test_a_connection_that_goes_silent_is_dropped_and_made_again(server):
    """The network path dies without a FIN or RST (the proxy keeps the sockets open and
    passes nothing more); new connections through it work."""
    handled = asyncio.Event()

    async def handler(msg: Message) -> None:
        handled.set()

    proxy = await FaultProxy(server.host, server.port).start()
    try:
        async with connect(server.host, server.port) as client:
            # The message is leased to the receive waiting on the dead path; with a 1 s
            # lease it comes back to the worker's next connection.
            worker = Worker("silent", handler, port=proxy.port, wait=0.5, reply_timeout=0.5,
                            visibility=1.0)
            async with running(worker):
                await until(client.stats, lambda s: s["server"]["waiting_consumers"] == 1)
                proxy.silence()
                await client.put("silent", b"after the path died")
                await asyncio.wait_for(handled.wait(), EVENT_TIMEOUT_S)
                await until_counts(worker, lambda c: c.acked == 1)
            assert worker.counts.reconnects >= 1
    finally:
        await proxy.close()


async def test_the_heartbeat_reconnects_in_time_when_the_path_goes_silent(server):
    """reply_timeout (10 s) is far longer than the lease (1 s): the heartbeat must not wait
    for it, or the lease runs out while the handler works."""
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await release.wait()

    proxy = await FaultProxy(server.host, server.port).start()
    try:
        async with connect(server.host, server.port) as client:
            await client.put("beat", b"long work")
            worker = Worker("beat", handler, port=proxy.port, visibility=1.0,
                            reply_timeout=10.0)
            async with running(worker):
                await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
                proxy.silence()
                # Three leases long: the heartbeat must reconnect and touch within each.
                assert await client.receive("beat", wait=3.0) == []
                release.set()
                await until_counts(worker, lambda c: c.acked == 1)
            assert worker.counts.lease_lost == 0
            assert worker.counts.reconnects >= 1
    finally:
        await proxy.close()


async def test_a_worker_with_every_slot_busy_reconnects_once_a_stalled_server_is_back(
        server, caplog):
    """A reviewer's: the server stalled (SIGSTOP) while the Worker's one handler worked.
    Each heartbeat round's time limit cancelled the back-off the round had begun, and the
    next round began a longer one, so once a back-off outgrew a round no connect was tried
    again until the handler ended: its ack then found no connection, and the finished work
    was done again."""
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await release.wait()

    async with connect(server.host, server.port) as client:
        await client.put("stall", b"long work")
        # A round is a quarter lease (0.1 s); back-offs of 0.05 s doubling soon outgrow it.
        worker = Worker("stall", handler, port=server.port, concurrency=1, visibility=0.4,
                        reply_timeout=0.1, reconnect_first=0.05, reconnect_most=1.0)
        async with running(worker):
            await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                await until_true(lambda: caplog.text.count("trying again in") >= 6)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            # By the sixth, a back-off (0.4 s at least) outgrows a round: the rounds of the
            # code before cancelled each one and began a longer one, never to connect again.
            touched = worker.counts.touched
            # While the handler still works, the Worker is back: its heartbeat renews the
            # lease over a new connection.
            await until_counts(worker, lambda c: c.touched > touched)
            release.set()
            await until_counts(worker, lambda c: c.acked == 1)
        assert worker.counts.unsettled == 0
        assert (await client.queue_info("stall"))["messages"] == 0


async def test_a_worker_given_its_port_as_digits_logs_its_reconnects(caplog):
    """A reviewer's: connect() and Worker take a port of digits in a str (as from an
    environment variable), but the Worker kept the str, and the lines it logs about its
    connection format the port with %d: a logging error in place of each "trying again"
    warning, the one an operator needs while the server is down."""

    async def handler(msg: Message) -> None:
        pass

    with socket.socket() as unheard:  # bound, never listening: every connect is refused
        unheard.bind(("127.0.0.1", 0))
        port = unheard.getsockname()[1]
        worker = Worker("digits", handler, host="127.0.0.1", port=f" {port}",
                        reconnect_first=0.01, reconnect_most=0.01)
        assert worker.port == port
        async with running(worker):
            await until_true(lambda: any("trying again in" in str(record.msg)
                                         for record in caplog.records))
    [warning, *_] = [record for record in caplog.records if "trying again in" in str(record.msg)]
    assert warning.getMessage().startswith(f"WonderQ at 127.0.0.1:{port}: ")


async def test_closing_after_a_cancelled_wait_gives_back_what_came_for_it(server):
    """The cancel of a wait reaches the server late (the proxy holds the client's data),
    after the server leased a message to the wait. close() must wait for the cancel's
    answer, so the message that came meanwhile is given back, not left leased."""
    proxy = await FaultProxy(server.host, server.port).start()
    try:
        async with connect(server.host, server.port) as producer:
            consumer = await connect("127.0.0.1", proxy.port)
            waiting = asyncio.create_task(consumer.receive("late", wait=60, visibility=3600))
            await until(producer.stats, lambda s: s["server"]["waiting_consumers"] == 1)
            proxy.hold_up()
            waiting.cancel()  # its cancel is held in the proxy
            closing = asyncio.create_task(consumer.close())
            down_before = proxy.down_bytes
            msg_id = await producer.put("late", b"leased to a wait nobody has")
            await until_true(lambda: proxy.down_bytes > down_before)
            proxy.release_up()
            await asyncio.wait_for(closing, EVENT_TIMEOUT_S)
            info = await producer.message_info("late", msg_id)
            assert (info["state"], info["deliveries"]) == ("ready", 0)
    finally:
        await proxy.close()


async def test_the_heartbeat_never_touches_a_message_already_nacked(server_factory):
    """A touch sent after a plain nack would lease the message again (PROTOCOL.md: a plain
    nack keeps the lease), holding a failed message a whole lease instead of its retry
    delay. The server reads nothing (SIGSTOP) while the handler fails, so the nack and
    every later heartbeat round pile up in order; a touch among them succeeds and counts."""
    server = server_factory()
    clock = server_factory()  # a second server, whose long polls measure heartbeat rounds
    started, release = asyncio.Event(), asyncio.Event()
    touched_at_failure: list[int] = []

    async def handler(msg: Message) -> None:
        if msg.deliveries > 1:
            return
        started.set()
        await release.wait()
        touched_at_failure.append(worker.counts.touched)
        raise RuntimeError("fails: retry at once")

    async with connect(server.host, server.port) as client, \
            connect(clock.host, clock.port) as clock_client:
        await client.put("nacked", b"x")
        # concurrency 1: no receive waits beside the job to take the message back first.
        worker = Worker("nacked", handler, host=server.host, port=server.port,
                        concurrency=1, visibility=0.8, retry_delay=0.0)
        async with running(worker):
            await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
            await until_counts(worker, lambda c: c.touched >= 1)  # due at every 0.2 s beat
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            release.set()
            await clock_client.receive("clock", wait=0.6)  # three heartbeat beats
            os.kill(server.proc.pid, signal.SIGCONT)
            await until_counts(worker, lambda c: c.acked == 1)
        assert worker.counts.touched == touched_at_failure[0]
        assert worker.counts.failed == 1


async def test_acks_sent_together_each_get_their_own_result(server, caplog):
    """Acks of jobs that end together go out as one ack_many; an item the server refuses
    (the message was purged meanwhile) is that message's lease lost, not its batch's, and
    each is logged (a user's review: a job that may run twice said nothing)."""
    release = asyncio.Event()
    started = 0

    async def handler(msg: Message) -> None:
        nonlocal started
        started += 1
        if msg.body != b"after":
            await release.wait()

    async with connect(server.host, server.port) as client:
        await client.put_many("purged", [b"a", b"b"])
        worker = Worker("purged", handler, host=server.host, port=server.port, concurrency=3)
        async with running(worker):
            await until_true(lambda: started == 2)
            assert await client.purge("purged") == 2
            await client.put("purged", b"after")
            await until_counts(worker, lambda c: c.acked == 1)
            release.set()  # both end in one loop iteration: one ack_many of two
            await until_counts(worker, lambda c: c.lease_lost == 2)
        assert (worker.counts.acked, worker.counts.unsettled) == (1, 0)
    lost = [r for r in caplog.records if "counted lease_lost" in r.getMessage()]
    assert len(lost) == 2 and all(r.levelname == "WARNING" for r in lost)
    # Not "may be done again" (an SQS user's review): the lease still held, so nobody
    # else had it; it was deleted.
    assert "was deleted by someone else (purged" in lost[0].getMessage()
    assert "may be done again" not in lost[0].getMessage()


class Interrupted(BaseException):
    """Not an Exception, as KeyboardInterrupt and SystemExit are not."""


async def test_a_handler_raising_a_base_exception_has_its_message_nacked_first(server):
    async def handler(msg: Message) -> None:
        raise Interrupted

    async with connect(server.host, server.port) as client:
        msg_id = await client.put("base", b"x")
        worker = Worker("base", handler, host=server.host, port=server.port,
                        visibility=3600, retry_delay=600)
        # It goes on: one that does not end the event loop (as KeyboardInterrupt does,
        # below) ends run(), after the shutdown.
        with pytest.raises(Interrupted):
            await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
        assert worker.counts.failed == 1
        info = await client.message_info("base", msg_id)
        assert info["state"] == "delayed"  # nacked, not left to its hour-long lease


def test_a_keyboard_interrupt_from_a_handler_leaves_nothing_leased(server):
    # A reviewer's handler raised KeyboardInterrupt beside four slow ones, with
    # retry_delay 0: while its nack's answer was awaited the receive loop took the message
    # back, in a job that asyncio.run then cancelled before its first step, so it stayed
    # leased to nobody for its whole visibility (4 of 4 runs). Receiving now stops first.
    async def handler(msg: Message) -> None:
        if msg.body == b"interrupt":
            raise KeyboardInterrupt
        await asyncio.Event().wait()

    async def fill() -> None:
        async with connect(server.host, server.port) as client:
            await client.put_many("kbd", [b"slow"] * 4 + [b"interrupt"])

    async def queue_info() -> dict[str, Any]:
        async with connect(server.host, server.port) as client:
            return await client.queue_info("kbd")

    asyncio.run(fill())
    worker = Worker("kbd", handler, host=server.host, port=server.port, concurrency=10,
                    wait=1, reply_timeout=1, retry_delay=0, visibility=3600)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(worker.run())
    info = asyncio.run(queue_info())
    assert (info["ready"], info["in_flight"]) == (5, 0)
    assert worker.counts.received == 5 and worker.counts.failed == 1


def ignoring_its_cancel(released: asyncio.Event, ended: asyncio.Event,
                        then: type[BaseException] | None = None) -> Callable[..., Any]:
    """ignoring_its_cancel is a handler that ends quickly but for the message b"stubborn",
    whose handling ignores the stop's cancel: it ends once `released`, setting `ended`,
    then raising `then` if given."""

    async def handler(msg: Message) -> None:
        if msg.body == b"stubborn":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await released.wait()  # ignores its cancel, and ends after the run
                ended.set()
                if then is not None:
                    raise then from None

    return handler


async def outlive_a_run(client: Any, worker: Worker) -> dict[str, int]:
    """outlive_a_run runs `worker` on b"quick" and b"stubborn" until it has acked the first,
    stops it, and checks the counts as run() returns: the second abandoned."""
    await client.put_many(worker.queue, [b"quick", b"stubborn"])
    run = asyncio.create_task(worker.run())
    await until_counts(worker, lambda c: c.received == 2 and c.acked == 1)
    worker.stop()
    await asyncio.wait_for(run, EVENT_TIMEOUT_S)
    counts = worker.counts
    assert (counts.acked, counts.abandoned, worker.in_progress) == (1, 1, 0)
    assert counts.received == sum(getattr(counts, o) for o in (
        "acked", "failed", "retried", "given_back", "lease_lost", "unsettled", "abandoned"))
    return dataclasses.asdict(counts)


async def test_a_handler_that_outlived_its_run_is_abandoned_and_ends_no_later_run(
        server, caplog):
    # A reviewer's handler ignored the stop's cancel and raised a BaseException after
    # run() had returned: kept as the Worker's fatal error, it ended the next run(). And
    # its message was in none of the counts when run() returned (they did not add up to
    # `received`), then in `failed` whenever the handler ended; it is abandoned now.
    released, raised = asyncio.Event(), asyncio.Event()
    handler = ignoring_its_cancel(released, raised, then=Interrupted)
    async with connect(server.host, server.port) as client:
        worker = Worker("outlived", handler, host=server.host, port=server.port,
                        shutdown_grace=0, reply_timeout=0.5, wait=1, visibility=3600)
        at_return = await outlive_a_run(client, worker)
        released.set()
        await asyncio.wait_for(raised.wait(), EVENT_TIMEOUT_S)
        await until_true(lambda: "left running after its run failed" in caplog.text)
        assert dataclasses.asdict(worker.counts) == at_return
        assert (await client.queue_info("outlived"))["in_flight"] == 1  # left to its lease
        await client.put("outlived", b"fine")
        worker.burst = True
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)  # raised Interrupted before
        assert worker.counts.acked == 2


async def test_an_abandoned_handler_ending_during_a_later_run_sends_nothing(server):
    # A reviewer: the job left running stayed the Worker's, so when it ended during the
    # next run() its ack went out on that run's connection, and the next run waited for
    # it and renewed its lease.
    released, ended = asyncio.Event(), asyncio.Event()
    handler = ignoring_its_cancel(released, ended)
    async with connect(server.host, server.port) as client:
        worker = Worker("later", handler, host=server.host, port=server.port,
                        shutdown_grace=0, reply_timeout=0.5, wait=1, visibility=3600)
        await outlive_a_run(client, worker)
        second = asyncio.create_task(worker.run())
        await client.put("later", b"fine")
        await until_counts(worker, lambda c: c.acked == 2)
        released.set()
        await asyncio.wait_for(ended.wait(), EVENT_TIMEOUT_S)  # its handler returned
        await client.put("later", b"after")  # acked on the connection its ack would use
        await until_counts(worker, lambda c: c.acked == 3)
        worker.stop()
        await asyncio.wait_for(second, EVENT_TIMEOUT_S)
        assert (worker.counts.abandoned, worker.counts.unsettled) == (1, 0)
        info = await client.queue_info("later")
        assert (info["in_flight"], info["acked_total"]) == (1, 3)  # still leased, unsent


async def test_run_cancelled_twice_still_cleans_up_and_can_run_again(server):
    """The second cancel lands while the first one's give-back waits on a server that
    reads nothing (SIGSTOP): the clean-up must still run to its end (within reply_timeout),
    leaving no job behind, and the Worker must run again afterwards."""
    started = asyncio.Event()
    handled: list[bytes] = []
    first_run = True

    handler_cancelled = asyncio.Event()

    async def handler(msg: Message) -> None:
        if first_run:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                handler_cancelled.set()  # the drain cancelled it: its give-back follows
                raise
        handled.append(msg.body)

    async with connect(server.host, server.port) as client:
        await client.put("twice", b"stuck")
        worker = Worker("twice", handler, host=server.host, port=server.port,
                        visibility=3600, shutdown_grace=3600, reply_timeout=0.5)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            task.cancel()
            await asyncio.wait_for(handler_cancelled.wait(), EVENT_TIMEOUT_S)
            task.cancel()  # lands in the drain's wait for the give-back
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        counts = worker.counts
        assert worker.in_progress == 0
        assert counts.received == counts.given_back + counts.unsettled == 1
        first_run = False
        await client.put("twice", b"second run")
        async with running(worker):
            await until_true(lambda: b"second run" in handled)


async def test_acks_over_a_lowered_max_batch_are_sent_in_smaller_batches(
        server_factory, tmp_path):
    """20 jobs end together after the server restarted with --max-batch 5: their ack_many
    of 20 is refused whole (BATCH_TOO_LARGE), and must be sent again in batches of 5."""
    server = server_factory("--data-dir", str(tmp_path), "--fsync", "always")
    port = server.port
    release = asyncio.Event()
    started = 0

    async def handler(msg: Message) -> None:
        nonlocal started
        started += 1
        await release.wait()

    async with connect(server.host, port) as client:
        await client.put_many("lowered", [b"x"] * 20)
    worker = Worker("lowered", handler, host=server.host, port=port, concurrency=20,
                    visibility=2.0, reconnect_first=0.05, reconnect_most=0.2)
    async with running(worker):
        await until_true(lambda: started == 20)
        server.kill()
        restarted = server_factory("--data-dir", str(tmp_path), "--fsync", "always",
                                   "--port", str(port), "--max-batch", "5")
        # The heartbeat (every 0.5 s) makes the new connection; then all 20 end at once.
        await until_counts(worker, lambda c: c.reconnects >= 1 and c.touched >= 20)
        release.set()
        await until_counts(worker, lambda c: c.acked == 20)
        async with connect(restarted.host, port) as client:
            assert (await client.queue_info("lowered"))["messages"] == 0
    assert worker.counts.unsettled == 0


async def test_closing_after_an_abandoned_receive_without_a_wait_gives_back_its_messages(
        server):
    proxy = await FaultProxy(server.host, server.port).start()
    try:
        async with connect(server.host, server.port) as producer:
            await producer.put_many("nowait", [b"a", b"b", b"c"])
            consumer = await connect("127.0.0.1", proxy.port)
            proxy.hold_up()  # the receive reaches the server only after it was abandoned
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await consumer.receive("nowait", max=3)
            closing = asyncio.create_task(consumer.close())
            proxy.release_up()
            await asyncio.wait_for(closing, EVENT_TIMEOUT_S)
            queue = await producer.queue_info("nowait")
            assert (queue["ready"], queue["in_flight"]) == (3, 0)
            [msg, *_] = await producer.receive("nowait", max=3)
            assert msg.deliveries == 1  # given back unseen: that delivery did not count
    finally:
        await proxy.close()


@pytest.mark.parametrize("reply_delay", [0.0, 0.5])
async def test_an_ack_sent_again_after_the_lease_ran_out_is_not_counted_as_ours(
        server, reply_delay):
    """The worker's ack is lost with its connection, and it cannot reconnect until its
    lease has run out and another consumer has received and acked the message. Its ack,
    sent again, finds the message gone: someone else acked it, so it is lease_lost. With
    reply_delay, the receive's reply reaches the worker late (the proxy holds it), so the
    worker's own idea of when the lease ends is late too, and must not be trusted."""
    proxy = await FaultProxy(server.host, server.port).start()
    handled = asyncio.Event()

    async def handler(msg: Message) -> None:
        proxy.silence()  # the ack about to go out is lost on the way
        proxy.refuse_new = True  # and no new connection gets through for now
        handled.set()

    try:
        async with connect(server.host, server.port) as other:
            worker = Worker("lost-ack", handler, port=proxy.port, concurrency=1,
                            visibility=1.0, wait=5.0, reply_timeout=0.3,
                            reconnect_first=0.05, reconnect_most=0.2)
            async with running(worker):
                await until(other.stats, lambda s: s["server"]["waiting_consumers"] == 1)
                if reply_delay:
                    proxy.hold_down()
                await other.put("lost-ack", b"x")
                if reply_delay:
                    await other.receive("clock", wait=reply_delay)  # the reply is held
                    proxy.release_down()
                await asyncio.wait_for(handled.wait(), EVENT_TIMEOUT_S)
                # The worker's lease runs out on the server: the message comes back here.
                [msg] = await other.receive("lost-ack", wait=EVENT_TIMEOUT_S)
                assert msg.deliveries == 2
                await msg.ack()
                proxy.refuse_new = False
                await until_counts(worker, lambda c: c.lease_lost + c.acked + c.unsettled == 1)
            assert (worker.counts.acked, worker.counts.lease_lost) == (0, 1)
            assert (await other.queue_info("lost-ack"))["acked_total"] == 1
    finally:
        await proxy.close()


# ------------------------------------------------------- Retry, max_messages, burst


def test_delay_limit_reads_the_server_s_limit_from_its_refusal():
    def refusal(limit: str) -> BadArgument:
        return BadArgument(f"delay is 3600 s, over the limit of {limit} s (--max-delay)")

    assert delay_limit(refusal("300"), 3600) == 300.0
    assert delay_limit(refusal("1.5e+06"), 1e7) == 1.5e6
    assert delay_limit(refusal("1e-05"), 5) == 1e-05
    # %g rounds 1234567 up to 1.23457e+06: that, refused, is stepped just below itself.
    assert delay_limit(refusal("1.23457e+06"), 1234570.0) \
        == pytest.approx(1234570.0 * (1 - 1e-5))
    assert 1234555 < delay_limit(refusal("1.23457e+06"), 1234570.0) < 1234567
    assert delay_limit(BadArgument("delay must be a number"), 3600) == 0.0


@pytest.mark.parametrize("delay", [-1.0, float("nan"), float("inf")])
def test_retry_refuses_a_delay_that_is_not_seconds(delay):
    with pytest.raises(ValueError):
        Retry(delay)


async def test_retry_nacks_with_the_delay_it_names_and_logs_no_traceback(server, caplog):
    async def handler(msg: Message) -> None:
        raise Retry(600, reason="the mail server said 421")

    async with connect(server.host, server.port) as client:
        msg_id = await client.put("throttled", b"x")
        worker = Worker("throttled", handler, host=server.host, port=server.port,
                        retry_delay=0.0)  # Retry's own delay wins over this
        with caplog.at_level("INFO", logger="wonderq_client.worker"):
            async with running(worker):
                await until_counts(worker, lambda c: c.retried == 1)
        info = await client.message_info("throttled", msg_id)
    assert info["state"] == "delayed"
    assert info["deadline_at"] > info["enqueued_at"] + 590
    assert (worker.counts.failed, worker.counts.acked) == (0, 0)
    [record] = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert record.getMessage() == (f"message {msg_id} of 'throttled': retrying in 600 s "
                                   f"(the mail server said 421)")
    assert record.levelname == "INFO" and record.exc_info is None


async def test_retry_without_a_delay_uses_retry_delay(server):
    seen: list[int] = []

    async def handler(msg: Message) -> None:
        raise Retry()

    def delay(msg: Message) -> float:
        seen.append(msg.deliveries)
        return 600.0

    async with connect(server.host, server.port) as client:
        msg_id = await client.put("policy", b"x")
        worker = Worker("policy", handler, host=server.host, port=server.port,
                        retry_delay=delay)
        async with running(worker):
            await until_counts(worker, lambda c: c.retried == 1)
        info = await client.message_info("policy", msg_id)
    assert seen == [1]
    assert info["deadline_at"] > info["enqueued_at"] + 590


async def test_an_unseen_retry_does_not_count_toward_max_deliveries(server):
    """With max_deliveries 1, a plain Retry would dead-letter the message at its next
    receive; Retry(unseen=True) three times in a row must not."""
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise Retry(0, unseen=True)

    async with connect(server.host, server.port) as client:
        await client.create_queue("patient-dead")
        await client.create_queue("patient", max_deliveries=1,
                                  dead_letter_queue="patient-dead")
        await client.put("patient", b"x")
        worker = Worker("patient", handler, host=server.host, port=server.port)
        async with running(worker):
            await until_counts(worker, lambda c: c.acked == 1)
        assert (worker.counts.retried, calls) == (3, 4)
        assert await client.peek("patient-dead") == []


class Recorder:
    """Recorder is a handler that lets the others start (one loop step), then records the
    body it was given."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, msg: Message) -> None:
        await asyncio.sleep(0)
        self.bodies.append(msg.body)


async def test_max_messages_ends_run_once_that_many_are_handled(server):
    handler = Recorder()
    handled = handler.bodies
    async with connect(server.host, server.port) as client:
        await client.put_many("some", [b"%d" % i for i in range(5)])
        worker = Worker("some", handler, host=server.host, port=server.port,
                        concurrency=10, max_messages=2)
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)  # returns by itself
        assert worker.counts.received == worker.counts.acked == 2
        assert handled == [b"0", b"1"]
        assert (await client.queue_info("some"))["messages"] == 3
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)  # each run counts afresh
        assert worker.counts.acked == 4
        assert worker.counts.reconnects == 0  # a new run's connection is not a reconnect


async def test_max_messages_waits_for_the_work_in_hand_past_the_grace(server):
    """Reaching max_messages is not a stop: a handler still running is let finish, even
    with no grace at all."""
    release = asyncio.Event()

    async def handler(msg: Message) -> None:
        await release.wait()

    async with connect(server.host, server.port) as client:
        await client.put("slowly", b"x")
        worker = Worker("slowly", handler, host=server.host, port=server.port,
                        max_messages=1, shutdown_grace=0)
        task = asyncio.create_task(worker.run())
        await until_true(lambda: worker.in_progress == 1)
        assert not task.done()
        release.set()
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert worker.counts.acked == 1


async def test_burst_handles_what_is_queued_then_ends_run(server):
    handler = Recorder()
    handled = handler.bodies
    async with connect(server.host, server.port) as client:
        await client.put_many("burst", [b"%d" % i for i in range(25)])
        worker = Worker("burst", handler, host=server.host, port=server.port,
                        concurrency=4, wait=3600, burst=True)  # a burst does not wait
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
        assert sorted(handled, key=int) == [b"%d" % i for i in range(25)]
        assert worker.counts.acked == 25
        assert (await client.queue_info("burst"))["messages"] == 0
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)  # empty: returns at once
        assert worker.counts.received == 25


async def test_a_stop_during_a_burst_is_a_stop(server):
    async with connect(server.host, server.port) as client:
        await client.put("stuck-burst", b"x")
    worker, task = await start_stuck_worker(server, "stuck-burst", burst=True,
                                            shutdown_grace=0)
    worker.stop()
    await asyncio.wait_for(task, EVENT_TIMEOUT_S)
    assert worker.counts.given_back == 1


@pytest.mark.parametrize("failure", [Retry(0), RuntimeError("always fails")])
async def test_a_burst_handles_a_message_that_keeps_coming_back_once(server, failure):
    """With concurrency 1 and no delay, the nacked message is back before the next
    receive: the burst must give it back unseen and end, not handle it again and again."""
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise failure

    async with connect(server.host, server.port) as client:
        msg_id = await client.put("boomerang", b"x")
        worker = Worker("boomerang", handler, host=server.host, port=server.port,
                        concurrency=1, retry_delay=0.0, burst=True)
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
        assert calls == 1
        # Received again at once (no delay), held, and given back when the burst ended,
        # without being counted again.
        counts = worker.counts
        assert (counts.received, counts.retried + counts.failed, counts.given_back) == (1, 1, 0)
        info = await client.message_info("boomerang", msg_id)
        # Ready for the next run; the delivery the burst gave back unseen is not counted.
        assert (info["state"], info["deliveries"]) == ("ready", 1)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_burst_goes_past_a_failing_message_that_comes_back_first(server, concurrency):
    """A nacked message goes back ahead of the untried ones: the burst must hold it (not
    handle it again, not end on it) and go on to the rest of the queue."""
    calls: dict[bytes, int] = {}

    async def handler(msg: Message) -> None:
        calls[msg.body] = calls.get(msg.body, 0) + 1
        await asyncio.sleep(0)
        if msg.body == b"poison":
            raise RuntimeError("always fails")

    async with connect(server.host, server.port) as client:
        poison = await client.put("poisoned", b"poison")
        await client.put_many("poisoned", [b"%d" % i for i in range(30)])
        worker = Worker("poisoned", handler, host=server.host, port=server.port,
                        concurrency=concurrency, retry_delay=0.0, burst=True)
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
        assert calls == {b"poison": 1, **{b"%d" % i: 1 for i in range(30)}}
        counts = worker.counts
        assert (counts.acked, counts.failed) == (30, 1)
        assert counts.received == sum(getattr(counts, o) for o in
                                      ("acked", "failed", "retried", "given_back",
                                       "lease_lost", "unsettled"))
        info = await client.message_info("poisoned", poison)
        assert (info["state"], info["deliveries"]) == ("ready", 1)
        assert (await client.queue_info("poisoned"))["messages"] == 1


async def test_a_burst_with_max_messages_gives_back_what_it_holds(server):
    async def handler(msg: Message) -> None:
        raise Retry(0)

    async with connect(server.host, server.port) as client:
        await client.put_many("held", [b"a", b"b", b"c"])
        worker = Worker("held", handler, host=server.host, port=server.port,
                        concurrency=1, burst=True, max_messages=3)
        await asyncio.wait_for(worker.run(), EVENT_TIMEOUT_S)
        assert worker.counts.retried == 3
        stats = (await client.stats())["queues"]["held"]
        assert (stats["messages"], stats["in_flight"]) == (3, 0)


async def test_a_retry_over_a_max_delay_printed_rounded_up_still_waits(server_factory):
    """The server prints its limit to 6 significant digits: 1234567 as 1.23457e+06, which
    it refuses in turn. The nack must still wait about the limit, not go with none."""
    server = server_factory("--max-delay", "1234567")
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise Retry(2e6)

    async with connect(server.host, server.port) as client:
        msg_id = await client.put("rounded", b"x")
        worker = Worker("rounded", handler, host=server.host, port=server.port)
        async with running(worker):
            await until_counts(worker, lambda c: c.retried == 1)
        info = await client.message_info("rounded", msg_id)
        assert (info["state"], calls) == ("delayed", 1)
        assert info["deadline_at"] > info["enqueued_at"] + 1_234_000


async def test_a_retry_over_the_server_s_max_delay_waits_the_server_s_limit(server_factory,
                                                                            caplog):
    server = server_factory("--max-delay", "30")
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise Retry(3600, reason="come back in an hour")

    async with connect(server.host, server.port) as client:
        first = await client.put("hourly", b"x")
        worker = Worker("hourly", handler, host=server.host, port=server.port)
        with caplog.at_level("WARNING", logger="wonderq_client.worker"):
            async with running(worker):
                await until_counts(worker, lambda c: c.retried == 1)
                second = await client.put("hourly", b"y")
                await until_counts(worker, lambda c: c.retried == 2)
        for msg_id in (first, second):
            info = await client.message_info("hourly", msg_id)
            assert info["state"] == "delayed"
            assert info["enqueued_at"] + 25 < info["deadline_at"] <= info["enqueued_at"] + 31
        assert calls == 2
        # The limit learnt from the first refusal keeps the second nack from being refused.
        assert sum("refused a retry delay" in r.getMessage() for r in caplog.records) == 1


async def test_stopping_says_whether_stop_was_called_in_this_run(server):
    async with connect(server.host, server.port) as client:
        await client.put("stopping-flag", b"x")
    worker, task = await start_stuck_worker(server, "stopping-flag", shutdown_grace=0)
    assert not worker.stopping
    worker.stop()
    assert worker.stopping
    await asyncio.wait_for(task, EVENT_TIMEOUT_S)
    assert not worker.stopping  # ready to run again
    assert worker.counts.reconnects == 0


class WorkerWithoutTouches(Worker):
    """WorkerWithoutTouches: a Worker whose heartbeat cannot reach the server for the
    messages named (a network path lost for longer than a lease, for those alone)."""

    def __init__(self, *args: Any, untouched: set[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.untouched = untouched

    async def _touch(self, client: Any, job: Any) -> float | None:
        if job.message.id in self.untouched:
            return None
        return await super()._touch(client, job)


@pytest.mark.parametrize("burst", [True, False])
async def test_a_message_received_again_while_its_handler_runs_goes_on_under_the_new_lease(
        server, burst):
    """Its lease lost while its handler runs, a message comes back to the same worker: it
    must not be started a second time beside the first; the job in hand takes the new
    lease, and its ack then deletes the message."""
    calls: dict[bytes, int] = {}
    seen: dict[bytes, Message] = {}
    release = asyncio.Event()

    async with connect(server.host, server.port) as client:
        slow = await client.put("twice", b"slow")
        await client.put("twice", b"quick")

        async def handler(msg: Message) -> None:
            calls[msg.body] = calls.get(msg.body, 0) + 1
            seen[msg.body] = msg
            if msg.body == b"slow":
                await release.wait()
            else:  # the clock: a long poll on the server, past the slow one's lease
                assert await client.receive("twice-clock", wait=1.5) == []

        worker = WorkerWithoutTouches("twice", handler, host=server.host, port=server.port,
                                      untouched={slow}, concurrency=2, visibility=1.0,
                                      wait=0.2, burst=burst)
        task = asyncio.create_task(worker.run())
        # Received again: the server counts a redelivery, and it is leased once more.
        await until_stats(client, lambda s: s["queues"]["twice"]["redelivered_total"] == 1)
        info = await client.message_info("twice", slow)
        assert (info["state"], info["deliveries"]) == ("leased", 2)
        assert calls == {b"slow": 1, b"quick": 1}
        worker.untouched.clear()  # the path is back
        release.set()
        await until_stats(client, lambda s: s["queues"]["twice"]["messages"] == 0)
        if not burst:
            worker.stop()
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert calls == {b"slow": 1, b"quick": 1}
        counts = worker.counts
        assert (counts.received, counts.acked, counts.lease_lost) == (2, 2, 0)
        assert seen[b"slow"].deliveries == 2  # the handler's message tells the new delivery


async def test_the_max_delay_learnt_is_found_again_after_a_reconnect(server_factory, tmp_path):
    """A server restarted with a larger --max-delay: the limit the worker learnt from the
    first one must not keep its nacks short."""
    server = server_factory("--data-dir", str(tmp_path), "--max-delay", "20")
    port = server.port

    async def handler(msg: Message) -> None:
        raise Retry(60)

    async with connect(server.host, port) as client:
        first = await client.put("relimit", b"x")
    worker = Worker("relimit", handler, host=server.host, port=port,
                    reconnect_first=0.05, reconnect_most=0.2)
    async with running(worker):
        await until_counts(worker, lambda c: c.retried == 1)
        server.kill()
        restarted = server_factory("--data-dir", str(tmp_path), "--max-delay", "120",
                                   "--port", str(port))
        async with connect(restarted.host, port) as client:
            second = await client.put("relimit", b"y")
            await until_counts(worker, lambda c: c.retried == 2)
            first_info = await client.message_info("relimit", first)
            second_info = await client.message_info("relimit", second)
    assert first_info["deadline_at"] <= first_info["enqueued_at"] + 21  # the old limit
    assert second_info["deadline_at"] > second_info["enqueued_at"] + 50  # all of its 60 s


class WorkerWithALateLeaseLost(Worker):
    """A Worker whose heartbeat's touch of `slow`'s first lease is answered LEASE_LOST only
    after the job has taken a newer delivery's lease: a late answer about an old lease."""

    def __init__(self, *args: Any, slow: int, ready_to_race: asyncio.Event,
                 touch_waiting: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slow, self.first_lease = slow, None
        self.ready_to_race, self.touch_waiting = ready_to_race, touch_waiting
        self.adopted = asyncio.Event()

    def _adopt(self, job: Any, *args: Any) -> None:
        super()._adopt(job, *args)
        self.adopted.set()

    async def _touch(self, client: Any, job: Any) -> float | None:
        if job.message.id != self.slow:
            return await super()._touch(client, job)
        if self.first_lease is None:
            self.first_lease = job.message.lease
        if job.message.lease != self.first_lease:
            return await super()._touch(client, job)  # the new lease: renewed as usual
        if self.ready_to_race.is_set():
            self.touch_waiting.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):  # within the heartbeat's round
                    await self.adopted.wait()
                    raise LeaseLost("the old lease's touch, answered late")
        return None  # the old lease is not renewed: it runs out


async def test_a_late_lease_lost_about_the_old_lease_does_not_stop_the_new_one_s_touches(
        server):
    ready_to_race, touch_waiting, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with connect(server.host, server.port) as client:
        slow = await client.put("late", b"slow")
        await client.put("late", b"quick")

        async def handler(msg: Message) -> None:
            if msg.body == b"slow":
                await release.wait()
                return
            # The clock: past slow's first lease; then let a touch round of it begin.
            assert await client.receive("late-clock", wait=1.5) == []
            ready_to_race.set()
            await touch_waiting.wait()

        worker = WorkerWithALateLeaseLost("late", handler, host=server.host,
                                          port=server.port, slow=slow,
                                          ready_to_race=ready_to_race,
                                          touch_waiting=touch_waiting, concurrency=2,
                                          visibility=1.0, wait=0.2)
        async with running(worker):
            await asyncio.wait_for(worker.adopted.wait(), EVENT_TIMEOUT_S)
            # Two more leases' time on the server's clock: the new lease must be renewed
            # all along, so the message is not delivered a third time.
            assert await client.receive("late-clock", wait=2.0) == []
            stats = (await client.stats())["queues"]["late"]
            info = await client.message_info("late", slow)
            release.set()
            await until_counts(worker, lambda c: c.acked == 2)
        assert stats["redelivered_total"] == 1
        assert (info["state"], info["deliveries"]) == ("leased", 2)


class FinishOnCue:
    """FinishOnCue is a handler that counts its calls and returns once `finish` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.finish = asyncio.Event()

    async def __call__(self, msg: Message) -> None:
        self.calls += 1
        await self.finish.wait()


async def test_a_message_back_while_its_ack_waits_is_acked_under_the_new_lease(server):
    """The handler is done and its ack is on its way, held up on the path, while the lease
    runs out and the worker's own waiting receive gets the message again: the ack must go
    on under the new lease, not the handler run a second time."""
    handler = FinishOnCue()
    proxy = await FaultProxy(server.host, server.port).start()
    try:
        async with connect(server.host, server.port) as client:
            await client.put("held-ack", b"x")
            worker = Worker("held-ack", handler, port=proxy.port, concurrency=2,
                            visibility=1.0, wait=5.0, reply_timeout=10.0)
            async with running(worker):
                await until_true(lambda: handler.calls == 1)
                # The free slot's long poll waits on the server, past the path.
                await until(client.stats, lambda s: s["server"]["waiting_consumers"] == 1)
                proxy.hold_up()  # the ack and the touches go no further
                handler.finish.set()
                # The lease runs out; the waiting receive brings the message back.
                await until_stats(client,
                                  lambda s: s["queues"]["held-ack"]["redelivered_total"] == 1)
                proxy.release_up()  # the ack, for the old lease, reaches the server
                await until_stats(client,
                                  lambda s: s["queues"]["held-ack"]["acked_total"] == 1)
            assert handler.calls == 1
            counts = worker.counts
            assert (counts.received, counts.acked, counts.lease_lost) == (1, 1, 0)
    finally:
        await proxy.close()


class WorkerThatLosesThePathOnAdopting(Worker):
    """A Worker whose path to the server dies, refusing new connections too, the moment a
    job takes a newer delivery's lease (_adopt)."""

    def __init__(self, *args: Any, proxy: FaultProxy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxy = proxy
        self.adopted = asyncio.Event()

    def _adopt(self, job: Any, *args: Any) -> None:
        super()._adopt(job, *args)
        self.proxy.silence()
        self.proxy.refuse_new = True
        self.proxy.release_up()
        self.adopted.set()


async def test_an_ack_under_a_new_lease_waits_for_a_connection_as_long_as_that_lease(server):
    """An ack that took a newer delivery's lease must keep trying for a connection until
    that lease ends (plus the slack), not give up when the old one's patience is over."""
    handler = FinishOnCue()
    proxy = await FaultProxy(server.host, server.port).start()
    try:
        async with connect(server.host, server.port) as client:
            await client.put("patient-ack", b"x")
            worker = WorkerThatLosesThePathOnAdopting(
                "patient-ack", handler, port=proxy.port, proxy=proxy, concurrency=2,
                visibility=8.0, wait=10.0, reply_timeout=9.0, reconnect_first=0.05,
                reconnect_most=0.2)
            async with running(worker):
                await until_true(lambda: handler.calls == 1)
                await until(client.stats, lambda s: s["server"]["waiting_consumers"] == 1)
                proxy.hold_up()  # the ack is held, and the lease is not renewed
                handler.finish.set()
                await asyncio.wait_for(worker.adopted.wait(), 2 * EVENT_TIMEOUT_S)
                # The clock: past the old lease's patience, well within the new lease.
                slack = wonderq_client.worker.SETTLE_SLACK_S
                assert await client.receive("patient-ack-clock", wait=slack + 1.0) == []
                proxy.refuse_new = False
                await until_counts(worker, lambda c: c.acked == 1)
            assert handler.calls == 1
            assert (worker.counts.unsettled, worker.counts.lease_lost) == (0, 0)
            assert (await client.stats())["queues"]["patient-ack"]["acked_total"] == 1
    finally:
        await proxy.close()


async def test_a_nack_held_across_a_restart_asks_its_own_delay_of_the_new_server(
        server_factory, tmp_path):
    """A nack kept to the old server's --max-delay (5 s), lost with that server, is sent
    again to one restarted with 100 s: it must ask its own 60 s again, not the old limit."""
    server = server_factory("--data-dir", str(tmp_path), "--max-delay", "5")
    port = server.port

    async def handler(msg: Message) -> None:
        raise Retry(60)

    proxy = await FaultProxy(server.host, port).start()
    try:
        async with connect(server.host, port) as client:
            await client.put("recap", b"first")
        worker = Worker("recap", handler, port=proxy.port, reconnect_first=0.05,
                        reconnect_most=0.2)
        async with running(worker):
            await until_counts(worker, lambda c: c.retried == 1)  # the limit is learnt
            async with connect(server.host, port) as client:
                await until(client.stats, lambda s: s["server"]["waiting_consumers"] == 1)
                proxy.hold_up()  # the next nack goes no further than the proxy
                second = await client.put("recap", b"second")
                await until_true(lambda: worker.in_progress == 1)
            server.kill()  # the held nack is lost with the connection
            proxy.release_up()
            restarted = server_factory("--data-dir", str(tmp_path), "--max-delay", "100",
                                       "--port", str(port))
            await until_counts(worker, lambda c: c.retried == 2)
            async with connect(restarted.host, port) as client:
                info = await client.message_info("recap", second)
        assert info["state"] == "delayed"
        assert info["deadline_at"] > info["enqueued_at"] + 50  # 60 s, not the old 5
    finally:
        await proxy.close()


async def test_a_touch_refused_for_the_worker_s_visibility_ends_run(server_factory, tmp_path,
                                                                     caplog):
    # The server restarts (same journal and port) with a --max-visibility-timeout below the
    # Worker's visibility, while a handler works: every touch of its heartbeat is refused.
    # A reviewer's Worker dropped those answers without a word, the lease ran out under the
    # working handler and another consumer was handed the message. Like a receive so
    # refused, it ends run(), which says why.
    server = server_factory("--data-dir", str(tmp_path))
    port = server.port
    started = asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await asyncio.Event().wait()  # works until cancelled

    async with connect(server.host, port) as client:
        await client.put("touchy", b"long work")
    worker = Worker("touchy", handler, host=server.host, port=port, concurrency=1,
                    visibility=2.0, reply_timeout=1.0, reconnect_first=0.05,
                    reconnect_most=0.2, shutdown_grace=0)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
        server.kill()
        server_factory("--data-dir", str(tmp_path), "--port", str(port),
                       "--max-visibility-timeout", "1", "--visibility-timeout", "1")
        with pytest.raises(BadArgument, match="--max-visibility-timeout"):
            await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert any(r.levelname == "ERROR" and r.getMessage().startswith("stopping: ")
                   and "--max-visibility-timeout" in r.getMessage() for r in caplog.records)
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), EVENT_TIMEOUT_S)


async def test_a_stop_while_run_closes_its_connection_is_that_run_s(server):
    # run() forgot its stops before it closed its connection, which waits up to
    # reply_timeout for a stalled server: a reviewer's second stop() (a second Ctrl-C)
    # there was kept, and the next run() returned at once without receiving anything.
    handled = asyncio.Event()

    async def handler(msg: Message) -> None:
        handled.set()

    worker = Worker("closing", handler, host=server.host, port=server.port,
                    reply_timeout=2.0, wait=5.0)
    async with connect(server.host, server.port) as client:
        await client.create_queue("closing")
        task = asyncio.create_task(worker.run())
        await until(lambda: client.queue_info("closing"), lambda info: info["waiting"] == 1)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # close() now waits for its cancel's answer
        try:
            worker.stop()
            await until_true(lambda: worker._closed)  # run() is closing its connection
            assert not task.done() and worker.stopping
            worker.stop()
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert not worker.stopping
        await client.put("closing", b"for the next run")
        again = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(handled.wait(), EVENT_TIMEOUT_S)
            assert not again.done()
        finally:
            worker.stop()
            await asyncio.wait_for(again, EVENT_TIMEOUT_S)


async def test_a_handler_that_ends_after_its_time_is_up_sends_nothing(server):
    # A handler that ignores the stop's cancel has as long as the settles to end (README);
    # after that it is abandoned and nothing of it is sent. But it was abandoned only after
    # the last wait for settles still in flight: a reviewer's handler that ended during that
    # wait had its ack sent, and was counted abandoned all the same. Here b's handler ends
    # the moment that wait does (a's settle, given up on), before the stop goes on.
    release_a, started = asyncio.Event(), {b"a": asyncio.Event(), b"b": asyncio.Event()}
    a_settling: list[asyncio.Task[None]] = []
    a_known = asyncio.Event()

    async def handler(msg: Message) -> None:
        started[msg.body].set()
        if msg.body == b"a":
            await release_a.wait()
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # until the stop cancels it, which it ignores
        await a_known.wait()
        await asyncio.wait(a_settling)  # woken before the stop's own wait for it

    async with connect(server.host, server.port) as client:
        await client.create_queue("late")
        await client.put("late", b"a")
        b = await client.put("late", b"b")
        worker = Worker("late", handler, host=server.host, port=server.port, concurrency=2,
                        shutdown_grace=0, reply_timeout=1.0, visibility=30.0)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())),
                               EVENT_TIMEOUT_S)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # a's ack goes out and is not answered
        try:
            release_a.set()
            await until_true(lambda: any(job.settling for job in worker._jobs.values()))
            a_settling[:] = [t for t, job in worker._jobs.items() if job.settling]
            a_known.set()
            worker.stop()
            await until_true(lambda: worker.counts.abandoned == 1)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(task, EVENT_TIMEOUT_S)
        assert (worker.counts.abandoned, worker.counts.unsettled) == (1, 1)
        info = await client.message_info("late", b)  # not acked: still leased, as counted
        assert info["state"] == "leased"
