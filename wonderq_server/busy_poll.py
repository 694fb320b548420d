"""Busy polling: after input, keep the event loop turning for a moment instead of sleeping.

Design decision (issue 6, `--busy-poll`): when the loop has nothing to do it
sleeps in epoll, and the next request must wake it. On the 2-vCPU KVM guest
this project is measured on, being woken costs far more than the work a
request needs: a client on the other vCPU pays an inter-processor interrupt
in its write, the server a trip through the scheduler, about 30-40 us each,
where a put costs the server some 10-20 us of Python. With every process on
one vCPU (no interrupt between processors), beanstalkd's S1 ran 7.0 times as
fast (67,226 against 9,568 puts/s) and WonderQ's 3.4 times
(bench/RESULTS-one-cpu.md against bench/RESULTS.md). A server that keeps
polling its sockets for a short window after input is not asleep when a
client that works in round trips sends its next request, so nobody has to
wake it. With the client polling too (wonderq_client's `busy_poll`), at
300 us both (bench/RESULTS-busy-poll.md against RESULTS.md, same evening):
S1 7,804 -> 33,633 puts/s and the server's CPU per put 60.2 -> 29.4 us
(polling is cheaper than being woken), S2 3,886 -> 13,263 msgs/s, S4c
182,531 -> 282,687; S3, whose two processes keep both vCPUs busy anyway,
did not change (17,641 against 16,943). The server polling alone still
helps (a review's one-connection put loop: 8,189-8,411 -> 14,200-14,500
puts/s), but then its CPU per put rises (54-59 -> 68-70 us): it polls
through every round trip and still wakes the client. The price is CPU while
idle: up to a window of polling after every burst of input, so a client
that sends more often than the window keeps the server at a full core, and,
before the back-off below, one ping every 1 ms cost 28.7% of a core at
300 us against 2.7-3.0% without. Off by default, as in Linux
(`net.core.busy_poll`); the start-up log and STATS (`busy_poll_us`) say
when it is on.

How: one callback that queues itself again each turn of the loop while the
window lasts. A ready callback makes uvloop poll its sockets without
blocking, so input that comes during the window is read on the next turn
and handled exactly as any other; nothing else changes.

Back-off (a window that found nothing): a window pays only when input comes
while it lasts. One that ends without any (the client thinks longer than the
window between requests) was a window of CPU for nothing, so the next input
after it does not poll, and each further empty window doubles the inputs let
by without polling, up to MAX_SKIPPED_INPUTS; the first window that finds
input ends the back-off. It is the rule of adaptive spinning in lock
implementations (spin again only where spinning paid last time). Round trips
shorter than the window keep it polling as before (`bench/compare.py
--scenarios S1,S2,S4 --systems wonderq,beanstalkd --runs 3 --busy-poll 300`
in both trees: S1 3.86x -> 3.91x beanstalkd, S4c 3.01x -> 3.09x); a client
that pings every 1 ms no longer buys a window with each ping: the server's
CPU 28.7% -> 3.7% of a core at 300 us, every 5 ms 6.7% -> 1.0%, and at
10000 us every 50 ms 20.1% -> 3.0% (bench/probes/busy_poll_idle.py, medians
of 3, 2026-11-29; with polling off 2.7-3.0%, 1.0% and 0.3-0.7%). A client
sending more often than the window still keeps the server at a full core:
every window finds input, from whichever client (a put, and the consumer's
ack that follows it within the window, keep it polling). Load that comes
back is polled again after at most MAX_SKIPPED_INPUTS inputs, unless the
server shares a CPU with a client that polls (then being woken waits behind
the client's polling, as it did before the back-off).

Rules:
* `poke` (after input) is one addition and, when the chain is not running,
  one call_soon or one subtraction (an input let by): no clock on the
  message path. The turn that sees new input since the last one restarts
  the window from its own clock reading.
* The window ends `window_s` after the last turn that saw input; then the
  chain stops and the loop sleeps as before. `stop` ends it at once (the
  server stopping).
* A window "found input" when a turn after the chain's first one saw new
  input; the first turn's input is the one that started it.
* The clock is passed in (`time.perf_counter` by default), so tests count
  turns instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Most --busy-poll may ask: 10 ms of polling after each input is already a core spent
# for any client that sends more often than 100 times a second.
MAX_BUSY_POLL_US = 10_000
# Most inputs let by without polling after windows that found nothing: at 10 ms
# windows, a client pinging every 20 ms then costs 10 ms of polling in 1.3 s, and a
# load that returns is polled again within this many requests.
MAX_SKIPPED_INPUTS = 64


class BusyPoll:
    """The server's polling chain: `poke` after input, `stop` when stopping."""

    __slots__ = ("_back_off", "_clock", "_found_input", "_inputs", "_loop", "_running",
                 "_seen", "_skip", "_started", "_stopped", "_until", "empty_windows", "turns",
                 "window_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, window_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._loop = loop
        self.window_s = window_s
        self._clock = clock
        self._inputs = 0  # pokes so far
        self._seen = 0  # pokes the chain has seen
        self._until = 0.0  # the clock reading at which the window ends
        self._running = False
        self._stopped = False
        self._started = False  # the chain's first turn has run
        self._found_input = False  # a later turn of this chain saw new input
        self._back_off = 0  # inputs to let by after the next empty window, halved (0: none)
        self._skip = 0  # inputs still to let by without polling
        self.turns = 0  # turns the chain has run (for tests)
        self.empty_windows = 0  # chains that ended without finding input (for tests)

    def poke(self) -> None:
        """poke: input came; poll on for a window from the next turn."""
        self._inputs += 1
        if not self._running and not self._stopped:
            if self._skip:
                self._skip -= 1  # the last window found nothing: let this one by
                return
            self._running = True
            self._started = self._found_input = False
            self._loop.call_soon(self._turn)

    def stop(self) -> None:
        """stop ends the polling for good (the server is stopping)."""
        self._stopped = True

    def _turn(self) -> None:
        self.turns += 1
        now = self._clock()
        if self._inputs != self._seen:
            self._seen = self._inputs
            self._until = now + self.window_s
            if self._started:
                self._found_input = True
        self._started = True
        if now < self._until and not self._stopped:
            self._loop.call_soon(self._turn)
            return
        self._running = False
        if self._found_input:
            self._back_off = 0
        else:
            self.empty_windows += 1
            self._back_off = min(max(1, 2 * self._back_off), MAX_SKIPPED_INPUTS)
            self._skip = self._back_off
