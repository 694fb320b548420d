"""Children that do not outlive a command-line tool killed outright.

Design decision: the tools that start long-lived children (`wonderq demo` its server,
`wonderq work` its programs) stop them themselves, in order, on every ending they
see: finished, failed, Ctrl-C, SIGTERM, SIGHUP. The one ending a process cannot see
is SIGKILL (or a crash of the interpreter). For that, on Linux, each child is started
with PR_SET_PDEATHSIG, so the kernel sends it a signal when its parent goes, rather
than leave it running with nobody to stop it (a `wonderq work` program would go on
with a message whose lease has then passed to another worker).

Rules:
* Only the child itself gets the signal, not what it starts: a program that starts
  children of its own and must not leave them behind passes the signal on. The
  kernel clears the setting when the child changes its user, or executes a setuid,
  setgid or file-capability program.
* The kernel ties the setting to the thread that started the child: start children
  from a thread that lives as long as the tool (the event loop's).
* Call `die_with_parent` in the process that starts the children, when it
  starts them (not at import): the child checks its parent against the pid
  of the process that called it, and a process forked after an import has
  another.
* Everything is looked up before the fork: between fork and exec the child only
  makes the call. If the parent died before the call, the child signals itself at
  once, as the kernel would have.
* Where prctl is unavailable (not Linux, no libc), `die_with_parent` is None and
  children are started as before.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """die_with_parent is a preexec_fn that has the kernel send the child `signum` when
    this process goes, or None where that is unavailable (see the rules)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    parent = os.getpid()
    number = int(signum)

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, number, 0, 0, 0) == 0 and os.getppid() != parent:
            os.kill(os.getpid(), number)

    return preexec
