"""A stop asked for during the journal's replay, on the standard asyncio loop (README: uvloop
where installed, the standard asyncio loop otherwise), in process. The end-to-end test
(test_e2e_durability.py) runs the server as shipped, on uvloop, whose signal handlers run a
step sooner: two steps after the replay were enough there, not here (a reviewer)."""

from __future__ import annotations

import asyncio
import os
import signal

from wonderq_server import main as server_main
from wonderq_server.config import parse_config
from wonderq_server.server import Server


async def test_a_sigterm_during_the_replay_stops_before_listening_on_the_asyncio_loop(
        monkeypatch):
    started = []
    real_recover = Server.recover

    def recover_then_sigterm(self):
        real_recover(self)
        # The signal lands while the replay holds the loop (as a long replay does).
        os.kill(os.getpid(), signal.SIGTERM)

    async def start(self):
        started.append(True)
        self.stopped.set()  # end serve() at once, whatever happens
        return "127.0.0.1", 0

    monkeypatch.setattr(Server, "recover", recover_then_sigterm)
    monkeypatch.setattr(Server, "start", start)
    loop = asyncio.get_running_loop()
    assert not hasattr(loop, "_uvloop") and type(loop).__module__.startswith("asyncio")
    try:
        await server_main.serve(parse_config(["--in-memory", "--port", "0"], {}))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                       signal.SIGUSR1, signal.SIGUSR2):
            loop.remove_signal_handler(signum)
    assert started == [], "the port was bound (and the ready line said so) after a stop"
