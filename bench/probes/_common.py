"""What the probes share: the server's CPU seconds and resident memory, from /proc."""

from __future__ import annotations

import os


def server_cpu_s(pid: int) -> float:
    """server_cpu_s: user + system CPU seconds of process `pid`."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0
