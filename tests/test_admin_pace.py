"""Tests of the pacing of STATS and QUEUES (admin_pace.py): the pace itself with numbers,
and a Connection with a fake transport whose hub's clock moves only when a test (or a
STATS that is made to cost time) moves it. Nothing here sleeps."""

from __future__ import annotations

import pytest
from connection_fakes import PREAMBLE, FakeHub, binary_client, req

from wonderq_server.admin_pace import MAX_WAIT_S, PACED_COMMANDS, SPACING, AdminPace

COST_S = 0.05  # what one STATS is made to take here


# ------------------------------------------------------------------ the pace

def test_nothing_waits_before_a_paced_command_has_run():
    assert AdminPace().wait(123.0) == 0.0


def test_the_next_waits_until_spacing_times_the_cost_after_the_last_ended():
    pace = AdminPace()
    pace.ran(10.0, 10.1)
    assert pace.wait(10.1) == pytest.approx(0.1 * SPACING)
    assert pace.wait(10.3) == pytest.approx(0.1 * SPACING - 0.2)
    assert pace.wait(10.1 + 0.1 * SPACING) == 0.0
    assert pace.wait(11.0) == 0.0


def test_a_clock_that_steps_back_cannot_stall_them():
    pace = AdminPace()
    pace.ran(1000.0, 1000.01)
    assert pace.wait(10.0) == pytest.approx(0.01 * SPACING)  # an hour back: one spacing


def test_a_huge_command_makes_the_next_wait_at_most_max_wait():
    pace = AdminPace()
    pace.ran(0.0, 10.0)
    assert pace.wait(10.0) == MAX_WAIT_S


# ------------------------------------------------------------- on a connection

class CostlyStatsHub(FakeHub):
    """FakeHub whose STATS and QUEUES take COST_S of its clock, as they would with many
    queues; everything else takes no time."""

    def __init__(self) -> None:
        super().__init__()
        run = self.service.execute

        def execute(command, now, respond):
            if command.name in PACED_COMMANDS:
                self.clock += COST_S
            return run(command, now, respond)

        self.service.execute = execute  # type: ignore[method-assign]


def test_a_stats_that_comes_too_soon_waits_with_what_follows_it_and_others_go_on():
    hub = CostlyStatsHub()
    first, first_transport = hub.connect()
    hub.send(first, b"STATS\r\n")
    assert first_transport.data.endswith(b"END\r\n")  # nothing before it: runs at once
    second, transport = hub.connect()
    hub.send(second, b"STATS\r\nPUT q later\r\nPING\r\n")
    assert transport.data == b""  # its STATS waits, and so does what follows it
    assert hub.admin_pace.paced == 1
    other, other_transport = hub.connect()
    hub.send(other, b"PUT q now\r\nPING\r\n")  # the others are served meanwhile
    assert other_transport.data.startswith(b"OK ") and other_transport.data.endswith(
        b"PONG\r\n")
    hub.advance(COST_S * SPACING - 0.001)
    assert transport.data == b""
    hub.advance(0.001)
    reply = transport.data.decode()
    stats, rest = reply.split("END\r\n", 1)
    assert "queues.q.messages: 1\r\n" in stats  # the other's put, not its own later one
    assert rest.startswith("OK ") and rest.endswith("PONG\r\n")  # then the rest, in order
    assert hub.admin_pace.paced == 1
    assert hub.broker.stats(hub.clock)["queues"]["q"]["messages"] == 2


def test_a_binary_stats_waits_in_order_too():
    hub = CostlyStatsHub()
    first, _ = binary_client(hub)
    hub.send(first, req(1, "queues"))
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "stats") + req(2, "put", queue="q", body=b"x")
             + req(3, "ping"))
    assert transport.frames() == []
    hub.advance(COST_S * SPACING)
    replies = transport.frames()
    assert [reply[0] for reply in replies] == [1, 2, 3]
    assert replies[0][2]["queues"] == {}  # it ran before the put that followed it


def test_each_waiting_command_is_counted_once_though_it_waits_again():
    hub = CostlyStatsHub()
    first, _ = hub.connect()
    hub.send(first, b"STATS\r\n")
    a, a_transport = hub.connect()
    b, b_transport = hub.connect()
    hub.send(a, b"STATS\r\n")
    hub.send(b, b"STATS\r\n")
    assert hub.admin_pace.paced == 2
    hub.advance(COST_S * SPACING)  # both due: the first to run makes the other wait again
    assert (a_transport.data.endswith(b"END\r\n"), b_transport.data) == (True, b"")
    hub.advance(COST_S * SPACING)
    assert b_transport.data.endswith(b"END\r\n")
    assert hub.admin_pace.paced == 2


def test_a_connection_that_goes_while_its_stats_waits_leaves_nothing_behind():
    hub = CostlyStatsHub()
    first, _ = hub.connect()
    hub.send(first, b"STATS\r\n")
    connection, transport = hub.connect()
    hub.send(connection, b"STATS\r\nPUT q never\r\n")
    [timer] = [t for t in hub.timers if not t.cancelled]
    connection.connection_lost(None)
    assert timer.cancelled
    hub.advance(COST_S * SPACING)
    assert transport.data == b""
    assert "q" not in hub.broker.stats(hub.clock)["queues"]


def test_input_that_arrives_while_a_stats_waits_runs_after_it():
    hub = CostlyStatsHub()
    first, _ = binary_client(hub)
    hub.send(first, req(1, "stats"))
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(1, "stats"))
    hub.send(connection, req(2, "ping"))
    assert transport.frames() == []
    hub.advance(COST_S * SPACING)
    assert [reply[0] for reply in transport.frames()] == [1, 2]
