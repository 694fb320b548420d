"""The server runs on a REDRIVE whose connection went before it ended (finish_detached):
a step a turn, to its end, unless the server stops. A real Server on its own loop, a
real client; the detached REDRIVE is handed over as a connection hands it
(test_connection_redrive.py tests that hand-over)."""

from __future__ import annotations

import asyncio
import logging

import uvloop
from polling import until

from wonderq_client import connect
from wonderq_server.commands import Command
from wonderq_server.config import Config
from wonderq_server.server import Server
from wonderq_server.service import REDRIVE_STEP_MESSAGES

N = 3 * REDRIVE_STEP_MESSAGES + 7


async def _server_with_dead_letters(tmp_path) -> tuple[Server, str, int]:
    server = Server(Config(port=0, data_dir=tmp_path))
    server.recover()
    host, port = await server.start()
    async with connect(host, port) as client:
        await client.create_queue("home", max_deliveries=1, dead_letter_queue="dlq")
        await client.put_many("home", [b"m"] * N)
        await client.nack_many("home", await client.receive("home", max=N, visibility=30))
        assert (await client.queue_info("dlq"))["messages"] == N
    return server, host, port


def test_a_detached_redrive_runs_to_its_end(tmp_path):
    uvloop.run(_detached_to_its_end(tmp_path))


async def _detached_to_its_end(tmp_path):
    server, host, port = await _server_with_dead_letters(tmp_path)
    try:
        server.finish_detached(Command("redrive", {"queue": "dlq", "max": None}))
        async with connect(host, port) as client:
            home = await until(lambda: client.queue_info("home"),
                               lambda info: info["messages"] == N)
        assert home["ready"] == N
    finally:
        await server.stop()
    server = Server(Config(port=0, data_dir=tmp_path))  # and it is in the journal
    server.recover()
    assert len(server.broker.queues["home"].messages) == N
    server.journal.close()


def test_a_stop_ends_a_detached_redrive_where_it_is(tmp_path, caplog):
    uvloop.run(_detached_at_a_stop(tmp_path, caplog))


async def _detached_at_a_stop(tmp_path, caplog):
    server, _, _ = await _server_with_dead_letters(tmp_path)
    command = Command("redrive", {"queue": "dlq", "max": None})
    server.service.execute(command, server.now(), lambda *_: None)  # its first step
    server.finish_detached(command)
    with caplog.at_level(logging.WARNING, logger="wonderq.server"):
        await server.stop()
    assert f"stops at the stop, after {REDRIVE_STEP_MESSAGES} messages" in caplog.text
    assert len(server.broker.queues["dlq"].messages) == N - REDRIVE_STEP_MESSAGES


def test_a_redrive_detached_once_the_stop_has_begun_does_not_run(tmp_path, caplog):
    uvloop.run(_detached_during_the_stop(tmp_path, caplog))


async def _detached_during_the_stop(tmp_path, caplog):
    # A connection reset in the turn the stop began is not stopped (its transport is
    # closing) and hands its REDRIVE over a turn later, during the stop: run then, it
    # moved messages after the journal had closed, and the clean stop ended in a
    # JournalBroken (exit 1; a reviewer).
    server, _, _ = await _server_with_dead_letters(tmp_path)
    command = Command("redrive", {"queue": "dlq", "max": None})
    server.service.execute(command, server.now(), lambda *_: None)  # its first step
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0)  # the stop has begun
    with caplog.at_level(logging.WARNING, logger="wonderq.server"):
        server.finish_detached(command)
        await stopping
    for _ in range(5):  # whatever the loop still runs
        await asyncio.sleep(0)
    assert server.fatal_error is None
    assert f"stops at the stop, after {REDRIVE_STEP_MESSAGES} messages" in caplog.text
    assert len(server.broker.queues["dlq"].messages) == N - REDRIVE_STEP_MESSAGES


def test_each_redrive_step_is_written_before_the_next_runs(tmp_path):
    uvloop.run(_one_step_a_write(tmp_path))


async def _one_step_a_write(tmp_path):
    # Deferred before the flush was asked for, the next step ran first: every journal
    # write carried two steps' moves (a reviewer).
    server, host, port = await _server_with_dead_letters(tmp_path)
    journal = server.journal
    moves_per_write = []
    write_pending = journal.write_pending

    def counting_write():
        moves_per_write.append(journal._moves_pending)
        return write_pending()

    journal.write_pending = counting_write
    try:
        async with connect(host, port) as client:
            assert await client.redrive("dlq") == N
    finally:
        journal.write_pending = write_pending
        await server.stop()
    assert sorted(m for m in moves_per_write if m) == [7] + [REDRIVE_STEP_MESSAGES] * 3
