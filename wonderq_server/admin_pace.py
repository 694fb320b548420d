"""Pacing of the commands whose cost grows with the number of queues (STATS, QUEUES).

Design decision: STATS builds a map of every queue (about 4 µs a queue,
and its text form 7 µs more), so with 10,000 queues one STATS holds the
event loop for 40 to 150 ms, and a client looping it (or ten monitoring
scripts) left every other client waiting: a reviewer measured a polite
PING's median round trip at 51-154 ms. Fair turns (connection_limits.py)
cannot cut a single command short. So such commands share a budget of the
loop's time instead: after one that took `cost` seconds, the next one, from
any connection, starts no sooner than `cost * SPACING` seconds after it
ended, which keeps them to 1 / (1 + SPACING) of the loop (a fifth) however
many clients ask. A command that must wait is held with everything its
connection sent after it (replies stay in order), and runs when its turn
comes; it then reports what is true at that moment, after every request its
connection sent before it, so a client still reads its own writes.

With a few queues a STATS takes well under a millisecond, so the spacing is
too short to notice; Redis' INFO and CLIENT LIST are O(n) too, and simply
run. Nothing here reads a clock: the connection passes the times in.

Rules:
* `wait(now)` is how long a paced command arriving at `now` must wait (0:
  run it now); `ran(started, ended)` records one that ran.
* A clock that steps back cannot stall them: a wait is never longer than
  the spacing of the last command.
* The wait is also never more than MAX_WAIT_S, so a huge STATS (100,000
  queues) is answered within seconds, even if that takes more than a fifth
  of the loop.
"""

from __future__ import annotations

# Commands whose cost grows with the number of queues.
PACED_COMMANDS = frozenset({"stats", "queues"})

# After a paced command that took `cost`, the next waits until `cost * SPACING` after it
# ended: such commands take at most 1 / (1 + SPACING) of the loop.
SPACING = 4.0
MAX_WAIT_S = 2.0


class AdminPace:
    """AdminPace spaces out the server's paced commands (the module's rules)."""

    __slots__ = ("_ended_at", "_spacing_s", "paced")

    def __init__(self) -> None:
        self._ended_at = 0.0
        self._spacing_s = 0.0
        self.paced = 0  # commands that had to wait, since start (stats)

    def wait(self, now: float) -> float:
        """wait: seconds a paced command arriving at `now` must wait; 0 to run it now."""
        left = self._ended_at + self._spacing_s - now
        if left <= 0:
            return 0.0
        return min(left, self._spacing_s, MAX_WAIT_S)

    def ran(self, started: float, ended: float) -> None:
        """ran records a paced command that ran from `started` to `ended`."""
        self._ended_at = ended
        self._spacing_s = max(0.0, ended - started) * SPACING
