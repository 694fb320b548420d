"""Redis Streams with a consumer group, through redis.asyncio (hiredis parser when installed).

Design decision: a queue is a stream with one consumer group, "workers",
created at id 0 before any load. put is XADD (one field, "b", the body);
receive is XREADGROUP ... > (new entries, which puts them in the group's
pending list: the lease); ack is XACK plus XDEL of the same ids, pipelined
in one round trip, so an acked entry leaves memory as a deleted job does in
the other systems. A batch put is a pipeline of XADDs (no MULTI); a batch
receive is XREADGROUP COUNT n; a batch ack is one XACK and one XDEL of all
the ids, pipelined.

Rules:
* Each Connection has its own client, made with single_connection_client
  (one socket for every plain command: about a third less client CPU per
  command than going through the pool each time). redis-py runs pipelines
  on a connection from the pool, so a Connection that pipelines holds a
  second socket; its commands are still sequential, never two at once.
* receive waits with BLOCK (milliseconds; a zero wait sends no BLOCK, since
  BLOCK 0 would wait for ever).
* Redis has no lease timeout: an unacked entry stays pending until someone
  XCLAIMs it (the benchmark never needs to).
* memory mode: `--save '' --appendonly no`. fsync mode: `--appendonly yes
  --appendfsync always`. restart mode: `--appendonly yes` (fsync every
  second, the default), so S7 replays the AOF (Redis 7's multi-part AOF,
  which may have been rewritten with an RDB preamble during the fill).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any

try:
    import redis.asyncio as aioredis
except ImportError:  # reported by missing()
    aioredis = None

NAME = "redis"
GROUP = "workers"
FIELD = b"b"


def missing() -> str | None:
    if not shutil.which("redis-server"):
        return "redis-server is not installed"
    if aioredis is None:
        return "the Python package redis is not installed"
    if importlib.util.find_spec("hiredis") is None:
        # Without it redis-py parses replies in Python: not Redis's best honest usage.
        return "the Python package hiredis is not installed (pip install hiredis)"
    return None


def versions() -> dict[str, str]:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                         timeout=10).stdout.strip()
    found = {"redis-server": out.removeprefix("Redis server ")}
    for package in ("redis", "hiredis"):
        try:
            found[f"{package} (Python)"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[f"{package} (Python)"] = "not installed"
    return found


def server_argv(port: int, data_dir: Path, mode: str) -> list[str]:
    argv = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
            "--port", str(port), "--dir", str(data_dir), "--save", "", "--daemonize", "no",
            "--logfile", ""]
    if mode == "fsync":
        return [*argv, "--appendonly", "yes", "--appendfsync", "always"]
    if mode == "restart":
        return [*argv, "--appendonly", "yes"]
    return [*argv, "--appendonly", "no"]


def _client(port: int, single: bool = False) -> Any:
    return aioredis.Redis(host="127.0.0.1", port=port, max_connections=2 if single else 1,
                          single_connection_client=single, socket_connect_timeout=5)


async def probe(port: int) -> None:
    client = _client(port)
    try:
        await client.ping()  # raises BusyLoadingError while the AOF is read
    finally:
        await client.aclose()


async def prepare(port: int, queue: str, mode: str) -> None:
    client = _client(port)
    try:
        await client.xgroup_create(queue, GROUP, id="0", mkstream=True)
    finally:
        await client.aclose()


async def count(port: int, queue: str) -> int:
    client = _client(port)
    try:
        return int(await client.xlen(queue))
    finally:
        await client.aclose()


async def connect(port: int, queue: str, consumer: str) -> Connection:
    client = _client(port, single=True)
    await client.ping()  # open the connection now, not inside the first timed call
    return Connection(client, queue, consumer)


class Connection:
    def __init__(self, client: Any, queue: str, consumer: str) -> None:
        self._client = client
        self._queue = queue
        self._consumer = consumer

    async def put(self, body: bytes) -> None:
        await self._client.xadd(self._queue, {FIELD: body})

    async def put_batch(self, bodies: list[bytes]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for body in bodies:
            pipe.xadd(self._queue, {FIELD: body})
        await pipe.execute()

    async def _read(self, n: int, wait_s: float) -> list[tuple[bytes, bytes]]:
        block = int(wait_s * 1000) if wait_s > 0 else None
        reply = await self._client.xreadgroup(GROUP, self._consumer, {self._queue: ">"},
                                              count=n, block=block)
        if not reply:
            return []
        return [(entry_id, fields[FIELD]) for entry_id, fields in reply[0][1]]

    async def receive_one(self, wait_s: float) -> tuple[bytes, bytes] | None:
        got = await self._read(1, wait_s)
        return got[0] if got else None

    async def ack(self, handle: bytes) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.xack(self._queue, GROUP, handle)
        pipe.xdel(self._queue, handle)
        acked, _ = await pipe.execute()
        if acked != 1:
            raise RuntimeError(f"XACK of {handle!r} acked {acked}")

    async def receive_batch(self, n: int, wait_s: float) -> list[tuple[bytes, bytes]]:
        return await self._read(n, wait_s)

    async def ack_batch(self, handles: list[bytes]) -> None:
        if not handles:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.xack(self._queue, GROUP, *handles)
        pipe.xdel(self._queue, *handles)
        acked, _ = await pipe.execute()
        if acked != len(handles):
            raise RuntimeError(f"XACK of {len(handles)} ids acked {acked}")

    async def close(self) -> None:
        await self._client.aclose()
