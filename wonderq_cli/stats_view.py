"""How the server's stats look in a terminal: tables for `wonderq stats` and `wonderq top`.

Design decision: rendering is a pure function of the stats map (and, for
`top`, of a short history kept by the caller), returning rich renderables.
Nothing here talks to the server or reads the clock, so one frame can be
rendered from a real server's stats in a test and compared as text.

Rules:
* Queues are sorted by activity (put, ack and redelivery rates together),
  then by backlog, then by name, so the busy ones are on top.
* Sizes use binary units (KiB, MiB), ages the largest unit that fits, rates
  one decimal; a figure the server did not send shows as "-" (an older
  server), never as a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.styled import Styled
from rich.text import Text

from .output import counted
from .text_table import Column, row_width, text_table

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


def format_bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"  # not reached


def format_age(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_rate(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def sparkline(values: Sequence[float], width: int = 20) -> str:
    """sparkline draws the last `width` values as block characters, scaled to their peak.

    All zeros (or no values) draw as the lowest block, so an idle queue
    still shows a line of the same width.
    """
    shown = list(values)[-width:]
    if not shown:
        return ""
    peak = max(shown)
    if peak <= 0:
        return SPARK_BLOCKS[0] * len(shown)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[min(top, round(v / peak * top))] if v > 0 else SPARK_BLOCKS[0]
                   for v in shown)


def activity(figures: Mapping[str, Any]) -> float:
    return sum(float(figures.get(key) or 0) for key in ("put_rate", "ack_rate",
                                                          "redelivered_rate"))


def sorted_queues(queues: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(queues, key=lambda name: (-activity(queues[name]),
                                            -(queues[name].get("messages") or 0), name))


# Figures that mean trouble (a full or failing disk, a server at --max-memory): shown, in
# red, only when not zero, so an operator sees them in `stats` and `top` without --json.
TROUBLES = (
    ("journal_write_errors", "journal writes failed"),
    ("compactions_failed_total", "compactions failed"),
    ("full_refusals_total", "puts refused FULL"),
    ("too_many_queues_total", "queues refused (--max-queues)"),
)


SEPARATOR = " · "  # between the server line's figures


def server_line(server: Mapping[str, Any], width: int | None = None) -> Text:
    """server_line: the server's own figures, " · " between them (they are few; a table
    would be wider than a terminal). On `width` columns the line breaks only between
    figures, never inside one: rich's own wrap broke "memory 29.2 MiB" across two
    lines at 80 columns, the width rich assumes for a pipe (a reviewer)."""
    stored = format_bytes(server.get("stored_bytes"))
    if server.get("max_memory"):
        stored += f" of {format_bytes(server.get('max_memory'))}"
    # No figures yet (top before its first answer) say nothing of the journal either: it
    # showed "in memory (no journal)" for a server it had never reached (a reviewer).
    journal = (f"journal {format_bytes(server.get('journal_bytes'))} "
               f"(fsync {server.get('fsync_policy', '-')})"
               if "journal_bytes" in server else "in memory (no journal)" if server
               else "journal -")
    parts = [(part, "") for part in (
        f"server {server.get('version', '-')}",
        f"up {format_age(server.get('uptime_s'))}",
        counted(server.get("connections"), "connection"),
        counted(server.get("messages"), "message"),
        counted(server.get("waiting_consumers"), "consumer") + " waiting",
        f"memory {format_bytes(server.get('rss_bytes'))}",
        f"stored {stored}",
        journal,
    )]
    parts += [(f"{server[figure]} {what}", "bold red")
              for figure, what in TROUBLES if server.get(figure)]
    line = Text(no_wrap=True, overflow="fold")
    column = 0
    for part, style in parts:
        if column:
            if width is not None and column + len(SEPARATOR) + len(part) > width:
                line.append("\n")
                column = 0
            else:
                line.append(SEPARATOR)
                column += len(SEPARATOR)
        line.append(part, style=style)
        column += len(part)
    return line


# (header, stats figure or None for the name, formatter). Listed in the order
# they are shown; DROP_ORDER says which go first when the terminal is narrow.
QUEUE_COLUMNS: tuple[tuple[str, str | None, Any], ...] = (
    ("queue", None, str),
    ("ready", "ready", str),
    ("in flight", "in_flight", str),
    ("delayed", "delayed", str),
    ("to dlq", "dead_lettered_total", str),
    ("expired", "expired_total", str),
    ("oldest", "oldest_age_s", format_age),
    ("waiting", "waiting", str),
    ("put/s", "put_rate", format_rate),
    ("ack/s", "ack_rate", format_rate),
    ("redeliv/s", "redelivered_rate", format_rate),
)
DROP_ORDER = ("puts", "acks", "redeliv/s", "waiting", "expired", "oldest", "delayed", "to dlq",
              "ack/s", "put/s")
SPARK_WIDTH = 12
NAME_WIDTH_MAX = 60


def queues_table(queues: Mapping[str, Mapping[str, Any]],
                 history: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                 width: int | None = None, max_rows: int | None = None) -> Group:
    """queues_table: a row per queue, busiest first; with `history` (queue -> (puts per
    second, acks per second) over time) two sparkline columns are added. No cell is ever
    cut: on a terminal `width` columns wide, whole columns are left out instead, the
    least important first (DROP_ORDER). "to dlq" is dead_lettered_total: messages moved
    out to the queue's dead-letter queue. With `max_rows`, only the busiest that many
    (a screen's worth: `top` redrawing thousands of rows took most of a core), and the
    title says so."""
    names = sorted_queues(queues)
    if max_rows is not None and len(names) > max_rows:
        names = names[:max_rows]
        title = f"queues ({len(queues)}, the busiest {max_rows} shown)"
    else:
        title = f"queues ({len(queues)})"
    columns: dict[str, Column] = {}
    for header, figure, fmt in QUEUE_COLUMNS:
        columns[header] = Column(
            header, [name if figure is None else
                     (fmt(queues[name][figure]) if figure in queues[name] else "-")
                     for name in names],
            right=figure is not None, max_width=NAME_WIDTH_MAX if figure is None else None)
    if history is not None:
        for header, index, style in (("puts", 0, "green"), ("acks", 1, "cyan")):
            columns[header] = Column(
                header, [sparkline(history.get(name, ((), ()))[index], SPARK_WIDTH)
                         for name in names], right=False, style=style)
    shown = list(columns)
    if width is not None:
        for header in DROP_ORDER:
            if row_width([columns[h] for h in shown]) <= width:
                break
            if header in shown:
                shown.remove(header)
    return text_table(title, [columns[h] for h in shown], empty="(no queues)")


def stats_view(stats: Mapping[str, Any],
               history: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
               status: str | None = None, width: int | None = None,
               stale: bool = False, max_rows: int | None = None) -> RenderableType:
    """stats_view is the whole screen: an optional status line, the server, the queues
    (the busiest `max_rows`, if given). `stale` figures (the server is away) are dimmed."""
    parts: list[Any] = []
    if status:
        parts.append(Text(status, style="bold red" if stale else "bold"))
    parts.append(server_line(stats.get("server", {}), width))
    parts.append(queues_table(stats.get("queues", {}), history, width, max_rows))
    view = Group(*parts)
    return Styled(view, "dim") if stale else view
