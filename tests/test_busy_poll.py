"""Busy polling (--busy-poll, connect(busy_poll=...)): the loop stays awake after input.

The pollers are driven on a real event loop with a clock passed in that
moves one step per reading, so their windows are counted in turns, not
waited for. End to end, the kernel says whether a process slept: a process
that sleeps in epoll between requests makes a voluntary context switch each
time (/proc/PID/status), one that polls makes none.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import weakref

import pytest
from polling import until_true
from server_process import ServerProcess

from wonderq_client import connect
from wonderq_client.busy_poll import (
    MAX_BUSY_POLL_S,
    MAX_SKIPPED_REQUESTS,
    LoopPoller,
    check_busy_poll,
    loop_poller,
)
from wonderq_server.busy_poll import MAX_BUSY_POLL_US, MAX_SKIPPED_INPUTS, BusyPoll

ROUND_TRIPS = 200


class StepClock:
    """A clock that moves `step` each time it is read."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def turns_until_idle(is_running) -> int:
    """turns_until_idle yields to the loop until the chain stops; returns how many times."""
    turns = 0
    while is_running():
        await asyncio.sleep(0)
        turns += 1
        assert turns < 10_000, "the polling never stopped"
    return turns


# ----------------------------------------------------------------- the server's


async def test_the_server_polls_for_its_window_after_input_then_stops():
    poller = BusyPoll(asyncio.get_running_loop(), 5.0, clock=StepClock())
    await asyncio.sleep(0)
    assert poller.turns == 0  # no input, no polling
    poller.poke()
    await turns_until_idle(lambda: poller._running)
    # The first turn reads 1 and opens the window to 6; turns reading 2..5 go on, the one
    # reading 6 ends it.
    assert poller.turns == 6


async def test_input_during_the_window_starts_it_again():
    clock = StepClock()
    poller = BusyPoll(asyncio.get_running_loop(), 5.0, clock=clock)
    poller.poke()
    for _ in range(3):
        await asyncio.sleep(0)
    poller.poke()  # the window ran from 1 to 6; the next turn (reading 4) moves it to 9
    await turns_until_idle(lambda: poller._running)
    assert poller.turns == 9


async def test_pokes_while_polling_queue_no_second_chain():
    poller = BusyPoll(asyncio.get_running_loop(), 3.0, clock=StepClock())
    for _ in range(50):
        poller.poke()
    await turns_until_idle(lambda: poller._running)
    assert poller.turns == 4  # one chain: 50 pokes before its first turn are one input


async def test_a_stopped_server_polls_no_more():
    poller = BusyPoll(asyncio.get_running_loop(), 1000.0, clock=StepClock())
    poller.poke()
    await asyncio.sleep(0)
    poller.stop()
    await turns_until_idle(lambda: poller._running)
    assert poller.turns == 2
    poller.poke()
    await asyncio.sleep(0)
    assert poller.turns == 2


async def windows_run(poller, pokes: int, poke) -> list[bool]:
    """windows_run: `pokes` inputs one after another, each once the last chain stopped;
    for each, whether it started a window."""
    started = []
    for _ in range(pokes):
        before = poller.turns
        poke()
        await turns_until_idle(lambda: poller._running)
        started.append(poller.turns > before)
    return started


def inputs_let_by(started: list[bool]) -> list[int]:
    """inputs_let_by: how many inputs went by without a window between two windows."""
    windows = [i for i, s in enumerate(started) if s]
    return [b - a - 1 for a, b in itertools.pairwise(windows)]


async def test_after_a_window_that_found_nothing_inputs_are_let_by_doubling_each_time():
    poller = BusyPoll(asyncio.get_running_loop(), 3.0, clock=StepClock())
    started = await windows_run(poller, 1 + 2 + 3 + 5 + 9 + 17, poller.poke)
    # Windows at inputs 1, 3, 6, 11, 20, 37, each found nothing: 1, 2, 4, 8, 16 let by.
    assert [i + 1 for i, s in enumerate(started) if s] == [1, 3, 6, 11, 20, 37]
    assert poller.empty_windows == 6


async def test_the_back_off_stops_at_its_most():
    poller = BusyPoll(asyncio.get_running_loop(), 1.0, clock=StepClock())
    gaps = inputs_let_by(await windows_run(poller, 400, poller.poke))
    assert gaps[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert set(gaps[6:]) == {MAX_SKIPPED_INPUTS}


async def test_a_window_that_finds_input_ends_the_back_off():
    poller = BusyPoll(asyncio.get_running_loop(), 5.0, clock=StepClock())
    assert await windows_run(poller, 4, poller.poke) == [True, False, True, False]
    poller.poke()  # let by (back-off 2)...
    poller.poke()  # ...and this one starts a window,
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    poller.poke()  # in which input comes: polling paid, so
    await turns_until_idle(lambda: poller._running)
    assert await windows_run(poller, 2, poller.poke) == [True, False]  # it polls at once
    assert poller.empty_windows == 3


# ----------------------------------------------------------------- the client's


async def test_the_client_polls_for_the_longest_window_asked():
    poller = LoopPoller(asyncio.get_running_loop(), clock=StepClock())
    poller.extend(10.0)  # reads 1: polls until 11
    poller.extend(2.0)  # reads 2: 4 is sooner, so 11 stands
    await turns_until_idle(lambda: poller._running)
    assert poller.turns == 9  # turns reading 3..11


async def test_the_client_backs_off_as_the_server_does():  # (windows without replies)
    poller = LoopPoller(asyncio.get_running_loop(), clock=StepClock())
    started = await windows_run(poller, 400, lambda: poller.extend(3.0))
    assert started[0]
    gaps = inputs_let_by(started)
    assert gaps[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert set(gaps[6:]) == {MAX_SKIPPED_REQUESTS}


async def test_a_second_request_in_the_window_ends_the_clients_back_off():
    poller = LoopPoller(asyncio.get_running_loop(), clock=StepClock())
    assert await windows_run(poller, 2, lambda: poller.extend(5.0)) == [True, False]
    poller.extend(5.0)  # a window: back-off is 1 now...
    await asyncio.sleep(0)
    poller.replied()  # ...its reply comes in...
    poller.extend(5.0)  # ...and the next request goes out: a round trip polled
    await turns_until_idle(lambda: poller._running)
    assert await windows_run(poller, 3, lambda: poller.extend(5.0)) == [True, False, True]
    assert poller.empty_windows == 3  # the first, the third, the last


async def test_requests_with_no_reply_between_them_are_not_a_window_that_paid():
    # A Worker sends its next receive, then a turn later its ack: two requests, but no
    # round trip for the polling to have served; nor is a reply nothing follows.
    poller = LoopPoller(asyncio.get_running_loop(), clock=StepClock())
    poller.extend(5.0)
    await asyncio.sleep(0)
    poller.extend(5.0)
    await asyncio.sleep(0)
    poller.replied()  # the ack's answer
    await turns_until_idle(lambda: poller._running)
    assert poller.empty_windows == 1
    assert await windows_run(poller, 2, lambda: poller.extend(3.0)) == [False, True]


async def test_one_poller_per_loop_and_none_kept_for_a_closed_loop():
    loop = asyncio.new_event_loop()
    try:
        assert loop_poller(loop) is loop_poller(loop)
        assert loop_poller(loop) is not loop_poller(asyncio.get_running_loop())
        loop_ref = weakref.ref(loop)
    finally:
        loop.close()
    del loop
    gc.collect()
    assert loop_ref() is None  # neither the table nor its poller keeps a loop alive


@pytest.mark.parametrize("value", [-0.001, MAX_BUSY_POLL_S * 2, True, "0.001", float("nan")])
def test_a_bad_busy_poll_is_refused_before_connecting(value):
    with pytest.raises(ValueError, match="busy_poll must be seconds from 0"):
        connect("127.0.0.1", 1, busy_poll=value)
    assert check_busy_poll(0) == 0.0
    assert check_busy_poll(MAX_BUSY_POLL_S) == MAX_BUSY_POLL_S


# ----------------------------------------------------------------- end to end


def voluntary_switches(status_path: str) -> int:
    with open(status_path) as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in {status_path}")


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


async def sleeps_during_round_trips(server: ServerProcess, busy_poll: float) -> tuple[int, int]:
    """sleeps_during_round_trips: ROUND_TRIPS pings one after another; how many times the
    server's event loop, and this one, went to sleep meanwhile."""
    assert server.proc is not None
    server_status = f"/proc/{server.proc.pid}/status"
    async with connect(server.host, server.port, busy_poll=busy_poll) as client:
        await client.ping()
        server_before = voluntary_switches(server_status)
        own_before = voluntary_switches("/proc/thread-self/status")
        for _ in range(ROUND_TRIPS):
            assert await client.ping() == "pong"
        return (voluntary_switches(server_status) - server_before,
                voluntary_switches("/proc/thread-self/status") - own_before)


@pytest.mark.parametrize(("flags", "busy_poll", "server_polls", "client_polls"), [
    (("--busy-poll", str(MAX_BUSY_POLL_US)), 0.0, True, False),
    ((), MAX_BUSY_POLL_S, False, True),
    (("--busy-poll", str(MAX_BUSY_POLL_US)), MAX_BUSY_POLL_S, True, True),
])
async def test_a_polling_side_does_not_sleep_between_round_trips(server_factory, flags,
                                                                  busy_poll, server_polls,
                                                                  client_polls):
    # A 10 ms window is far longer than either side's turn of a ping, so a polling side
    # does not sleep at all (0 or 1 times in 200, even with two CPU hogs beside the
    # test); a side that does not poll sleeps once a round trip while the other polls.
    # Both sleep without polling too, but not reliably so on a busy machine (a side
    # that is slow to finish its turn may find the answer already there), so that
    # case is not asserted.
    server = server_factory(*flags)
    server_sleeps, client_sleeps = await sleeps_during_round_trips(server, busy_poll)
    for polls, sleeps in ((server_polls, server_sleeps), (client_polls, client_sleeps)):
        if polls:
            assert sleeps < ROUND_TRIPS // 20
        else:
            assert sleeps >= ROUND_TRIPS // 2


async def test_the_server_sleeps_again_once_input_stops(server_factory):
    server = server_factory("--busy-poll", str(MAX_BUSY_POLL_US))
    assert server.proc is not None
    server_sleeps, _ = await sleeps_during_round_trips(server, 0.0)
    assert server_sleeps < ROUND_TRIPS // 20  # it polled
    # A polling process is never asleep ('S'): only a chain that stopped lets it sleep.
    await until_true(lambda: process_state(server.proc.pid) == "S")


async def test_the_operator_can_see_that_the_server_polls(server_factory):
    # A polling server spends CPU while its clients think: the log and STATS say so.
    polling, plain = server_factory("--busy-poll", "300"), server_factory()
    for server, window in ((polling, 300), (plain, 0)):
        async with connect(server.host, server.port) as client:
            assert (await client.stats())["server"]["busy_poll_us"] == window
        said = [line for line in server.lines if "busy polling (--busy-poll)" in line]
        assert len(said) == (1 if window else 0)
        if window:
            assert "polls for 300 us" in said[0]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_client_that_sends_now_and_then_does_not_keep_the_server_polling(
        server_factory):
    # Each ping is sent once the server sleeps again, so every window it opens finds
    # nothing: 30 windows of 10 ms would be 0.3 s of CPU. Backing off, the server opens
    # windows at pings 1, 3, 6, 11, 20 only: about 0.05 s.
    server = server_factory("--busy-poll", str(MAX_BUSY_POLL_US))
    assert server.proc is not None
    pid = server.proc.pid
    async with connect(server.host, server.port) as client:
        await client.ping()
        await until_true(lambda: process_state(pid) == "S")
        before = cpu_seconds(pid)
        for _ in range(30):
            assert await client.ping() == "pong"
            await until_true(lambda: process_state(pid) == "S")
        spent = cpu_seconds(pid) - before
    assert spent < 0.15, f"{spent:.2f} s of server CPU for 30 pings"
