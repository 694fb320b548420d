"""The crash-load harness of test_e2e_durability.py: load a real wonderq-server, kill it, check.

It holds the `Ledger` of exactly what the server answered (ids, bodies, acks,
leases, the largest number seen, and the messages leased by receive replies a
crash lost); `crash_under_load`, which runs producers, consumers and a stats
monitor against a server until it kills it, after a number of answered puts or
at the n-th compaction caught in progress (`DirectoryWatch`: inotify on the data
directory, the server frozen with SIGSTOP the moment a next journal appears);
`check_recovery`, which holds a restarted server to the ledger and drains it;
`crash_cycles`, which repeats load, kill -9 and recovery check on one data
directory; and the small pieces those share with the tests (`durable_server`,
`drain`, `EVENT_TIMEOUT_S`, `SEED`, `LOAD_VISIBILITY_S`).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from server_process import ServerProcess

from wonderq_client import ConnectionClosed, LeaseLost, NotFound, connect

# Upper bound for any single wait; tests wait for events, and this only stops
# a broken server from hanging the suite.
EVENT_TIMEOUT_S = 10.0
SEED = 20261128  # change it to explore other crash points; failures name the seed

QUEUE = "crash"
PRODUCERS = 4
CONSUMERS = 4
RECEIVE_MAX = 10
# Far longer than any test runs, so a message is never delivered again by timeout:
# one that comes back after a restart came back because the crash lost its lease.
LOAD_VISIBILITY_S = 300.0
PUTS_PER_PRODUCER_MAX = 1500  # bounds a load phase even if the kill never comes
LOAD_TIMEOUT_S = 15.0
DRAIN_BATCH = 100


def durable_server(server_factory, data_dir: Path, *flags: str) -> ServerProcess:
    return server_factory("--data-dir", str(data_dir), *flags)


class DirectoryWatch:
    """DirectoryWatch calls `on_create(name)` from the event loop as soon as a file is
    created in `directory` (Linux inotify, through ctypes: no polling)."""

    IN_CREATE = 0x100
    EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows

    def __init__(self, directory: Path, on_create) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self.fd, os.fsencode(directory), self.IN_CREATE) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self.on_create = on_create
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        pos = 0
        while pos + self.EVENT.size <= len(data):
            *_, length = self.EVENT.unpack_from(data, pos)
            pos += self.EVENT.size + length
            self.on_create(data[pos - length:pos].rstrip(b"\0").decode())

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)


async def drain(client, queue: str, visibility: float = LOAD_VISIBILITY_S) -> list:
    """drain receives and acks every ready message of `queue`; returns them."""
    got = []
    for _ in range(10_000 // DRAIN_BATCH):
        batch = await client.receive(queue, max=DRAIN_BATCH, visibility=visibility)
        if not batch:
            return got
        await asyncio.gather(*(msg.ack() for msg in batch))
        got += batch
    raise AssertionError(f"queue {queue} never ran dry")


@dataclass
class Ledger:
    """What the server answered, which is what a crash may not take back."""

    seed: int
    bodies: dict[int, bytes] = field(default_factory=dict)  # answered puts: id -> body
    sent_bodies: set[bytes] = field(default_factory=set)  # every body a put carried
    acked: set[int] = field(default_factory=set)  # acks answered (or known to have happened)
    ack_sent: set[int] = field(default_factory=set)  # acks sent, answered or not
    leases: dict[int, int] = field(default_factory=dict)  # received, not acked: id -> lease
    max_seen: int = 0  # largest id or lease in any reply
    # Answered, never acked, and not receivable after a restart: leased by a
    # receive whose reply the crash lost. They stay in flight for the lease.
    limbo: set[int] = field(default_factory=set)
    # At most this many messages can be leased by receive replies lost in crashes
    # (answered puts or not): RECEIVE_MAX for each receive in flight at a kill.
    lost_lease_max: int = 0

    def where(self, cycle: int) -> str:
        return f"(seed {self.seed}, cycle {cycle})"

    def seen(self, *numbers: int) -> None:
        self.max_seen = max(self.max_seen, *numbers)

    def check_body(self, msg, cycle: int) -> None:
        if msg.id in self.bodies:
            assert msg.body == self.bodies[msg.id], f"{msg.id} has another body {self.where(cycle)}"
        else:  # its put was not answered (yet), but it was sent
            assert msg.body in self.sent_bodies, f"{msg!r} was never put {self.where(cycle)}"


@dataclass
class LoadResult:
    receives_at_kill: int = 0  # receives sent and not answered when the server died
    kill_reason: str = ""
    killed_mid_compaction: bool = False
    compactions_started: int = 0  # next-journal files created while watched
    compactions_caught: int = 0  # ... and found unfinished once the server was frozen
    stats_seen: list[dict] = field(default_factory=list)


def body_for(cycle: int, producer: int, i: int, size: int) -> bytes:
    head = f"{cycle}:{producer}:{i}:".encode()
    filler = bytes(range(256)) * (size // 256 + 1)  # every byte value, NUL and newline too
    return head + filler[:max(0, size - len(head))]


async def crash_under_load(server: ServerProcess, ledger: Ledger, cycle: int, *,
                           body_size: int, kill_after_puts: int | None,
                           kill_at_compaction: int | None = None,
                           data_dir: Path | None = None) -> LoadResult:
    """crash_under_load runs producers and consumers until it kills the server.

    The kill comes after `kill_after_puts` answered puts of this cycle, or,
    with `kill_at_compaction`, the n-th time the server is caught compacting:
    the moment a compaction creates the next journal (journal.N.tmp), the
    server is frozen (SIGSTOP) and, if that file is still there (the
    compaction has not finished), counted as caught; the n-th time it is
    killed, the other times let go on (SIGCONT). Either way the kill is a
    SIGKILL in the middle of the traffic; replies already on their way still
    count (the server sent them).
    """
    result = LoadResult()
    floor = ledger.max_seen  # every id and lease from now on must be above it
    puts = 0
    receiving = 0
    killed = asyncio.Event()

    def kill(reason: str) -> None:
        if killed.is_set():
            return
        result.receives_at_kill = receiving
        result.kill_reason = reason
        server.kill()  # blocks the loop until the process is gone: nothing moves meanwhile
        if data_dir is not None:
            result.killed_mid_compaction = any(data_dir.glob("journal.*.tmp"))
        killed.set()

    def on_create(name: str) -> None:
        if killed.is_set() or not name.endswith(".tmp"):
            return
        assert server.proc is not None and data_dir is not None
        result.compactions_started += 1
        os.kill(server.proc.pid, signal.SIGSTOP)
        os.waitpid(server.proc.pid, os.WUNTRACED)  # returns once it has stopped
        if (data_dir / name).exists():
            result.compactions_caught += 1
            if result.compactions_caught >= (kill_at_compaction or 0):
                kill(f"while compacting (caught {result.compactions_caught} of "
                     f"{result.compactions_started})")
                return
        os.kill(server.proc.pid, signal.SIGCONT)

    clients = [await connect(server.host, server.port) for _ in range(PRODUCERS + CONSUMERS + 1)]

    async def produce(client, p: int) -> None:
        nonlocal puts
        for i in range(PUTS_PER_PRODUCER_MAX):
            if killed.is_set():
                return
            body = body_for(cycle, p, i, body_size)
            ledger.sent_bodies.add(body)
            try:
                message_id = await client.put(QUEUE, body)
            except ConnectionClosed:
                return
            assert message_id > floor, f"id {message_id} <= {floor} {ledger.where(cycle)}"
            ledger.bodies[message_id] = body
            ledger.seen(message_id)
            puts += 1
            if kill_after_puts is not None and puts >= kill_after_puts:
                kill(f"after {puts} answered puts")

    async def consume(client) -> None:
        nonlocal receiving
        while not killed.is_set():
            receiving += 1
            try:
                batch = await client.receive(QUEUE, max=RECEIVE_MAX, wait=EVENT_TIMEOUT_S,
                                             visibility=LOAD_VISIBILITY_S)
            except ConnectionClosed:
                return
            finally:
                receiving -= 1
            for msg in batch:
                assert msg.deliveries == 1, f"{msg!r} delivered again {ledger.where(cycle)}"
                assert msg.id not in ledger.acked, f"{msg!r} acked already {ledger.where(cycle)}"
                assert min(msg.id, msg.lease) > floor, f"{msg!r} <= {floor}"
                ledger.check_body(msg, cycle)
                ledger.leases[msg.id] = msg.lease
                ledger.seen(msg.id, msg.lease)
            for msg in batch:
                ledger.ack_sent.add(msg.id)
                try:
                    await msg.ack()
                except ConnectionClosed:
                    return
                ledger.acked.add(msg.id)
                del ledger.leases[msg.id]

    async def monitor(client) -> None:
        for _ in range(100_000):
            if killed.is_set():
                return
            try:
                stats = (await client.stats())["server"]
            except ConnectionClosed:
                return
            result.stats_seen.append(stats)

    watch = DirectoryWatch(data_dir, on_create) if kill_at_compaction and data_dir else None
    tasks = [asyncio.create_task(produce(clients[p], p)) for p in range(PRODUCERS)]
    tasks += [asyncio.create_task(consume(clients[PRODUCERS + c])) for c in range(CONSUMERS)]
    tasks.append(asyncio.create_task(monitor(clients[-1])))
    try:
        async with asyncio.timeout(LOAD_TIMEOUT_S):
            await asyncio.gather(*tasks[:PRODUCERS])
            kill("every producer finished")  # a fallback; the cycles are sized to kill earlier
            await asyncio.gather(*tasks)
    except TimeoutError:
        pytest.fail(f"the load did not end in {LOAD_TIMEOUT_S} s {ledger.where(cycle)}: "
                    f"killed={killed.is_set()} ({result.kill_reason}), server exit code "
                    f"{server.proc.poll()}, {puts} puts answered, {receiving} receives "
                    f"waiting, tasks not done: {[t for t in tasks if not t.done()]}, last "
                    f"stats {result.stats_seen[-1:]}\n{server.log[-3000:]}")
    finally:
        if watch is not None:
            watch.close()
        for task in tasks:
            task.cancel()
        for client in clients:
            await client.close()
    return result


async def check_recovery(server: ServerProcess, ledger: Ledger, cycle: int,
                         load: LoadResult) -> dict:
    """check_recovery compares a restarted server with the ledger and drains it."""
    where = ledger.where(cycle)
    floor = ledger.max_seen
    async with connect(server.host, server.port) as client:
        # A lease whose receive was answered survived: its ack works, unless the ack
        # itself was sent before the crash and took effect (then NOT_FOUND).
        for message_id, lease in sorted(ledger.leases.items()):
            try:
                await client.ack(QUEUE, message_id, lease)
            except NotFound:
                assert message_id in ledger.ack_sent, (
                    f"message {message_id} was received, never acked, and is gone {where}")
            except LeaseLost:
                pytest.fail(f"lease {lease} of {message_id} did not survive the restart {where}")
            ledger.acked.add(message_id)
        ledger.leases.clear()

        drained = await drain(client, QUEUE)
        for msg in drained:
            assert msg.id not in ledger.acked, f"acked message {msg!r} came back {where}"
            assert msg.deliveries == 1, f"{msg!r} was delivered before the crash {where}"
            assert msg.lease > floor, f"{msg!r}: a new lease <= {floor} {where}"
            ledger.check_body(msg, cycle)
            ledger.acked.add(msg.id)
            ledger.seen(msg.id, msg.lease)

        missing = set(ledger.bodies) - ledger.acked - ledger.limbo
        assert len(missing) <= RECEIVE_MAX * load.receives_at_kill, (
            f"{len(missing)} answered puts are missing after the restart, more than the "
            f"{load.receives_at_kill} receives in flight at the kill could have leased: "
            f"{sorted(missing)[:5]}... {where}")
        ledger.limbo |= missing
        ledger.lost_lease_max += RECEIVE_MAX * load.receives_at_kill
        stats = await client.stats()
        q = stats["queues"].get(QUEUE, {"ready": 0, "in_flight": 0, "delayed": 0})
        assert (q["ready"], q["delayed"]) == (0, 0), (q, where)
        # The messages of lost receive replies are still stored, leased: count them.
        assert len(ledger.limbo) <= q["in_flight"] <= ledger.lost_lease_max, (
            f"in_flight is {q['in_flight']}, but {len(ledger.limbo)} answered puts are "
            f"leased by lost receive replies, and at most {ledger.lost_lease_max} messages "
            f"can be {where}")
        return stats


async def crash_cycles(server_factory, data_dir: Path, flags: list[str], *, cycles: int,
                       body_size: int, kill_points) -> tuple[ServerProcess, Ledger,
                                                               list[LoadResult]]:
    """crash_cycles: start, check, load, kill -9, `cycles` times; then start and check once
    more. Returns the last server, still running, with the ledger and each load's result."""
    ledger = Ledger(SEED)
    loads: list[LoadResult] = []
    for cycle in range(cycles + 1):
        server = durable_server(server_factory, data_dir, *flags)
        if loads:
            await check_recovery(server, ledger, cycle, loads[-1])
        if cycle < cycles:
            loads.append(await crash_under_load(server, ledger, cycle, body_size=body_size,
                                                data_dir=data_dir, **kill_points(cycle)))
    async with connect(server.host, server.port) as client:
        assert await client.put(QUEUE, b"after the last crash") > ledger.max_seen
    return server, ledger, loads
