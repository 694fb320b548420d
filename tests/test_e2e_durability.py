"""End to end: crashes and restarts of the real wonderq-server on a data directory.

Every test here runs `wonderq-server --data-dir <tmp_path>/...` as a
subprocess, drives it with the real client, stops it (kill -9 unless a test
says otherwise), starts it again on the same directory, and checks that what
the clients were told still holds:

* a put whose reply arrived is there after the restart, unless an ack of it
  was answered;
* a message whose ack was answered never comes back;
* a lease the client was given still works after the restart;
* ids (and leases, from the same sequence) issued after a restart are larger
  than any seen before it.

The load tests keep a Ledger of exactly what the server answered, kill the
server at a random moment (seeded, so a failure can be replayed), and check
the ledger against the restarted server. One thing a client cannot know is
which messages a receive leased when its reply was lost in the crash: those
messages stay invisible for their (long) lease. They are accounted for by
count: never more than `max` per receive that was in flight at the kill, and
together they must show up in the queue's `in_flight` figure.

To crash the server in the middle of a compaction, a test watches the data
directory (inotify): the moment the next journal file appears, the server is
frozen with SIGSTOP, and then killed (or sent SIGTERM) while that file is
provably unfinished. So those tests need Linux.

Nothing here sleeps: tests wait for replies, for the ready line, for a
process to exit, for a file to appear, or (for lease deadlines) in a
long-polling receive.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from server_process import ServerProcess

from wonderq_client import ConnectionClosed, LeaseLost, NotFound, StorageError, connect

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


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="catches compactions with inotify")


# ----------------------------------------------------------------- helpers


def durable_server(server_factory, data_dir: Path, *flags: str) -> ServerProcess:
    return server_factory("--data-dir", str(data_dir), *flags)


def refused_start(*args: str) -> tuple[int, str]:
    """refused_start starts a server that must refuse to start; returns its exit code and log."""
    proc = ServerProcess(*args)
    try:
        proc.start()
    except RuntimeError:  # it exited without a ready line
        return proc.wait_exit(), proc.log
    proc.kill()
    pytest.fail(f"the server started when it should have refused:\n{proc.log}")


def stop_cleanly(server: ServerProcess, *, signalled: bool = False) -> None:
    """stop_cleanly sends SIGTERM (unless `signalled` already) and expects exit code 0."""
    assert server.proc is not None
    if not signalled:
        server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.wait_exit()
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"the server did not exit within 20 s of SIGTERM:\n{server.log}")
    assert code == 0, server.log


def journal_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("journal.*") if not p.name.endswith(".tmp"))


def the_journal(data_dir: Path) -> Path:
    files = journal_files(data_dir)
    assert len(files) == 1, f"expected one live journal in {data_dir}, found {files}"
    return files[0]


def record_offsets(data: bytes) -> list[tuple[int, int]]:
    """record_offsets walks a journal file: (offset, end) of each whole record.

    The format is journal_format.py's: an 8-byte header, then records of a
    4-byte big-endian length, a 4-byte crc32, and that many payload bytes.
    """
    assert data[:6] == b"WQJRNL", "not a journal file"
    pos, records = 8, []
    while pos + 8 <= len(data):
        end = pos + 8 + int.from_bytes(data[pos:pos + 4], "big")
        if end > len(data):
            break
        records.append((pos, end))
        pos = end
    return records


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


async def until_stats(client, check) -> dict:
    """until_stats re-reads the server's stats until `check(stats)` holds.

    Each read is a round trip, which also lets the server take its next step
    (of a compaction, say); bounded in count and time.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + EVENT_TIMEOUT_S
    for _ in range(100_000):
        stats = await client.stats()
        if check(stats):
            return stats
        if loop.time() > give_up:
            break
    raise AssertionError(f"condition never held; last stats: {stats}")


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


# ----------------------------------------------------- the crash-load ledger


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


# ------------------------------------------------------------------ the tests


async def test_kill_9_under_load_loses_no_answered_put_and_revives_no_answered_ack(
        server_factory, tmp_path):
    rng = random.Random(SEED)
    server, ledger, loads = await crash_cycles(
        server_factory, tmp_path / "data", ["--fsync", "always"], cycles=4, body_size=64,
        kill_points=lambda cycle: {"kill_after_puts": rng.randint(50, 1500)})
    assert all(load.kill_reason.startswith("after") for load in loads), loads
    assert len(ledger.bodies) >= 4 * 50
    assert ledger.acked, "the consumers never acked anything"
    stop_cleanly(server)


@linux_only
async def test_kill_9_during_compactions(server_factory, tmp_path):
    rng = random.Random(SEED + 1)
    data_dir = tmp_path / "data"
    min_bytes, body_size, ballast = 20_000, 2000, 300
    record_bytes = body_size + 64  # a PUT record: the body, the queue name, framing

    # Ballast: messages the load never touches, in every state, which each
    # compaction must carry over (and which make it last long enough to catch):
    # 20 leased for longer than the test, 10 delayed as long, 10 delivered once
    # and given back, the rest never delivered.
    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        ballast_bodies = [b"ballast %d " % i + bytes(body_size) for i in range(ballast)]
        ballast_ids = await client.put_many("ballast", ballast_bodies)
        leased = await client.receive("ballast", max=20, visibility=LOAD_VISIBILITY_S)
        for msg in await client.receive("ballast", max=10, visibility=LOAD_VISIBILITY_S):
            await msg.nack(delay=LOAD_VISIBILITY_S)
        for msg in await client.receive("ballast", max=10, visibility=LOAD_VISIBILITY_S):
            await msg.nack()
    server.kill()

    def kill_points(cycle: int) -> dict:
        if cycle % 2:  # every other cycle: with the next journal half written
            return {"kill_after_puts": None, "kill_at_compaction": rng.randint(1, 3)}
        return {"kill_after_puts": rng.randint(100, 1500)}

    server, ledger, loads = await crash_cycles(
        server_factory, data_dir, ["--fsync", "always", "--compact-min-bytes", str(min_bytes)],
        cycles=4, body_size=body_size, kill_points=kill_points)
    reasons = [load.kill_reason for load in loads]
    assert [r.split(" ")[0] for r in reasons] == ["after", "while", "after", "while"], reasons
    assert loads[1].killed_mid_compaction and loads[3].killed_mid_compaction
    seen = [s for load in loads for s in load.stats_seen]
    compactions = {s["last_compaction_at"] for s in seen} - {0.0}
    assert len(compactions) >= 4, f"too few compactions: {sorted(compactions)}"
    for cycle, load in enumerate(loads):
        # The journal stays proportional to the live messages, not to all that was put.
        most_live = max(s["messages"] for s in load.stats_seen) * record_bytes
        biggest = max(s["journal_bytes"] for s in load.stats_seen)
        assert biggest <= 4 * (min_bytes + most_live), (
            f"cycle {cycle}: the journal reached {biggest} bytes with at most "
            f"{most_live} bytes of live messages")
    async with connect(server.host, server.port) as client:
        live = (ballast + len(ledger.limbo) + 1) * record_bytes
        await until_stats(client, lambda s: not s["server"]["compacting"]
                          and s["server"]["journal_bytes"] <= 4 * (min_bytes + live))
        q = (await client.stats())["queues"]["ballast"]
        assert (q["ready"], q["in_flight"], q["delayed"]) == (ballast - 30, 20, 10), q
        got = await drain(client, "ballast")
        for msg in leased:  # their leases outlived every compaction and crash
            await client.ack("ballast", msg.id, msg.lease)
    assert [(m.id, m.body) for m in got] == list(
        zip(ballast_ids[30:], ballast_bodies[30:], strict=True))
    assert [m.deliveries for m in got] == [2] * 10 + [1] * (ballast - 40)
    stop_cleanly(server)


async def test_leases_survive_kill_9(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        ids = await client.put_many("leases", [f"m{i}".encode() for i in range(8)])
        long_held = await client.receive("leases", max=3, visibility=30)
        [delayed] = await client.receive("leases", visibility=30)
        await delayed.nack(delay=30)
        [nacked] = await client.receive("leases", visibility=30)
        await nacked.nack()  # delivered once already, and the oldest ready message
        short_from = time.time()
        short_held = await client.receive("leases", max=3, visibility=0.5)
    server.kill()  # the short leases are still held, or ran out a moment ago
    assert [m.id for m in long_held] == ids[:3] and (delayed.id, nacked.id) == tuple(ids[3:5])
    assert [(m.id, m.deliveries) for m in short_held] == [(ids[4], 2), (ids[5], 1), (ids[6], 1)]

    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        # The short leases come back only once their deadline (from before the crash)
        # has passed, delivered once more; the never-delivered message is ready at once.
        back = []
        for _ in range(10):
            batch = await client.receive("leases", max=4, wait=EVENT_TIMEOUT_S, visibility=30)
            for msg in batch:
                if msg.id != ids[7]:
                    assert time.time() >= short_from + 0.5, f"{msg!r} came back early"
            back += batch
            if len(back) >= 4:
                break
        back.sort(key=lambda m: m.id)
        assert [(m.id, m.deliveries) for m in back] == [
            (ids[4], 3), (ids[5], 2), (ids[6], 2), (ids[7], 1)]
        # Nothing else is receivable: the 30 s leases and the delay hold.
        assert await client.receive("leases", max=10) == []
        q = (await client.stats())["queues"]["leases"]
        assert (q["ready"], q["in_flight"], q["delayed"]) == (0, 7, 1)
        for msg in short_held:  # delivered again since: their old leases are dead
            with pytest.raises(LeaseLost):
                await client.ack("leases", msg.id, msg.lease)
        # The old 30 s leases still own their messages.
        for msg in long_held:
            await client.ack("leases", msg.id, msg.lease)
        for msg in back:
            await msg.ack()
        q = (await client.stats())["queues"]["leases"]
        assert (q["ready"], q["in_flight"], q["delayed"]) == (0, 0, 1)


@pytest.mark.parametrize("fsync", ["always", "everysec", "never"])
async def test_sigterm_stops_cleanly_and_keeps_everything(server_factory, tmp_path, fsync):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, "--fsync", fsync)
    async with connect(server.host, server.port) as client:
        kept = dict(zip(await client.put_many("clean", [b"a", b"b", b"c"]),
                        [b"a", b"b", b"c"], strict=True))
        [leased] = await client.receive("clean", visibility=60)
        await leased.ack()
        del kept[leased.id]
        # A burst of puts; the signal goes out as soon as the first is answered.
        puts = [asyncio.ensure_future(client.put("clean", f"late{i}".encode()))
                for i in range(50)]
        await asyncio.wait(puts, return_when=asyncio.FIRST_COMPLETED)
        server.proc.send_signal(signal.SIGTERM)
        answered = 0
        for i, put in enumerate(puts):
            try:
                kept[await put] = f"late{i}".encode()
                answered += 1
            except ConnectionClosed:
                pass
    assert answered >= 1
    assert server.wait_exit() == 0, server.log
    assert "stopped" in server.log

    server = durable_server(server_factory, data_dir, "--fsync", fsync)
    async with connect(server.host, server.port) as client:
        got = {m.id: m.body for m in await drain(client, "clean")}
    assert set(kept) <= set(got), f"lost: {set(kept) - set(got)}"
    assert leased.id not in got
    assert all(body.startswith(b"late") for mid, body in got.items() if mid not in kept)


@linux_only
async def test_sigterm_during_a_compaction_stops_cleanly_and_keeps_everything(
        server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, "--compact-min-bytes", "20000")
    assert server.proc is not None
    pid = server.proc.pid
    signalled = asyncio.Event()

    def on_create(name: str) -> None:
        """The moment a compaction begins: freeze, and if it is still running, SIGTERM."""
        if signalled.is_set() or not name.endswith(".tmp"):
            return
        os.kill(pid, signal.SIGSTOP)
        os.waitpid(pid, os.WUNTRACED)
        if (data_dir / name).exists():
            os.kill(pid, signal.SIGTERM)  # handled once it runs again, mid-compaction
            signalled.set()
        os.kill(pid, signal.SIGCONT)

    put: dict[int, bytes] = {}
    leases: dict[int, int] = {}  # received: id -> lease
    acked: set[int] = set()
    maybe_acked: set[int] = set()
    refused: StorageError | None = None
    watch = DirectoryWatch(data_dir, on_create)
    try:
        async with connect(server.host, server.port) as client:
            # Acking most of what was put makes a compaction due (the journal is over
            # twice the live size); rounds go on until one is caught running.
            for round_ in range(10):
                if signalled.is_set():
                    break
                bodies = [b"%d.%d " % (round_, i) + bytes(2000) for i in range(60)]
                try:
                    put.update(zip(await client.put_many("c", bodies), bodies, strict=True))
                    received = await client.receive("c", max=50, visibility=60)
                    leases.update((msg.id, msg.lease) for msg in received)
                    for msg in received:
                        maybe_acked.add(msg.id)
                        await msg.ack()
                        acked.add(msg.id)
                except ConnectionClosed:
                    break
                except StorageError as exc:  # kept for the assertion below, with the log
                    refused = exc
                    break
    finally:
        watch.close()
    assert signalled.is_set(), "no compaction was caught running"
    stop_cleanly(server, signalled=True)
    first_log = server.log
    assert refused is None, f"a request was refused while stopping: {refused}\n{first_log}"

    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        got = {m.id: m.body for m in await drain(client, "c")}
        for message_id, lease in leases.items():  # leased and not acked: still leased
            if message_id not in maybe_acked:
                await client.ack("c", message_id, lease)
                got[message_id] = put[message_id]
    assert not set(put) - maybe_acked - set(got), (
        f"lost: {sorted(set(put) - maybe_acked - set(got))}\n{first_log}{server.log}")
    assert not set(got) & acked, (
        f"acked, yet back: {sorted(set(got) & acked)}\n{first_log}{server.log}")
    assert all(got[message_id] == put[message_id] for message_id in got)


async def test_second_server_on_the_same_data_dir_is_refused(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    first = durable_server(server_factory, data_dir)
    async with connect(first.host, first.port) as client:
        message_id = await client.put("q", b"mine")
        code, log = refused_start("--data-dir", str(data_dir))
        assert code == 1, log
        assert str(data_dir) in log and "in use" in log, log
        # The first server goes on as if nothing happened.
        [msg] = await client.receive("q")
        assert (msg.id, msg.body) == (message_id, b"mine")
        await msg.ack()
        assert await client.put("q", b"more") > message_id
    stop_cleanly(first)


async def test_torn_last_record_is_cut_off_and_appends_continue(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    bodies = [f"body {i}".encode() * 10 for i in range(19)] + [b"big" * 2000]
    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        ids = [await client.put("torn", body) for body in bodies]
    server.kill()
    journal = the_journal(data_dir)
    size = journal.stat().st_size
    last_start, last_end = record_offsets(journal.read_bytes())[-1]
    assert last_end == size
    with journal.open("r+b") as f:
        f.truncate(size - 3)  # the last put's record, cut short as by a crash mid-write

    server = durable_server(server_factory, data_dir)
    assert "torn record" in server.log and f"offset {last_start}" in server.log, server.log
    assert the_journal(data_dir).stat().st_size == last_start  # the torn bytes are gone
    async with connect(server.host, server.port) as client:
        q = (await client.stats())["queues"]["torn"]
        assert q["ready"] == 19
        # Fewer bytes than the torn record: anything left of it would follow them.
        newer = [await client.put("torn", f"new {i}".encode()) for i in range(5)]
        assert min(newer) > max(ids)
    server.kill()

    server = durable_server(server_factory, data_dir)
    assert "torn record" not in server.log, server.log
    async with connect(server.host, server.port) as client:
        got = await drain(client, "torn")
    assert [(m.id, m.body) for m in got] == [
        *zip(ids[:19], bodies[:19], strict=True),
        *((message_id, f"new {i}".encode()) for i, message_id in enumerate(newer))]


async def damaged_journal(server_factory, data_dir: Path) -> tuple[Path, int, list[int]]:
    """damaged_journal writes 20 puts, then flips a byte inside the 3rd one's body."""
    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        ids = [await client.put("dmg", f"precious {i:02d}".encode()) for i in range(20)]
    stop_cleanly(server)
    journal = the_journal(data_dir)
    data = bytearray(journal.read_bytes())
    at = data.find(b"precious 02")
    [offset] = [start for start, end in record_offsets(bytes(data)) if start < at < end]
    data[at + 3] ^= 0x20
    journal.write_bytes(bytes(data))
    return journal, offset, ids


async def test_damage_in_the_middle_refuses_to_start(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    journal, offset, _ = await damaged_journal(server_factory, data_dir)
    code, log = refused_start("--data-dir", str(data_dir))
    assert code == 1, log
    assert str(journal) in log and f"offset {offset}" in log, log
    assert "--repair" in log, log
    assert the_journal(data_dir) == journal  # nothing was cut or rewritten


async def test_repair_skips_the_damaged_record_and_serves_the_rest(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    journal, offset, ids = await damaged_journal(server_factory, data_dir)
    server = durable_server(server_factory, data_dir, "--repair")
    assert f"skipped damaged record at offset {offset}" in server.log, server.log
    assert str(journal) in server.log
    async with connect(server.host, server.port) as client:
        got = await client.receive("dmg", max=100, visibility=30)
        assert [m.id for m in got] == ids[:2] + ids[3:]
        assert [m.body for m in got] == [f"precious {i:02d}".encode() for i in range(20) if i != 2]
        for msg in got[:9]:
            await msg.ack()
        for msg in got[9:]:
            await msg.nack()
        newer = await client.put("dmg", b"after repair")
        assert newer > max(ids)
        # The repaired journal is rewritten without the damaged record.
        await until_stats(client, lambda s: s["server"]["last_compaction_at"] > 0)
    server.kill()

    server = durable_server(server_factory, data_dir)  # no --repair needed any more
    assert "damaged record" not in server.log, server.log
    async with connect(server.host, server.port) as client:
        again = await drain(client, "dmg")
    assert [(m.id, m.deliveries) for m in again] == [
        *((m.id, 2) for m in got[9:]), (newer, 1)]


async def test_repair_then_stop_without_traffic_leaves_a_journal_that_starts(server_factory,
                                                                             tmp_path):
    data_dir = tmp_path / "data"
    _, _, ids = await damaged_journal(server_factory, data_dir)
    server = durable_server(server_factory, data_dir, "--repair")
    stop_cleanly(server)  # the rewrite is finished on the way out, not abandoned
    server = durable_server(server_factory, data_dir)  # no --repair needed any more
    assert "damaged record" not in server.log, server.log
    async with connect(server.host, server.port) as client:
        got = await drain(client, "dmg")
    assert [m.id for m in got] == ids[:2] + ids[3:]


@pytest.mark.parametrize("flags", [["--in-memory"], ["--data-dir", "none"]])
async def test_in_memory_says_nothing_survives(server_factory, flags):
    server = server_factory(*flags)
    assert "nothing survives a restart" in server.log, server.log
    async with connect(server.host, server.port) as client:
        await client.put("gone", b"x")
        info = (await client.stats())["server"]
        assert info["data_dir"] == ""
        assert info["fsync_policy"] not in ("always", "everysec", "never")
        assert "memory" in info["fsync_policy"]
    stop_cleanly(server)
    server = server_factory(*flags)
    async with connect(server.host, server.port) as client:
        assert await client.receive("gone") == []


async def test_durable_stats_name_the_directory_and_policy(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, "--fsync", "everysec")
    async with connect(server.host, server.port) as client:
        await client.put("s", b"x")
        info = (await client.stats())["server"]
    assert info["data_dir"] == str(data_dir)
    assert info["fsync_policy"] == "everysec"
    assert info["journal_bytes"] == the_journal(data_dir).stat().st_size
    assert (info["last_compaction_at"], info["compacting"]) == (0.0, False)
