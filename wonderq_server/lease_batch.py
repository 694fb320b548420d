"""A lease batch: one deadline-heap entry for the messages one receive leased together.

Design decision (issue 6, S4c): a receive of 100 messages leases them all
until the same instant. With one heap entry per message, a batch consumer
paid 100 heap pushes per receive, and after its ack_many 100 stale entries
for the server's timer to pop (`next_at`): about 17% of the server's time
per message, in a profile of receive(100) + ack_many(100). A LeaseBatch is
one entry standing for all of them, so a batch costs one push and, once
acked, one pop.

Rules:
* A member is *pending* in its batch while `msg.lease_batch is batch`. Its
  own `deadline_at` is still set (to the batch's), so everything that reads
  a message's deadline (touch, stats, the journal) sees no difference.
* Whatever ends a member's lease or moves its deadline (ack, nack, touch,
  a move, purge: the broker's `_detach`) clears `msg.lease_batch` and
  counts it out: `pending -= 1`, then `settle()` once `pending` is down to
  `look_at`. (Written out in `_detach` rather than as a method here: it runs
  for every message a batch consumer acks.) The message then has no entry
  of its own until it gets a new deadline, as for any detached message.
* The batch follows the heap's liveness rule (deadlines.py): it is live
  while `deadline_at` equals the time it was pushed with. When its last
  member leaves, `settle` sets `deadline_at` to None and answers True: the
  caller tells the heap, once, that one entry went stale (`forget`).
* When the entry pops, the broker handles the pending members in the order
  they were leased, which is the order separate entries pushed one after
  another would have popped in.
* Members that left are dropped from `members` (`settle`) once they are
  three in four, so a batch with one slow member does not keep 99 acked
  messages alive until its deadline: a batch holds at most about four
  times its pending members, or MEMBERS_COMPACT_MIN.

Must not know: queues, the heap, clocks.
"""

from __future__ import annotations

from typing import Any

# Below this many members a batch is not worth filtering as members leave.
MEMBERS_COMPACT_MIN = 8


class LeaseBatch:
    __slots__ = ("deadline_at", "look_at", "members", "pending")

    def __init__(self, deadline_at: float) -> None:
        """A batch is made before its members (each points to it as it is leased), then
        `seal`ed with them."""
        self.deadline_at: float | None = deadline_at
        self.members: list[Any] = []  # the messages, in the order they were leased
        self.pending = 0
        self.look_at = 0

    def seal(self, members: list[Any]) -> None:
        """seal: these are the members, each already pointing to this batch."""
        self.members = members
        self.pending = len(members)
        self.look_at = self._next_look()

    def _next_look(self) -> int:
        """_next_look: the count of pending members at which `settle` must run next: none
        left, or few enough that filtering `members` is worth it."""
        if len(self.members) <= MEMBERS_COMPACT_MIN:
            return 0
        return len(self.members) // 4

    def settle(self) -> bool:
        """settle: `pending` has come down to `look_at`. Lets go of the members that left,
        or of all of them when none is pending; True when the heap entry just went stale."""
        if self.pending:
            self.members = [m for m in self.members if m.lease_batch is self]
            self.look_at = self._next_look()
            return False
        self.members = []
        self.look_at = -1  # no member is left to leave
        if self.deadline_at is not None:
            self.deadline_at = None
            return True
        return False

    def pending_members(self) -> list[Any]:
        """pending_members: the members still leased under this batch, in lease order."""
        return [m for m in self.members if m.lease_batch is self]
