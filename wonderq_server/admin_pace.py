"""Pacing of the commands whose cost grows with the number of queues (STATS, QUEUES).

Design decision: STATS builds a map of every queue (about 4 µs a queue,
and its text form 10 µs more), so with 10,000 queues one STATS holds the
event loop for 40 to 150 ms, and a client looping it (or ten monitoring
scripts) left every other client waiting: a reviewer measured a polite
PING's median round trip at 51-154 ms. Fair turns (connection_limits.py)
cannot cut a single command short. So such commands share a budget of the
loop's time instead: after one that took `cost` seconds, the next one, from
any connection, starts no sooner than `cost * SPACING` seconds after it
ended (at most MAX_SPACING_S), which keeps them to 1 / (1 + SPACING) of the
loop (a fifth) however many clients ask. With a few queues a STATS takes
well under a millisecond, so the spacing is too short to notice; Redis'
INFO and CLIENT LIST are O(n) too, and simply run.

Connections that must wait take turns by client address, then in the order
they asked (one timer for all of them): the turns go round the addresses
that have a connection waiting, and each address's connections go first
come, first served. So with N addresses waiting, a client waits for at most
N - 1 commands of other addresses before its address's turn, however many
connections one host opens to send STATS and close (each close waits for
its STATS: connection.py), as fair queueing shares a link between flows
rather than packets. Within one address, one waits for the connections
before it. A connection waits with one such command at a time (connection.py
says what it holds meanwhile).

Rules:
* `turn(connection, now)`: True if the connection may run one now: it was
  given the turn, or nobody waits and the spacing since the last one has
  passed. Else it joins its address's queue (once; `connection.address`, None
  for a client without an IP address, all such together) and False.
* `ran(connection, started, ended)` records one that ran, and gives the next
  turn when the spacing has passed: the timer calls `take_pace_turn()` of the
  first connection of the next address in turn, which runs its command (calling `ran`). If
  it cannot (its output is blocked, the server stops), the turn passes to
  the next at once; it asks again when it can, at the back of the queue.
* `forget(connection)`: a connection that goes leaves the queue, and a turn
  given to it passes on.
* Times are the server's monotonic clock (a step of the wall clock must not
  stall or hurry anything); one before the last end (which that clock never
  gives) counts as that end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

# Commands whose cost grows with the number of queues.
PACED_COMMANDS = frozenset({"stats", "queues"})

# After a paced command that took `cost`, the next waits until min(cost * SPACING,
# MAX_SPACING_S) after it ended: such commands take at most 1 / (1 + SPACING) of the loop
# (more only past 0.5 s a command: 100,000 queues).
SPACING = 4.0
MAX_SPACING_S = 2.0


class Paced(Protocol):
    address: str | None  # the client's address, whose turns it shares

    def take_pace_turn(self) -> None: ...


class AdminPace:
    """AdminPace spaces out the server's paced commands (the module's rules)."""

    def __init__(self, call_later: Callable[[float, Callable[[], None]], Any]) -> None:
        self._call_later = call_later
        self._ended_at = float("-inf")
        self._spacing_s = 0.0
        # Address -> its connections waiting, first come first; the dict's order is the
        # order of the addresses' turns (one that has had its turn goes to the back).
        self._waiting: dict[str | None, deque[Paced]] = {}
        self._address_of: dict[Paced, str | None] = {}  # every connection waiting
        self._turn: Paced | None = None  # given the turn, inside its take_pace_turn
        self._ran = 0  # paced commands run: tells _give_turn whether a turn was used
        self._timer: Any = None
        self.paced = 0  # commands that had to wait, since start (stats)

    def turn(self, connection: Paced, now: float) -> bool:
        """turn: may `connection` run a paced command now? If not, it waits its turn."""
        if self._turn is connection:
            return True
        if self._turn is None and not self._address_of and self._spaced(now) <= 0:
            return True
        if connection not in self._address_of:
            address = connection.address
            self._address_of[connection] = address
            self._waiting.setdefault(address, deque()).append(connection)
            self.paced += 1
            self._arm(now)
        return False

    def ran(self, connection: Paced, started: float, ended: float) -> None:
        """ran records a paced command that ran from `started` to `ended`."""
        self._ran += 1
        self._ended_at = ended
        self._spacing_s = min(max(0.0, ended - started) * SPACING, MAX_SPACING_S)
        if self._turn is connection:
            self._turn = None
        self._arm(ended)

    def forget(self, connection: Paced) -> None:
        """forget: `connection` is gone; it waits no more, and a turn given to it passes."""
        if connection in self._address_of:
            address = self._address_of.pop(connection)
            queue = self._waiting[address]
            queue.remove(connection)
            if not queue:
                del self._waiting[address]
        if self._turn is connection:
            self._turn = None
        if not self._address_of and self._timer is not None:
            # Nobody waits for it: a timer left armed would give the next one to come its
            # turn when it fires, though a command that ran meanwhile spaced it further.
            self._timer.cancel()
            self._timer = None

    @property
    def waiting(self) -> int:
        return len(self._address_of)

    def _spaced(self, now: float) -> float:
        """_spaced: how long until the spacing after the last paced command has passed."""
        self._ended_at = min(self._ended_at, now)
        return self._ended_at + self._spacing_s - now

    def _arm(self, now: float) -> None:
        if self._address_of and self._timer is None and self._turn is None:
            self._timer = self._call_later(max(0.0, self._spaced(now)), self._give_turn)

    def _next(self) -> Paced:
        """_next takes the first connection of the address whose turn it is; that address
        goes to the back of the round."""
        address = next(iter(self._waiting))
        queue = self._waiting.pop(address)
        connection = queue.popleft()
        if queue:
            self._waiting[address] = queue
        del self._address_of[connection]
        return connection

    def _give_turn(self) -> None:
        """_give_turn: the next waiting connection (module's rules) that can run its
        command does."""
        self._timer = None
        while self._address_of and self._turn is None:
            connection = self._next()
            self._turn = connection
            ran = self._ran
            connection.take_pace_turn()  # runs its command: ran() ends the turn, arms the timer
            if self._ran != ran:
                return
            self._turn = None  # it could not run it (or went meanwhile): the next may, now
