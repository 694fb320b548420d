"""A lease batch: one deadline-heap entry for the messages one receive leased together.

Design decision (issue 6, S4c): a receive of 100 messages leases them all
until the same instant. With one heap entry per message, a batch consumer
paid 100 heap pushes per receive, and after its ack_many 100 stale entries
for the server's timer to pop (`next_at`): about 17% of the server's time
per message, in a profile of receive(100) + ack_many(100). A LeaseBatch is
one entry standing for all of them, so a batch costs one push and, once
acked, one pop. Every receive of two or more messages leases them under one
(`Broker._push_leases`): a slice of the backlog's run, and messages taken
one by one off the ready heap (priorities, redeliveries) alike.

`members` maps id to message for the members still pending, in the order
they were leased (a dict keeps insertion order). A member that leaves is
deleted from it at once, so a batch holds exactly its pending members: a
batch with one slow member keeps no acked message alive until its deadline.

Rules:
* A member is *pending* in its batch while `msg.lease_batch is batch`, and
  then it is in `members`. Its own `deadline_at` is still set (to the
  batch's), so everything that reads a message's deadline (touch, stats,
  the journal) sees no difference.
* Whatever ends a member's lease or moves its deadline (ack, nack, touch,
  a move, purge: the broker's `_detach`) clears `msg.lease_batch` and
  calls `leave`. The message then has no entry of its own until it gets a
  new deadline, as for any detached message.
* The batch follows the heap's liveness rule (deadlines.py): it is live
  while `deadline_at` equals the time it was pushed with. When its last
  member leaves, `leave` sets `deadline_at` to None and answers True: the
  caller tells the heap, once, that one entry went stale (`forget`). Once
  popped (`deadline_at` None), leaving answers False.
* A member leased or delayed before may still have entries of its own in
  the heap, one even due at the very time its batch is. While it is
  pending they are all stale (deadlines.py: it has handed its deadline
  over); if one pops, the broker skips it (`Broker.advance`), and the lease
  ends with the batch, once.
* When the entry pops, the broker handles the pending members in the order
  they were leased, which is the order separate entries pushed one after
  another would have popped in; every one of them, even if ending one
  raises (a bug): the entry is gone, and a member skipped would stay leased
  for ever (`Broker._batch_deadline_passed`).

Must not know: queues, the heap, clocks.
"""

from __future__ import annotations

from typing import Any


class LeaseBatch:
    __slots__ = ("deadline_at", "members")

    def __init__(self, deadline_at: float) -> None:
        """A batch is made before its members (each points to it as it is leased); the
        broker fills `members` once they are."""
        self.deadline_at: float | None = deadline_at
        self.members: dict[int, Any] = {}  # id -> message, pending ones, in lease order

    def leave(self, message_id: int) -> bool:
        """leave: a member's lease ended or moved (it has cleared its `lease_batch`).
        True when it was the last one and the batch's heap entry just went stale."""
        members = self.members
        del members[message_id]
        if members or self.deadline_at is None:
            return False
        self.deadline_at = None
        return True
