"""The server runs on a REDRIVE whose connection went before it ended (finish_detached):
a step a turn, to its end, unless the server stops. A real Server on its own loop, a
real client; the detached REDRIVE is handed over as a connection hands it
(test_connection_redrive.py tests that hand-over)."""

from __future__ import annotations

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
    assert server.broker.message_count("home") == N
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
    assert server.broker.message_count("dlq") == N - REDRIVE_STEP_MESSAGES
