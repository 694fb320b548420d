"""WonderQ through its own asyncio client (wonderq_client), as a user would use it.

Design decision: every call is the client's public API: put, put_many,
receive (max, wait), ack on the message's id and lease, ack_many. The server
is `python -m wonderq_server` from this working tree, run by the same Python
as the benchmark (no pyenv shim or console-script wrapper in the start-up
time of S7), compiled or not as the tree was built (README, "Compiled
build": `WONDERQ_COMPILE=1 pip install -e .` compiles in place); the
versions say which.

Rules:
* memory mode is `--in-memory`; fsync mode is `--data-dir DIR --fsync
  always` (an answer means the write is on disk, group commit shares
  fsyncs); restart mode is `--data-dir DIR` with the defaults.
* A batch item refused by the server raises: the benchmark counts only
  stored messages.
* Busy polling is off, as it ships, unless compare.py's `--busy-poll` sets
  BUSY_POLL_US: then the server runs with `--busy-poll BUSY_POLL_US` and every
  connection of the load generator with `busy_poll` of as many microseconds
  (the versions in RESULTS.md say which).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack

from wonderq_client import Message
from wonderq_client import __version__ as client_version
from wonderq_client import connect as _connect

NAME = "wonderq"
REPO = Path(__file__).resolve().parents[2]
BUSY_POLL_US = 0  # compare.py --busy-poll


def missing() -> str | None:
    return None


def _commit() -> str:
    """_commit names the working tree measured: HEAD, and whether the code differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "wonderq_server",
                                  "wonderq_client"], cwd=REPO, text=True, capture_output=True,
                                 timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (with uncommitted changes)" if changed else head or "unknown"


def versions() -> dict[str, str]:
    import uvloop

    import wonderq_server
    from wonderq_server.compiled import build_description

    return {"wonderq-server": getattr(wonderq_server, "__version__", "?"),
            "wonderq commit": _commit(),
            "wonderq build": f"{build_description()} (README, Compiled build)",
            "wonderq_client": client_version, "msgpack (client)": msgpack.version_string
            if hasattr(msgpack, "version_string") else ".".join(map(str, msgpack.version)),
            "uvloop (server)": uvloop.__version__,
            "wonderq busy polling": f"{BUSY_POLL_US} µs (server --busy-poll, client busy_poll)"
            if BUSY_POLL_US else "off (as shipped)"}


def server_argv(port: int, data_dir: Path, mode: str) -> list[str]:
    argv = [sys.executable, "-m", "wonderq_server", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "info"]
    if BUSY_POLL_US:
        argv += ["--busy-poll", str(BUSY_POLL_US)]
    if mode == "memory":
        return [*argv, "--in-memory"]
    if mode == "fsync":
        return [*argv, "--data-dir", str(data_dir), "--fsync", "always"]
    return [*argv, "--data-dir", str(data_dir)]


async def probe(port: int) -> None:
    async with _connect("127.0.0.1", port, timeout=1.0) as client:
        await client.ping()


async def prepare(port: int, queue: str, mode: str) -> None:
    async with _connect("127.0.0.1", port) as client:
        await client.create_queue(queue)


async def count(port: int, queue: str) -> int:
    async with _connect("127.0.0.1", port) as client:
        info = await client.queue_info(queue)
        return int(info["messages"])


async def connect(port: int, queue: str, consumer: str) -> Connection:
    return Connection(await _connect("127.0.0.1", port, busy_poll=BUSY_POLL_US / 1e6), queue)


def _check(results: list[Any], what: str) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise RuntimeError(f"{what}: an item was refused: {result!r}")


class Connection:
    def __init__(self, client: Any, queue: str) -> None:
        self._client = client
        self._queue = queue

    async def put(self, body: bytes) -> None:
        await self._client.put(self._queue, body)

    async def put_batch(self, bodies: list[bytes]) -> None:
        _check(await self._client.put_many(self._queue, bodies), "put_many")

    async def receive_one(self, wait_s: float) -> tuple[Message, bytes] | None:
        got = await self._client.receive(self._queue, max=1, wait=wait_s)
        return (got[0], got[0].body) if got else None

    async def ack(self, handle: Message) -> None:
        await self._client.ack(self._queue, handle.id, handle.lease)

    async def receive_batch(self, n: int, wait_s: float) -> list[tuple[Message, bytes]]:
        got = await self._client.receive(self._queue, max=n, wait=wait_s)
        return [(m, m.body) for m in got]

    async def ack_batch(self, handles: list[Message]) -> None:
        _check(await self._client.ack_many(self._queue, handles), "ack_many")

    async def close(self) -> None:
        await self._client.close()
