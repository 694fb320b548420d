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

The load tests (their harness is in crash_load.py) keep a Ledger of exactly
what the server answered, kill the server at a random moment (seeded, so a
failure can be replayed), and check the ledger against the restarted server.
One thing a client cannot know is which messages a receive leased when its
reply was lost in the crash: those messages stay invisible for their (long)
lease. They are accounted for by count: never more than `max` per receive
that was in flight at the kill, and together they must show up in the
queue's `in_flight` figure.

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
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_load import (
    EVENT_TIMEOUT_S,
    LOAD_VISIBILITY_S,
    SEED,
    DirectoryWatch,
    crash_cycles,
    drain,
    durable_server,
)
from polling import until_true
from server_process import ServerProcess

from wonderq_client import ConnectionClosed, LeaseLost, StorageError, connect
from wonderq_server.journal_format import KINDS, PUT, encode_record

# A record kind no version of this server writes: a newer server's (journal_format.py).
NEW_KIND = max(KINDS) + 1

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="catches compactions with inotify")


# ----------------------------------------------------------------- helpers


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
    4-byte big-endian length, a 4-byte crc32, and that many payload bytes. Zeros
    after the last record are the journal's reserved space (`--fsync always`).
    """
    assert data[:6] == b"WQJRNL", "not a journal file"
    pos, records = 8, []
    while pos + 8 <= len(data) and any(data[pos:pos + 8]):  # zeros: reserved space
        end = pos + 8 + int.from_bytes(data[pos:pos + 4], "big")
        if end > len(data):
            break
        records.append((pos, end))
        pos = end
    return records


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
    last_start, last_end = record_offsets(journal.read_bytes())[-1]
    assert journal.stat().st_size > last_end  # a killed server leaves its reserved space
    with journal.open("r+b") as f:
        f.truncate(last_end - 3)  # the last put's record, cut short as by a crash mid-write

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


@pytest.mark.parametrize("reserve", [0, 65536])
async def test_journal_reserve_sets_the_zeros_a_killed_server_leaves(server_factory, tmp_path,
                                                                     reserve):
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, "--journal-reserve", str(reserve))
    async with connect(server.host, server.port) as client:
        ids = [await client.put("r", f"m{i}".encode()) for i in range(10)]
    server.kill()
    data = the_journal(data_dir).read_bytes()
    records_end = record_offsets(data)[-1][1]
    # Reserved at the first write, to `reserve` past it; the later ones landed inside.
    assert records_end + reserve >= len(data) > records_end + reserve - records_end
    assert not any(data[records_end:])

    server = durable_server(server_factory, data_dir)
    assert "torn" not in server.log, server.log
    assert ("bytes of reserved space" in server.log) == bool(reserve), server.log
    async with connect(server.host, server.port) as client:
        assert [m.id for m in await drain(client, "r")] == ids
    stop_cleanly(server)
    assert the_journal(data_dir).stat().st_size == record_offsets(
        the_journal(data_dir).read_bytes())[-1][1]  # a clean stop cuts the zeros off


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


@pytest.mark.parametrize("fsync", ["always", "never"])
async def test_a_record_of_a_kind_this_server_does_not_know_refuses_the_start(
        server_factory, tmp_path, fsync):
    # What a newer server that added a record kind (journal_format.py, "Changing the
    # format") wrote in its last write before a kill -9, then a rollback to this one. Under
    # --fsync always the file has SYNCED records, and such a record past the last one was
    # read as a torn tail: the start cut it off, and the PUT after it that the newer server
    # had answered (a reviewer). A record framed whole is no crash's work: the start stops,
    # naming it, whatever the policy.
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, "--fsync", fsync)
    async with connect(server.host, server.port) as client:
        first = await client.put("q", b"first")
    server.kill()
    journal = the_journal(data_dir)
    data = journal.read_bytes()
    end = record_offsets(data)[-1][1]
    later = first + (1 << 20)
    tail = encode_record([NEW_KIND, "q", later]) + encode_record(
        [PUT, "q", later, b"answered by the newer server", time.time()])
    with open(journal, "r+b") as f:
        f.seek(end)
        f.write(tail)
    size = journal.stat().st_size
    code, log = refused_start("--data-dir", str(data_dir), "--fsync", fsync)
    assert code == 1, log
    assert f"offset {end}" in log and "unknown record" in log and "--repair" in log, log
    assert journal.stat().st_size == size and journal.read_bytes()[end:end + len(tail)] == tail


async def test_repair_skips_the_damaged_record_and_serves_the_rest(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    journal, offset, ids = await damaged_journal(server_factory, data_dir)
    damaged_bytes = journal.read_bytes()
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
    # ...and the damaged file is kept beside it, not deleted (an operator's review:
    # what --repair gave up on could not be looked at again).
    kept = journal.with_name(journal.name + ".damaged")
    assert kept.read_bytes() == damaged_bytes
    assert f"kept a copy of the journal --repair read past damage in as {kept}" in server.log

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


async def test_a_data_dir_used_before_but_without_a_journal_starts_with_a_warning(
        server_factory, tmp_path):
    # An operator's review: an rsync taken while a compaction replaced the journal held
    # the LOCK file alone, and restored as an empty server with one INFO line.
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        await client.put("q", b"x")
    stop_cleanly(server)
    assert "has a LOCK file" not in server.log
    for journal in data_dir.glob("journal.*"):
        journal.unlink()
    server = durable_server(server_factory, data_dir)
    assert f"the data directory {data_dir} has a LOCK file, left by a server, but no journal" \
        in server.log
    assert "WARNING" in server.log.split("has a LOCK file")[0].splitlines()[-1]
    stop_cleanly(server)


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


async def test_a_data_dir_deleted_under_the_server_stops_it(server_factory, tmp_path):
    # A reviewer's `rm -rf` of a running server's data directory: it went on answering
    # puts and acks as stored, into a journal no restart could find (0 of 320 found), and
    # exited 0. It stops now, within the second it takes to notice, with exit status 1.
    data = tmp_path / "data"
    server = server_factory("--data-dir", str(data))
    async with connect(server.host, server.port) as client:
        await client.put("q", b"stored before the directory went")
    shutil.rmtree(data)
    assert await asyncio.to_thread(server.wait_exit, EVENT_TIMEOUT_S) == 1
    assert "the live journal in" in server.log and "was deleted" in server.log


async def test_a_data_dir_moved_under_the_server_is_said_once_and_the_journal_goes_on(
        server_factory, tmp_path):
    # The journal stays in the directory the server locked, wherever it now is (its
    # compaction once followed the path into a new directory there): a restart must be
    # given the moved one, and the log says so.
    data, moved = tmp_path / "data", tmp_path / "moved"
    server = server_factory("--data-dir", str(data), "--compact-min-bytes", "1")
    async with connect(server.host, server.port) as client:
        await client.put("kept", b"before the move")
        data.rename(moved)
        data.mkdir()
        await until_true(lambda: "is no longer the directory this server locked" in server.log)
        for _ in range(20):  # acked puts: the journal grows dead, compactions are due
            await client.put("churn", b"x" * 100)
            [msg] = await client.receive("churn")
            await msg.ack()
        await client.put("kept", b"after the move")
        await until_stats(client, lambda s: s["server"]["last_compaction_at"] > 0)
    assert server.stop() == 0
    assert server.log.count("is no longer the directory this server locked") == 1
    assert f"goes on in the moved directory, now {moved}" in server.log
    assert list(data.iterdir()) == []  # nothing written where the path now leads
    with ServerProcess("--port", "0", "--data-dir", str(moved)) as again:
        async with connect(again.host, again.port) as client:
            bodies = [m.body for m in await client.receive("kept", max=10)]
    assert bodies == [b"before the move", b"after the move"]


async def test_the_recovery_line_counts_the_records_not_the_reserved_zeros(
        server_factory, tmp_path):
    # An SRE's review: "recovered ... (4.2 MB)" for 1.1 MB of records and 3 MiB of the
    # zeros --journal-reserve keeps past them (a SIGKILL leaves them in the file).
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir)
    async with connect(server.host, server.port) as client:
        await client.put_many("q", [b"x"] * 10)
    server.kill()
    [journal] = data_dir.glob("journal.*")
    assert journal.stat().st_size > 1_000_000  # the reserved zeros
    server = durable_server(server_factory, data_dir)
    assert re.search(r"recovered \d+ records from \S+ \(0\.0 MB\)", server.log), server.log
    stop_cleanly(server)


async def test_a_journal_that_is_a_directory_is_named_in_the_refusal(tmp_path):
    # Opened by descriptor, it was refused as "[Errno 21] Is a directory: 8" (a reviewer).
    data_dir = tmp_path / "data"
    (data_dir / "journal.000001").mkdir(parents=True)
    code, log = refused_start("--data-dir", str(data_dir))
    assert code == 1, log
    assert f"Is a directory: '{data_dir / 'journal.000001'}'" in log, log
    assert "Traceback" not in log


def _replaying(pid: int, journal: str) -> bool:
    """_replaying: the server has mapped its journal (journal.py maps it to replay it)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return journal in maps.read()
    except OSError:
        return False


async def test_a_stop_during_the_replay_never_announces_the_server_as_listening(
        server_factory, tmp_path):
    # A SIGTERM that came while the journal replayed (which holds the event loop) was seen
    # only after the port was bound and the ready line logged: a reviewer's supervisor saw
    # the server up, and then it exited. It now stops before it listens.
    data_dir = tmp_path / "data"
    server = durable_server(server_factory, data_dir, "--fsync", "never")
    async with connect(server.host, server.port) as client:
        for _ in range(1500):
            await client.put_many("big", [b"x" * 20] * 1000)
    stop_cleanly(server)
    journal = the_journal(data_dir).name
    for _attempt in range(3):  # bounded: the signal must land inside the replay
        proc = ServerProcess("--data-dir", str(data_dir), "--fsync", "never")
        proc.spawn()
        assert proc.proc is not None
        give_up = time.monotonic() + EVENT_TIMEOUT_S
        while not (replaying := _replaying(proc.proc.pid, journal)) \
                and proc.proc.poll() is None and time.monotonic() < give_up:
            time.sleep(0.0005)  # polls for the replay's mapping: an event, bounded
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0, proc.log
        if replaying:  # the journal was mapped (it is unmapped once replayed)
            assert "listening on" not in proc.log, proc.log
            assert "stopping before it listens (SIGTERM received)" in proc.log, proc.log
            assert "wonderq-server stopped" in proc.log
            return
    pytest.skip("the server's replay was never seen")
