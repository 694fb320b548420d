"""A server started on a journal acts on restored deadlines without waiting for a request,
and says when what it recovered is over --max-memory or --max-queues, or has queue settings
over its limits."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wonderq_server.broker import Broker
from wonderq_server.commands import Limits
from wonderq_server.config import Config
from wonderq_server.errors import CommandError
from wonderq_server.journal import Journal
from wonderq_server.server import Server


@contextlib.contextmanager
def journaled(directory: Path) -> Iterator[Broker]:
    """journaled: a broker whose changes go to a journal in `directory`, closed after."""
    broker = Broker()
    journal = Journal(directory)
    journal.open(broker, 0.0)
    yield broker
    journal.close()


def recovered(caplog, config: Config) -> tuple[Server, list[str]]:
    """recovered runs a Server's recovery under `config` (its journal left open); returns
    it and the server's log lines from it."""
    caplog.clear()
    server = Server(config)
    server.recover()
    return server, [r.getMessage() for r in caplog.records if r.name == "wonderq.server"]


async def test_the_timer_is_armed_for_restored_leases_at_start(tmp_path):
    broker = Broker()
    journal = Journal(tmp_path)
    journal.open(broker, 0.0)
    broker.journal = journal
    now = time.time()
    broker.put("q", b"x", now)
    [msg] = broker.receive("q", 1, 600.0, now)
    journal.write_pending()
    journal.close()

    server = Server(Config(port=0, data_dir=tmp_path))
    server.recover()
    await server.start()
    try:
        # Without a request, the one timer already points at the restored lease's end.
        assert server._timer_at == msg.deadline_at == server.broker.next_deadline()
    finally:
        await server.stop()


def test_a_start_over_max_memory_says_so(tmp_path, caplog):
    # Nothing recovered is dropped to fit a lower --max-memory; the operator is told that
    # puts will be refused (an operator's review found every put FULL and no word why).
    with journaled(tmp_path) as broker:
        broker.put_many("q", [b"x" * 1000] * 10, time.time())

    caplog.set_level(logging.WARNING, logger="wonderq.server")
    for limit, warned in ((1_000_000, False), (5_000, True)):
        server, lines = recovered(caplog, Config(port=0, data_dir=tmp_path,
                                                 max_memory_bytes=limit))
        assert server.broker.stats(time.time())["messages"] == 10
        server.journal.close()
        assert any("over --max-memory (5000)" in line for line in lines) == warned, lines


def test_a_start_over_max_queues_says_so_and_the_refusal_names_the_limit(tmp_path, caplog):
    # An operator's review: 22 queues restarted under --max-queues 5 started without a
    # word, and a new queue was refused as "the server has 22 queues, the limit".
    with journaled(tmp_path) as broker:
        for name in ("a", "b", "c"):
            broker.put(name, b"x", time.time())

    caplog.set_level(logging.WARNING, logger="wonderq.server")
    for limit, warned in ((10, False), (2, True)):
        server, lines = recovered(caplog, Config(port=0, data_dir=tmp_path, max_queues=limit))
        assert any(f"the recovered queues number 3, at or over --max-queues ({limit})" in line
                   for line in lines) == warned, lines
        if warned:
            with pytest.raises(CommandError) as refused:
                server.broker.put("d", b"x", time.time())
            assert refused.value.message == (
                "the server has 3 queues in use, at or over its limit of 2 (--max-queues); "
                "delete one first")
        server.journal.close()


def test_a_start_names_queue_settings_over_its_limits_and_keeps_them(tmp_path, caplog):
    # An operator's review set a queue's delay and visibility_timeout to 90,000 s under
    # raised --max-delay and --max-visibility-timeout, restarted with the defaults
    # (43,200 s), and the settings went on applying without a word in the log.
    with journaled(tmp_path) as broker:
        broker.create_queue("slow", {"delay": 90_000.0, "visibility_timeout": 90_000.0,
                                     "expiry": 31_536_000.0}, 0.0)
        broker.create_queue("fine", {"delay": 60.0}, 0.0)

    caplog.set_level(logging.WARNING, logger="wonderq.server")
    for limits, warned in ((Limits(max_delay_s=1e5, max_visibility_s=1e5), []),
                           (Limits(max_expiry_s=10), [
                               "'slow' keeps its visibility_timeout of 90000 s, over "
                               "this start's --max-visibility-timeout (43200 s)",
                               "'slow' keeps its delay of 90000 s, over this start's "
                               "--max-delay (43200 s)",
                               "'slow' keeps its expiry of 31536000 s, over this start's "
                               "--max-expiry (10 s)"])):
        server, lines = recovered(caplog, Config(port=0, data_dir=tmp_path, limits=limits))
        assert server.broker.queues["slow"].settings.delay == 90_000.0  # kept
        server.journal.close()
        assert len(lines) == len(warned), lines
        for line, expected in zip(lines, warned, strict=True):
            assert expected in line, lines
