"""TCP keepalive on the client's socket, so a call does not wait for ever on a vanished host.

Design decision: a server whose host loses power, or whose network path dies,
sends no FIN and no reset, so a call waiting on it (a receive that waits on
the server, or any reply) would wait for good: the kernel never learns that
the peer is gone while nothing is in flight unacknowledged. With keepalive,
the kernel probes a connection silent for `tcp_keepalive` seconds, then every
third of that, and ends it after KEEPALIVE_PROBES unanswered probes: every
call on it then raises ConnectionClosed, as for any connection that ends. The
server does the same for its clients (`--tcp-keepalive`); this is the client's
own copy of it, since the client never imports the server. A Worker has its
reply timeout besides.

Rules:
* `connect(tcp_keepalive=SECONDS)`: 300 by default (as the server's, and
  Redis' tcp-keepalive), 0 off, at most MAX_KEEPALIVE_S (Linux's limit).
* Set once per connection (four setsockopt calls), nothing per message; a
  system without the options gets what it has (SO_KEEPALIVE alone), and a
  socket that is not TCP none.
"""

from __future__ import annotations

import socket
from typing import Any

DEFAULT_KEEPALIVE_S = 300
MAX_KEEPALIVE_S = 32767  # Linux's MAX_TCP_KEEPIDLE
KEEPALIVE_PROBES = 3


def check_keepalive(value: object) -> int:
    """check_keepalive: connect()'s `tcp_keepalive`, whole seconds from 0 (off) to the max."""
    if type(value) is not int or not 0 <= value <= MAX_KEEPALIVE_S:
        raise ValueError(f"tcp_keepalive must be whole seconds from 0 (off) to "
                         f"{MAX_KEEPALIVE_S}, not {value!r}")
    return value


def enable_keepalive(transport: Any, idle_s: int) -> None:
    """enable_keepalive: the kernel probes the transport's socket after `idle_s` silent
    seconds, then every idle_s // 3, and ends it after KEEPALIVE_PROBES unanswered."""
    sock = transport.get_extra_info("socket")
    if sock is None or not idle_s:
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", max(1, idle_s // 3)),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, name):  # Linux; macOS names the first TCP_KEEPALIVE
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    try:
        for level, option, value in options:
            sock.setsockopt(level, option, value)
    except (OSError, ValueError):
        pass  # not TCP (a Unix socket), or an option this system refuses
