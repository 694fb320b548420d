"""Whether the client has closed a socket the server has stopped reading from.

Design decision: while the server is not reading from a connection (flow
control, connection_limits.py), asyncio cannot tell it that the client has
gone: the FIN sits in the kernel behind the bytes not yet read. A message
leased to one of that connection's waiting receives would then be invisible
to every consumer until its lease ran out. So before the broker leases to a
waiting receive of a paused connection, the connection asks the kernel for
the socket's TCP state (TCP_INFO, one getsockopt): anything but ESTABLISHED
means the client has sent its FIN or a reset. beanstalkd and Redis have no
such case: they hold one blocking command per connection and keep reading.

Rules:
* Asked only about a paused connection, and only when one of its waiting
  receives is about to be served: never on the path of a connection that
  is being read, which learns of a close from eof_received as usual.
* Where the answer cannot be had (not Linux, a socket that is not TCP, no
  socket, any OSError), the client counts as still there: its messages come
  back when their leases run out, as before.
* A client that shut down only its sending side (`nc -N`) looks the same as
  one that closed; at EOF a reading connection answers its waiting receives
  with nothing too (connection.eof_received), so the two agree.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

# tcpi_state, the first byte of Linux's struct tcp_info (include/net/tcp_states.h).
# Other systems number their states differently, or have no TCP_INFO.
_TCP_ESTABLISHED = 1
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None


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
