"""The kernel's view of a loopback TCP connection, from /proc/net/tcp (Linux).

Keepalive cannot be watched doing its work here (a vanished host cannot be
made without root firewall rules), so tests read the timer the kernel keeps
on one end of a real connection: its kind (2: keepalive, 0: none) and the
seconds until it fires.
"""

from __future__ import annotations

import os


def tcp_timer(local_port: int, remote_port: int) -> tuple[int, float]:
    """tcp_timer: the timer on the 127.0.0.1:`local_port` end of the connection to
    127.0.0.1:`remote_port`: its kind and the seconds until it fires."""
    local, remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                kind, when = fields[5].split(":")
                return int(kind, 16), int(when, 16) / os.sysconf("SC_CLK_TCK")
    raise AssertionError(f"no connection {local} -> {remote} in /proc/net/tcp")
