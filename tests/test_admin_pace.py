"""Tests of the pacing of STATS and QUEUES (admin_pace.py): the pace itself with numbers
and fake connections, and a Connection with a fake transport whose hub's clock moves only
when a test (or a STATS that is made to cost time) moves it. Nothing here sleeps."""

from __future__ import annotations

import pytest
from connection_fakes import PREAMBLE, FakeHub, binary_client, req

from wonderq_server.admin_pace import MAX_SPACING_S, PACED_COMMANDS, SPACING, AdminPace
from wonderq_server.connection_limits import ConnectionLimits

COST_S = 0.05  # what one STATS is made to take here
GAP_S = COST_S * SPACING


# ------------------------------------------------------------------ the pace

class Timers:
    """call_later for AdminPace, fired by hand."""

    def __init__(self) -> None:
        self.due: list[tuple[float, object]] = []

    def call_later(self, delay, callback):
        entry = (delay, callback)
        self.due.append(entry)
        timers = self

        class Handle:
            def cancel(self) -> None:
                if entry in timers.due:
                    timers.due.remove(entry)

        return Handle()

    def fire(self) -> float:
        delay, callback = self.due.pop(0)
        callback()
        return delay


class Waiter:
    """A connection as the pace sees it: on its turn it runs (`cost` long), or cannot."""

    def __init__(self, pace: AdminPace, log: list, name: str, clock: list[float],
                 can_run: bool = True, address: str | None = "127.0.0.1") -> None:
        self.pace, self.log, self.name, self.clock, self.can_run = pace, log, name, clock, \
            can_run
        self.address = address

    def take_pace_turn(self) -> None:
        if self.can_run and self.pace.turn(self, self.clock[0]):
            self.log.append(self.name)
            self.pace.ran(self, self.clock[0], self.clock[0] + COST_S)


class Scene:
    """A pace with hand-fired timers, a clock, and the log of who ran."""

    def __init__(self, start: float = 0.0) -> None:
        self.timers = Timers()
        self.pace = AdminPace(self.timers.call_later)
        self.log: list[str] = []
        self.clock = [start]

    def waiter(self, name: str, can_run: bool = True,
               address: str | None = "127.0.0.1") -> Waiter:
        return Waiter(self.pace, self.log, name, self.clock, can_run, address)

    def run_all(self) -> None:
        while self.timers.due:
            self.clock[0] += self.timers.fire()


def test_nothing_waits_before_a_paced_command_has_run():
    pace = AdminPace(Timers().call_later)
    assert pace.turn(object(), 123.0)  # type: ignore[arg-type]
    assert pace.paced == 0


def test_the_next_waits_until_spacing_times_the_cost_after_the_last_ended():
    scene = Scene(10.0)
    timers, pace, log, clock = scene.timers, scene.pace, scene.log, scene.clock
    first, second = scene.waiter("a"), scene.waiter("b")
    assert pace.turn(first, 10.0)
    pace.ran(first, 10.0, 10.1)
    assert not pace.turn(second, 10.1)
    assert (pace.paced, pace.waiting) == (1, 1)
    [(delay, _)] = timers.due
    assert delay == pytest.approx(0.1 * SPACING)
    assert not pace.turn(second, 10.2)  # asking again neither counts nor queues it twice
    assert (pace.paced, pace.waiting, len(timers.due)) == (1, 1, 1)
    clock[0] = 10.5
    timers.fire()
    assert log == ["b"] and pace.waiting == 0


def test_turns_go_in_the_order_asked_however_often_one_asks_again():
    scene = Scene()
    timers, pace, log, clock = scene.timers, scene.pace, scene.log, scene.clock
    waiters = {name: scene.waiter(name) for name in "abcd"}
    pace.ran(waiters["a"], 0.0, COST_S)
    for name in "bcd":
        assert not pace.turn(waiters[name], COST_S)
    for _ in range(3):
        assert not pace.turn(waiters["d"], COST_S)  # the last asks again and again
        clock[0] += timers.fire()
        assert not pace.turn(waiters["b"], clock[0])  # one that just ran waits its turn
    assert log == ["b", "c", "d"]


def test_turns_go_round_the_addresses_then_first_come_first_served():
    # One host that queued many STATS (on many connections) ahead of others gets one
    # turn in each round, not all its turns first.
    scene = Scene()
    pace = scene.pace
    pace.ran(scene.waiter("x"), 0.0, COST_S)
    flood = [scene.waiter(f"f{i}", address="10.0.0.5") for i in range(4)]
    for waiter in [*flood, scene.waiter("a1", address="10.0.0.1"),
                   scene.waiter("b1", address="10.0.0.2"),
                   scene.waiter("a2", address="10.0.0.1"),
                   scene.waiter("none", address=None)]:
        assert not pace.turn(waiter, COST_S)
    assert pace.waiting == 8
    scene.run_all()
    assert scene.log == ["f0", "a1", "b1", "none", "f1", "a2", "f2", "f3"]
    assert pace.waiting == 0


def test_an_address_that_comes_back_joins_the_end_of_the_round():
    scene = Scene()
    pace, log = scene.pace, scene.log
    pace.ran(scene.waiter("x"), 0.0, COST_S)
    first, other = scene.waiter("a1", address="10.0.0.1"), scene.waiter("b1", address="10.0.0.2")
    assert not pace.turn(first, COST_S)
    assert not pace.turn(other, COST_S)
    scene.clock[0] += scene.timers.fire()
    assert log == ["a1"]
    assert not pace.turn(scene.waiter("a2", address="10.0.0.1"), scene.clock[0])
    scene.run_all()
    assert log == ["a1", "b1", "a2"]


def test_a_connection_that_goes_takes_its_address_out_of_the_round_when_last():
    scene = Scene()
    pace = scene.pace
    pace.ran(scene.waiter("x"), 0.0, COST_S)
    gone = scene.waiter("gone", address="10.0.0.5")
    later = scene.waiter("later", address="10.0.0.5")
    other = scene.waiter("other", address="10.0.0.1")
    for waiter in (gone, other, later):
        assert not pace.turn(waiter, COST_S)
    pace.forget(gone)
    gone.address = None  # the server lets go of a closed connection's address
    assert pace.waiting == 2
    scene.run_all()
    assert scene.log == ["later", "other"]
    pace.forget(later)  # forgetting one that has had its turn changes nothing
    assert pace.waiting == 0


def test_a_connection_that_goes_during_its_turn_without_running_passes_the_turn_on():
    # A reviewer's fuzzing: a connection forgotten inside its take_pace_turn, before its
    # command ran, left the others waiting with no timer armed.
    scene = Scene()
    pace = scene.pace

    class GoesInItsTurn(Waiter):
        def take_pace_turn(self) -> None:
            self.pace.forget(self)

    pace.ran(scene.waiter("x"), 0.0, COST_S)
    going = GoesInItsTurn(pace, scene.log, "going", scene.clock)
    staying = scene.waiter("staying")
    assert not pace.turn(going, COST_S)
    assert not pace.turn(staying, COST_S)
    scene.run_all()
    assert scene.log == ["staying"] and pace.waiting == 0


def test_a_timer_nobody_waits_for_is_cancelled_so_it_cannot_skip_a_later_spacing():
    scene = Scene()
    pace, timers = scene.pace, scene.timers
    pace.ran(scene.waiter("x"), 0.0, COST_S)
    gone = scene.waiter("gone")
    assert not pace.turn(gone, COST_S)
    pace.forget(gone)
    assert timers.due == []
    # One that comes once the spacing has passed runs at once; the next waits its spacing.
    first, second = scene.waiter("first"), scene.waiter("second")
    assert pace.turn(first, COST_S + GAP_S)
    pace.ran(first, COST_S + GAP_S, 2 * COST_S + GAP_S)
    assert not pace.turn(second, 2 * COST_S + GAP_S)
    [(delay, _)] = timers.due
    assert delay == pytest.approx(GAP_S)


def test_a_turn_that_cannot_be_used_passes_to_the_next_at_once():
    scene = Scene()
    timers, pace, log = scene.timers, scene.pace, scene.log
    blocked, ready = scene.waiter("blocked", can_run=False), scene.waiter("ready")
    pace.ran(ready, 0.0, COST_S)
    assert not pace.turn(blocked, COST_S)
    assert not pace.turn(ready, COST_S)
    timers.fire()
    assert log == ["ready"]
    assert pace.waiting == 0  # the blocked one asks again when it can


def test_a_connection_that_goes_leaves_the_queue():
    scene = Scene()
    timers, pace, log = scene.timers, scene.pace, scene.log
    gone, staying = scene.waiter("gone"), scene.waiter("staying")
    pace.ran(staying, 0.0, COST_S)
    assert not pace.turn(gone, COST_S)
    assert not pace.turn(staying, COST_S)
    pace.forget(gone)
    timers.fire()
    assert log == ["staying"]


def test_a_huge_command_spaces_the_next_by_at_most_max_spacing():
    timers = Timers()
    pace = AdminPace(timers.call_later)
    pace.ran(object(), 0.0, 10.0)  # type: ignore[arg-type]
    assert not pace.turn(Waiter(pace, [], "x", [10.0]), 10.0)
    assert timers.due[0][0] == MAX_SPACING_S


def test_a_time_before_the_last_end_counts_as_that_end():
    # The server passes its monotonic clock; should one ever step back, nothing stalls.
    timers = Timers()
    pace = AdminPace(timers.call_later)
    pace.ran(object(), 1000.0, 1000.01)  # type: ignore[arg-type]
    assert not pace.turn(Waiter(pace, [], "x", [10.0]), 10.0)
    assert timers.due[0][0] == pytest.approx(0.01 * SPACING)


# ------------------------------------------------------------- on a connection

class CostlyStatsHub(FakeHub):
    """FakeHub whose STATS and QUEUES take COST_S of its clock, as they would with many
    queues; everything else takes no time."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        run = self.service.execute

        def execute(command, now, respond):
            if command.name in PACED_COMMANDS:
                self.clock += COST_S
            return run(command, now, respond)

        self.service.execute = execute  # type: ignore[method-assign]


def spent(hub: FakeHub) -> None:
    """spent: one STATS has just run on a connection of its own."""
    first, transport = hub.connect()
    hub.send(first, b"STATS\r\n")
    assert transport.data.endswith(b"END\r\n")


def test_a_text_stats_that_comes_too_soon_waits_with_what_follows_and_others_go_on():
    hub = CostlyStatsHub()
    spent(hub)
    connection, transport = hub.connect()
    hub.send(connection, b"STATS\r\nPUT q later\r\nPING\r\n")
    assert transport.data == b""  # its STATS waits, and so does what follows it
    assert hub.admin_pace.paced == 1
    other, other_transport = hub.connect()
    hub.send(other, b"PUT q now\r\nPING\r\n")  # the others are served meanwhile
    assert other_transport.data.startswith(b"OK ")
    assert other_transport.data.endswith(b"PONG\r\n")
    hub.advance(GAP_S - 0.001)
    assert transport.data == b""
    hub.send(connection, b"PING\r\n")  # read while it waits: held too, in order
    hub.advance(0.001)
    stats, rest = transport.data.decode().split("END\r\n", 1)
    assert "queues.q.messages: 1\r\n" in stats  # the other's put, not its own later one
    assert rest.startswith("OK ") and rest.endswith("PONG\r\nPONG\r\n")
    assert hub.broker.stats(hub.clock)["queues"]["q"]["messages"] == 2


def test_a_binary_stats_waits_aside_and_what_follows_runs_on():
    # As a waiting receive: binary replies carry ids, so a client's puts and acks do not
    # wait behind its monitoring (a reviewer's put waited 4 s behind its stats()).
    hub = CostlyStatsHub()
    connection, transport = binary_client(hub)
    hub.send(connection, req(0, "queues"))
    hub.send(connection, req(1, "stats") + req(2, "put", queue="q", body=b"x")
             + req(3, "ping"))
    assert [reply[0] for reply in transport.frames()] == [0, 2, 3]
    hub.advance(GAP_S)
    replies = transport.frames()
    assert [reply[0] for reply in replies] == [0, 2, 3, 1]
    assert replies[3][2]["queues"]["q"]["messages"] == 1  # it ran when its turn came


def test_a_binary_connection_waits_with_one_paced_command_at_a_time():
    hub = CostlyStatsHub()
    spent(hub)
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "stats") + req(2, "stats") + req(3, "ping"))
    assert transport.frames() == []  # the second STATS holds itself and what follows
    assert hub.admin_pace.waiting == 1
    hub.advance(GAP_S)
    assert [reply[0] for reply in transport.frames()] == [1, 3]
    hub.advance(GAP_S)
    assert [reply[0] for reply in transport.frames()] == [1, 3, 2]
    assert hub.admin_pace.paced == 2


def test_waiting_connections_take_turns_in_the_order_they_asked():
    hub = CostlyStatsHub()
    spent(hub)
    clients = [hub.connect() for _ in range(3)]
    for connection, _ in clients:
        hub.send(connection, b"STATS\r\n")
    answered = []
    for _ in range(3):
        hub.advance(GAP_S)
        answered.append([bool(transport.data) for _, transport in clients])
    assert answered == [[True, False, False], [True, True, False], [True, True, True]]


def test_a_connection_that_goes_while_its_stats_waits_leaves_nothing_behind():
    hub = CostlyStatsHub()
    spent(hub)
    connection, transport = hub.connect()
    hub.send(connection, b"STATS\r\nPUT q never\r\n")
    waiting, waiting_transport = hub.connect()
    hub.send(waiting, b"STATS\r\n")
    connection.connection_lost(None)
    assert hub.admin_pace.waiting == 1
    hub.advance(GAP_S)  # the turn goes to the one still there
    assert transport.data == b"" and waiting_transport.data.endswith(b"END\r\n")
    assert "q" not in hub.broker.stats(hub.clock)["queues"]


def test_a_binary_quit_waits_for_a_stats_that_waits_and_closes_after_it():
    # Were it run out of its turn at the close, a client could skip the queue by
    # closing after each STATS (a reviewer's 92 STATS in 4 s, a core, against 23).
    hub = CostlyStatsHub()
    spent(hub)
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "stats") + req(2, "quit"))
    assert transport.frames() == [] and not transport.closed
    hub.advance(GAP_S)
    assert [reply[0] for reply in transport.frames()] == [1, 2]
    assert transport.closed and hub.admin_pace.waiting == 0


def test_a_binary_half_close_waits_for_a_stats_that_waits_too():
    hub = CostlyStatsHub()
    spent(hub)
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "stats"))
    connection.eof_received()
    hub.run()
    assert transport.frames() == [] and not transport.closed
    hub.advance(GAP_S)
    assert [reply[0] for reply in transport.frames()] == [1]
    assert transport.closed


def test_a_connection_closed_by_an_error_drops_its_waiting_stats():
    hub = CostlyStatsHub()
    spent(hub)
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "stats") + b"\xff\xff\xff\xff" + b"x" * 16)  # a 4 GiB frame
    assert [reply[1][0] for reply in transport.frames()] == ["FRAME_TOO_LARGE"]
    assert transport.closed and hub.admin_pace.waiting == 0
    hub.advance(GAP_S)
    assert len(transport.frames()) == 1  # no STATS run for it


def test_a_stats_waiting_its_turn_is_not_idleness():
    # An idle timeout longer than a STATS (the fake clock moves while one runs) but well
    # shorter than its wait for its turn.
    hub = CostlyStatsHub(connection_limits=ConnectionLimits(idle_timeout_s=COST_S * 1.6))
    spent(hub)
    connection, transport = hub.connect()
    hub.send(connection, b"STATS\r\nPING\r\n")
    hub.advance(GAP_S / 2)  # past the idle timeout: still waiting, not idle
    hub.advance(GAP_S / 2)
    assert transport.data.endswith(b"END\r\nPONG\r\n")
    assert b"IDLE_TIMEOUT" not in transport.data


def test_input_read_while_a_binary_stats_waits_runs_on():
    hub = CostlyStatsHub()
    spent(hub)
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(1, "stats"))
    hub.send(connection, req(2, "ping"))
    assert [reply[0] for reply in transport.frames()] == [2]
    hub.advance(GAP_S)
    assert [reply[0] for reply in transport.frames()] == [2, 1]
