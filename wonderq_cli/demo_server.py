"""The demo's own server: an in-memory `wonderq-server` subprocess on a free port.

Design decision: the demo runs the real server, not a broker inside its own
process, so what it shows is what a user gets. It starts
`python -m wonderq_server --in-memory --port 0` with the demo's own Python,
so the server is always the one installed beside the demo (a
`wonderq-server` found on PATH may belong to another installation), learns
the port from the ready line on stderr, and stops the process by its PID
when the demo ends, however it ends (finished, failed, Ctrl-C, SIGTERM,
SIGHUP: demo.py turns those signals into cancellation, so this module's
cleanup runs).

Rules:
* The server runs in a session of its own (start_new_session), so a
  terminal's Ctrl-C or hang-up reaches only the demo, which then stops the
  server itself, in order, and says so.
* The last resort, for a demo killed outright (SIGKILL): the server is started
  with parent_death.py's die_with_parent (SIGTERM), so own_server must be
  entered on a thread that lives as long as the demo (the event loop's).
* The server logs at info level because the ready line is an info line. A
  thread drains stderr for the server's whole life, so the server never
  blocks on a full pipe; the last lines are kept to explain a failed start.
* The server gets no WONDERQ_* variables: they are meant for the user's own
  server (a small --max-batch there must not break the demo) and the demo's
  server is configured entirely by its flags.
* Start-up is bounded by START_TIMEOUT_S; stopping sends SIGTERM, waits
  STOP_TIMEOUT_S, then kills.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .parent_death import die_with_parent

READY = re.compile(r"wonderq-server listening on (\S+):(\d+)")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
LINES_KEPT = 20


class ServerStartError(Exception):
    """The demo's server did not start; the message holds its last log lines."""


def server_command() -> list[str]:
    return [sys.executable, "-m", "wonderq_server"]


class _StderrReader(threading.Thread):
    """Reads the server's stderr to its end; notes the address of the ready line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(name="wonderq-demo-server-stderr", daemon=True)
        self.proc = proc
        self.address: tuple[str, int] | None = None
        self.ready = threading.Event()  # the ready line came, or the server exited
        self.lines: deque[str] = deque(maxlen=LINES_KEPT)

    def run(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            match = READY.search(line) if self.address is None else None
            if match:
                self.address = (match.group(1), int(match.group(2)))
                self.ready.set()
        self.ready.set()


@asynccontextmanager
async def own_server(host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    """own_server runs an in-memory server for the body of the `async with`; yields its address."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("WONDERQ_")}
    argv = [*server_command(), "--in-memory", "--host", host, "--port", "0",
            "--log-level", "info"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=die_with_parent())
    try:
        reader = _StderrReader(proc)
        reader.start()
        await asyncio.to_thread(reader.ready.wait, START_TIMEOUT_S)
        if reader.address is None:
            log = "\n".join(reader.lines) or "(no output)"
            raise ServerStartError(f"the demo's server ({' '.join(argv)}) did not start:\n{log}")
        yield reader.address
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    """stop ends the server by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
