"""One stored message and the states it moves through.

Design decision: a message is a small `__slots__` object that lives in its
queue's table from put until ack (unless it is plain, below). Its state says
which of the queue's structures is responsible for it:

    READY    in the queue's ready heap, handed out oldest first
    LEASED   held by one consumer until `deadline_at` (in the deadline heap)
    DELAYED  invisible until `deadline_at` (in the deadline heap)
    DELETED  acked, expired, purged or deleted with its queue; in no structure

Options a put may give: `priority` (lower first, 0 by default), `headers` (a
dict of str to str, or None), and an expiry, kept as an `ExpiryTimer` in the
deadline heap beside any lease or delay. A message moved to a dead-letter
queue carries `origin`: (the queue it came from, when it was moved).

Design decision (issue 6, memory per message): most messages are *plain*:
put without options and never delivered yet. A plain message is not an
object of its own: the queue's table holds its body, the `bytes` itself,
under its id (message_table.py; most sit in the table's run, without even
an id object). That saves a Message object (about 120 bytes)
for each of the millions of messages a backlog may hold. A
plain message becomes a Message ("materialized", `materialize` below, which
replaces the table's value) the first time something must change it or hand
it out: a lease, a restore of its state, a move. `view` makes a throwaway
Message for code that only reads one (peek, message_info).

Rules:
* A plain message (a `bytes` value in a queue's table) is READY, never
  delivered (deliveries 0, no lease), priority 0, with no headers, no expiry,
  no delay and no origin. Anything else is a Message. A Message never turns
  back into a plain message.
* Code that reads a queue's table handles both forms; `type(value) is bytes`
  tells them apart (bodies are stored as exact `bytes`, never a subclass).
* `enqueued_at` is not stored: it is the time in the message's id (ids.py),
  to the millisecond, for plain messages and Messages alike.
* `lease` is the token of the latest delivery. It survives the lease running
  out, so a late ack succeeds until the message is delivered again; a new
  delivery replaces it, which is what makes every older lease stale.
* `deadline_at` is set exactly while the message is LEASED or DELAYED and is
  None otherwise; the deadline heap treats an entry as live only while it
  matches (see deadlines.py).
* A message leased together with others by one receive may have no heap
  entry of its own: `lease_batch` is then the LeaseBatch whose one entry
  stands for all of them (lease_batch.py); None otherwise.
* `deliveries` counts deliveries, 0 before the first.
* A message's place in its queue's ready heap is `ready_key`: its id when
  its priority is 0, else `(priority << PRIORITY_SHIFT) + id`. Ids are below
  2**62 (until the year 2109), so keys order by priority, then id, and
  `key & ID_MASK` gives the id back for any priority, negative ones too.

Must not know: wire formats, sockets, clocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typed, so a compiled build reaches their fields directly
    from .lease_batch import LeaseBatch
    from .queues import Queue

from .ids import MILLISECOND_SHIFT

READY = 0
LEASED = 1
DELAYED = 2
DELETED = 3

STATE_NAMES = {READY: "ready", LEASED: "leased", DELAYED: "delayed", DELETED: "deleted"}


PRIORITY_SHIFT = 62
ID_MASK = (1 << PRIORITY_SHIFT) - 1
DEFAULT_PRIORITY = 0
# What one stored message counts against --max-memory beyond its body and
# headers, plain or not: a fixed figure (its id, its table and heap entries,
# a Message once it has one), so the same messages always give the same answer.
MESSAGE_OVERHEAD_BYTES = 200
# What a message's headers count beyond their UTF-8 sizes: the dict, and per header
# its two str objects and its slot. Measured with tracemalloc on headers as msgpack
# decodes them: 1 to 32 headers of 1 to 30 characters took 128 + 64 per header + their
# sizes, within 15%. Counted by their sizes alone, 32 empty headers took 4.4 times what
# they counted (an operator's review), so --max-memory did not bound them.
HEADERS_DICT_BYTES = 128
HEADER_ENTRY_BYTES = 64


class Message:
    __slots__ = ("body", "deadline_at", "deliveries", "expiry", "headers", "id",
                 "kept_lease", "lease", "lease_batch", "origin", "priority", "queue", "state")

    def __init__(self, message_id: int, body: bytes, queue: Queue,
                 priority: int = DEFAULT_PRIORITY,
                 headers: dict[str, str] | None = None) -> None:
        self.id = message_id
        self.body = body
        self.queue = queue
        self.state = READY
        self.deliveries = 0
        self.lease: int | None = None
        self.deadline_at: float | None = None
        # The LeaseBatch whose heap entry holds its deadline (lease_batch.py), or None.
        self.lease_batch: LeaseBatch | None = None
        self.priority = priority
        self.headers = headers
        self.expiry: ExpiryTimer | None = None
        self.origin: tuple[str, float] | None = None  # (queue, moved_at) after dead-lettering
        # A lease that can only ack (a late ack), nothing else, while `lease` is None: the
        # lease of a delivery a nack ended, or of the one whose end dead-lettered it (then
        # naming the origin queue too). broker.py's rules.
        self.kept_lease: int | None = None

    @property
    def enqueued_at(self) -> float:
        """enqueued_at is when the message was put: the time in its id, to the millisecond."""
        return (self.id >> MILLISECOND_SHIFT) / 1000.0  # id_time's sum, without its call

    @property
    def ready_key(self) -> int:
        if self.priority == DEFAULT_PRIORITY:
            return self.id
        return (self.priority << PRIORITY_SHIFT) + self.id

    @property
    def expires_at(self) -> float | None:
        return self.expiry.expires_at if self.expiry is not None else None

    def header_bytes(self) -> int:
        """header_bytes is what the headers count against --max-memory: their UTF-8 sizes
        and what their objects take (HEADERS_DICT_BYTES, HEADER_ENTRY_BYTES)."""
        if not self.headers:
            return 0
        return HEADERS_DICT_BYTES + sum(HEADER_ENTRY_BYTES + len(k.encode()) + len(v.encode())
                                        for k, v in self.headers.items())

    def __repr__(self) -> str:
        return (f"Message(id={self.id}, state={STATE_NAMES[self.state]}, "
                f"deliveries={self.deliveries}, lease={self.lease})")


def materialize(messages: Any, message_id: int, body: bytes, queue: Queue) -> Message:
    """materialize turns the plain message `message_id` (its body is `body`) into a READY
    Message in its queue's table (a MessageTable), under the same id."""
    msg = messages[message_id] = Message(message_id, body, queue)
    return msg


def view(message_id: int, stored: Message | bytes, queue: Queue) -> Message:
    """view is a message as a Message for reading only: the Message itself, or for a
    plain message a throwaway one (READY, no lease) that is never stored."""
    if isinstance(stored, Message):
        return stored
    return Message(message_id, stored, queue)


class ExpiryTimer:
    """The deadline-heap item for a message's expiry (a message has one deadline of its own,
    its lease or delay, so its expiry needs a second item). `deadline_at` follows the heap's
    liveness rule; `expires_at` stays after the timer has fired."""

    __slots__ = ("deadline_at", "expires_at", "message")

    def __init__(self, message: Message, expires_at: float) -> None:
        self.message = message
        self.expires_at = expires_at
        self.deadline_at: float | None = expires_at
