"""Standard output that is either all written or a BrokenPipeError: what `receive --ack` trusts.

Design decision: a command's table is rendered to a string (rich's capture)
and written to the file descriptor by `write_out`, a system call at a time,
rather than through sys.stdout. Measured on Python 3.11: a 4 MB write
through sys.stdout to a pipe whose reader (`head -3`) left after 64 KiB
returned as if done, and the flush after it raised nothing; the rest was
dropped in silence. `receive --ack` then acked 1,000 messages of which three
lines had been read. os.write instead returns the part the pipe took, and
the next call raises BrokenPipeError, which main.py turns into exit 141
before anything is acked.

Rules:
* `write_out` returns only once every byte was taken by the descriptor (a
  pipe's buffer counts as taken: README says so); otherwise it raises
  BrokenPipeError (the reader has gone: exit 141) or OutputFailed (any other
  failed write, ENOSPC on a full disk say: exit 74, EX_IOERR). Not OSError,
  which main.py reads as a server it cannot reach (exit 2): a script that
  retries on 2 would put the message a second time.
* Every result a command prints goes through here (`say`, `print_rich`,
  and queue_commands.print_json), so no write failure is taken for the server's.
* Where standard output has no descriptor (a test's capture), it falls back
  to sys.stdout.write and flush.
* The time a write takes (a slow reader) is not the server's: the running
  command's --timeout is moved on by it (deadline.extend).
* `print_rich` renders for the terminal rich sees (width, colour), as
  Console().print would; to a file or a pipe, without the spaces rich pads
  each line with.
"""

from __future__ import annotations

import io
import os
import sys
import time

from rich.console import Console, RenderableType

from . import deadline


class OutputFailed(Exception):
    """Standard output could not be written (other than by a reader that has gone)."""


def write_out(text: str) -> None:
    """write_out writes `text` to standard output whole, or raises (see the rules)."""
    started = time.monotonic()  # asyncio's clock, by default
    try:
        _write_out(text)
    finally:
        deadline.extend(time.monotonic() - started)


def _write_out(text: str) -> None:
    try:
        sys.stdout.flush()  # what was left in the buffer goes first, in order
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, ValueError, io.UnsupportedOperation):
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        view = memoryview(text.encode(sys.stdout.encoding or "utf-8", "replace"))
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputFailed(exc.strerror or str(exc)) from None


def say(text: str) -> None:
    """say writes one line of a command's result (see write_out)."""
    write_out(text + "\n")


def print_rich(renderable: RenderableType, console: Console | None = None) -> None:
    """print_rich renders `renderable` as `console` (one on standard output by default)
    would print it, and writes it with write_out."""
    shown = console or Console()  # it looks at the real output: width, terminal, colours
    # Rendered into a string by a console that never touches sys.stdout (rich's own
    # capture() flushes it on the way out, and a failed flush would escape write_out).
    rendered = io.StringIO()
    Console(file=rendered, width=shown.width, force_terminal=shown.is_terminal,
            color_system=shown.color_system).print(renderable)
    text = rendered.getvalue()
    if not shown.is_terminal:
        # rich pads every line of a table to its width: invisible on a terminal, but
        # noise in a file or a pipe that is diffed or grepped (a newcomer's review).
        text = "\n".join(line.rstrip() for line in text.split("\n"))
    write_out(text)


def counted(count: object, thing: str) -> str:
    """counted: "1 message", "3 messages", "- messages" (a figure an older server lacks)."""
    return f"{count} {thing}" if count == 1 else f"{'-' if count is None else count} {thing}s"
