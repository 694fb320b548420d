"""The server's one timer never lets a deadline pass before the wall clock reaches it.

uvloop's timers fire up to about a millisecond early; a lease released then
would go back to the queue before its visibility timeout ended.
"""

from __future__ import annotations

import time

import uvloop

from wonderq_client import connect
from wonderq_server.config import Config
from wonderq_server.server import ADVANCE_STEP_DEADLINES, Server


def test_leases_are_never_released_before_their_deadline(tmp_path):
    uvloop.run(_lease_deadlines_against_the_wall_clock(tmp_path))  # the server's own loop


async def _lease_deadlines_against_the_wall_clock(tmp_path):
    server = Server(Config(port=0, data_dir=tmp_path))
    server.recover()
    host, port = await server.start()
    told = []  # (the `now` the broker was given, the wall clock at that moment)
    advance = server.service.advance

    def watched_advance(now, *step):
        told.append((now, time.time()))
        return advance(now, *step)

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


def test_many_leases_that_end_together_are_handled_a_step_a_turn(tmp_path):
    uvloop.run(_mass_dead_lettering_in_steps(tmp_path))


async def _mass_dead_lettering_in_steps(tmp_path):
    # 100,000 leases ending together into a dead-letter queue held the loop for 0.47 s in
    # one advance, and wrote every body in one journal write (bench/probes/redrive_stall.py).
    server = Server(Config(port=0, data_dir=tmp_path))
    server.recover()
    host, port = await server.start()
    steps = []  # what each call of the broker's advance handled
    advance = server.broker.advance

    def watched_advance(now, *step):
        steps.append(advance(now, *step))
        return steps[-1]

    server.broker.advance = watched_advance
    batch = 100
    n = (3 * ADVANCE_STEP_DEADLINES // batch + 1) * batch
    try:
        async with connect(host, port) as client:
            await client.create_queue("mass", max_deliveries=1, dead_letter_queue="mass.dead")
            for _ in range(n // batch):
                await client.put_many("mass", [b"x"] * batch)
            end = time.time() + 0.5  # every lease batch ends then (within a round trip)
            for _ in range(n // batch):
                assert len(await client.receive("mass", max=batch,
                                                visibility=end - time.time())) == batch
            got = []
            while len(got) < n:
                got += await client.receive("mass.dead", max=1000, wait=10, visibility=60)
        assert len({m.id for m in got}) == len(got) == n
        handled = [count for count in steps if count]
        assert sum(handled) == n
        assert max(handled) <= ADVANCE_STEP_DEADLINES, handled  # batches split too
    finally:
        await server.stop()


def test_uptime_counts_by_the_monotonic_clock(monkeypatch):
    # By the wall clock, a reviewer's uptime_s (and wonderq_uptime_seconds) read about
    # -3600 after an NTP step back of an hour, until a restart.
    server = Server(Config(port=0))
    stepped_back = time.time() - 3600.0
    monkeypatch.setattr(time, "time", lambda: stepped_back)
    assert 0 <= server._server_info(stepped_back)["uptime_s"] < 60
