"""NATS JetStream through nats-py: a work-queue stream and one durable pull consumer.

Design decision: a queue is a stream with work-queue retention (a message
is deleted once acked) on one subject, and one durable pull consumer,
"workers", with explicit acks, shared by every consuming connection. put is
a JetStream publish that waits for the stream's PubAck; a batch put is
publish_async of every body, then waiting for all the PubAcks. receive is
fetch(n) on the pull consumer.

Rules:
* ack (one message) is ack_sync: a request answered once the server
  processed the ack, like the other systems' acks. A batch ack publishes the
  acks without replies (nats-py's msg.ack(), JetStream has no batch ack
  with explicit acks) and then flushes the connection with one PING/PONG:
  the server has read every ack when the PONG comes back, but has not
  confirmed applying them. This is the one ack in the benchmark that is not
  answered; bench/README.md lists it.
* The stream's storage is memory in memory mode, file otherwise. NATS 2.9
  has no setting to fsync every write: its file store is used as it is
  (written at once, fsynced periodically), in S6 too.
* The consumer's max_ack_pending is raised to 100,000 (the default, 1,000,
  would throttle S5-sized backlogs, not this benchmark's loads); ack_wait is
  60 s, like beanstalkd's TTR here.
* fetch's timeout must be positive: a zero wait becomes 10 ms.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import shutil
import subprocess
from pathlib import Path
from typing import Any

try:
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
except ImportError:  # reported by missing()
    nats = None

NAME = "nats"
DURABLE = "workers"
REPLY_TIMEOUT_S = 30.0


def missing() -> str | None:
    if not shutil.which("nats-server"):
        return "nats-server is not installed"
    if nats is None:
        return "the Python package nats-py is not installed"
    return None


def versions() -> dict[str, str]:
    out = subprocess.run(["nats-server", "--version"], capture_output=True, text=True,
                         timeout=10).stdout.strip()
    return {"nats-server": out.removeprefix("nats-server: "),
            "nats-py": importlib.metadata.version("nats-py")}


def server_argv(port: int, data_dir: Path, mode: str) -> list[str]:
    return [shutil.which("nats-server") or "nats-server", "-js", "-a", "127.0.0.1",
            "-p", str(port), "-sd", str(data_dir)]


def _names(queue: str) -> tuple[str, str]:
    return f"BENCH_{queue}", f"bench.{queue}"


async def _nc(port: int, **options: Any) -> Any:
    return await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False,
                              max_reconnect_attempts=0, connect_timeout=2, **options)


async def _quiet(exc: Exception) -> None:
    """_quiet is the probe's error callback: a refused probe is expected, not news."""


async def probe(port: int) -> None:
    """probe waits for the INFO line on a plain socket first: nats-py's own connect

    pauses for its reconnect wait (2 s) after a refused attempt, which would
    be counted in S7's restart time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if not (await reader.readline()).startswith(b"INFO "):
            raise ConnectionError("no INFO line from nats-server")
    finally:
        writer.close()
    nc = await _nc(port, error_cb=_quiet)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


async def prepare(port: int, queue: str, mode: str) -> None:
    stream, subject = _names(queue)
    nc = await _nc(port)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(
            name=stream, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.MEMORY if mode == "memory" else StorageType.FILE))
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=60,
            max_ack_pending=100_000, filter_subject=subject))
    finally:
        await nc.close()


async def count(port: int, queue: str) -> int:
    nc = await _nc(port)
    try:
        info = await nc.jetstream().stream_info(_names(queue)[0])
        return int(info.state.messages)
    finally:
        await nc.close()


async def connect(port: int, queue: str, consumer: str) -> Connection:
    return Connection(await _nc(port), queue)


class Connection:
    def __init__(self, nc: Any, queue: str) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._stream, self._subject = _names(queue)
        self._sub: Any = None

    async def put(self, body: bytes) -> None:
        await self._js.publish(self._subject, body, timeout=REPLY_TIMEOUT_S)

    async def put_batch(self, bodies: list[bytes]) -> None:
        publish = self._js.publish_async
        subject = self._subject
        futures = [await publish(subject, body) for body in bodies]
        await asyncio.wait_for(asyncio.gather(*futures), REPLY_TIMEOUT_S)

    async def _fetch(self, n: int, wait_s: float) -> list[Any]:
        if self._sub is None:  # bound on first use: producers need no subscription
            self._sub = await self._js.pull_subscribe_bind(DURABLE, stream=self._stream)
        try:
            return await self._sub.fetch(n, timeout=max(wait_s, 0.01))
        except (TimeoutError, nats.errors.TimeoutError):
            return []

    async def receive_one(self, wait_s: float) -> tuple[Any, bytes] | None:
        got = await self._fetch(1, wait_s)
        return (got[0], got[0].data) if got else None

    async def ack(self, handle: Any) -> None:
        await handle.ack_sync(timeout=REPLY_TIMEOUT_S)

    async def receive_batch(self, n: int, wait_s: float) -> list[tuple[Any, bytes]]:
        return [(msg, msg.data) for msg in await self._fetch(n, wait_s)]

    async def ack_batch(self, handles: list[Any]) -> None:
        for msg in handles:
            await msg.ack()
        await self._nc.flush(timeout=REPLY_TIMEOUT_S)

    async def close(self) -> None:
        await self._nc.close()
