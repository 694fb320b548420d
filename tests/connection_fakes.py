"""A fake transport and a manual event loop for connection tests; no sockets.

`FakeHub` is the server as a connection sees it (the Hub protocol), around a
real BrokerService and Broker. Its clock is a number the test sets, and
`defer`/`want_flush` only queue callbacks: `run()` is one turn of the loop,
running them in order until none are left, the way the server's call_soon
does. Timers (`call_later`) fire when `advance` moves the clock past them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import msgpack

from wonderq_server.admin_pace import AdminPace
from wonderq_server.auth import TokenCheck
from wonderq_server.binary_codec import PREAMBLE, encode_request
from wonderq_server.broker import Broker
from wonderq_server.commands import Limits
from wonderq_server.connection import Connection
from wonderq_server.connection_limits import ConnectionLimits, Counters
from wonderq_server.refusal_log import RefusalLog
from wonderq_server.service import UNFINISHED, BrokerService

START = 1_700_000_000.0


TCP_ESTABLISHED, TCP_CLOSE_WAIT = 1, 8  # Linux's tcpi_state: open; the client sent its FIN


class FakeSocket:
    """The transport's socket, as far as peer_state.py asks it: TCP_INFO's first byte, and
    the options set on it (TCP keepalive)."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[level, option] = value

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
        assert (level, option, buflen) == (socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        self.transport.tcp_state_asked += 1
        return bytes([self.transport.tcp_state])


class FakeTransport:
    """Records what the connection does to its socket."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes | None]] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self.tcp_state = TCP_ESTABLISHED  # what the kernel says of the socket (FakeSocket)
        self.tcp_state_asked = 0
        self.unsent = 0  # what get_write_buffer_size reports: set by a test
        self.full_after_write = False  # set: every write pauses writing until drain()
        self.eof_writable = False  # set: a TCP socket that can half-close (lingering close)
        self.protocol: Connection | None = None

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        self.events.append(("abort", None))
        self.closed = self.aborted = True

    def write(self, data: bytes) -> None:
        self.events.append(("write" if not self.closed else "write after close", bytes(data)))
        if self.full_after_write and self.protocol is not None:
            self.protocol.pause_writing()  # as a socket whose send buffer passed high water

    def drain(self) -> None:
        """drain: the peer read what was written (after full_after_write)."""
        if self.protocol is not None:
            self.protocol.resume_writing()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return self.eof_writable

    def write_eof(self) -> None:
        self.events.append(("write_eof", None))

    def close(self) -> None:
        if not self.closed:
            self.events.append(("close", None))
        self.closed = True

    def pause_reading(self) -> None:
        self.events.append(("pause_reading", None))
        self.reading = False

    def resume_reading(self) -> None:
        self.events.append(("resume_reading", None))
        self.reading = True

    def get_extra_info(self, name: str, default=None):
        if name == "socket":
            return FakeSocket(self)
        return ("127.0.0.1", 40000) if name == "peername" else default

    @property
    def writes(self) -> list[bytes]:
        return [data for kind, data in self.events if kind == "write"]

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def frames(self) -> list:
        """frames decodes every binary reply written so far."""
        data, out = self.data, []
        while data:
            size = int.from_bytes(data[:4], "big")
            out.append(msgpack.unpackb(data[4:4 + size], raw=False, strict_map_key=False))
            data = data[4 + size:]
        return out


class FakeTimer:
    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeHub:
    def __init__(self, limits: Limits | None = None, visibility_timeout_s: float = 30.0,
                 connection_limits: ConnectionLimits | None = None,
                 auth_token: bytes | None = None) -> None:
        self.limits = limits or Limits()
        self.connection_limits = connection_limits or ConnectionLimits()
        self.counters = Counters()
        self.refusing_changes = False  # the server's, while journal writes fail
        self.refusal_log = RefusalLog(logging.getLogger("wonderq.server"))
        self.admin_pace = AdminPace(self.call_later)
        self.timers: list[FakeTimer] = []
        self.refusing: Exception | None = None  # set: connections are refused with this
        self.broker = Broker(visibility_timeout_s=visibility_timeout_s,
                             max_message_bytes=self.limits.max_message_bytes)
        self.service = BrokerService(self.broker, lambda now: {"version": "test"},
                                     TokenCheck(auth_token))
        self.clock = START
        self.ready: list[Callable[[], None]] = []
        self.dirty: list[Connection] = []
        self.opened: list[Connection] = []
        self.closed: list[Connection] = []

    # the Hub protocol
    def now(self) -> float:
        return self.clock

    def monotonic(self) -> float:
        return self.clock

    def defer(self, callback: Callable[[], None]) -> None:
        self.ready.append(callback)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.clock + delay_s, callback)
        self.timers.append(timer)
        return timer

    def want_flush(self, connection: Connection) -> None:
        if not self.dirty:
            self.ready.append(self._flush)
        self.dirty.append(connection)

    def input_done(self, connection: Connection) -> None:
        self.want_flush(connection)  # as the server does with a journal: one flush per turn

    def finish_detached(self, command) -> None:
        """finish_detached: as the server does, the rest of a REDRIVE whose connection went
        runs a step a turn, its result to nobody."""
        def step() -> None:
            if self.service.execute(command, self.clock, lambda *_: None) is UNFINISHED:
                self.defer(step)
        self.defer(step)

    def connection_opened(self, connection: Connection) -> None:
        self.opened.append(connection)
        if self.refusing is not None:  # as the server does over --max-connections
            connection.refuse(self.refusing)

    def connection_closed(self, connection: Connection) -> None:
        self.closed.append(connection)

    # the manual loop
    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for connection in dirty:
            connection.flush()

    def run(self) -> None:
        while self.ready:
            self.ready.pop(0)()

    def turn(self) -> None:
        """turn: one turn of the loop: the callbacks ready when it starts, not those they
        add (asyncio's and uvloop's call_soon run those in the next turn)."""
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()

    def advance(self, seconds: float) -> None:
        """advance moves the clock and fires the broker's deadline timer, as the server does."""
        self.clock += seconds
        self.service.advance(self.clock)
        self.run()
        while True:  # connection timers due by now, in time order, each in its own turn
            due = sorted((t for t in self.timers if t.at <= self.clock and not t.cancelled),
                         key=lambda t: t.at)
            if not due:
                break
            self.timers.remove(due[0])
            due[0].callback()
            self.run()

    # helpers
    def connect(self) -> tuple[Connection, FakeTransport]:
        connection, transport = Connection(self), FakeTransport()
        transport.protocol = connection
        connection.connection_made(transport)
        return connection, transport

    def send(self, connection: Connection, data: bytes) -> None:
        connection.data_received(data)
        self.run()

    def queue_stats(self, name: str = "q") -> dict:
        """queue_stats: the queue's counters (not its ages and rates)."""
        figures = self.broker.stats(self.clock)["queues"][name]
        return {key: figures[key] for key in ("ready", "in_flight", "delayed", "waiting",
                                              "put_total", "acked_total", "redelivered_total")}


def req(request_id, name: str, **args) -> bytes:
    return encode_request(request_id, name, args)


def binary_client(hub: FakeHub) -> tuple[Connection, FakeTransport]:
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE)
    assert connection.mode == "binary"
    return connection, transport


def put_via_text(hub: FakeHub, body: bytes, queue: str = "q") -> int:
    connection, transport = hub.connect()
    hub.send(connection, b"PUT %s %s\r\n" % (queue.encode(), body))
    reply = transport.data
    assert reply.startswith(b"OK ") and reply.endswith(b"\r\n"), reply
    return int(reply[3:-2])
