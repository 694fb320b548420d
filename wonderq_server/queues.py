"""A named queue: its messages, its ready order, its waiting consumers.

Design decision: a queue owns three structures and keeps counts beside them
so that stats never walk a structure:

* `messages`: a MessageTable (message_table.py) of id -> Message, or the
  body (`bytes`) of a plain message (message.py), for every message not yet
  acked, in any state. Plain is the form of nearly every message waiting in
  a backlog: no object of its own, and most of them sit in the table's run,
  an array of ids beside a list of bodies, which is also their ready order.
* `ready`: a min-heap of the ready keys (message.py) of the ready messages
  that are not in the run: lower priority first, then lower id. Ids grow
  with time, so within a priority the oldest message comes first; a message
  whose lease ran out goes back in under its own key and so is handed out
  before newer ones (it is not starved). The broker takes from whichever of
  heap and run has the smaller key (a plain message's key is its id).
* `waiters`: long-polling receives, first come first served.

A queue also has its settings (queue_settings.py) and `explicit`: made by
create_queue or configure_queue (journaled, kept while empty) rather than on
first use (not journaled; an empty one is gone after a restart).

Rules:
* The ready heap deletes lazily: a key whose message is gone or no longer
  READY is skipped when it reaches the top. A plain message is always READY,
  and its key is its id; one in the table's run has no heap entry at all.
  `ready_count` is the truth about how many messages are ready (heap and
  run), never `len(ready)`.
* Invariant kept by the broker after every operation: a queue never has both
  a ready message and a live waiter. Waiters are served the moment a message
  becomes ready.

Must not know: the deadline heap, wire formats, clocks.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import INVALID_QUEUE_NAME, CommandError
from .message_table import MessageTable
from .queue_settings import DEFAULT_SETTINGS, QueueSettings
from .rates import RateWindow

if TYPE_CHECKING:
    from .message import Message

QUEUE_NAME_MAX_LENGTH = 128
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1," + str(QUEUE_NAME_MAX_LENGTH) + "}")


# Names seen valid, so that the regular expression runs once per name rather
# than once per request; cleared when it reaches its bound.
VALID_NAMES: set[str] = set()
VALID_NAMES_CACHED = 4096


def _shown_name(name: object) -> str:
    """_shown_name: a refused name, quoted whole when short, else its start, an ellipsis
    and its length (a cut quote without its end hid that it was too long)."""
    if not isinstance(name, str):
        return f"{name!r:.60}"
    if len(name) <= 60:
        return repr(name)
    return f"{name[:40]!r}… ({len(name)} characters)"


def check_queue_name(name: object) -> str:
    """check_queue_name returns a valid queue name as it is; else INVALID_QUEUE_NAME."""
    if type(name) is str and name in VALID_NAMES:
        return name
    if not isinstance(name, str) or _QUEUE_NAME.fullmatch(name) is None:
        raise CommandError(
            INVALID_QUEUE_NAME,
            f"queue names are 1-{QUEUE_NAME_MAX_LENGTH} characters of A-Z a-z 0-9 _ - . "
            f"(got {_shown_name(name)})",
        )
    if len(VALID_NAMES) >= VALID_NAMES_CACHED:
        VALID_NAMES.clear()
    VALID_NAMES.add(name)
    return name


class Waiter:
    """A parked long-polling receive. `deliver` is called exactly once, unless cancelled.

    `deliver(messages)` gets the leased messages, or an empty list when the
    wait ran out or its consumer has gone. `gone`, when its connection sets
    it, is asked just before messages would be leased to the waiter: True
    means nobody will read them (peer_state.py), and the waiter is answered
    with nothing instead. `visibility_s` is the receive's own lease length, or None
    for the queue's setting at the moment messages are leased to it.
    """

    __slots__ = ("deadline_at", "deliver", "done", "gone", "max_messages", "queue",
                 "visibility_s")

    def __init__(self, queue: Queue, max_messages: int, visibility_s: float | None,
                 deadline_at: float, deliver: Callable[[list[Message]], None]) -> None:
        self.queue = queue
        self.max_messages = max_messages
        self.visibility_s = visibility_s
        self.deadline_at: float | None = deadline_at
        self.deliver = deliver
        self.done = False
        self.gone: Callable[[], bool] | None = None


class Queue:
    __slots__ = ("acked_total", "body_bytes", "dead_lettered_total", "dead_waiters",
                 "delayed_count", "ever_held", "expired_total", "explicit", "leased_count",
                 "messages", "name", "put_total", "rates", "ready", "ready_count",
                 "redelivered_total", "settings", "waiters")

    def __init__(self, name: str, settings: QueueSettings = DEFAULT_SETTINGS,
                 explicit: bool = False) -> None:
        self.name = name
        self.settings = settings
        self.explicit = explicit
        self.ever_held = False  # a message was stored in it (broker._forget_if_unused)
        self.messages = MessageTable()
        self.ready: list[int] = []
        self.waiters: deque[Waiter] = deque()
        self.dead_waiters = 0
        self.ready_count = 0
        self.leased_count = 0
        self.delayed_count = 0
        self.put_total = 0
        self.acked_total = 0
        self.body_bytes = 0  # sum of the stored messages' body sizes
        self.redelivered_total = 0
        self.dead_lettered_total = 0  # moved out to the dead-letter queue
        self.expired_total = 0
        self.rates = RateWindow()

    def totals(self) -> tuple[int, int, int]:
        """totals are the counters whose rates stats shows (rates.py)."""
        return self.put_total, self.acked_total, self.redelivered_total

    def is_full(self) -> bool:
        max_length = self.settings.max_length
        return bool(max_length) and len(self.messages) >= max_length

    def live_waiters(self) -> int:
        return len(self.waiters) - self.dead_waiters

    def next_waiter(self) -> Waiter | None:
        """next_waiter removes and returns the longest-waiting live waiter, or None."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done:
                return waiter
            self.dead_waiters -= 1
        return None

    def waiter_gone(self) -> None:
        """waiter_gone notes that a queued waiter finished without being popped.

        Dead waiters stay in the deque (removing from the middle is O(n)) until
        they make up half of it; then the deque is rebuilt, so a queue that
        never gets messages cannot collect timed-out waits without bound.
        """
        self.dead_waiters += 1
        if self.dead_waiters * 2 > len(self.waiters):
            self.waiters = deque(w for w in self.waiters if not w.done)
            self.dead_waiters = 0
