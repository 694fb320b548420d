"""Whether the client has closed a socket, before asyncio has told the connection.

Design decision: asyncio learns of a close late. A FIN or reset waits in the
kernel behind bytes not yet read: while the server is not reading from a
connection (flow control, connection_limits.py), or when the close came in
the same batch of events as the put that would serve its waiting receive,
after it. A reset that was read calls connection_lost only a loop turn
later, and over TLS a bare FIN is not seen until the TLS layer gives up. A
message leased to such a connection's waiting receive would be invisible to
every consumer until its lease ran out (and its delivery would count toward
max_deliveries, unseen). So before the broker leases to a waiting receive,
the connection asks the kernel for the socket's TCP state (TCP_INFO, one
getsockopt, about 1.3 us here): anything but ESTABLISHED means the client
has sent its FIN or a reset. beanstalkd and Redis, which hold one blocking
command per connection, have the same race and do not close it.

Rules:
* Asked only when a waiting receive is about to be served: one system call
  per waiting receive served, never per message and never on the path of a
  receive that finds messages at once. (In bench S3 consumers never wait:
  strace counted no getsockopt in 20,000 messages.)
* Where the answer cannot be had (not Linux, a socket that is not TCP, no
  socket, any OSError), the client counts as still there: its messages come
  back when their leases run out, as before.
* A client that shut down only its sending side (`nc -N`) looks the same as
  one that closed; at EOF a reading connection answers its waiting receives
  with nothing too (connection.eof_received), so the two agree.
* What is left: a close that reaches the server after this check, while the
  message is on its way out. Its message comes back when its lease runs out.
* A peer that vanished without a FIN (power loss, a dead network path) is
  found by TCP keepalive (`enable_keepalive`, --tcp-keepalive): the kernel
  probes a silent connection and ends it when nobody answers. Redis'
  anetKeepAlive settings: idle N seconds, then a probe every N/3, three
  probes. Where the options cannot be set, the connection goes on without.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

try:
    import fcntl
    import termios
except ImportError:  # not Unix
    fcntl = termios = None  # type: ignore[assignment]

# tcpi_state, the first byte of Linux's struct tcp_info (include/net/tcp_states.h).
# Other systems number their states differently, or have no TCP_INFO.
_TCP_ESTABLISHED = 1
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
# Linux's SIOCOUTQ is TIOCOUTQ's number: a TCP socket's bytes sent but not yet acknowledged.
_SIOCOUTQ: int | None = (getattr(termios, "TIOCOUTQ", None)
                         if sys.platform == "linux" and termios is not None else None)


def peer_has_closed(transport: Any) -> bool:
    """peer_has_closed: True when the transport's TCP socket has received the client's
    FIN or a reset; False while it is established or when that cannot be known."""
    if _TCP_INFO is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)
    except (OSError, ValueError):
        return False
    return bool(info) and info[0] != _TCP_ESTABLISHED


KEEPALIVE_PROBES = 3
MAX_KEEPALIVE_S = 32767  # Linux's MAX_TCP_KEEPIDLE


def enable_keepalive(transport: Any, idle_s: int) -> None:
    """enable_keepalive: the kernel probes the transport's socket after `idle_s` seconds of
    silence, then every idle_s // 3, and ends the connection after KEEPALIVE_PROBES
    unanswered probes."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS names the first TCP_KEEPALIVE
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle_s // 3))
        if hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except (OSError, ValueError):
        pass  # not TCP, or options this system lacks: no keepalive, as before


def unsent_bytes(transport: Any) -> int:
    """unsent_bytes: what the transport still has to deliver to the client: its own write
    buffer plus the socket's send queue in the kernel (Linux's SIOCOUTQ: bytes not yet
    acknowledged by the client's TCP), so a client reading a backlog is seen to progress
    even while the whole backlog sits in the kernel."""
    queued = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is None or _SIOCOUTQ is None:
        return queued
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return queued
    return queued + int.from_bytes(raw, sys.byteorder)
