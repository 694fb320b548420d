"""One group of scenarios against one system: a fresh server, the phases, the figures.

Design decision: scenarios that depend on each other run as a group on one
server (S2 drains what S1 put; S4c what S4p put); every other scenario gets
a server of its own, started fresh on a free loopback port with a fresh data
directory, so no run inherits another's memory or files. Around each
measured phase the runner reads the server's CPU time from /proc (before and
after) and the load generator's own CPU time, and turns them into
microseconds per message.

Rules:
* A phase has a time limit (`Options.limit_s`); a phase over it, or one
  whose loop stopped short, is reported as stalled with how far it got,
  and the figures of that run are left out of the medians.
* The group's servers are stopped by their PIDs whatever happens
  (KeyboardInterrupt included). An error is reported against the scenarios
  it left without a result, with the server log's last lines printed, and
  the next group goes on.
* After every phase the queue's count is read (check_count): what the phase
  put, less what it acked. A run whose count is not that (a system that
  delivered a message twice, acked without effect, dropped a put) is left
  out of the medians like a stalled one, with the counts in its note.
* A dependency that was not selected (S2 without S1, S4c without S4p) is
  filled by batched puts and not reported.
* Each group runs in its own event loop (uvloop where installed, for every
  system alike), so no client library's background tasks outlive a group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from scenarios import (
    Load,
    Progress,
    percentile,
    producers_consumers,
    put_batches,
    put_one_by_one,
    receive_ack_batches,
    receive_ack_one_by_one,
)
from servers import ServerProcess, free_port

GROUPS = (("S1", "S2"), ("S3",), ("S4p", "S4c"), ("S5",), ("S6",), ("S7",))
MODES = {"S1": "memory", "S3": "memory", "S4p": "memory", "S5": "memory",
         "S6": "fsync", "S7": "restart"}
BATCH = 100
FILL_BATCH = 1000
READY_LIMIT_S = 60.0
RESTART_LIMIT_S = 900.0
GRACE_S = 10.0
# How long check_count reads a count again that is not the one expected yet: acks a system
# does not confirm (JetStream's batch acks, systems/jetstream.py) may land a little later.
COUNT_SETTLE_S = 2.0


@dataclass
class Options:
    messages: int
    backlog: int  # messages queued in S5 and S7
    time_limit_s: float | None  # per phase; None: 60 s + 1 ms per message
    tmp_root: Path

    def limit_s(self, n: int) -> float:
        return self.time_limit_s if self.time_limit_s else 60.0 + n / 1000


@dataclass
class Result:
    scenario: str
    system: str
    run: int
    value: float | None  # in the scenario's unit; None when it did not complete
    server_us: float | None  # server CPU per message
    client_us: float | None  # load generator CPU per message
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""


def run_event_loop(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)


async def bounded(step: Awaitable[Any], what: str) -> Any:
    """bounded: a step outside the measured phases (make the queue, connect, count) given
    READY_LIMIT_S, so that a server that hangs ends its group with an error, not the run.
    The adapters bound their own waits too (systems/__init__.py); this holds whatever
    they miss."""
    scope = asyncio.timeout(READY_LIMIT_S)
    try:
        async with scope:
            return await step
    except TimeoutError:
        if not scope.expired():
            raise  # the step's own timeout, with its own message
        raise TimeoutError(f"{what}: no answer within {READY_LIMIT_S:g} s") from None


def run_group(system: ModuleType, group: tuple[str, ...], selected: set[str], run: int,
              options: Options) -> list[Result]:
    """run_group runs the selected scenarios of `group` against `system`; one Result each."""
    wanted = [s for s in group if s in selected]
    results: list[Result] = []
    runner = _Group(system, group, wanted, run, options, results)
    try:
        run_event_loop(runner.run())
    except Exception as exc:  # reported, and the next group goes on
        done = {r.scenario for r in results}
        note = f"error: {type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        results += [Result(s, system.NAME, run, None, None, None, note=note)
                    for s in wanted if s not in done]
        for server in runner.servers:  # the log is removed with the temporary directory
            print(f"  {system.NAME} server log, last lines:\n    "
                  + server.log_tail().replace("\n", "\n    "), flush=True)
    return results


class _Group:
    def __init__(self, system: ModuleType, group: tuple[str, ...], wanted: list[str],
                 run: int, options: Options, results: list[Result]) -> None:
        self.system = system
        self.group = group
        self.wanted = wanted
        self.run_number = run
        self.options = options
        self.results = results
        self.mode = MODES[group[0]]
        self.queue = group[0].lower()
        self.data_dir = options.tmp_root / f"run{run}-{group[0]}-{system.NAME}"
        self.data_dir.mkdir(parents=True)
        self.servers: list[ServerProcess] = []

    async def start_server(self, limit_s: float = READY_LIMIT_S) -> tuple[ServerProcess, int,
                                                                          float]:
        """start_server starts the system's server; returns it, its port, seconds to ready."""
        port = free_port()
        argv = self.system.server_argv(port, self.data_dir, self.mode)
        server = ServerProcess(self.system.NAME, argv, self.data_dir.with_suffix(".log"))
        self.servers.append(server)
        ready_s = await server.wait_ready(lambda: self.system.probe(port), limit_s)
        return server, port, ready_s

    async def run(self) -> None:
        try:
            server, port, _ = await self.start_server()
            await bounded(self.system.prepare(port, self.queue, self.mode), "prepare")
            first = self.group[0]
            if first == "S1":
                await self.one_by_one(server, port)
            elif first in ("S3", "S6"):
                await self.concurrent(server, port)
            elif first == "S4p":
                await self.batched(server, port)
            elif first == "S5":
                await self.memory(server, port)
            elif first == "S7":
                await self.restart(server, port)
        finally:
            for server in self.servers:
                server.stop()

    def connect(self, port: int) -> Callable[[str], Awaitable[Any]]:
        return lambda consumer: bounded(self.system.connect(port, self.queue, consumer),
                                        "connect")

    async def phase(self, server: ServerProcess, n: int,
                    body: Callable[[float, Progress], Awaitable[Load]]) -> tuple[Load, float,
                                                                                float]:
        """phase runs `body(give_up, progress)` bounded in time; returns it with CPU us/msg."""
        limit_s = self.options.limit_s(n)
        progress = Progress()
        cpu0, client0 = server.cpu_seconds(), time.process_time()
        try:
            load = await asyncio.wait_for(body(time.monotonic() + limit_s, progress),
                                          limit_s + GRACE_S)
        except TimeoutError:
            load = Load(progress.done, 0.0, stalled=f"stalled after {progress.done} of {n}: "
                                                    f"no reply within {limit_s:g} s")
        cpu1, client1 = server.cpu_seconds(), time.process_time()
        done = max(load.messages, 1)
        return load, 1e6 * (cpu1 - cpu0) / done, 1e6 * (client1 - client0) / done

    def record(self, scenario: str, load: Load, server_us: float | None,
               client_us: float | None,
               value: float | None = None, note: str = "", wrong: str = "") -> None:
        """record one scenario's Result; `wrong` (the queue's count after it is not what
        the phase did: check_count) leaves it out of the medians, as a stalled one."""
        if scenario not in self.wanted:
            return
        result = Result(scenario, self.system.NAME, self.run_number,
                        None if load.stalled or wrong else
                        (load.rate if value is None else value),
                        server_us, client_us, note="; ".join(
                            x for x in (load.stalled, wrong, note) if x))
        if load.latencies_s:
            result.p50_ms = 1e3 * percentile(load.latencies_s, 0.50)
            result.p99_ms = 1e3 * percentile(load.latencies_s, 0.99)
        self.results.append(result)

    async def fill(self, server: ServerProcess, conn: Any, n: int,
                   batch: int) -> tuple[Load, float, float]:
        return await self.phase(server, n, lambda give_up, progress: put_batches(
            conn, n, batch, give_up, progress))

    async def one_by_one(self, server: ServerProcess, port: int) -> None:
        """S1 then S2 on one connection."""
        n = self.options.messages
        conn = await self.connect(port)("c0")
        try:
            if "S1" in self.wanted:
                figures = await self.phase(server, n, lambda give_up, progress: put_one_by_one(
                    conn, n, give_up, progress))
            else:
                figures = await self.fill(server, conn, n, BATCH)
            stored = figures[0].messages
            self.record("S1", *figures, wrong=await self.check_count(port, stored))
            if "S2" in self.wanted:
                figures = await self.phase(
                    server, stored, lambda give_up, progress: receive_ack_one_by_one(
                        conn, stored, give_up, progress))
                self.record("S2", *figures,
                            wrong=await self.check_count(port, stored - figures[0].messages))
        finally:
            await conn.close()

    async def concurrent(self, server: ServerProcess, port: int) -> None:
        """S3 (or S6, the same load on a durable server)."""
        n = self.options.messages
        figures = await self.phase(server, n, lambda give_up, progress: producers_consumers(
            self.connect(port), n, give_up, progress))
        wrong = "" if figures[0].stalled else await self.check_count(port, 0)
        self.record(self.group[0], *figures, wrong=wrong)

    async def batched(self, server: ServerProcess, port: int) -> None:
        """S4p then S4c on one connection."""
        n = self.options.messages
        conn = await self.connect(port)("c0")
        try:
            figures = await self.fill(server, conn, n, BATCH)
            stored = figures[0].messages
            self.record("S4p", *figures, wrong=await self.check_count(port, stored))
            if "S4c" in self.wanted:
                figures = await self.phase(
                    server, stored, lambda give_up, progress: receive_ack_batches(
                        conn, stored, BATCH, give_up, progress))
                self.record("S4c", *figures,
                            wrong=await self.check_count(port, stored - figures[0].messages))
        finally:
            await conn.close()

    async def check_count(self, port: int, expected: int) -> str:
        """check_count: "" when the queue holds `expected` messages after a phase (what it
        put, less what it acked), else why not. A system that delivered a message twice,
        or acked without effect, or dropped a put, would otherwise look faster (a
        reviewer). Acks a system does not confirm (JetStream's batch acks) may land a
        little later: the count is read again for up to COUNT_SETTLE_S."""
        settle_by = time.monotonic() + COUNT_SETTLE_S
        while True:
            found = await bounded(self.system.count(port, self.queue), "count")
            if found == expected:
                return ""
            if time.monotonic() >= settle_by:
                return f"count after: {found}, expected {expected}"
            await asyncio.sleep(COUNT_SETTLE_S / 20)

    async def memory(self, server: ServerProcess, port: int) -> None:
        """S5: resident memory per queued message, VmRSS after the fill minus before."""
        n = self.options.backlog
        conn = await self.connect(port)("c0")
        try:
            rss_before = server.rss_bytes()
            load, server_us, client_us = await self.fill(server, conn, n, FILL_BATCH)
            rss_after = server.rss_bytes()
        finally:
            await conn.close()
        wrong = await self.check_count(port, load.messages)
        per_message = (rss_after - rss_before) / max(load.messages, 1)
        self.record("S5", load, server_us, client_us, value=per_message,
                    note=f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB",
                    wrong=wrong)

    async def restart(self, server: ServerProcess, port: int) -> None:
        """S7: fill, stop by SIGTERM, start again on the same data; seconds from exec to ready."""
        n = self.options.backlog
        conn = await self.connect(port)("c0")
        try:
            load, _, _ = await self.fill(server, conn, n, FILL_BATCH)
        finally:
            await conn.close()
        if load.stalled:
            self.record("S7", load, None, None)
            return
        stop_s = server.stop()
        server, port, ready_s = await self.start_server(RESTART_LIMIT_S)
        server_us = 1e6 * server.cpu_seconds() / n
        wrong = await self.check_count(port, n)
        self.record("S7", Load(n, ready_s), server_us, None, value=ready_s,
                    note=f"clean stop took {stop_s:.2f} s", wrong=wrong)
