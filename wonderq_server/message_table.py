"""A queue's table of messages by id, with the backlog of plain messages kept in a run.

Design decision (issue 6, memory per message): a queue's messages used to
live in one dict of id -> Message or body, with every ready one's id also on
the ready heap. For the common backlog, plain messages put in order and not
yet delivered, that costs about 100 bytes beyond the body: an int object for
the id (48 bytes with the allocator's rounding), a dict entry with its share
of the hash table (about 42) and a heap slot (8). Here those messages live in
a *run*: an `array('q')` of their ids, increasing, and a list of their bodies
at the same positions; 16 bytes beyond the body and no object at all. The
run is also their ready order: ids grow with time, so its first live entry
is the oldest ready plain message, and `broker._take` merges it with the
ready heap, which now holds only what is not in the run.

Everything else (Messages, and a plain message whose id is not above the
run's last one, as a replay or restore may give) lives in a dict,
`others`, as before.

Rules:
* An id is in at most one of the two places. The run's ids strictly
  increase; a removed entry's body becomes None (a hole) and its id stays
  until the run is compacted, so positions never shift under a bisect.
* A message in the run is plain and READY. Turning it into a Message
  (`table[id] = msg`) moves it to `others`.
* `append_plain` adds to the run only when the id is above its last one;
  otherwise the body goes to `others` and the caller must push the id on
  the ready heap (the return value says which).
* The run is compacted (holes and taken entries cut out) when its dead
  entries outnumber its live ones, so its size stays within twice the
  number of messages it holds, plus a constant. A running server only takes
  from the head, so a compaction is then a cut in place (memmove), not a
  Python step per entry: it happens inside one receive.
* `oldest_id` (STATS, queue_info and metrics ask it for every queue) keeps
  `_oldest_bound`: None, or an id no greater than any id in the table. So
  when the bound is itself in the table, it is the oldest, found in O(1)
  rather than by a min() over `others`, which took 17 ms per call with a
  million messages there (leased, delayed or with a priority), holding the
  event loop each time. Every way an id enters the table lowers the bound
  if it is older (`__setitem__` for an id new to the table, `append_to_run`,
  `_extend`); a removal leaves it a bound, and the next call finds it gone
  and takes the min once. Writing `others[id]` directly is only for ids
  already in the table (a plain message becoming a Message) or fresh from
  the id sequence (above every id there is).
* Iteration (keys, values, items, ids_in_order) is in id order, the run
  merged with `others` sorted: compaction writes its snapshot in that order. The new
  file may still hold puts made during the compaction before the
  snapshot's older ids, so replay ends with `rebuild_run`, which moves the
  plain messages left in `others` into the run.

Must not know: message states beyond "plain", the ready heap, journals, clocks.
"""

from __future__ import annotations

import heapq
import operator
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

# A run is compacted only once it has this many dead entries (taken from its
# head or removed from the middle), so a queue that is drained one message at
# a time pays for one O(n) cut every n/2 messages, not one per message.
RUN_COMPACT_MIN_DEAD = 1024


class MessageTable(Mapping[int, Any]):
    __slots__ = ("_head", "_live", "_oldest_bound", "_run_bodies", "_run_ids", "others")

    def __init__(self) -> None:
        self.others: dict[int, Any] = {}
        self._run_ids = array("q")
        self._run_bodies: list[bytes | None] = []
        self._head = 0  # entries before it are dead
        self._live = 0  # entries of the run with a body
        self._oldest_bound: int | None = None  # no id in the table is older (oldest_id)

    # ------------------------------------------------------------ Mapping

    def __len__(self) -> int:
        return len(self.others) + self._live

    def __bool__(self) -> bool:
        return bool(self._live or self.others)

    def __getitem__(self, message_id: int) -> Any:
        value = self.others.get(message_id)
        if value is not None:
            return value
        index = self._run_index(message_id)
        if index < 0:
            raise KeyError(message_id)
        return self._run_bodies[index]

    def get(self, message_id: int, default: Any = None) -> Any:
        value = self.others.get(message_id)
        if value is not None:
            return value
        index = self._run_index(message_id)
        return default if index < 0 else self._run_bodies[index]

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.others or (
            type(message_id) is int and self._run_index(message_id) >= 0)

    def __iter__(self) -> Iterator[int]:
        for message_id, _ in self.items():
            yield message_id

    def ids_in_order(self) -> Iterator[int]:
        """ids_in_order is a snapshot of the ids, in id order, walked lazily (compaction
        writes it a slice at a time). It is taken at once: the run's ids as one array
        copy (a memcpy, dead entries included: a reader skips an id it no longer finds;
        one that moved to `others` is given once) and `others`' ids sorted. A walk of
        `items()` over a million messages would instead hold the event loop for about
        170 ms."""
        return _distinct(heapq.merge(self._run_ids[self._head:], sorted(self.others)))

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        for _, value in self.items():
            yield value

    def items(self) -> Iterator[tuple[int, Any]]:  # type: ignore[override]
        """items walks every message in id order: the run merged with `others` sorted
        (few, as a rule: Messages and out-of-order plain messages). The table must not
        change while it is walked; take a list first if it may."""
        others = self.others
        other_ids = sorted(others)
        count, at = len(other_ids), 0
        for message_id, body in self.plain_from_oldest():
            while at < count and other_ids[at] < message_id:
                yield other_ids[at], others[other_ids[at]]
                at += 1
            yield message_id, body
        for other_id in other_ids[at:]:
            yield other_id, others[other_id]

    # ------------------------------------------------------------ changes

    def __setitem__(self, message_id: int, value: Any) -> None:
        """Stores a Message (or a plain body) in `others`, taking the id out of the run."""
        if message_id not in self.others:
            index = self._run_index(message_id)
            if index >= 0:
                self._kill(index)
            else:  # new to the table: maybe older than the bound (a move, a replay)
                self._lower_bound(message_id)
        self.others[message_id] = value

    def __delitem__(self, message_id: int) -> None:
        if message_id in self.others:
            del self.others[message_id]
            return
        index = self._run_index(message_id)
        if index < 0:
            raise KeyError(message_id)
        self._kill(index)

    def append_plain(self, message_id: int, body: bytes) -> bool:
        """append_plain stores a plain message; True if it went into the run (its ready
        order is then the run's), False if into `others` (push it on the ready heap)."""
        if self.append_to_run(message_id, body):
            return True
        self[message_id] = body
        return False

    def append_to_run(self, message_id: int, body: bytes) -> bool:
        """append_to_run appends a plain message to the run if its id is new and above
        the run's last one; False (storing nothing) otherwise."""
        ids = self._run_ids
        if (not ids or message_id > ids[-1]) and message_id not in self.others:
            ids.append(message_id)
            self._run_bodies.append(body)
            self._live += 1
            bound = self._oldest_bound  # _lower_bound, inline: every put comes here
            if bound is not None and message_id < bound:
                self._oldest_bound = message_id
            return True
        return False

    def extend_run(self, ids: range, bodies: Sequence[bytes]) -> None:
        """extend_run appends plain messages whose ids are new and above every id in the
        table (fresh from the id sequence, as a put_many's are), in one step."""
        run_ids = self._run_ids
        if ids and run_ids and ids[0] <= run_ids[-1]:
            raise ValueError(f"ids from {ids[0]} are not above the run's last, {run_ids[-1]}")
        self._extend(ids, bodies)

    def extend_run_if_in_order(self, ids: Sequence[int], bodies: Sequence[bytes]) -> bool:
        """extend_run_if_in_order appends plain messages in one step if their ids rise,
        start above the run's last and are none of `others`' (replay's runs of PUTs
        mostly do); False, storing nothing, otherwise."""
        run_ids = self._run_ids
        if not ids or len(ids) != len(bodies) or (run_ids and ids[0] <= run_ids[-1]):
            return False
        if not all(map(operator.lt, ids, islice(ids, 1, None))):
            return False
        if self.others and any(map(self.others.__contains__, ids)):
            return False
        self._extend(ids, bodies)
        return True

    # ------------------------------------------------- the run's ready order

    @property
    def run_count(self) -> int:
        """run_count is how many messages the run holds (all plain and READY)."""
        return self._live

    def first_plain_id(self) -> int | None:
        """first_plain_id is the id of the run's oldest message, or None when it is empty."""
        if not self._live:
            return None
        return self._run_ids[self._live_head()]

    def take_first_plain(self) -> tuple[int, bytes]:
        """take_first_plain removes the run's oldest message and returns (id, body).
        The caller stores it again (as a Message) if it keeps it."""
        if not self._live:
            raise KeyError("the run is empty")
        head = self._live_head()
        bodies = self._run_bodies
        message_id, body = self._run_ids[head], bodies[head]
        bodies[head] = None
        self._head = head + 1
        self._live -= 1
        self._compact_if_mostly_dead()
        return message_id, body  # type: ignore[return-value]

    def take_first_plain_many(self, count: int) -> tuple[list[int], list[bytes]]:
        """take_first_plain_many removes up to `count` of the run's oldest messages, as
        that many take_first_plain calls would, and returns their ids and bodies. A
        stretch without holes (a consumer takes from the head, so it usually is one)
        goes in three slices instead of a Python step per message."""
        count = min(count, self._live)
        if not count:
            return [], []
        bodies, head = self._run_bodies, self._live_head()
        stop = head + count
        taken_bodies = bodies[head:stop]
        if None in taken_bodies:  # holes: one at a time
            taken = [self.take_first_plain() for _ in range(count)]
            return [pair[0] for pair in taken], [pair[1] for pair in taken]
        taken_ids = self._run_ids[head:stop].tolist()
        bodies[head:stop] = [None] * count
        self._head = stop
        self._live -= count
        self._compact_if_mostly_dead()
        return taken_ids, taken_bodies  # type: ignore[return-value]

    def plain_from_oldest(self) -> Iterator[tuple[int, bytes]]:
        """plain_from_oldest walks the run's (id, body) pairs, oldest first (for peek)."""
        ids, bodies = self._run_ids, self._run_bodies
        for index in range(self._head, len(ids)):
            body = bodies[index]
            if body is not None:
                yield ids[index], body

    def oldest_id(self) -> int | None:
        """oldest_id is the smallest id in the table, or None when it is empty: the
        bound when it is still here (see the rules), else found and kept as the bound."""
        bound = self._oldest_bound
        if bound is not None and bound in self:
            return bound
        first_plain = self.first_plain_id()
        if not self.others:
            oldest = first_plain
        else:
            first_other = min(self.others)
            oldest = first_other if first_plain is None else min(first_plain, first_other)
        self._oldest_bound = oldest
        return oldest

    # ------------------------------------------------------------- inside

    def _run_index(self, message_id: int) -> int:
        """_run_index is the position of a live run entry with this id, or -1."""
        ids = self._run_ids
        if not self._live or message_id > ids[-1] or message_id < ids[self._head]:
            return -1
        index = bisect_left(ids, message_id, self._head)
        if ids[index] == message_id and self._run_bodies[index] is not None:
            return index
        return -1

    def _lower_bound(self, message_id: int) -> None:
        """_lower_bound: `message_id` has entered the table; the bound must not be newer."""
        if self._oldest_bound is not None and message_id < self._oldest_bound:
            self._oldest_bound = message_id

    def _extend(self, ids: Sequence[int], bodies: Sequence[bytes]) -> None:
        if ids:
            self._lower_bound(ids[0])  # the smallest: callers give rising ids
        self._run_ids.extend(ids)
        self._run_bodies.extend(bodies)
        self._live += len(bodies)

    def _live_head(self) -> int:
        """_live_head moves the head past dead entries to the oldest live one and
        returns its position; the run must hold one."""
        bodies, head = self._run_bodies, self._head
        while bodies[head] is None:
            head += 1
        self._head = head
        return head

    def _kill(self, index: int) -> None:
        self._run_bodies[index] = None
        self._live -= 1
        if index == self._head:
            self._head += 1
        self._compact_if_mostly_dead()

    def _compact_if_mostly_dead(self) -> None:
        dead = len(self._run_ids) - self._live
        if dead >= RUN_COMPACT_MIN_DEAD and dead > self._live:
            self._compact()

    def _compact(self) -> None:
        """_compact cuts the dead entries out of the run, keeping its order."""
        ids, bodies, head = self._run_ids, self._run_bodies, self._head
        if self._live == len(ids) - head:
            # Dead entries only before the head: what a running server leaves, since it
            # takes from the head only. Two memmoves, not a Python step per entry: a
            # backlog of a million drained at the rate it is fed is cut in place in
            # about 10 ms instead of about 200 ms, all within one receive.
            del ids[:head]
            del bodies[:head]
        else:  # holes in the middle too (a replay's records took them out)
            keep = [index for index in range(head, len(ids)) if bodies[index] is not None]
            self._run_ids = array("q", [ids[index] for index in keep])
            self._run_bodies = [bodies[index] for index in keep]
        self._head = 0

    def rebuild_run(self) -> bool:
        """rebuild_run moves every plain message of `others` into the run, in id order;
        True if it moved any (their ready-heap entries are then stale: the caller
        rebuilds the heap). Replay calls it once at the end: a journal whose PUTs are
        out of id order (a compaction writes its snapshot after the live records of
        puts made meanwhile) would otherwise leave most of a backlog in `others`."""
        others = self.others
        plain = sorted(message_id for message_id, value in others.items()
                       if type(value) is bytes)
        if not plain:
            return False
        new_ids: array[int] = array("q")
        new_bodies: list[bytes | None] = []
        add_id, add_body = new_ids.append, new_bodies.append
        at, count = 0, len(plain)
        for message_id, body in self.plain_from_oldest():  # a merge of two sorted lists
            while at < count and plain[at] < message_id:
                add_id(plain[at])
                add_body(others.pop(plain[at]))
                at += 1
            add_id(message_id)
            add_body(body)
        for message_id in plain[at:]:
            add_id(message_id)
            add_body(others.pop(message_id))
        self._run_ids, self._run_bodies = new_ids, new_bodies
        self._head, self._live = 0, len(new_bodies)
        return True


def _distinct(ids: Iterator[int]) -> Iterator[int]:
    """_distinct drops repeats from increasing ids (an id both dead in the run and in
    `others`)."""
    last = None
    for message_id in ids:
        if message_id != last:
            yield message_id
            last = message_id
