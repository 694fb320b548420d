"""The deadline heap: one min-heap of every timed event in the broker.

Design decision: a single heap holds every deadline the broker has (lease
expiries, delayed messages becoming ready, long-poll waits running out), so
the server needs exactly one timer, armed at `next_at()`. Nothing here knows
what a deadline means; the owner decides when popped.

Rules (the lazy-deletion scheme of asyncio's own timer heap):
* An entry is `(at, seq, item)`. `seq` is a counter that breaks ties, so two
  entries with the same `at` pop in the order they were pushed and items
  never have to be comparable.
* Entries are never removed from the middle. An entry is *live* only while
  `item.deadline_at == at`; whoever cancels or moves a deadline just changes
  `item.deadline_at` (to None or a new time) and calls `forget()`. A stale
  entry is skipped when it reaches the top.
* When more than half of the heap is known dead (and the heap is bigger than
  `COMPACT_MIN_SIZE`), it is rebuilt from its live entries, so cancelled
  leases cannot pile up without bound.
* An item moved back to a deadline it had before makes its older entry live
  again, so one item can have several live entries. The rebuild keeps only
  the first of them to pop; the owner clears `deadline_at` when it handles
  the item, so the others would have been skipped anyway.
* An item may hand its deadline over to another item's entry: a lease
  batch's pending member (its `lease_batch` is set, lease_batch.py) is due
  when its batch is. Its own entries are then all stale, even one whose
  time equals the batch's. `_rebuild` drops them; `pop_due` and `next_at`
  read one attribute per entry, the timer's path, and leave them to the
  owner, who skips such an item when popped and says so (`revived`: it was
  counted dead when it went stale).

Must not know: queues, messages, clocks. `at` is whatever number the owner
uses for time.
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol

# Below this size a rebuild costs more than the dead entries do. A batch consumer
# (receive 100, ack 100) leaves about 100 entries, mostly dead, after every batch:
# at 64 that was two rebuilds per batch, about 10% of its server-side time
# (bench/probes/batch_path.py); dead entries at the top go anyway as the server's
# timer looks at next_at().
COMPACT_MIN_SIZE = 1024
# Rebuild once more than this fraction of the entries is dead.
COMPACT_DEAD_FRACTION = 0.5


class Timed(Protocol):
    deadline_at: float | None


class DeadlineHeap:
    __slots__ = ("_dead", "_entries", "_min_size", "_seq")

    def __init__(self, compact_min_size: int = COMPACT_MIN_SIZE) -> None:
        self._min_size = compact_min_size  # tests of the rebuild rule use a smaller one
        self._entries: list[tuple[float, int, Any]] = []
        self._seq = 0
        self._dead = 0

    def __len__(self) -> int:
        """Number of entries, live or dead (for stats and tests)."""
        return len(self._entries)

    def push(self, at: float, item: Timed) -> None:
        """push records that `item` is due at `at`; the caller has set item.deadline_at = at."""
        self._seq += 1
        heapq.heappush(self._entries, (at, self._seq, item))

    def push_first(self, at: float, item: Timed) -> None:
        """push_first is push, but the entry comes before every other due at `at`: for an
        item handled in part and due again at once (a lease batch a step cut:
        Broker.advance), whose place among them it keeps. Every entry pushed before it
        for `at` has been taken already, so ahead of those pushed since is its place."""
        self._seq += 1
        heapq.heappush(self._entries, (at, -self._seq, item))

    def revived(self) -> None:
        """revived: `pop_due` just returned an entry the owner found stale after all (an
        item that handed its deadline over, see the rules); it was counted dead when it
        went stale, and is gone now."""
        self._dead = max(0, self._dead - 1)

    def forget(self) -> None:
        """forget notes that one entry went stale, and rebuilds when too many have."""
        self._dead += 1
        size = len(self._entries)
        if size > self._min_size and self._dead > size * COMPACT_DEAD_FRACTION:
            self._rebuild()

    def _rebuild(self) -> None:
        """_rebuild keeps one entry per live item, the one that pops first.

        Keeping one per item (not every entry that matches) is what bounds the
        heap when several items are moved again and again to the same instant:
        their older entries all match, and would otherwise survive every
        rebuild. Pop order is unchanged, since the first entry is the one kept.
        An item that has handed its deadline over keeps none (see the rules).
        """
        first: dict[int, tuple[float, int, Any]] = {}
        for entry in self._entries:
            at, seq, item = entry
            if item.deadline_at == at and getattr(item, "lease_batch", None) is None:
                kept = first.setdefault(id(item), entry)
                if seq < kept[1]:
                    first[id(item)] = entry
        self._entries = list(first.values())
        heapq.heapify(self._entries)
        self._dead = 0

    def next_at(self) -> float | None:
        """next_at is the earliest live deadline, or None when nothing is due ever."""
        entries = self._entries
        while entries:
            at, _, item = entries[0]
            if item.deadline_at == at:
                return at
            heapq.heappop(entries)
            self._dead = max(0, self._dead - 1)
        return None

    def pop_due(self, now: float) -> Any | None:
        """pop_due removes and returns the next live item due at or before `now`, else None.

        The item's deadline_at is left as it was; the caller changes it as it
        handles the item.
        """
        entries = self._entries
        while entries and entries[0][0] <= now:
            at, _, item = heapq.heappop(entries)
            if item.deadline_at == at:
                return item
            self._dead = max(0, self._dead - 1)
        return None
