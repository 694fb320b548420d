"""The one narrow interface between connections and the storage behind them.

Design decision: a connection knows exactly one call, `execute(command, now,
respond)`. It either raises a CommandError at once, or calls `respond(command,
result)` exactly once: at once, or later for a receive that waits. Such a
receive returns a handle the connection passes to `cancel` if it goes away
first. A command whose work grows with a queue's backlog and changes what is
stored (REDRIVE) is done a step at a time: a step that leaves work returns
UNFINISHED, and the connection calls `execute` again with the same Command
in a later turn of the event loop (the server's flush writes the steps'
records between turns). Done at once, a REDRIVE of 100,000 messages of 1 KB held the loop
for 2.1 s and the server's memory grew by 287 MiB: every move's record
carries the whole message, and they went out in one write
(bench/probes/redrive_stall.py). Everything about how messages are stored
sits behind this interface, so another backend (one on Redis, say) can stand
behind the same protocol by providing `execute`, `cancel`, `next_deadline`
and `advance`.

Rules:
* `respond` runs inside the call that produced the result (for a waiting
  receive: inside some other connection's put, or the timer). It must only
  encode and buffer the reply, never call back into the service.
* Results are plain values, except for receive and peek, whose result is
  the list of Message objects (codecs read their fields while encoding),
  and the batch commands (put_many, ack_many, nack_many), whose result has
  one entry per item: its value, or the CommandError that item met (the
  codecs encode it as that item's error; the request as a whole succeeded).
* A stepped command keeps its progress in its own args (`REDRIVE_PROGRESS`,
  a RedriveRun), so nothing is kept here for it, and nothing is left to undo
  if it is dropped mid-way: the steps done stay done. What it may move is
  fixed at its first step (RedriveRun), so messages that come back to the
  dead-letter queue while it runs (a consumer failing them again) cannot
  keep it going.
* AUTH is answered here too, by the server's TokenCheck (auth.py), so a
  connection still knows one call. Which commands a connection may send
  before it has authenticated is the connection's rule, not this module's.

Must not know: sockets, asyncio, wire formats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .auth import TokenCheck
from .broker import Broker
from .commands import SETTINGS, Command
from .errors import CommandError
from .message import Message
from .queues import Waiter

Respond = Callable[[Command, Any], None]


class Unfinished:
    """What `execute` returns for a command that did one step and must be called again."""

    __slots__ = ()


UNFINISHED = Unfinished()

# A REDRIVE step moves at most this many messages, or messages counting this many bytes
# (--max-memory's count: body, headers and overhead), and looks at no more than this
# many keys (those of messages that cannot go back count too): about a turn's work (a move
# is about 7 us) and a bounded journal write. Without the last, a step looked again at
# every message that had stayed: a reviewer's 20,000 ahead of 1,024 movable took
# 35-45 ms a step.
REDRIVE_STEP_MESSAGES = 256
REDRIVE_STEP_BYTES = 1 << 20
REDRIVE_STEP_LOOKS = 1024
# The args key of a REDRIVE under way: its RedriveRun (queue_admin.py).
REDRIVE_PROGRESS = "progress"


class BrokerService:
    def __init__(self, broker: Broker, server_info: Callable[[float], dict[str, Any]],
                 auth: TokenCheck | None = None,
                 steady_clock: Callable[[], float] | None = None) -> None:
        self.broker = broker
        # The clock the server samples the queues' rates by (Broker.sample_rates); without
        # one, rates are read at `now`, the time each call is given.
        self._steady_clock = steady_clock
        self._server_info = server_info
        self.auth = auth if auth is not None else TokenCheck(None)
        self._handlers: dict[str, Callable[[dict[str, Any], float], Any]] = {
            "put": self._put,
            "put_many": self._put_many,
            "ack": self._ack,
            "ack_many": self._ack_many,
            "nack": self._nack,
            "nack_many": self._nack_many,
            "touch": self._touch,
            "create_queue": self._create_queue,
            "configure_queue": self._configure_queue,
            "queue_info": self._queue_info,
            "queues": self._queues,
            "peek": self._peek,
            "purge": self._purge,
            "delete_queue": self._delete_queue,
            "message_info": self._message_info,
            "stats": self._stats,
            "ping": lambda args, now: "pong",
            "quit": lambda args, now: None,
            "auth": lambda args, now: self.auth.check(args["token"]),
        }
        # The server asks after every read: bound straight to the broker's answer.
        self.next_deadline: Callable[[], float | None] = broker.next_deadline

    def execute(self, command: Command, now: float,
                respond: Respond) -> Waiter | Unfinished | None:
        """execute carries out one command; see the module docstring for the contract."""
        if command.name == "receive":
            return self._receive(command, now, respond)
        if command.name == "redrive":
            return self._redrive_step(command, now, respond)
        respond(command, self._handlers[command.name](command.args, now))
        return None

    def cancel(self, handle: Waiter) -> None:
        """cancel withdraws a waiting receive whose connection went away."""
        self.broker.cancel_wait(handle)

    def advance(self, now: float, max_steps: int | None = None,
                max_moved_bytes: int | None = None) -> None:
        """advance handles the deadlines due at `now`, or a step of them (Broker.advance)."""
        self.broker.advance(now, max_steps, max_moved_bytes)

    # ------------------------------------------------------------- handlers

    def _receive(self, command: Command, now: float, respond: Respond) -> Waiter | None:
        a = command.args
        messages = self.broker.receive(a["queue"], a["max"], a["visibility"], now)
        if messages or not a["wait"]:
            respond(command, messages)
            return None
        return self.broker.wait(a["queue"], a["max"], a["visibility"], now + a["wait"],
                                lambda delivered: respond(command, delivered), now)

    def _put(self, a: dict[str, Any], now: float) -> int:
        return self.broker.put(a["queue"], a["body"], now, delay=a["delay"],
                               priority=a["priority"], headers=a["headers"],
                               expiry=a["expiry"])

    def _put_many(self, a: dict[str, Any], now: float) -> list[int | CommandError]:
        return self.broker.put_many(a["queue"], a["bodies"], now)

    def _ack(self, a: dict[str, Any], now: float) -> None:
        self.broker.ack(a["queue"], a["id"], a["lease"], now)

    def _ack_many(self, a: dict[str, Any], now: float) -> list[CommandError | None]:
        return self.broker.ack_many(a["queue"], a["items"], now)

    def _nack(self, a: dict[str, Any], now: float) -> None:
        self.broker.nack(a["queue"], a["id"], a["lease"], a["delay"], now, a["unseen"])

    def _nack_many(self, a: dict[str, Any], now: float) -> list[CommandError | None]:
        return self.broker.nack_many(a["queue"], a["items"], a["delay"], now, a["unseen"])

    def _touch(self, a: dict[str, Any], now: float) -> float:
        return self.broker.touch(a["queue"], a["id"], a["lease"], a["visibility"], now)

    def _create_queue(self, a: dict[str, Any], now: float) -> dict[str, Any]:
        return self.broker.create_queue(a["queue"], _settings_given(a), now)

    def _configure_queue(self, a: dict[str, Any], now: float) -> dict[str, Any]:
        return self.broker.configure_queue(a["queue"], _settings_given(a), now)

    def _queue_info(self, a: dict[str, Any], now: float) -> dict[str, Any]:
        return self.broker.queue_info(a["queue"], now, self._rates_now())

    def _queues(self, a: dict[str, Any], now: float) -> list[dict[str, Any]]:
        return self.broker.list_queues(now)

    def _peek(self, a: dict[str, Any], now: float) -> list[Message]:
        return self.broker.peek(a["queue"], a["max"])

    def _purge(self, a: dict[str, Any], now: float) -> int:
        return self.broker.purge(a["queue"], now)

    def _delete_queue(self, a: dict[str, Any], now: float) -> int:
        return self.broker.delete_queue(a["queue"], now)

    def _redrive_step(self, command: Command, now: float,
                      respond: Respond) -> Unfinished | None:
        """_redrive_step moves the next step of a REDRIVE (REDRIVE_STEP_*); UNFINISHED while
        it may have more to move, else it responds with the total moved. A dead-letter
        queue deleted between steps ends it there."""
        a = command.args
        run = a.get(REDRIVE_PROGRESS)
        if run is None:
            run = a[REDRIVE_PROGRESS] = self.broker.redrive_start(a["queue"], a["max"])
        if not self.broker.redrive_step(run, now, REDRIVE_STEP_MESSAGES, REDRIVE_STEP_BYTES,
                                        REDRIVE_STEP_LOOKS):
            return UNFINISHED
        respond(command, run.moved)
        return None

    def _message_info(self, a: dict[str, Any], now: float) -> dict[str, Any]:
        return self.broker.message_info(a["queue"], a["id"], now)

    def _stats(self, a: dict[str, Any], now: float) -> dict[str, Any]:
        return self.stats(now)

    def stats(self, now: float) -> dict[str, Any]:
        """stats is the `stats` command's map; the metrics endpoint reads it too."""
        broker_stats = self.broker.stats(now, self._rates_now())
        queues = broker_stats.pop("queues")
        return {"server": {**self._server_info(now), **broker_stats}, "queues": queues}

    def _rates_now(self) -> float | None:
        return None if self._steady_clock is None else self._steady_clock()


def _settings_given(a: dict[str, Any]) -> dict[str, Any]:
    """_settings_given: the queue settings a request names (None means not named)."""
    return {name: a[name] for name in SETTINGS if a[name] is not None}
