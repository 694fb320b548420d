"""`wonderq top`: a live view of the server, refreshed every second, like htop.

Design decision: three parts, each testable alone. `History` keeps, per
queue, the puts and acks per second between consecutive polls (from the
totals, so a sparkline shows what happened in each interval, not a moving
average). `frame` renders stats and history with stats_view.py; it is pure.
`run` is the only part with I/O: it polls `stats` once per interval, draws
with rich's Live, reads keys, and reconnects when the server goes away.

Rules:
* Quits on `q` (when stdin is a terminal) or Ctrl-C, restoring the terminal.
* A server that cannot be reached, or that goes away, shows "disconnected"
  with the last figures dimmed; `top` retries once per interval and
  carries on when the server is back. A server that answers a PING but not
  yet the STATS is there: STATS waits its turn when the server is busy with
  them (the server paces STATS: PROTOCOL.md), so `top` keeps the request
  in its place, shows the last figures with "waiting for their turn", and
  never reconnects for it, which would only send it to the back again.
  What retrying cannot fix ends `top` with main.py's one line: a refused
  auth token (AUTH_FAILED), a server certificate that fails verification.
  Totals that go down (the server was restarted) restart the history rather
  than show negative rates.
* `--once` prints one frame and exits (for scripts, and to see the layout).
* Into what is not a terminal (a file, a pipe) every frame is printed after
  the last (FramePrinter), as `top -b` does: rich's Live would draw nothing
  there until it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import sys
import textwrap
import time
from collections import deque
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live

from wonderq_client import Client, ConnectionClosed, connect

from . import argument_types
from .connection_options import open_client
from .output import print_rich, write_out
from .stats_view import stats_view

HISTORY_POINTS = 30


class History:
    """Per queue: puts and acks per second in each polling interval, the last HISTORY_POINTS."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.points = points
        self._last: dict[str, tuple[float, int, int]] = {}  # queue -> (at, puts, acks)
        self._series: dict[str, tuple[deque[float], deque[float]]] = {}

    def update(self, queues: Mapping[str, Mapping[str, Any]], at: float) -> None:
        for name in list(self._series):
            if name not in queues:  # deleted
                del self._series[name]
                self._last.pop(name, None)
        for name, figures in queues.items():
            puts, acks = int(figures.get("put_total") or 0), int(figures.get("acked_total") or 0)
            series = self._series.setdefault(
                name, (deque(maxlen=self.points), deque(maxlen=self.points)))
            last = self._last.get(name)
            self._last[name] = (at, puts, acks)
            if last is None:
                continue
            then, old_puts, old_acks = last
            elapsed = at - then
            if puts < old_puts or acks < old_acks:  # the server restarted
                series[0].clear()
                series[1].clear()
                continue
            if elapsed > 0:
                series[0].append((puts - old_puts) / elapsed)
                series[1].append((acks - old_acks) / elapsed)

    def view(self) -> dict[str, tuple[list[float], list[float]]]:
        return {name: (list(puts), list(acks)) for name, (puts, acks) in self._series.items()}


# Lines of a frame that are not queue rows: the status and server lines, the table's
# title, header and rules, and a margin.
FRAME_LINES = 8


def frame(stats: Mapping[str, Any], history: History, status: str, width: int | None = None,
          connected: bool = True, height: int | None = None) -> RenderableType:
    """frame is one screen of `top`: the status line, then the server and queue tables,
    dimmed while the server is away (the last figures it gave). With a terminal `height`,
    only as many queues as fit, the busiest."""
    max_rows = None if height is None else max(3, height - FRAME_LINES)
    return stats_view(stats, history.view(), status, width, stale=not connected,
                      max_rows=max_rows)


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("top", parents=[common],
                                 help="live view of the server, refreshed every second")
    parser.add_argument("--interval", type=argument_types.positive_seconds, default=1.0,
                        help="seconds between refreshes (default %(default)s)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.set_defaults(run=run, needs_stdout="its live view would be drawn into nothing, "
                        "until killed")


def _reason(exc: BaseException) -> str:
    """_reason is what a poll met, short enough for the status line."""
    text = exc.message if isinstance(exc, ConnectionClosed) else str(exc)
    return _shortened(text.removeprefix("connection to the server closed: "))


def _shortened(text: str) -> str:
    return textwrap.shorten(text, 120, placeholder=" …")


def _seen(call: asyncio.Future[Any]) -> None:
    """_seen takes a finished call's error, if any, so that one nobody awaits (its
    connection went) is not reported as never retrieved."""
    if not call.cancelled():
        call.exception()


class Poll(Enum):
    """What one Poller.poll found."""

    FRESH = "fresh"  # new figures
    WAITING = "waiting"  # the server answers, its STATS waits its turn
    AWAY = "away"  # the server cannot be reached, or stopped answering


class Poller:
    """Poller fetches stats, connecting (again) as needed; `poll` never raises for a
    server that is down or goes away, it reports it.

    A STATS not answered within `answer_wait_s` stays pending, to be awaited by the
    next poll: the server paces STATS, and a new request would wait from the back.
    A PING sent with each poll, answered at once by a server that is there, tells
    WAITING from AWAY (a server that does not answer it within `timeout_s` of its
    sending: no later than before a STATS could wait). `why` says what AWAY met."""

    def __init__(self, host: str, port: int, timeout_s: float,
                 connect_options: Mapping[str, Any] | None = None,
                 answer_wait_s: float | None = None) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.answer_wait_s = timeout_s if answer_wait_s is None else answer_wait_s
        self.connect_options = dict(connect_options or {})  # auth_token, ssl
        self.client: Client | None = None
        self.stats: dict[str, Any] = {}  # the last stats seen, kept while disconnected
        self.why = ""  # what the last poll that found the server away met
        self._gone = ""  # why the last connection ended, until a new one is made
        self._asked: asyncio.Future[dict[str, Any]] | None = None  # the STATS in flight

    async def poll(self) -> Poll:
        """poll refreshes `stats` if the server answers in time, and says what it found."""
        try:
            if self.client is None or self.client.closed:
                self._note_gone()  # it closed between polls
                self._forget_asked()
                self.client = await connect(self.host, self.port, timeout=self.timeout_s,
                                            **self.connect_options)
                # One request first: a server refusing the connection (TOO_MANY_CONNECTIONS)
                # answers its first bytes and closes, and a second request written behind
                # them would meet the reset, hiding the reason.
                await asyncio.wait_for(self.client.ping(), timeout=self.timeout_s)
                self._gone = ""
            return await self._ask(self.client)
        except ssl.SSLCertVerificationError:
            raise  # not the server being away: retrying will not help
        except (TimeoutError, OSError, ConnectionClosed) as exc:
            self._note_gone()
            why = _reason(exc) or f"no answer within {self.timeout_s:g} s"
            if self._gone and self._gone != why:
                why = _shortened(f"{why} (before that: {self._gone})")
            self.why = why
            await self.close()
            return Poll.AWAY

    def _note_gone(self) -> None:
        """_note_gone keeps why the connection ended (what the server said as it closed it:
        SHUTTING_DOWN, IDLE_TIMEOUT), for the status line until a new connection is made:
        the reconnects that follow meet only "Connection refused"."""
        if self.client is not None and self.client.close_reason is not None:
            self._gone = _reason(self.client.close_reason)

    async def _ask(self, client: Client) -> Poll:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        if self._asked is None:
            self._asked = asyncio.ensure_future(client.stats())
            self._asked.add_done_callback(_seen)
        alive = asyncio.ensure_future(client.ping())
        alive.add_done_callback(_seen)
        try:
            done, _ = await asyncio.wait({self._asked}, timeout=self.answer_wait_s)
            if not done:
                left = sent_at + self.timeout_s - loop.time()
                await asyncio.wait_for(alive, timeout=max(left, 0.0))  # else TimeoutError
                if not self._asked.done():  # it may have come with the PONG
                    return Poll.WAITING
            asked, self._asked = self._asked, None
            self.stats = asked.result()
            return Poll.FRESH
        finally:
            alive.cancel()  # the STATS answered first: its PONG is not needed

    def _forget_asked(self) -> None:
        asked, self._asked = self._asked, None
        if asked is not None:
            asked.cancel()

    async def close(self) -> None:
        self._forget_asked()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=1.0)


async def run(args: argparse.Namespace) -> int:
    interval = max(0.1, args.interval)
    poller = Poller(args.host, args.port, max(interval, 2.0), args.connect_options,
                    answer_wait_s=interval)
    history = History()
    if args.once:  # errors reach main, which says why the server cannot be reached
        async with open_client(args) as client:
            stats = await client.stats()
        history.update(stats.get("queues", {}), time.monotonic())
        console = Console()
        print_rich(frame(stats, history, _status(args, Poll.FRESH), console.width),
                   console)
        return 0
    quit_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    console = Console()
    # Into a file or a pipe, rich's Live draws nothing until it stops: a frame is printed
    # after another instead, as `top -b` does (a reviewer's `top > f` had one, at exit).
    view: contextlib.AbstractContextManager[Live | FramePrinter] = (
        Live(console=console, auto_refresh=False, screen=True) if sys.stdout.isatty()
        else contextlib.nullcontext(FramePrinter(console)))
    try:
        with _keys(loop, quit_event) as reads_keys, _interrupt(loop, quit_event), \
                view as live:
            await _refresh(args, poller, history, live, console, quit_event, interval,
                           reads_keys)
    finally:  # also when an error ends top (AUTH_FAILED, say): its connection is closed
        await poller.close()
    return 0


class FramePrinter:
    """FramePrinter is Live's update for output that is no terminal: each frame printed
    whole, after the last and a blank line."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.printed = False

    def update(self, renderable: RenderableType, refresh: bool = False) -> None:
        if self.printed:
            write_out("\n")
        print_rich(renderable, self.console)
        self.printed = True


async def _refresh(args: argparse.Namespace, poller: Poller, history: History,
                   live: Live | FramePrinter,
                   console: Console, quit_event: asyncio.Event, interval: float,
                   reads_keys: bool) -> None:
    """_refresh polls and redraws once per interval until q or Ctrl-C (q: when
    `reads_keys`, the terminal is read for it)."""
    quitting = asyncio.ensure_future(quit_event.wait())
    try:
        while not quit_event.is_set():
            polling = asyncio.ensure_future(poller.poll())
            await asyncio.wait({polling, quitting}, return_when=asyncio.FIRST_COMPLETED)
            if not polling.done():  # q or Ctrl-C while waiting for the server
                polling.cancel()
                return
            found = polling.result()
            if found is Poll.FRESH:
                history.update(poller.stats.get("queues", {}), time.monotonic())
            # A frame printed into a file or pipe has no screen to fit: every queue, as
            # --once prints them (a reviewer's had the busiest 17 of 41).
            height = None if isinstance(live, FramePrinter) else console.height
            live.update(frame(poller.stats, history,
                              _status(args, found, poller.why, reads_keys),
                              console.width, found is not Poll.AWAY, height),
                        refresh=True)
            if found is not Poll.WAITING:  # a waiting poll has waited its interval
                await asyncio.wait({quitting}, timeout=interval)
    finally:
        quitting.cancel()


_STATES = {Poll.FRESH: "connected",
           Poll.WAITING: "connected · stats waiting for their turn (the server paces them)",
           Poll.AWAY: "disconnected (retrying)"}


def _status(args: argparse.Namespace, found: Poll, why: str = "",
            reads_keys: bool = False) -> str:
    """_status is the title line. It offers q only when the terminal is read for it:
    judged afresh each frame, it offered q after `fg` to a top started in the
    background, which never reads its keys."""
    state = _STATES[found]
    if found is Poll.AWAY and why:
        state = f"{state}: {why}"
    quits = ("" if getattr(args, "once", False) else " · q or Ctrl-C quits"
             if reads_keys else " · Ctrl-C quits")
    return f"wonderq top · {args.host}:{args.port} · {state}{quits}"


def _reads_keys() -> bool:
    """_reads_keys: standard input is a terminal this process may set and read, as the
    foreground job. A background job (`wonderq top > top.log &`) that set it to cbreak
    was stopped by the kernel (SIGTTOU) before a frame was written (a reviewer)."""
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, quit_event: asyncio.Event) -> Iterator[bool]:
    """_keys sets `quit_event` on `q`, reading the terminal a key at a time (cbreak); it
    gives whether it does (only as the terminal's foreground job, at the start)."""
    if not _reads_keys():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def on_key() -> None:
        # os.read, not sys.stdin.read(1): keys typed together arrive in one read, and
        # Python's buffer would keep a "q" behind another key out of sight.
        try:
            keys = os.read(fd, 1024)
        except OSError:
            keys = b""
        if not keys:  # the terminal hung up: stop reading it, and quit
            loop.remove_reader(fd)
            quit_event.set()
        elif b"q" in keys.lower():
            quit_event.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield True
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _interrupt(loop: asyncio.AbstractEventLoop, quit_event: asyncio.Event) -> Iterator[None]:
    """_interrupt makes Ctrl-C (and SIGTERM) a clean quit rather than a traceback."""
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, quit_event.set)
            handled.append(sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
