"""End to end: `--fsync always` with the commit wait (commit_wait.py), on the real server.

Clients that each put one message at a time, all at once, share fsyncs: after
an fsync answers them, the next one waits for their next puts. The waits are
set long here (10 ms) so that a slow machine still gathers every client; what
is checked is the count of fsyncs (STATS' fsync_count), never a time. The
kill -9 tests of test_e2e_durability.py run with the default wait on, and
check that nothing answered is lost with it.
"""

from __future__ import annotations

import asyncio

from wonderq_client import connect

CLIENTS = 8
PUTS_EACH = 40


async def fsyncs(server) -> int:
    async with connect(server.host, server.port) as client:
        return int((await client.stats())["server"]["fsync_count"])


async def put_one_at_a_time(server) -> list[int]:
    clients = [await connect(server.host, server.port) for _ in range(CLIENTS)]

    async def puts(client) -> list[int]:
        return [await client.put("q", b"x" * 100) for _ in range(PUTS_EACH)]

    try:
        results = await asyncio.gather(*(puts(client) for client in clients))
    finally:
        for client in clients:
            await client.close()
    return [message_id for ids in results for message_id in ids]


async def test_clients_putting_at_once_share_fsyncs(server_factory, tmp_path):
    server = server_factory("--data-dir", str(tmp_path / "data"), "--fsync", "always",
                            "--group-commit-wait", "10000", "--group-commit-gap", "10000")
    before = await fsyncs(server)
    ids = await put_one_at_a_time(server)
    used = await fsyncs(server) - before
    assert len(set(ids)) == CLIENTS * PUTS_EACH
    # 320 puts. Gathered, about one fsync per 8 (42 here; the first groups are smaller
    # while the clients start); without the wait, 81 (--group-commit-wait 0: the puts
    # that came during an fsync share the next, about 4).
    assert used <= CLIENTS * PUTS_EACH // 6, used
    async with connect(server.host, server.port) as client:
        assert (await client.queue_info("q"))["ready"] == CLIENTS * PUTS_EACH


async def test_without_the_wait_every_put_is_still_answered(server_factory, tmp_path):
    server = server_factory("--data-dir", str(tmp_path / "data"), "--fsync", "always",
                            "--group-commit-wait", "0")
    ids = await put_one_at_a_time(server)
    assert len(set(ids)) == CLIENTS * PUTS_EACH
