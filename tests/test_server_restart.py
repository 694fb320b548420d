"""A server started on a journal acts on restored deadlines without waiting for a request."""

from __future__ import annotations

import time

from wonderq_server.broker import Broker
from wonderq_server.config import Config
from wonderq_server.journal import Journal
from wonderq_server.server import Server


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
