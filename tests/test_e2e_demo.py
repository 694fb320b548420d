"""End to end: `wonderq demo` as a user runs it, on its own server and with --connect.

The demo's accounting is checked from its printed table (the rows' labels
are stable), and its power to fail is checked too: a queue purged under it
must show up as lost messages and exit code 1, and nothing else may: a
server's small --max-batch is worked around, another refusal is exit 2.

The demo's own server must never outlive the demo: the tests find it as the
demo's child in /proc once the demo has printed its banner (the server is up
then), end the demo (a signal, or its normal end) and wait, bounded, for the
server to be gone.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from polling import until
from server_process import wonderq_command

from wonderq_cli.demo_ledger import Ledger, account
from wonderq_client import connect

RUN_TIMEOUT_S = 40.0


def demo_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("WONDERQ_")}
    env.update(PYTHONIOENCODING="utf-8", COLUMNS="120")
    return env


GONE_TIMEOUT_S = 10.0


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*wonderq_command(), "demo", *args], capture_output=True, text=True,
                          env={**demo_env(), **(env or {})}, timeout=RUN_TIMEOUT_S)


def accounting(output: str) -> dict[str, int]:
    """accounting reads the final table: {label: count} for each row the demo always prints."""
    rows = {}
    for label in ("produced", "acked", "dead-lettered", "still queued", "redelivered",
                  "duplicates seen", "lost", "acked twice"):
        match = re.search(rf"^\W*{re.escape(label)}\W+(\d+)\b", output, re.MULTILINE)
        assert match, f"no {label!r} row in the demo's output:\n{output}"
        rows[label] = int(match.group(1))
    return rows


def test_demo_on_its_own_server_accounts_for_every_message():
    started = time.monotonic()
    # The client's connection variables are for --connect: its own server is plain, so
    # stale ones (a CA that is gone, a key alone) must not stop it.
    stale = {"WONDERQ_CLIENT_TLS_CA": "/nonexistent/ca.pem", "WONDERQ_CLIENT_TLS_KEY": "k.pem"}
    result = run_demo("--messages", "40", "--seconds", "20", env=stale)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    rows = accounting(result.stdout)
    assert rows["produced"] == 40
    assert rows["produced"] == rows["acked"] + rows["dead-lettered"], output
    assert rows["still queued"] == 0 and rows["lost"] == 0 and rows["acked twice"] == 0
    # Bodies #20 and #40 are poison: every consumer nacks them, so after 3 deliveries
    # each they are dead-lettered, and were redelivered twice each on the way.
    assert rows["dead-lettered"] >= 2
    assert rows["redelivered"] >= 4 and rows["duplicates seen"] >= 2
    assert "OK: every message is accounted for" in result.stdout
    assert time.monotonic() - started < 20


def test_demo_with_connect_uses_and_then_removes_its_own_queues(server):
    result = run_demo("--connect", "--host", server.host, "--port", str(server.port),
                      "--queue", "e2e-demo", "--messages", "30", "--seconds", "15")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = accounting(result.stdout)
    assert rows["produced"] == 30 == rows["acked"] + rows["dead-lettered"]
    assert rows["lost"] == 0 and rows["acked twice"] == 0

    async def queue_names() -> list[str]:
        async with connect(server.host, server.port) as client:
            return [q["queue"] for q in await client.queues()]

    assert asyncio.run(queue_names()) == []


def test_demo_with_connect_refuses_a_queue_that_exists(server):
    async def make_queue() -> None:
        async with connect(server.host, server.port) as client:
            await client.put("mine", b"not the demo's")

    asyncio.run(make_queue())
    result = run_demo("--connect", "--host", server.host, "--port", str(server.port),
                      "--queue", "mine", "--messages", "5")
    assert result.returncode == 2
    assert "already exists" in result.stderr

    async def still_there() -> int:
        async with connect(server.host, server.port) as client:
            return (await client.queue_info("mine"))["messages"]

    assert asyncio.run(still_there()) == 1


def demo_on(server, queue: str, messages: int, seconds: int) -> subprocess.Popen[str]:
    """demo_on starts `wonderq demo --connect` against `server` in the background."""
    return subprocess.Popen(
        [*wonderq_command(), "demo", "--connect", "--host", server.host, "--port",
         str(server.port), "--queue", queue, "--messages", str(messages),
         "--seconds", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo_env())


def test_demo_reports_messages_purged_under_it_as_lost(server):
    """A server that dropped messages is what the accounting exists to catch."""
    proc = demo_on(server, "lossy", 100, 12)

    async def purge_some() -> int:
        async with connect(server.host, server.port) as client:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                queues = {q["queue"]: q for q in await client.queues()}
                if queues.get("lossy", {}).get("messages", 0) >= 3:
                    return await client.purge("lossy")
                await asyncio.sleep(0.02)
        return 0

    try:
        purged = asyncio.run(purge_some())
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        proc.kill()
    assert purged >= 3
    assert proc.returncode == 1, stdout + stderr
    rows = accounting(stdout)
    assert rows["lost"] == purged, stdout
    assert rows["produced"] == rows["acked"] + rows["dead-lettered"] + rows["lost"]
    assert "FAILED: " in stdout and "lost" in stdout


def test_accounting_fails_a_run_with_a_double_ack_or_a_lost_message():
    ledger = Ledger(messages=3)
    ledger.worker("w", "steady")
    for seq in (1, 2, 3):
        ledger.putting([seq])
        ledger.put_answered("w", seq, id=100 + seq)
        ledger.received(0.0, "w", seq, deliveries=1)
    ledger.ack_answered(0.0, "w", 1, refused=None, late=False)
    assert account(ledger, dead={2}, queued={3}).ok

    ledger.ack_answered(0.0, "w", 1, refused=None, late=False)  # OK again: a broken promise
    books = account(ledger, dead={2}, queued={3})
    assert books.acked_twice == (1,) and not books.ok

    books = account(Ledger(messages=0, produced={1, 2}, acked={1}), dead=set(), queued=set())
    assert books.lost == (2,) and not books.ok


def test_demo_with_connect_keeps_its_batches_under_the_servers_limit(server_factory):
    """Every batch the demo would send (10 bodies a put, 100 a read-back) is over 8."""
    server = server_factory("--max-batch", "8")
    result = run_demo("--connect", "--host", server.host, "--port", str(server.port),
                      "--messages", "40", "--seconds", "15")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    rows = accounting(result.stdout)
    assert rows["produced"] == 40 == rows["acked"] + rows["dead-lettered"], output
    assert "BATCH_TOO_LARGE" not in output


def test_demo_exits_2_with_one_line_when_the_server_refuses_it(server_factory):
    """Exit 1 is kept for broken promises: a refusal the demo did not expect is exit 2."""
    server = server_factory("--max-queues", "1")  # the demo needs two
    result = run_demo("--connect", "--host", server.host, "--port", str(server.port),
                      "--queue", "refused", "--messages", "5")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("wonderq demo: ") and "TOO_MANY_QUEUES" in line
    assert "Traceback" not in result.stdout + result.stderr


class DemoProcess:
    """DemoProcess is `python -m wonderq_cli demo` (its PID is the demo's, no wrapper's)
    with its stdout read line by line in a thread, so the test can wait for a line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wonderq_cli", "demo", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=demo_env())
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_banner(self) -> None:
        """wait_for_banner returns once the demo's first line is out: its server is up."""
        line = self.lines.get(timeout=RUN_TIMEOUT_S)
        assert line is not None and line.startswith("WonderQ demo on"), self.stderr()

    def server_pid(self) -> int:
        [pid] = [pid for pid in children(self.proc.pid)
                 if b"wonderq_server" in read_proc(pid, "cmdline")]
        return pid

    def wait(self) -> int:
        return self.proc.wait(RUN_TIMEOUT_S)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:  # gone
        return b""


def children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        stat = read_proc(int(entry), "stat") if entry.isdigit() else b""
        fields = stat.rsplit(b")", 1)[-1].split()  # after "(comm)", which may hold spaces
        if len(fields) > 2 and int(fields[1]) == parent:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """alive: the process runs. A zombie (state Z) has ended; only its parent, or an init
    that does not reap, keeps its /proc entry."""
    stat = read_proc(pid, "stat")
    return bool(stat) and stat.rsplit(b")", 1)[-1].split()[0] != b"Z"


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while alive(pid):
        assert time.monotonic() < deadline, f"the demo's server (pid {pid}) is still running"
        time.sleep(0.02)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


@needs_proc
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_an_interrupted_demo_stops_its_server(signum):
    demo = DemoProcess("--messages", "300", "--seconds", "20")
    try:
        demo.wait_for_banner()
        server = demo.server_pid()
        demo.proc.send_signal(signum)
        code = demo.wait()
        stderr = demo.stderr()
        wait_gone(server)
    finally:
        demo.kill()
    assert code == 128 + signum, stderr
    assert "interrupted" in stderr and "its server is stopped" in stderr
    assert "Traceback" not in stderr


@needs_proc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_demo_takes_its_server_with_it():
    demo = DemoProcess("--messages", "300", "--seconds", "20")
    try:
        demo.wait_for_banner()
        server = demo.server_pid()
        demo.proc.kill()  # SIGKILL: no cleanup runs; the kernel's parent-death signal does
        demo.wait()
        wait_gone(server)
    finally:
        demo.kill()


@needs_proc
def test_a_finished_demo_leaves_no_server_behind():
    demo = DemoProcess("--messages", "10", "--seconds", "10")
    try:
        demo.wait_for_banner()
        server = demo.server_pid()
        code = demo.wait()
        stderr = demo.stderr()
        assert not alive(server)  # stopped and reaped before the demo ended
    finally:
        demo.kill()
    assert code == 0, stderr


def test_a_server_that_stops_answering_cannot_stretch_seconds(server):
    # A reviewer stopped the server (SIGSTOP) 2.5 s into `--connect --seconds 6`: 45 s
    # later the demo was still waiting. It is now cut off OVERRUN_S after --seconds.
    proc = demo_on(server, "hung", 300, 6)

    async def queue_made() -> None:
        async with connect(server.host, server.port) as client:
            await until(client.queues, lambda queues: "hung" in {q["queue"] for q in queues})

    try:
        asyncio.run(queue_made())
        os.kill(server.proc.pid, signal.SIGSTOP)
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        proc.kill()
    assert proc.returncode == 2, stdout + stderr
    assert "stopped answering" in stderr and "Traceback" not in stderr


def test_demo_into_a_closed_pipe_ends_quietly_as_a_broken_pipe():
    # `wonderq demo | head -1`: a reviewer's said "cannot talk to the server at 127.0.0.1:N:
    # Broken pipe", exit 2, blaming its own server, which was fine. README: a reader that
    # has gone is exit 141, quietly.
    proc = subprocess.Popen([*wonderq_command(), "demo", "--messages", "20", "--seconds", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=demo_env())
    assert proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdout.readline()  # as `head -1` does
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"the server" not in err, err
    assert code == 141, err


def test_demo_into_a_full_disk_says_so_with_exit_74():
    with open("/dev/full", "wb") as full:
        done = subprocess.run([*wonderq_command(), "demo", "--messages", "20", "--seconds",
                               "6"], stdout=full, stderr=subprocess.PIPE, env=demo_env(),
                              timeout=40, check=False)
    assert b"the server" not in done.stderr, done.stderr
    assert b"cannot write the output: No space left on device" in done.stderr, done.stderr
    assert done.returncode == 74, done.stderr


@pytest.mark.parametrize("args", [["--seconds", "nan"], ["--seconds", "inf"],
                                  ["--seconds", "1e308"], ["--queue", b"d\xffmo"]])
def test_demo_bad_values_are_usage_errors_not_tracebacks(args):
    # A reviewer's nan, inf and 1e308 ended in tracebacks from the event loop's timers, and a
    # queue name that is not UTF-8 in one from the codec (argument_types.py: a usage error).
    done = subprocess.run([*wonderq_command(), "demo", "--messages", "5", *args],
                          capture_output=True, env=demo_env(), timeout=RUN_TIMEOUT_S,
                          check=False)
    assert b"Traceback" not in done.stderr, done.stderr[-400:]
    assert done.returncode == 2 and b"usage: " in done.stderr, done.stderr[-400:]
