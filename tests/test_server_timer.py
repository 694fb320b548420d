"""The server's one timer never lets a deadline pass before the wall clock reaches it.

uvloop's timers fire up to about a millisecond early; a lease released then
would go back to the queue before its visibility timeout ended.
"""

from __future__ import annotations

import time

import uvloop

from wonderq_client import connect
from wonderq_server.config import Config
from wonderq_server.server import Server


def test_leases_are_never_released_before_their_deadline(tmp_path):
    uvloop.run(_lease_deadlines_against_the_wall_clock(tmp_path))  # the server's own loop


async def _lease_deadlines_against_the_wall_clock(tmp_path):
    server = Server(Config(port=0, data_dir=tmp_path))
    server.recover()
    host, port = await server.start()
    told = []  # (the `now` the broker was given, the wall clock at that moment)
    advance = server.service.advance

    def watched_advance(now):
        told.append((now, time.time()))
        return advance(now)

    server.service.advance = watched_advance
    try:
        async with connect(host, port) as client:
            ids = await client.put_many("timer", [b"x"] * 40)
            leased = []
            for i in range(40):  # 40 deadlines, 0.7 ms apart: most timers fire early
                leased += await client.receive("timer", visibility=0.02 + i * 0.0007)
            back = []
            while len(back) < 40:
                back += await client.receive("timer", max=40, wait=10, visibility=60)
        assert sorted(m.id for m in leased) == sorted(m.id for m in back) == sorted(ids)
        assert told, "no deadline was ever handled by the timer"
        early = [(now, wall) for now, wall in told if now > wall]
        assert not early, f"the broker was told a time that had not come yet: {early[:3]}"
    finally:
        await server.stop()


def test_uptime_counts_by_the_monotonic_clock(monkeypatch):
    # By the wall clock, a reviewer's uptime_s (and wonderq_uptime_seconds) read about
    # -3600 after an NTP step back of an hour, until a restart.
    server = Server(Config(port=0))
    stepped_back = time.time() - 3600.0
    monkeypatch.setattr(time, "time", lambda: stepped_back)
    assert 0 <= server._server_info(stepped_back)["uptime_s"] < 60
