"""The soak's server: one wonderq-server data directory, started, killed -9 and restarted.

Design decision: one object owns every incarnation of the server on one
data directory (`--fsync always`, 127.0.0.1). The first start asks for
`--port 0` and reads the port from the ready line, as tests/server_process.py
does; every restart asks for that same port, so reconnecting workers find
the new incarnation where the old one was (only if that port was taken in
the meantime does a restart fall back to a new one, which the workers read
from `port` before each connect). The server is `python -m wonderq_server`
from this checkout, run by the soak's own Python, so the soak always tests
the server that matches its client.

Rules:
* The process is started from the main thread with PR_SET_PDEATHSIG
  (wonderq_cli/parent_death.py, SIGKILL), so the kernel kills it if the soak
  itself dies, even by SIGKILL; the soak's
  `finally` kills it too (Ctrl-C, errors). It runs in its own session, so a
  Ctrl-C at the terminal reaches only the soak. Signals go to its PID only.
* Waiting for the ready line is bounded (START_TIMEOUT_S); so is every wait
  for an exit. `kill` waits until the process is gone, so the next start
  never meets the data directory's lock still held.
* Its stderr is read by a thread into a bounded tail; the lines the soak
  reports on (compactions, torn records cut off at recovery, warnings and
  errors) are counted as they pass.
* An incarnation that ended without being killed or stopped by the soak is
  recorded as such (`Incarnation.end`): the report treats it as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from servers import resident_bytes

from wonderq_cli.parent_death import die_with_parent

READY = re.compile(r"listening on (\S+):(\d+)")
RECOVERED = re.compile(r"recovered (\d+) records from \S+ \(([^)]*)\): ([^;]*)")
START_TIMEOUT_S = 120.0  # a replay of a big journal on a busy machine; normally < 2 s
STOP_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 200
REPO = Path(__file__).resolve().parent.parent

# Log lines worth counting, by what they mean for the soak.
LOG_MARKS = {
    "compactions": "compacted the journal",
    "torn_tails_cut": "cut off a torn record",
    "warnings": " WARNING ",
    "errors": " ERROR ",
}


@dataclass
class Incarnation:
    """One run of the server process, from exec to its end; times are soak seconds."""

    number: int
    pid: int
    port: int  # from its ready line; 0 until then
    exec_at: float
    ready_s: float = 0.0  # exec until the ready line
    ended_at: float = 0.0
    end: str = "running"  # "kill -9", "stopped (exit N)", or "exited by itself (exit N)"
    recovered: str = ""  # the server's own "recovered ..." line, if any
    marks: Counter[str] = field(default_factory=Counter)

    @property
    def ready_at(self) -> float:
        return self.exec_at + self.ready_s


class SoakServer:
    """SoakServer runs wonderq-server on `data_dir`, one incarnation at a time."""

    def __init__(self, data_dir: Path, clock, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.clock = clock  # seconds since the soak started
        self.extra_args = extra_args or []
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.incarnations: list[Incarnation] = []
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    @property
    def current(self) -> Incarnation | None:
        return self.incarnations[-1] if self.incarnations else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> Incarnation:
        """start runs a new incarnation on the last port (a new one if that is taken)."""
        if self.port:
            try:
                return await self._start_on(self.port)
            except RuntimeError:
                if "in use" not in "".join(list(self.tail)[-3:]):
                    raise
        return await self._start_on(0)

    async def _start_on(self, port: int) -> Incarnation:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "wonderq_server", "--host", self.host, "--port", str(port),
                "--data-dir", str(self.data_dir), "--fsync", "always", "--log-level", "info",
                *self.extra_args]
        exec_at = self.clock()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True,
                                     preexec_fn=die_with_parent(signal.SIGKILL))
        inc = Incarnation(len(self.incarnations) + 1, self.proc.pid, 0, exec_at)
        self.incarnations.append(inc)
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(self.proc, inc, ready),
                         daemon=True).start()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, ready.wait, START_TIMEOUT_S) or not inc.port:
            self._end(inc, "did not start")
            raise RuntimeError(f"wonderq-server did not start on port {port}:\n"
                               + "".join(list(self.tail)[-15:]))
        inc.ready_s = self.clock() - exec_at
        self.port = inc.port
        return inc

    def _read_log(self, proc: subprocess.Popen[str], inc: Incarnation,
                  ready: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.tail.append(line)
            for name, mark in LOG_MARKS.items():
                if mark in line:
                    inc.marks[name] += 1
            if not inc.recovered and (found := RECOVERED.search(line)):
                inc.recovered = "{} records ({}): {}".format(*found.groups())
            match = READY.search(line)
            if match and not ready.is_set():
                inc.port = int(match.group(2))
                ready.set()
        ready.set()  # the process ended: start() sees port 0 if it never got ready

    def kill(self) -> None:
        """kill is kill -9 of the running incarnation; returns once the process is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
            self._end(self.current, "kill -9")
        else:
            self.check_exit()

    def stop(self) -> int:
        """stop is a clean stop (SIGTERM), SIGKILL after STOP_TIMEOUT_S; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(STOP_TIMEOUT_S)
                self._end(self.current, f"stopped (exit {code})")
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            self.check_exit()
        return self.proc.returncode

    def check_exit(self) -> bool:
        """check_exit records an incarnation that ended on its own; True if it did."""
        inc = self.current
        if self.proc is None or inc is None or inc.end != "running":
            return False
        code = self.proc.poll()
        if code is None:
            return False
        self._end(inc, f"exited by itself (exit {code})")
        return True

    def _end(self, inc: Incarnation | None, how: str) -> None:
        if inc is not None and inc.end == "running":
            inc.end = how
            inc.ended_at = self.clock()

    def rss_bytes(self) -> int | None:
        """rss_bytes is VmRSS of the running incarnation, from /proc; None if it is gone."""
        if not self.alive():
            return None
        assert self.proc is not None
        return resident_bytes(self.proc.pid)

    def journal_bytes(self) -> int:
        """journal_bytes is the size of every journal file on disk, a compaction's included."""
        total = 0
        for path in self.data_dir.glob("journal.*"):
            with contextlib.suppress(OSError):  # a compaction renamed it away just now
                total += path.stat().st_size
        return total

    def close(self) -> None:
        """close kills whatever incarnation still runs (the soak's `finally`)."""
        if self.alive():
            self.kill()


def monotonic_clock():
    """monotonic_clock returns a function giving seconds since it was made."""
    started = time.monotonic()
    return lambda: time.monotonic() - started
