"""The comparison checks what each system did: a system that delivers a message twice,
acks without effect or drops puts is not reported as a clean, faster run (a reviewer's
findings). Each test drives runner.run_group with an in-process fake system, whose
"server" is a sleeping process, so the /proc figures work; and S3 ends at once when
it fails, not at its time limit."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import report
import runner


def fake_system(*, duplicate: bool = False, lose_acks: bool = False,
                keep_every: int = 1) -> types.ModuleType:
    """A system whose receive hands out the same message again (duplicate), whose acks do
    nothing (lose_acks), or that stores only every keep_every-th put."""
    store: dict[str, list] = {"ready": [], "leased": []}
    counter = {"puts": 0}
    mod = types.ModuleType("fake")
    mod.NAME = "fake"
    mod.server_argv = lambda port, data_dir, mode: [sys.executable, "-c",
                                                    "import time; time.sleep(60)"]

    async def probe(port: int) -> None:
        return None

    async def prepare(port: int, queue: str, mode: str) -> None:
        return None

    async def count(port: int, queue: str) -> int:
        return len(store["ready"]) + len(store["leased"])

    class Conn:
        async def put(self, body: bytes) -> None:
            counter["puts"] += 1
            if counter["puts"] % keep_every == 0:
                store["ready"].append(body)

        async def put_batch(self, bodies: list[bytes]) -> None:
            for body in bodies:
                await self.put(body)

        async def receive_one(self, wait_s: float):
            got = await self.receive_batch(1, wait_s)
            return got[0] if got else None

        async def receive_batch(self, n: int, wait_s: float):
            if not store["ready"]:
                return []
            if duplicate:  # the same message, again and again
                return [(0, store["ready"][0])] * min(n, 1)
            got = store["ready"][:n]
            del store["ready"][:n]
            store["leased"].extend(got)
            return [(i, body) for i, body in enumerate(got)]

        async def ack(self, handle) -> None:
            await self.ack_batch([handle])

        async def ack_batch(self, handles) -> None:
            if not lose_acks and not duplicate:
                del store["leased"][:len(handles)]

        async def close(self) -> None:
            return None

    async def connect(port: int, queue: str, consumer: str) -> Conn:
        return Conn()

    mod.probe, mod.prepare, mod.count, mod.connect = probe, prepare, count, connect
    return mod


def run(system, group, selected, tmp_path, messages=300, backlog=300):
    options = runner.Options(messages, backlog, 2.0, tmp_path)
    return {r.scenario: r for r in runner.run_group(system, group, set(selected), 1, options)}


def test_an_honest_system_is_a_clean_run(tmp_path: Path):
    results = run(fake_system(), ("S1", "S2"), {"S1", "S2"}, tmp_path)
    assert results["S1"].value is not None and results["S2"].value is not None
    assert results["S2"].note == ""


def test_s2_that_receives_one_message_over_and_over_is_not_a_clean_run(tmp_path: Path):
    results = run(fake_system(duplicate=True), ("S1", "S2"), {"S1", "S2"}, tmp_path)
    s2 = results["S2"]
    # 300 "deliveries" of one message, 299 never delivered: left out, with the counts.
    assert s2.value is None
    assert "count after: 300, expected 0" in s2.note


def test_s4c_whose_acks_were_never_applied_is_not_a_clean_run(tmp_path: Path):
    results = run(fake_system(lose_acks=True), ("S4p", "S4c"), {"S4p", "S4c"}, tmp_path)
    s4c = results["S4c"]
    # every message still stored after the drain (JetStream's batch acks are unconfirmed)
    assert s4c.value is None
    assert "count after: 300, expected 0" in s4c.note


def test_s3_counting_a_redelivered_message_twice_is_not_a_clean_run(tmp_path: Path):
    results = run(fake_system(duplicate=True), ("S3",), {"S3"}, tmp_path)
    s3 = results["S3"]
    assert s3.value is None
    assert "acked twice" in s3.note


def test_s5_with_half_the_messages_stored_stays_out_of_the_median(tmp_path: Path):
    results = run(fake_system(keep_every=2), ("S5",), {"S5"}, tmp_path,
                  messages=300, backlog=300)
    s5 = results["S5"]
    assert "count after: 150, expected 300" in s5.note  # it is noticed ...
    summary = report.summarize([s5])[("S5", "fake")]
    # ... but the bytes/msg (divided by 300 where 150 were stored) is still the median
    assert summary.median is None, f"S5 median {summary.median} from a run that lost half"


def test_s3_ends_at_once_when_a_consumer_fails_not_at_the_time_limit():
    # On Python 3.11 asyncio.wait_for swallows a cancellation that arrives in the same loop
    # turn as its inner future's result: a consumer that acks (room.set()) and then fails
    # leaves the producers waiting in wait_for(room.wait(), left) until give_up. The same
    # happens on Ctrl-C/SIGTERM, with the server still running meanwhile.
    import asyncio
    import time

    import scenarios

    queue: asyncio.Queue = asyncio.Queue()
    acked = [0]

    class Conn:
        async def put(self, body: bytes) -> None:
            await asyncio.sleep(0)
            queue.put_nowait(body)

        async def receive_one(self, wait_s: float):
            if acked[0] >= 100:
                raise RuntimeError("a consumer's connection failed")
            try:
                return (0, await asyncio.wait_for(queue.get(), wait_s))
            except TimeoutError:
                return None

        async def ack(self, handle) -> None:
            await asyncio.sleep(0)
            acked[0] += 1

        async def close(self) -> None:
            return None

    async def connect(name: str) -> Conn:
        return Conn()

    async def main() -> float:
        t0 = time.monotonic()
        with pytest.raises(BaseExceptionGroup):
            await scenarios.producers_consumers(connect, 10**6, t0 + 5.0, scenarios.Progress())
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    assert elapsed < 1.0, f"producers_consumers ended {elapsed:.2f} s after start (give_up 5 s)"


def test_the_machine_says_how_many_cores_the_run_may_use(monkeypatch):
    # RESULTS-one-cpu.md ran under `taskset -c 0` and said "cores: 2" (a reviewer).
    import os

    import environment

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert environment.machine()["cores"] == "2, of which this run may use 1"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert environment.machine()["cores"] == "2"


def test_the_machine_names_the_data_directories_filesystem_and_stolen_time(tmp_path):
    import environment

    found = environment.machine(tmp_path)["filesystem of the data directories"]
    assert found != "unknown" and " on /" in found
    stolen, total = environment.cpu_ticks()
    assert 0 <= stolen <= total and total > 0


def test_a_results_path_in_no_directory_is_refused_before_the_run(capsys):
    import compare

    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(["--results", "/nonexistent-dir-of-the-test/r.md"])
    assert exit_info.value.code == 2
    assert "--results: no directory '/nonexistent-dir-of-the-test'" in capsys.readouterr().err


def test_s3_counts_the_do_nothing_servers_canned_message_every_time():
    # The probes' do-nothing server (bench/probes/nothing_server.py) hands every receive
    # the same canned message, with no queue behind it. Once S3's bodies carried their
    # number, its canned body's bytes read as a number far past the run's, and every
    # S3 probe against it (floor.py, s3_cpu_split.py) died of an IndexError.
    import asyncio
    import time

    import scenarios

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "probes"))
    from nothing_server import CANNED

    class Conn:
        async def put(self, body: bytes) -> None:
            await asyncio.sleep(0)

        async def receive_one(self, wait_s: float):
            await asyncio.sleep(0)
            message = CANNED[0]
            return (message[0], message[1])

        async def ack(self, handle) -> None:
            await asyncio.sleep(0)

        async def close(self) -> None:
            return None

    async def connect(name: str) -> Conn:
        return Conn()

    load = asyncio.run(scenarios.producers_consumers(
        connect, 500, time.monotonic() + 10.0, scenarios.Progress()))
    # (the four consumers' receives in flight at the end count too: 500 to 503)
    assert 500 <= load.messages <= 503 and not load.stalled, (load.messages, load.stalled)
