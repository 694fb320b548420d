"""Message ids and lease tokens: unique, increasing, never reused.

Design decision: an id is `(milliseconds since the epoch) << 20`, bumped by
one whenever that is not larger than the last id handed out. So ids

* grow with time and with every call, even when the clock stands still;
* are unique across every queue of the server (one sequence serves all);
* are not reused after a restart, even one without a data directory, as long
  as the clock has not gone back by more than the time since the last id was
  made. With a data directory the last id is restored from the journal, so
  not even a clock set back can make an old id come again.

The same sequence makes lease tokens, so a token is unique across every
delivery of every message.

2**20 ids per millisecond is room for a billion a second; the ids fit in a
signed 64-bit integer until the year 2248.

Must not know: clocks (`now` is passed in, in seconds).
"""

from __future__ import annotations

MILLISECOND_SHIFT = 20


class IdSequence:
    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self, now: float) -> int:
        """next returns an id larger than every id returned before."""
        candidate = int(now * 1000) << MILLISECOND_SHIFT
        last = self.last
        self.last = candidate if candidate > last else last + 1
        return self.last

    def next_range(self, now: float, count: int) -> range:
        """next_range returns `count` ids in a row, as `count` calls of next would."""
        first = self.next(now)
        self.last = first + count - 1
        return range(first, first + count)

    def observe(self, seen: int) -> None:
        """observe makes sure later ids are larger than `seen` (used by recovery)."""
        if seen > self.last:
            self.last = seen


def id_time(message_id: int) -> float:
    """id_time is the time (seconds since the epoch) encoded in an id, to the millisecond."""
    return (message_id >> MILLISECOND_SHIFT) / 1000.0
