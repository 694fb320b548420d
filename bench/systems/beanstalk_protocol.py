"""A small asyncio client of beanstalkd's text protocol, pipelined, for the benchmark.

Design decision: beanstalkd answers the commands of one connection in order,
so the client needs no request ids: `request(data, replies)` writes any
number of commands in one write and returns a future for the next `replies`
replies, collected into one list. A single command is `request(cmd, 1)`;
100 pipelined puts are one write and one future. This keeps the client's own
cost per message as low as WonderQ's client, so the comparison measures the
servers and not a slow client.

Rules:
* A reply is its line without CRLF (bytes), except the replies that carry a
  body (RESERVED <id> <n>, FOUND <id> <n>, OK <n>), which are
  (first line, body).
* Commands are the caller's bytes, CRLF-terminated; this module checks no
  arguments (the adapter in beanstalkd.py builds them).
* If the connection ends, every waiting future raises ConnectionError.
* Only what the benchmark needs: put, reserve-with-timeout, delete, use,
  watch, ignore, stats-tube. See beanstalkd's doc/protocol.txt.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

BODY_REPLIES = (b"RESERVED ", b"FOUND ", b"OK ")


class BeanstalkProtocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buffer = bytearray()
        # each waiter: [replies still expected, replies so far, future]
        self._waiters: deque[list[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"beanstalkd connection closed{': ' + str(exc) if exc else ''}")
        while self._waiters:
            future = self._waiters.popleft()[2]
            if not future.done():
                future.set_exception(error)
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        waiters = self._waiters
        while waiters:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            if line.startswith(BODY_REPLIES):
                size = int(line.rsplit(b" ", 1)[1])
                if len(buffer) < end + 4 + size:
                    break
                reply: Any = (line, bytes(buffer[end + 2:end + 2 + size]))
                start = end + 4 + size
            else:
                reply = line
                start = end + 2
            waiter = waiters[0]
            waiter[1].append(reply)
            waiter[0] -= 1
            if waiter[0] == 0:
                waiters.popleft()
                if not waiter[2].done():
                    waiter[2].set_result(waiter[1])
        if start:
            del buffer[:start]

    def request(self, data: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """request writes `data` (one or more commands) and awaits the next `replies` replies."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("beanstalkd connection closed")
        future = self._loop.create_future()
        self._waiters.append([replies, [], future])
        self.transport.write(data)
        return future


async def open_connection(host: str, port: int, timeout_s: float = 10.0) -> BeanstalkProtocol:
    """open_connection connects and returns the protocol; close with `.transport.close()`."""
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: BeanstalkProtocol(loop), host, port), timeout_s)
    return protocol


def stats_value(yaml_body: bytes, key: str) -> str:
    """stats_value reads `key: value` from a stats reply's YAML body."""
    prefix = key.encode() + b":"
    for line in yaml_body.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip().decode()
    raise KeyError(key)
