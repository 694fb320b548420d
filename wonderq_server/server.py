"""The server: listener, the one deadline timer, the per-iteration flush.

Design decision: the server is the thin asyncio layer that owns everything
with time or I/O in it, and nothing else:

* the listening socket, which makes one Connection per client;
* the clock (`now`), read once per batch of input and passed down;
* one timer, armed at the broker's next deadline; when it fires, the broker
  handles every deadline that has passed (`advance`);
* the flush: connections buffer replies and ask for a flush; the server runs
  one flush per event-loop iteration (`call_soon`), writing each connection's
  replies in one write, then re-arms the timer.

Rules:
* There is never more than one timer, and never a polling loop: the timer is
  moved whenever the earliest deadline changes, and runs only when something
  is due.
* The loop's clock is monotonic, the broker's is wall time; the timer is set
  as a delay (`deadline - now`), and when it fires `now` is taken as at least
  the deadline it was armed for, so it cannot fire early and spin.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .broker import Broker
from .config import Config
from .connection import Connection
from .service import BrokerService

logger = logging.getLogger("wonderq.server")


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.limits = config.limits
        self.broker = Broker(visibility_timeout_s=config.visibility_timeout_s,
                             max_message_bytes=config.limits.max_message_bytes)
        self.service = BrokerService(self.broker, self._server_info)
        self.connections: set[Connection] = set()
        self.connections_total = 0
        self.started_at = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> tuple[str, int]:
        """start listens; returns the (host, port) actually bound."""
        self._loop = asyncio.get_running_loop()
        self._listener = await self._loop.create_server(
            lambda: Connection(self), self.config.host, self.config.port, reuse_address=True)
        sockname = self._listener.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        return self.address

    async def stop(self) -> None:
        """stop closes the listener and every connection after flushing their replies."""
        if self._listener is not None:
            self._listener.close()
        self._flush()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._listener is not None:
            await self._listener.wait_closed()

    # ---------------------------------------------------------- hub for conns

    def now(self) -> float:
        return time.time()

    def defer(self, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_soon(callback)

    def connection_opened(self, connection: Connection) -> None:
        self.connections.add(connection)
        self.connections_total += 1

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self._arm_timer()  # withdrawn waits may have moved the next deadline

    def want_flush(self, connection: Connection) -> None:
        self._dirty.append(connection)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    # ----------------------------------------------------------- flush, timer

    def _flush(self) -> None:
        """_flush writes all buffered replies, one write per connection, then re-arms the timer."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()
        self._arm_timer()

    def _arm_timer(self) -> None:
        at = self.service.next_deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and self._loop is not None:
            self._timer = self._loop.call_later(max(0.0, at - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        at = self._timer_at
        self._timer = None
        self._timer_at = None
        now = time.time()
        if at is not None and now < at:
            now = at  # the loop's clock and the wall clock differ slightly; never spin
        try:
            self.service.advance(now)
        except Exception:
            logger.exception("internal error while handling deadlines")
        self._arm_timer()

    # ------------------------------------------------------------------ stats

    def _server_info(self, now: float) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 3),
            "connections": len(self.connections),
            "connections_total": self.connections_total,
        }
