"""The running command's deadline, for commands that must know whether it passed.

Design decision: main.py bounds every command but top, demo and work by --timeout (plus
receive's --wait) with one asyncio.timeout, and a command is cancelled the same way
whether that deadline passed or the user pressed Ctrl-C. The two call for different
endings: after the deadline the server is not answering, so a connection is dropped at
once; after Ctrl-C it is closed politely, so that what the server handed out meanwhile is
given back. main.py keeps the deadline here, in a context variable of the command's task.

Rules:
* `passed()` is True only once the command's own deadline has expired; it is False for an
  unbounded command and before the deadline.
* --timeout bounds the wait for the server, not for the command's own reader: time spent
  writing output (output.write_out, blocked on a slow pipe) moves the deadline that much
  later (`extend`). A reviewer's `receive --ack | slow-reader` wrote and acked 200
  messages, then exited 2, "the server did not answer", for time its reader had taken: a
  script reads 2 as "nothing happened".
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

COMMAND_DEADLINE: ContextVar[asyncio.Timeout | None] = ContextVar("command_deadline",
                                                                 default=None)


def passed() -> bool:
    """passed: the running command's deadline (main.py) has expired."""
    deadline = COMMAND_DEADLINE.get()
    return deadline is not None and deadline.expired()


def extend(seconds: float) -> None:
    """extend: the running command spent `seconds` on something other than the server (its
    output); its deadline, if it has one and it has not fired, moves that much later."""
    deadline = COMMAND_DEADLINE.get()
    if deadline is None or deadline.expired():
        return
    when = deadline.when()
    if when is not None:
        deadline.reschedule(when + seconds)
