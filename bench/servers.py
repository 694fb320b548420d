"""Server processes for the comparison: start on loopback, measure from /proc, stop by PID.

Design decision: every server the benchmark runs, WonderQ's and the peers',
is the same kind of object: a subprocess started in its own session (so a
Ctrl-C at the terminal reaches the benchmark, which then stops the servers
itself), on 127.0.0.1, on a port picked free just before, with its output
in a log file under a fresh temporary directory. What the benchmark reads
about it comes from /proc/PID: CPU time (utime + stime from `stat`) and
resident memory (VmRSS from `status`).

Rules:
* Every server started is registered until it has exited; `stop_all()`
  stops whatever is left (the command calls it in a `finally`, so errors
  and Ctrl-C stop servers too).
* Stopping is SIGTERM to the PID, a bounded wait, then SIGKILL: never by
  name, never a process this module did not start.
* Waiting for a server to be ready is bounded in time, fails at once if the
  process exits, and uses the system's own probe (a request answered, not
  just a port open: beanstalkd listens before it replays its binlog and
  Redis answers LOADING while it reads its AOF).
* CPU figures have the kernel's clock-tick resolution (usually 10 ms).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_WAIT_S = 60.0
PROBE_PAUSE_S = 0.005

_live: set[ServerProcess] = set()


def resident_bytes(pid: int) -> int | None:
    """resident_bytes is process `pid`'s VmRSS from /proc; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def free_port() -> int:
    """free_port is a loopback TCP port nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server subprocess; `started_at` is perf_counter() just before exec."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """cpu_seconds is the process's user + system CPU time so far (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        """rss_bytes is VmRSS from /proc/PID/status."""
        rss = resident_bytes(self.pid)
        if rss is None:
            raise RuntimeError(f"{self.name}: no VmRSS in /proc/{self.pid}/status")
        return rss

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, wait_s: float = STOP_WAIT_S) -> float:
        """stop sends SIGTERM, waits up to `wait_s`, then SIGKILLs; returns the seconds taken."""
        started = time.perf_counter()
        try:
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(wait_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self._log.close()
            _live.discard(self)
        return time.perf_counter() - started

    async def wait_ready(self, probe: Callable[[], Awaitable[None]], timeout_s: float) -> float:
        """wait_ready retries `probe` until it returns; returns seconds since exec.

        The probe raises while the server is not ready (refused, reset, Redis
        LOADING, ...); each try is bounded by the time left, and the last
        error is reported if time runs out.
        """
        give_up = time.monotonic() + timeout_s
        last: BaseException | None = None
        while time.monotonic() < give_up:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                async with asyncio.timeout(max(0.01, give_up - time.monotonic())):
                    await probe()  # (not wait_for: on 3.11 it can drop a cancellation)
                return time.perf_counter() - self.started_at
            except Exception as exc:  # not ready yet: any failure of the probe
                last = exc
            await asyncio.sleep(PROBE_PAUSE_S)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s ({last!r}):\n"
                           f"{self.log_tail()}")


def stop_all() -> None:
    """stop_all stops every server still registered, each by its PID."""
    for server in list(_live):
        try:
            server.stop(wait_s=10)
        except Exception as exc:  # keep stopping the others
            print(f"could not stop {server.name} (PID {server.pid}): {exc}")
