"""Disk faults, injected into a real server running in this process, seen by the real client.

The journal takes its write and fsync functions as parameters (as beanstalkd
takes its allocator), so a test can make the disk "full" and then give the
space back, which a subprocess on a real disk cannot do on demand.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from broker_helpers import bodies

from wonderq_client import StorageError, connect
from wonderq_server.broker import Broker
from wonderq_server.config import Config
from wonderq_server.journal import Journal
from wonderq_server.server import Server


class Disk:
    """A write/fsync pair whose failures a test switches on and off."""

    def __init__(self) -> None:
        self.full = False
        self.broken = False
        self.writes = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            # A partial write first, as a real full disk may do, then the error.
            if len(data) > 1 and self.writes % 2 == 0:
                self.writes += 1
                return os.write(fd, bytes(data[: len(data) // 2]))
            self.writes += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.broken:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


async def start_server(data_dir: Path, disk: Disk) -> Server:
    server = Server(Config(port=0, data_dir=data_dir, fsync="always"))
    assert server.journal is not None
    server.journal._write = disk.write
    server.journal._fsync = disk.fsync
    server.recover()
    await server.start()
    return server


def reopen(data_dir: Path) -> Broker:
    broker = Broker()
    journal = Journal(data_dir)
    journal.open(broker, 0.0)
    journal.close()
    return broker


async def test_disk_full_answers_storage_error_and_recovers(tmp_path):
    disk = Disk()
    server = await start_server(tmp_path, disk)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            kept = await client.put("q", b"before")
            disk.full = True
            with pytest.raises(StorageError) as info:
                await client.put("q", b"lost")
            assert info.value.code == "STORAGE_ERROR"
            # Reads keep working while the disk is full.
            assert await client.ping() == "pong"
            stats = await client.stats()
            assert stats["server"]["journal_write_errors"] == 1
            disk.full = False  # space is back
            after = await client.put("q", b"after")
            assert after > kept
    finally:
        await server.stop()
    # The journal holds what was answered as stored, and nothing half-written.
    broker = reopen(tmp_path)
    assert sorted(bodies(broker, "q")) == [b"after", b"before"]


async def test_acks_during_disk_full_are_refused_and_not_lost(tmp_path):
    disk = Disk()
    server = await start_server(tmp_path, disk)
    host, port = server.address
    try:
        async with connect(host, port) as client:
            await client.put("q", b"job")
            [msg] = await client.receive("q", visibility=60)
            disk.full = True
            with pytest.raises(StorageError):
                await msg.ack()
            disk.full = False
    finally:
        await server.stop()
    # The ack was never on disk, so the message comes back: at least once.
    broker = reopen(tmp_path)
    assert bodies(broker, "q") == [b"job"]


async def test_failed_fsync_stops_the_server(tmp_path):
    disk = Disk()
    server = await start_server(tmp_path, disk)
    host, port = server.address
    async with connect(host, port) as client:
        disk.broken = True
        with pytest.raises(StorageError):
            await client.put("q", b"x")
    await asyncio.wait_for(server.stopped.wait(), 10)
    assert "fsync" in str(server.fatal_error)
    await server.stop()
