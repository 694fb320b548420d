"""What the demo shows: a live table while it runs, an accounting table at the end.

Design decision: the narration reads the Ledger and the Watcher's figures and
never the other way round, so the workers know nothing about terminals. On a
terminal it is one rich Live view, redrawn from the event loop four times a
second (not from rich's refresh thread, which would read the ledger while
workers change it): a line of queue figures, a table of per-worker counts and
the last few notable events. When stdout is not a terminal (CI, a pipe) it
prints one plain progress line every PROGRESS_EVERY_S instead, plus any
broken promise at once.

Rules:
* Never flood: the live view keeps EVENTS_KEPT events; the plain output is a
  handful of lines for a default run.
* The accounting table's labels are stable words at the start of each row
  ("produced", "acked", ..., "lost", "acked twice"): tests and scripts read
  them.
* The narration loop is bounded in time and in count like every demo loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .demo_ledger import Accounting, Ledger
from .demo_workers import POISON_EVERY, Crew, Plan, pause

REDRAW_EVERY_S = 0.25
PROGRESS_EVERY_S = 2.0


def banner(plan: Plan, where: str) -> str:
    kinds: dict[str, int] = {}
    for index in range(plan.consumers):
        kinds[plan.behaviour(index)] = kinds.get(plan.behaviour(index), 0) + 1
    crew = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    return (f"WonderQ demo on {where}: {plan.producers} producers put {plan.messages} messages "
            f"into queue {plan.queue!r}; {plan.consumers} consumers take them ({crew}). "
            f"Leases last {plan.visibility_s:g} s; a message not acked after "
            f"{plan.max_deliveries} deliveries goes to {plan.dead_letter_queue!r}. "
            f"Every {POISON_EVERY}th message is poison: every consumer fails on it.")


class Narrator:
    """Narrates the run until close(): a live view on a terminal, progress lines elsewhere."""

    def __init__(self, console: Console, crew: Crew, figures: Callable[[], dict[str, Any]]) -> None:
        self.console, self.crew, self.figures = console, crew, figures
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._alarms_printed = 0

    def start(self) -> None:
        narrate = self._live if self.console.is_terminal else self._progress_lines
        self._task = asyncio.create_task(narrate())

    async def close(self) -> None:
        """close draws the last frame (or line) and ends the narration."""
        self._closing.set()
        if self._task is not None:
            await self._task

    async def _live(self) -> None:
        rounds = int(self.crew.plan.seconds / REDRAW_EVERY_S) + 40  # the wrap-up as well
        with Live(self.frame(), console=self.console, auto_refresh=False) as live:
            for _ in range(rounds):
                if await pause(self._closing, REDRAW_EVERY_S):
                    break
                live.update(self.frame(), refresh=True)
            live.update(self.frame(), refresh=True)

    async def _progress_lines(self) -> None:
        rounds = int(self.crew.plan.seconds / REDRAW_EVERY_S) + 40
        for round_number in range(1, rounds + 1):
            if await pause(self._closing, REDRAW_EVERY_S):
                break
            self._print_alarms()
            if round_number % round(PROGRESS_EVERY_S / REDRAW_EVERY_S) == 0:
                print(self.progress_line(), flush=True)
        self._print_alarms()
        print(self.progress_line(), flush=True)

    def _print_alarms(self) -> None:
        alarms = [event for event in self.crew.ledger.events if event.alarm]
        for event in alarms[self._alarms_printed:]:
            print(f"{event.at:6.1f} s  {event.text}", flush=True)
        self._alarms_printed = len(alarms)

    def progress_line(self) -> str:
        ledger, figures = self.crew.ledger, self.figures()
        return (f"{self.crew.clock():6.1f} s  put {len(ledger.produced)}/{ledger.messages}"
                f"  acked {len(ledger.acked)}  redelivered {ledger.redeliveries}"
                f"  dead-lettered {figures.get('dead_lettered_total', 0)}"
                f"  ready {figures.get('ready', 0)}  in flight {figures.get('in_flight', 0)}")

    def frame(self) -> RenderableType:
        ledger, figures, plan = self.crew.ledger, self.figures(), self.crew.plan
        head = Text.assemble(
            ("WonderQ demo ", "bold"), f"{self.crew.clock():5.1f} s   ",
            f"put {len(ledger.produced)}/{ledger.messages}   queue {plan.queue}: ",
            (f"{figures.get('ready', 0)} ready", "green"), "  ",
            (f"{figures.get('in_flight', 0)} in flight", "yellow"), "  ",
            f"{figures.get('delayed', 0)} delayed  ",
            (f"{figures.get('dead_lettered_total', 0)} dead-lettered", "red"))
        return Group(head, self._workers_table(ledger), self._events_panel(ledger))

    @staticmethod
    def _workers_table(ledger: Ledger) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("worker", "behaviour", "put", "received", "acked", "nacked",
                       "acks refused", "crashes"):
            table.add_column(column, justify="left" if column in ("worker", "behaviour")
                             else "right")
        table.add_column("now", no_wrap=True)
        for tally in ledger.workers.values():
            producer = tally.behaviour == "producer"
            counts = ("-", "-", "-", "-", "-") if producer else (
                tally.received, tally.acked, tally.nacked, tally.refused, tally.crashes)
            table.add_row(tally.name, tally.behaviour, str(tally.put) if producer else "-",
                          *map(str, counts), tally.now)
        return table

    @staticmethod
    def _events_panel(ledger: Ledger) -> Panel:
        lines = Text()
        for index, event in enumerate(ledger.events):
            lines.append(("\n" if index else "") + f"{event.at:5.1f} s  ", "dim")
            lines.append(event.text, "bold red" if event.alarm else "")
        return Panel(lines or Text("nothing yet", "dim"), title=f"notable events "
                     f"({ledger.event_count} so far, last {len(ledger.events)})",
                     title_align="left")


def accounting_table(accounting: Accounting, plan: Plan) -> Table:
    a = accounting
    table = Table(title="Accounting, by message body", title_justify="left")
    table.add_column("")
    table.add_column("messages", justify="right")
    table.add_column("meaning")
    rows: list[tuple[str, int, str]] = [
        ("produced", a.produced, "put, and answered with an id"),
        ("acked", a.acked, "an ack answered OK"),
        ("dead-lettered", a.dead_lettered, f"read back from {plan.dead_letter_queue!r}"),
        ("still queued", a.still_queued, "unfinished when the demo stopped (not lost)"),
        ("redelivered", a.redelivered, "deliveries after a message's first"),
        ("duplicates seen", a.duplicates, "bodies a consumer received more than once"),
        ("lost", len(a.lost), "neither acked, dead-lettered nor queued"),
        ("acked twice", len(a.acked_twice), "OK for a body already acked: impossible"),
    ]
    if a.acked_but_stored:
        rows.append(("acked but stored", len(a.acked_but_stored),
                     "acked, yet read back from a queue: impossible"))
    if a.ack_in_doubt:
        rows.append(("ack unanswered", a.ack_in_doubt, "the demo stopped before the answer"))
    if a.put_unanswered:
        rows.append(("put unanswered", a.put_unanswered, "never answered, never seen"))
    if a.put_refused:
        rows.append(("put refused", a.put_refused, "refused by the server: not produced"))
    failures = {"lost", "acked twice", "acked but stored"}
    for label, count, meaning in rows:
        style = "bold red" if label in failures and count else ""
        table.add_row(label, str(count), meaning, style=style)
    return table


def verdict(accounting: Accounting) -> str:
    a = accounting
    if a.ok:
        return (f"OK: every message is accounted for: {a.produced} produced = {a.acked} acked "
                f"+ {a.dead_lettered} dead-lettered + {a.still_queued} still queued"
                + (f" + {a.ack_in_doubt} with an unanswered ack" if a.ack_in_doubt else ""))
    problems = []
    for label, seqs in (("lost", a.lost), ("acked twice", a.acked_twice),
                        ("acked but still stored", a.acked_but_stored)):
        if seqs:
            shown = ", ".join(f"#{seq}" for seq in seqs[:10])
            problems.append(f"{len(seqs)} {label} ({shown}{', ...' if len(seqs) > 10 else ''})")
    return "FAILED: " + "; ".join(problems)
