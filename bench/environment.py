"""Where a comparison ran: the machine, the Python, every server's and client's version.

Design decision: RESULTS.md must let a reader judge the figures without
asking, so the command records the machine (cores, and those the run may
use; CPU model, memory, kernel; the filesystem of the data directories; the
CPU time other guests stole during the run), the load generator's Python and
event loop, and the version every system reports about itself (its adapter's
`versions()`), at the time of the run rather than from memory.

Rules:
* Reading the environment never fails the run: a missing file or command
  gives "unknown".
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from types import ModuleType


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _event_loop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio (standard loop)"
    return f"uvloop {uvloop.__version__}"


def _cores() -> str:
    """_cores: the machine's, and those this process may run on when fewer (taskset):
    RESULTS-one-cpu.md, run under `taskset -c 0`, said 2 (a reviewer)."""
    total = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = total
    if total is None:
        return "unknown"
    return str(total) if usable == total else f"{total}, of which this run may use {usable}"


def _filesystem(path: Path) -> str:
    """_filesystem: the type and device of the mount holding `path` (S6's fsyncs and S7's
    reads depend on it), from /proc/mounts."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[:3] for line in f]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best = max((m for m in mounts if resolved == m[1] or resolved.startswith(
        m[1].rstrip("/") + "/")), key=lambda m: len(m[1]), default=None)
    return f"{best[2]} ({best[0]} on {best[1]})" if best else "unknown"


def cpu_ticks() -> tuple[int, int]:
    """cpu_ticks: (stolen, all) of the machine's CPU time so far, from /proc/stat, to tell
    how much a run lost to other guests on a shared host; (0, 0) if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def machine(data_root: Path | None = None) -> dict[str, str]:
    found = {
        "cores": _cores(),
        "CPU": _cpu_model(),
        "memory": _memory(),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python (load generator)": sys.version.split()[0],
        "event loop (load generator)": _event_loop(),
    }
    if data_root is not None:
        found["filesystem of the data directories"] = _filesystem(data_root)
    return found


def versions(systems: list[ModuleType]) -> dict[str, str]:
    found: dict[str, str] = {}
    for system in systems:
        try:
            found.update(system.versions())
        except Exception as exc:  # never fail the run over a version string
            found[system.NAME] = f"unknown ({exc})"
    return found
