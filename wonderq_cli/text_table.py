"""Tables of up to thousands of rows, drawn as one rich Text: `stats`, `top` and `queues`.

Design decision: rich's Table measures, pads and wraps every cell as a
renderable of its own, about 80 us a cell here: `wonderq stats` with 3,000
queues took 2.7 s of CPU to print, and 48 ms now (bench/probes/top_frame_cost.py,
which measures `top` too). These tables' cells are short strings whose widths are known
before anything is drawn, so the rows are padded here, joined, and handed to
rich as one Text, which it draws in milliseconds. rich still does the colours,
the terminal's width, and capture for output.py.

Rules:
* It looks like rich's box.SIMPLE_HEAD: a title, the header in bold, a rule,
  then the rows; columns three spaces apart, two before the first.
* No cell is ever cut. A column is as wide as its widest cell; a column with a
  `max_width` (a queue's name) folds a longer cell onto the lines below, the
  other cells of those lines blank. A line wider than the terminal folds too,
  as a Text with no room does, rather than being cropped.
* Widths are counted in characters: the cells are figures and queue names,
  which are ASCII (A-Z a-z 0-9 _ - .). A wide character would misalign a row,
  never cut it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Group
from rich.text import Text

LEAD = "  "
GAP = "   "


@dataclass
class Column:
    header: str
    cells: list[str]
    right: bool = True  # numbers are right-aligned, names left
    style: str = ""
    max_width: int | None = None  # longer cells fold onto the next lines
    width: int = field(init=False)

    def __post_init__(self) -> None:
        widest = max([len(self.header), *(len(cell) for cell in self.cells)])
        self.width = widest if self.max_width is None else min(widest, self.max_width)


def row_width(columns: Sequence[Column]) -> int:
    """row_width: how many characters a row of these columns takes."""
    return len(LEAD) + sum(c.width for c in columns) + len(GAP) * max(0, len(columns) - 1)


def text_table(title: str, columns: Sequence[Column], empty: str = "") -> Group:
    """text_table draws `columns` (all with as many cells) under `title`; with no rows,
    `empty` (if given) stands in the first column's place."""
    rows = len(columns[0].cells) if columns else 0
    header = Text(LEAD + GAP.join(_pad(c.header, c) for c in columns), style="bold",
                  no_wrap=True, overflow="fold")
    rule = Text(LEAD + "─" * (row_width(columns) - len(LEAD)), no_wrap=True, overflow="fold")
    lines: list[str] = []
    spans: list[tuple[int, int, str]] = []  # (start, end, style) of styled cells
    offset = 0  # of the next line in the joined text
    for index in range(rows):
        line = LEAD
        folded: list[str] = []  # the rest of a cell too wide for its column, line by line
        for number, column in enumerate(columns):
            if number:
                line += GAP
            cell = column.cells[index]
            if len(cell) > column.width:  # only where max_width is set
                parts = [cell[at:at + column.width] for at in range(0, len(cell), column.width)]
                cell = parts[0]
                folded += [" " * len(line) + part for part in parts[1:]]
            if column.style:
                spans.append((offset + len(line), offset + len(line) + column.width,
                              column.style))
            line += _pad(cell, column)
        for added in (line, *folded):
            lines.append(added)
            offset += len(added) + 1
    if not rows and empty and columns:
        lines.append(LEAD + empty)
    body = Text("\n".join(lines), no_wrap=True, overflow="fold")
    for start, end, style in spans:
        body.stylize(style, start, end)
    return Group(Text(title, style="italic"), Text(""), header, rule, body)


def _pad(cell: str, column: Column) -> str:
    return cell.rjust(column.width) if column.right else cell.ljust(column.width)
