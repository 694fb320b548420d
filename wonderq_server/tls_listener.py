"""The TLS port's listener: it accepts in Python, so a client's address is known before its
handshake.

Design decision: asyncio's TLS server (create_server with ssl=) accepts and
starts each handshake inside the event loop's C code; the first the server
hears of a client is its Connection's connection_made, after the handshake,
and the handshake hook (tls.py) never learns the peer's address. So one
host's silent connections to a TLS port were counted by
--max-connections (as handshakes in progress) but not by
--max-connections-per-address, and could hold every slot for
--tls-handshake-timeout, again and again (a reviewer). Here the listening
sockets are the server's: when one is readable, `accept()` takes what is
waiting, asks `admit(peer)` (the server counts the address, or refuses it),
and hands each admitted socket to the loop's `connect_accepted_socket`
with the TLS context, which runs the same handshake, timeout and protocol
as before. The plain port keeps asyncio's own accept (its address is known
at connection_made, before any byte is read).

Rules:
* Per accepted socket: one accept() and one task for its handshake; nothing
  per message. At most ACCEPTS_PER_WAKE are taken per readiness, so a
  storm of connections still lets the loop serve others in between.
* A socket `admit` refuses is closed at once: over TLS nothing can be said
  before a handshake.
* Out of file descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM),
  accepting stops for ACCEPT_RETRY_S and the failure is reported, as
  asyncio's own accept loop does; the waiting clients stay in the kernel's
  backlog. Any other error of one accept (the client reset first) is
  skipped.
* `handshake_over(protocol)` is called once per admitted socket when its
  handshake has ended, done or not; the server releases what it counted if
  the protocol never got its connection.
* Addresses are bound as asyncio binds them: every address the host
  resolves to, IPv6 sockets IPv6 only, SO_REUSEADDR.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("wonderq.server")

ACCEPTS_PER_WAKE = 128
ACCEPT_RETRY_S = 1.0
BACKLOG = 511  # what uvloop's create_server asks for
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class TlsListener:
    """TlsListener serves one TLS port (the module's rules)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext,
                 handshake_timeout_s: float,
                 admit: Callable[[Any], asyncio.Protocol | None],
                 handshake_over: Callable[[asyncio.Protocol], None],
                 out_of_resources: Callable[[OSError], None]) -> None:
        """`admit(peer)` returns the protocol to serve the client with, or None to close
        it; `handshake_over(protocol)` follows every admitted socket's handshake."""
        self.loop = loop
        self.context = context
        self.handshake_timeout_s = handshake_timeout_s
        self.admit = admit
        self.handshake_over = handshake_over
        self.out_of_resources = out_of_resources
        self.sockets: list[socket.socket] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = False

    def listen(self, host: str, port: int) -> None:
        """listen binds every address `host` resolves to and starts accepting."""
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self.out_of_resources(exc)
                    self.loop.remove_reader(listening.fileno())
                    self.loop.call_later(ACCEPT_RETRY_S, self._resume, listening)
                    return
                continue  # this client went (ECONNABORTED and the like): the next
            protocol = self.admit(peer)
            if protocol is None:
                sock.close()
                continue
            sock.setblocking(False)
            task = self.loop.create_task(self._handshake(sock, protocol))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume(self, listening: socket.socket) -> None:
        if not self._closed:
            self.loop.add_reader(listening.fileno(), self._accept, listening)

    async def _handshake(self, sock: socket.socket, protocol: asyncio.Protocol) -> None:
        try:
            await self.loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout_s)
        except (Exception, asyncio.CancelledError):
            # Failed, timed out, or the server stopped: tls.py's hook has reported a
            # failure; the socket is closed here if the TLS layer has not.
            sock.close()
        finally:
            self.handshake_over(protocol)

    def close(self) -> None:
        """close stops accepting; handshakes under way go on (the server refuses what
        they bring once it stops)."""
        self._closed = True
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self.loop.remove_reader(sock.fileno())
                sock.close()
