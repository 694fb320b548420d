"""beanstalkd through the pipelined text-protocol client in beanstalk_protocol.py.

Design decision: a queue is a tube; a connection `use`s it for puts and
`watch`es it (ignoring `default`) for reserves. One message at a time is one
command and one reply; a batch is the same commands pipelined in one write
(beanstalkd has no batch commands, pipelining is its best way).

Rules:
* put: priority 0, delay 0, TTR 60 s (the lease; WonderQ's default lease is
  30 s, neither expires during a run).
* receive_one(wait) is `reserve-with-timeout ceil(wait)` (beanstalkd's
  timeout is whole seconds). receive_batch(n, wait) pipelines one
  `reserve-with-timeout ceil(wait)` and n-1 `reserve-with-timeout 0`, so it
  waits for the first job only, like the others' batch receive.
* ack is `delete <id>`, answered DELETED; ack_batch pipelines the deletes.
* memory mode: no binlog. fsync mode: `-b DIR -f 0` (fsync on every
  write). restart mode: `-b DIR` with its default fsync (at most every 50 ms).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

from systems.beanstalk_protocol import BeanstalkProtocol, open_connection, stats_value

NAME = "beanstalkd"
TTR_S = 60


def missing() -> str | None:
    return None if shutil.which("beanstalkd") else "beanstalkd is not installed"


def versions() -> dict[str, str]:
    out = subprocess.run(["beanstalkd", "-v"], capture_output=True, text=True, timeout=10)
    return {"beanstalkd": (out.stdout or out.stderr).strip().removeprefix("beanstalkd "),
            "beanstalkd client": "bench/systems/beanstalk_protocol.py"}


def server_argv(port: int, data_dir: Path, mode: str) -> list[str]:
    argv = [shutil.which("beanstalkd") or "beanstalkd", "-l", "127.0.0.1", "-p", str(port)]
    if mode == "fsync":
        return [*argv, "-b", str(data_dir), "-f", "0"]
    if mode == "restart":
        return [*argv, "-b", str(data_dir)]
    return argv


def _expect(reply: object, prefix: bytes, what: str) -> None:
    line = reply[0] if isinstance(reply, tuple) else reply
    if not isinstance(line, bytes) or not line.startswith(prefix):
        raise RuntimeError(f"beanstalkd {what}: unexpected reply {line!r}")


async def probe(port: int) -> None:
    protocol = await open_connection("127.0.0.1", port, 1.0)
    try:
        [reply] = await protocol.request(b"stats\r\n", 1)
        _expect(reply, b"OK ", "stats")
    finally:
        if protocol.transport is not None:
            protocol.transport.close()


async def prepare(port: int, queue: str, mode: str) -> None:
    """prepare: tubes exist while used; nothing to create."""


async def count(port: int, queue: str) -> int:
    protocol = await open_connection("127.0.0.1", port)
    try:
        [reply] = await protocol.request(b"stats-tube %s\r\n" % queue.encode(), 1)
        if reply == b"NOT_FOUND":
            return 0
        _expect(reply, b"OK ", "stats-tube")
        body = reply[1]
        return sum(int(stats_value(body, key)) for key in (
            "current-jobs-ready", "current-jobs-reserved", "current-jobs-delayed"))
    finally:
        if protocol.transport is not None:
            protocol.transport.close()


async def connect(port: int, queue: str, consumer: str) -> Connection:
    protocol = await open_connection("127.0.0.1", port)
    tube = queue.encode()
    replies = await protocol.request(
        b"use %s\r\nwatch %s\r\nignore default\r\n" % (tube, tube), 3)
    _expect(replies[0], b"USING", "use")
    _expect(replies[1], b"WATCHING", "watch")
    _expect(replies[2], b"WATCHING", "ignore")
    return Connection(protocol)


class Connection:
    def __init__(self, protocol: BeanstalkProtocol) -> None:
        self._protocol = protocol

    async def put(self, body: bytes) -> None:
        [reply] = await self._protocol.request(
            b"put 0 0 %d %d\r\n%s\r\n" % (TTR_S, len(body), body), 1)
        _expect(reply, b"INSERTED", "put")

    async def put_batch(self, bodies: list[bytes]) -> None:
        data = b"".join(b"put 0 0 %d %d\r\n%s\r\n" % (TTR_S, len(body), body)
                        for body in bodies)
        for reply in await self._protocol.request(data, len(bodies)):
            _expect(reply, b"INSERTED", "put")

    async def receive_one(self, wait_s: float) -> tuple[bytes, bytes] | None:
        [reply] = await self._protocol.request(
            b"reserve-with-timeout %d\r\n" % math.ceil(wait_s), 1)
        if isinstance(reply, tuple):
            _expect(reply, b"RESERVED", "reserve")
            return reply[0].split(b" ", 2)[1], reply[1]
        if reply == b"TIMED_OUT":
            return None
        raise RuntimeError(f"beanstalkd reserve: unexpected reply {reply!r}")

    async def ack(self, handle: bytes) -> None:
        [reply] = await self._protocol.request(b"delete %s\r\n" % handle, 1)
        _expect(reply, b"DELETED", "delete")

    async def receive_batch(self, n: int, wait_s: float) -> list[tuple[bytes, bytes]]:
        data = (b"reserve-with-timeout %d\r\n" % math.ceil(wait_s)
                + b"reserve-with-timeout 0\r\n" * (n - 1))
        got = []
        for reply in await self._protocol.request(data, n):
            if isinstance(reply, tuple):
                _expect(reply, b"RESERVED", "reserve")
                got.append((reply[0].split(b" ", 2)[1], reply[1]))
            elif reply != b"TIMED_OUT":
                raise RuntimeError(f"beanstalkd reserve: unexpected reply {reply!r}")
        return got

    async def ack_batch(self, handles: list[bytes]) -> None:
        if not handles:
            return
        data = b"".join(b"delete %s\r\n" % handle for handle in handles)
        for reply in await self._protocol.request(data, len(handles)):
            _expect(reply, b"DELETED", "delete")

    async def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.close()
            await self._protocol.closed
