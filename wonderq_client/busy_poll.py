"""Busy polling: after a request goes out, keep the event loop turning until the reply is due.

Design decision (issue 6, `connect(busy_poll=...)`): a client that works in
round trips sends a request and then has nothing to do, so its event loop
sleeps, and the server's reply must wake it. Where waking a sleeping process
costs more than the reply's own work (on the 2-vCPU KVM guest this project
is measured on, a reply from the other vCPU costs the server an
inter-processor interrupt and this process a trip through the scheduler,
some 30-40 us each), keeping the loop polling for a short window after each
request is cheaper than sleeping: the reply is read on the loop's next turn
and nobody is woken. It is the server's `--busy-poll` (see
wonderq_server/busy_poll.py for the measurements) on the client's side; each
helps alone, and the two together most.

How: one callback per event loop that queues itself again each turn while
the window lasts; a ready callback makes the loop poll its sockets without
blocking. Every connection of a loop shares that one chain, so a process
with many connections pays one callback per turn, not one per connection.

Rules:
* Off (0) by default; `connect(busy_poll=SECONDS)` turns it on for that
  connection's requests, at most MAX_BUSY_POLL_S.
* Each request sent moves the loop's window end to at least `busy_poll`
  seconds from now; the chain stops once the window ends, whether or not
  replies are still awaited (a receive that waits on the server for 20 s
  costs one window of polling, not 20 s).
* Back-off, as the server's (wonderq_server/busy_poll.py). A window paid
  when a reply came in during it and a request followed (`replied`, then
  `extend`): the round trip polling is for. Requests that go out without a
  reply between them (a Worker's next receive and, a turn later, its ack) do
  not make it pay, nor does a reply nothing follows (the program thinks
  longer than the window). A window that did not pay lets the next request
  by without polling, and each further one doubles that, up to
  MAX_SKIPPED_REQUESTS; a window that paid ends the back-off. So a program
  that sends once in a while pays for polling only now and then: pinging
  every 1 ms with `busy_poll=0.0003`, this process's CPU went from 25.7% to
  7.8% of a core (6.4-7.1% without polling), every 5 ms from 6.4% to 2.6%
  (`bench/probes/busy_poll_idle.py 0 300`, medians of 3). A program in round
  trips more often than the window still polls all the time.
* Nothing else changes: replies are read and delivered as without it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

# Most a connection may ask: 10 ms of polling after each request is already a core
# spent for a client that sends more than 100 requests a second.
MAX_BUSY_POLL_S = 0.01
# Most requests let by without polling after windows that did not pay (see the
# rules above).
MAX_SKIPPED_REQUESTS = 64


class LoopPoller:
    """The one polling chain of an event loop."""

    __slots__ = ("_back_off", "_clock", "_found", "_loop", "_replied", "_running", "_skip",
                 "_until", "empty_windows", "turns")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        # Weakly: the table of pollers is keyed weakly by the loop, and a strong
        # reference from its value would keep every loop that ever polled alive.
        self._loop = weakref.ref(loop)
        self._clock = clock
        self._until = 0.0  # the clock reading at which the window ends
        self._running = False
        self._replied = False  # a reply came in while this chain ran
        self._found = False  # ... and a request went out after it: the window paid
        self._back_off = 0  # requests to let by after the next empty window, halved
        self._skip = 0  # requests still to let by without polling
        self.turns = 0  # turns the chain has run (for tests)
        self.empty_windows = 0  # chains whose window did not pay (for tests)

    def extend(self, window_s: float) -> None:
        """extend: a request went out; poll at least `window_s` seconds from now."""
        if self._running:
            if self._replied:
                self._found = True
        elif self._skip:
            self._skip -= 1  # the last window did not pay: let this one by
            return
        until = self._clock() + window_s
        if until > self._until:
            self._until = until
        if not self._running:
            loop = self._loop()
            if loop is not None:
                self._running = True
                self._replied = self._found = False
                loop.call_soon(self._turn)

    def replied(self) -> None:
        """replied: a polling connection read input (a reply) while the chain runs."""
        if self._running:
            self._replied = True

    def _turn(self) -> None:
        self.turns += 1
        loop = self._loop()
        if loop is not None and self._clock() < self._until and not loop.is_closed():
            loop.call_soon(self._turn)
            return
        self._running = False
        if self._found:
            self._back_off = 0
        else:
            self.empty_windows += 1
            self._back_off = min(max(1, 2 * self._back_off), MAX_SKIPPED_REQUESTS)
            self._skip = self._back_off


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPoller] = \
    weakref.WeakKeyDictionary()


def loop_poller(loop: asyncio.AbstractEventLoop) -> LoopPoller:
    """loop_poller is `loop`'s polling chain, made on first use."""
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = LoopPoller(loop)
    return poller


def check_busy_poll(value: object) -> float:
    """check_busy_poll: connect()'s `busy_poll`, seconds from 0 (off) to MAX_BUSY_POLL_S."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value <= MAX_BUSY_POLL_S:
        raise ValueError(f"busy_poll must be seconds from 0 (off) to {MAX_BUSY_POLL_S}, "
                         f"not {value!r}")
    return float(value)
