"""Where a comparison ran: the machine, the Python, every server's and client's version.

Design decision: RESULTS.md must let a reader judge the figures without
asking, so the command records the machine (cores, CPU model, memory,
kernel), the load generator's Python and event loop, and the version every
system reports about itself (its adapter's `versions()`), at the time of the
run rather than from memory.

Rules:
* Reading the environment never fails the run: a missing file or command
  gives "unknown".
"""

from __future__ import annotations

import os
import platform
import sys
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


def machine() -> dict[str, str]:
    return {
        "cores": str(os.cpu_count() or "unknown"),
        "CPU": _cpu_model(),
        "memory": _memory(),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python (load generator)": sys.version.split()[0],
        "event loop (load generator)": _event_loop(),
    }


def versions(systems: list[ModuleType]) -> dict[str, str]:
    found: dict[str, str] = {}
    for system in systems:
        try:
            found.update(system.versions())
        except Exception as exc:  # never fail the run over a version string
            found[system.NAME] = f"unknown ({exc})"
    return found
