"""One stored message and the states it moves through.

Design decision: a message is a small `__slots__` object that lives in its
queue's table from put until ack. Its state says which of the queue's
structures is responsible for it:

    READY    in the queue's ready heap, handed out oldest first
    LEASED   held by one consumer until `deadline_at` (in the deadline heap)
    DELAYED  invisible until `deadline_at` (in the deadline heap)

Rules:
* `lease` is the token of the latest delivery. It survives the lease running
  out, so a late ack succeeds until the message is delivered again; a new
  delivery replaces it, which is what makes every older lease stale.
* `deadline_at` is set exactly while the message is LEASED or DELAYED and is
  None otherwise; the deadline heap treats an entry as live only while it
  matches (see deadlines.py).
* `deliveries` counts deliveries, 0 before the first.

Must not know: wire formats, sockets, clocks.
"""

from __future__ import annotations

from typing import Any

READY = 0
LEASED = 1
DELAYED = 2
DELETED = 3

STATE_NAMES = {READY: "ready", LEASED: "leased", DELAYED: "delayed", DELETED: "deleted"}


class Message:
    __slots__ = ("body", "deadline_at", "deliveries", "enqueued_at", "id", "lease", "queue",
                 "state")

    def __init__(self, message_id: int, body: bytes, enqueued_at: float, queue: Any) -> None:
        self.id = message_id
        self.body = body
        self.enqueued_at = enqueued_at
        self.queue = queue
        self.state = READY
        self.deliveries = 0
        self.lease: int | None = None
        self.deadline_at: float | None = None

    def __repr__(self) -> str:
        return (f"Message(id={self.id}, state={STATE_NAMES[self.state]}, "
                f"deliveries={self.deliveries}, lease={self.lease})")
