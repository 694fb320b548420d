"""Commit wait: before an fsync, give the clients the last fsync answered a moment to join it.

Design decision (issue 6, S6): under `--fsync always` the fsync runs on the
event loop (group_commit.py), so requests that come while it runs wait in
the kernel and share the next one. On the project's 2-core VM that made
groups small: the clients' replies go out when an fsync ends, and the
loop, having read the one or two requests already there, starts the next
fsync before the others' next requests arrive; each of those then waits a
whole fsync before it is even read, and a consumer's receive, which needs
no fsync at all, waited for one too. About 0.75 fsyncs a message with 8
clients (4 producers, 4 consumers) where 0.25 (all 8 in one group) is
possible. So after an fsync the connections it answered are *expected*: the
next fsync waits while any of them is still to send its next request,
sleeping in select(2) on their sockets (off the CPU, which the clients on
the other core need) and going back to the loop whenever one is readable,
so their requests are read, run and written in the usual way, and a
receive of a message already on disk is answered meanwhile
(group_commit.py's per-connection early release). The wait ends at the
first `gap_s` in which none of the expected sockets has anything to read,
and never lasts past `wait_s` after the fsync that answered them: traffic
that comes later than that (one client at a time, sporadic requests)
never waits, and a client that is answered and then stays silent costs the
group at most one gap.

Measured on fresh `--fsync always` servers, side by side, medians of 3
(2026-12-01): S6's shape, `python bench/probes/durable_ab.py 8000 3
"$PWD+--group-commit-wait=0" "$PWD"`: 4,867 -> 7,416 msgs/s, 0.749 -> 0.251
fsyncs a message, the server's CPU 151 -> 110 us a message, p99 8.53 -> 3.90
ms (with a wait of 300 us: 7,046; gap 200 us: 7,690). Clients putting one
message at a time, `python bench/probes/durable_putters.py 4000 3`: 2
clients 5,303 -> 7,454 puts/s (0.945 -> 0.500 fsyncs a put), 8 clients
17,144 -> 23,623 (0.250 -> 0.126); one client alone, with nobody to wait
for, 3,780 -> 3,923 over 7 runs (`... 4000 7 1`), the same within noise.
The earlier commit delays (group_commit.py's list of what was not adopted)
waited a fixed time and held every reply behind the waiting group,
receives included; this one waits only for clients it has reason to
expect, only until they stop coming, and answers receives meanwhile.

Rules:
* Only where the fsync is inline (`--fsync always`), and only while a batch
  waits for an fsync: `hold()` is asked just before one would start.
* Expected: the connections the last fsync released durable replies to, by
  their sockets' numbers (a closed connection's is -1, connection.py, so a
  reply released after it closed does not bring it back). One leaves the set
  when a reply of its own joins the waiting group (its next request is in),
  when it closes, after READS_PER_CLIENT reads that brought
  nothing for the group (a client busy with requests that need no fsync is
  not waited for), and when the wait ends (the set is emptied whenever the
  fsync runs).
* `hold()` is one clock read and at most one select(2): it returns True
  when an expected socket became readable within `gap_s` (and before the
  deadline): the caller lets the loop read it and asks again after. A
  select that fails (a socket closed under it) ends the wait: the fsync
  runs. It never raises.
* select(2) takes no socket numbered FD_SETSIZE or above, and Python's
  poll and epoll time out in whole milliseconds, too coarse for this. So
  sockets numbered that high are registered, for one `hold()`, in an epoll
  set made when the wait is (at the server's start, while numbers are low),
  and select(2) waits on the epoll set's own number, readable when one of
  them is; `epoll.poll(0)` then names them. Each such socket costs a wait
  two system calls (in and out of the set, which holds nothing between
  waits, so a closed socket never lingers in it); sockets under FD_SETSIZE
  pay nothing. Without epoll (not Linux), or if the set's own number is
  that high, they are not waited for.
* A connection the server is not reading (flow control) is not waited for:
  it would be readable with nothing read, and the wait would spin to its end.
* The kernel lets a timed sleep run about 50 us over (its timer slack), so a
  gap lasts about `gap_s` + 50 us.

Must not know: the journal, the broker, replies (group_commit.py decides
when a wait applies; this module only keeps the expected set and waits).
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterable
from typing import Protocol

FD_SETSIZE = 1024  # select(2) takes no socket numbered this or higher
DEFAULT_WAIT_US = 1000  # at most this long after an fsync, the next one waits for its clients
DEFAULT_GAP_US = 100  # ... and only while one of them sends within this long
MAX_WAIT_US = 10_000  # a flag's ceiling: a wait past 10 ms would cost more than any fsync
# Reads of one expected client a wait goes back to the loop for: a consumer's receive (no
# fsync needed, answered meanwhile) and then its ack. A client that keeps sending requests
# that need no fsync is not waited for after that.
READS_PER_CLIENT = 2


class Waitable(Protocol):
    """What is expected: a connection (connection.py) with the socket to wait on."""

    @property
    def wait_fd(self) -> int: ...  # -1: none

    @property
    def paused(self) -> bool: ...


class CommitWait:
    """CommitWait keeps the connections the last fsync answered, and waits for them."""

    def __init__(self, wait_s: float, gap_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.wait_s = wait_s  # 0: never wait
        self.gap_s = gap_s
        self._clock = clock
        self._expected: dict[int, list] = {}  # socket number -> [connection, reads left]
        self._until = 0.0  # no wait past this (the release's time + wait_s)
        self.holds = 0  # fsyncs put off for a readable socket, since start
        self._high = _high_socket_set() if wait_s else None  # for sockets >= FD_SETSIZE

    @property
    def expecting(self) -> bool:
        return bool(self._expected)

    def expect(self, connections: Iterable[Waitable]) -> None:
        """expect: an fsync has just released durable replies to `connections`."""
        if not self.wait_s:
            return
        expected = self._expected
        takes_high = self._high is not None  # else select's sockets only
        for connection in connections:
            fd = connection.wait_fd
            if fd >= 0 and (fd < FD_SETSIZE or takes_high):
                expected[fd] = [connection, READS_PER_CLIENT]
        if expected:
            self._until = self._clock() + self.wait_s

    def joined(self, connection: Waitable) -> None:
        """joined: a reply of `connection` waits in the group (its request came), or it
        closed; either way it is not waited for."""
        entry = self._expected.get(connection.wait_fd)
        if entry is not None and entry[0] is connection:
            del self._expected[connection.wait_fd]

    def hold(self) -> bool:
        """hold: should the fsync about to start wait for the loop to read an expected
        socket first? Waits up to gap_s for one (the rules)."""
        expected = self._expected
        if not expected:
            return False
        left = self._until - self._clock()
        if left > 0:
            fds = [fd for fd, (connection, _reads) in expected.items() if not connection.paused]
            try:
                readable = self._select(fds, min(self.gap_s, left)) if fds else ()
            except (OSError, ValueError):  # a socket closed under us: wait no more, sync
                readable = ()
            if readable:
                for fd in readable:
                    entry = expected[fd]
                    entry[1] -= 1
                    if not entry[1]:
                        del expected[fd]  # read for the last time
                self.holds += 1
                return True
        expected.clear()
        return False

    def _select(self, fds: list[int], timeout: float) -> list[int]:
        """_select: those of `fds` readable within `timeout` (select's list, with the ones
        numbered FD_SETSIZE or above found through the epoll set; the rules)."""
        high_set = self._high
        if high_set is None or max(fds) < FD_SETSIZE:
            return select.select(fds, (), (), timeout)[0]
        registered = []
        try:
            for fd in fds:
                if fd < FD_SETSIZE:
                    continue
                high_set.register(fd, select.EPOLLIN)
                registered.append(fd)
            high_set_fd = high_set.fileno()
            low = [fd for fd in fds if fd < FD_SETSIZE]
            low.append(high_set_fd)
            readable = select.select(low, (), (), timeout)[0]
            if high_set_fd in readable:
                readable.remove(high_set_fd)
                readable.extend(fd for fd, _events in high_set.poll(0))
            return readable
        finally:
            for fd in registered:
                with contextlib.suppress(OSError):  # closed meanwhile: the kernel dropped it
                    high_set.unregister(fd)

    def stop(self) -> None:
        """stop: wait no more (the server is stopping: nothing more will come)."""
        self.wait_s = 0
        self._expected.clear()
        if self._high is not None:
            self._high.close()
            self._high = None


def _high_socket_set() -> select.epoll | None:
    """_high_socket_set: an epoll set to wait on sockets numbered FD_SETSIZE or above,
    or None where there is none or its own number is that high (the rules)."""
    make = getattr(select, "epoll", None)
    if make is None:
        return None
    high_set = make()
    if high_set.fileno() >= FD_SETSIZE:
        high_set.close()
        return None
    return high_set
