"""End to end: `wonderq work`, the installed console script, against the real server.

The programs it runs are small shell or Python one-liners that record what they were given
in files under tmp_path; the tests wait for what the server shows (acked totals, a message's
state) and stop the worker with SIGTERM, as an init system would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import EVENT_TIMEOUT_S, until, until_stats
from server_process import ServerProcess, wonderq_command

from wonderq_client import connect


async def signal_until_exit(proc: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    """signal_until_exit sends `sig` every 1 ms until `proc` has exited (at most 5,000
    times), as a user pressing Ctrl-C again and again; returns how many were sent and
    its stderr."""
    sent = 0
    while proc.poll() is None and sent < 5_000:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        sent += 1
        await asyncio.sleep(0.001)
    _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    return sent, err


@contextlib.contextmanager
def work(server: ServerProcess, *args: str,
         stdout: int = subprocess.PIPE) -> Iterator[subprocess.Popen[str]]:
    """work runs `wonderq work ARGS` against `server`; on leaving, kills it if still there."""
    argv = wonderq_command()
    proc = subprocess.Popen([*argv, "--host", server.host, "--port", str(server.port),
                             "work", *args], stdout=stdout, stderr=subprocess.PIPE,
                            text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """stop sends SIGTERM and returns the exit status, stdout and stderr."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    return proc.returncode, out, err


def assert_ended(pid: int) -> None:
    """assert_ended: the process is gone; if not, it is killed (a failing test leaves no
    program behind) and the test fails."""
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"process {pid} was still running")


def alive(pid: int) -> bool:
    """alive: the process exists and is not a zombie (nobody may reap an orphan here)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class OutputPipe:
    """OutputPipe is a pipe for `wonderq work`'s standard output whose reader the test is:
    pass `write_end` to work(), then `handed_over()`; `reader_leaves()` is `head` exiting."""

    def __enter__(self) -> OutputPipe:
        self._read_end: int | None
        self._write_end: int | None
        self._read_end, self._write_end = os.pipe()
        return self

    @property
    def write_end(self) -> int:
        assert self._write_end is not None
        return self._write_end

    def handed_over(self) -> None:
        """handed_over closes the test's copy of the write end (the tool has its own)."""
        os.close(self.write_end)
        self._write_end = None

    def reader_leaves(self) -> None:
        assert self._read_end is not None
        os.close(self._read_end)
        self._read_end = None

    def __exit__(self, *exc_info: object) -> None:
        for fd in (self._read_end, self._write_end):
            if fd is not None:
                os.close(fd)


async def path_exists(path: Path) -> bool:
    return path.exists()


RECORDER = """
import json, os, sys
body = sys.stdin.buffer.read().decode()
record = {k: v for k, v in os.environ.items() if k.startswith("WONDERQ_")}
record["body"] = body
with open(os.path.join(sys.argv[1], os.environ["WONDERQ_MESSAGE_ID"]), "w") as out:
    json.dump(record, out)
"""


async def test_work_runs_the_program_on_each_message_and_acks_what_exits_0(server, tmp_path):
    async with connect(server.host, server.port) as client:
        plain = await client.put("jobs", b"resize 1")
        with_headers = await client.put("jobs", b"resize 2", headers={"trace": "t-1"})
        third = await client.put("jobs", "résumé".encode())
        # Flags between QUEUE and `--` are the worker's, not the program's.
        with work(server, "jobs", "--concurrency", "2", "--", sys.executable, "-c", RECORDER,
                  str(tmp_path)) as proc:
            await until_stats(client, lambda s: s["queues"]["jobs"]["acked_total"] == 3)
            code, _, err = stop(proc)
        assert code == 0, err
        assert "stopped after 3 messages: 3 acked, 0 failed" in err
        assert (await client.queue_info("jobs"))["messages"] == 0
    records = {int(p.name): json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert sorted(records) == sorted([plain, with_headers, third])
    assert records[plain]["body"] == "resize 1"
    assert records[third]["body"] == "résumé"
    assert records[with_headers]["WONDERQ_HEADERS"] == '{"trace": "t-1"}'
    assert records[plain]["WONDERQ_HEADERS"] == "{}"
    assert (records[plain]["WONDERQ_QUEUE"], records[plain]["WONDERQ_DELIVERIES"]) \
        == ("jobs", "1")
    assert float(records[plain]["WONDERQ_ENQUEUED_AT"]) > 1.7e9
    # The server's address, for a program that runs `wonderq put` for follow-up work.
    assert (records[plain]["WONDERQ_HOST"], records[plain]["WONDERQ_PORT"]) \
        == (server.host, str(server.port))


async def test_a_program_that_fails_has_its_message_retried_after_the_delay(server):
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("failing", b"x")
        with work(server, "failing", "--retry-delay", "600", "--", "sh", "-c",
                  "exit 3") as proc:
            info = await until(lambda: client.message_info("failing", msg_id),
                               lambda i: i["state"] == "delayed")
            code, _, err = stop(proc)
        assert info["deliveries"] == 1
        assert info["deadline_at"] > info["enqueued_at"] + 590
        assert code == 0, err
        assert f"handler failed on message {msg_id} of 'failing' (delivery 1): " \
               "sh exited with status 3" in err
        assert "Traceback" not in err
        assert "1 failed" in err


async def test_a_program_past_its_command_timeout_is_ended_and_retried(server, tmp_path):
    pid_file = tmp_path / "pid"
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("slow", b"x")
        with work(server, "slow", "--command-timeout", "0.3", "--retry-delay", "600", "--",
                  "sh", "-c", f"echo $$ > {pid_file}; exec sleep 600") as proc:
            await until(lambda: client.message_info("slow", msg_id),
                        lambda i: i["state"] == "delayed")
            code, _, err = stop(proc)
        assert_ended(int(pid_file.read_text()))
        assert code == 0, err
        assert "ran past --command-timeout (0.3 s); ended it" in err


async def test_sigterm_ends_a_running_program_after_the_grace_and_gives_its_message_back(
        server, tmp_path):
    pid_file = tmp_path / "pid"
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("stopping", b"x")
        with work(server, "stopping", "--grace", "0", "--visibility", "3600", "--", "sh",
                  "-c", f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; "
                  "exec sleep 600") as proc:
            await until(lambda: path_exists(pid_file), bool)
            code, _, err = stop(proc)
        assert_ended(int(pid_file.read_text()))
        assert code == 0, err
        assert "1 given back" in err
        # Given back at once, not held for its hour-long lease.
        [msg] = await client.receive("stopping", wait=EVENT_TIMEOUT_S)
        assert (msg.id, msg.deliveries) == (msg_id, 2)


async def test_work_refuses_a_program_that_does_not_exist(server):
    with work(server, "jobs", "--", "no-such-program-wonderq") as proc:
        _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 2
    assert "no-such-program-wonderq: command not found" in err
    with work(server, "jobs") as proc:
        _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 2
    assert "give the program to run" in err


async def test_work_flags_after_queue_without_dashes_are_explained(server):
    with work(server, "jobs", "--concurrency", "2", "cat") as proc:
        _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 2
    assert "--concurrency: command not found" in err
    assert "flags after QUEUE need -- before the program" in err


async def test_a_program_that_does_not_read_its_input_is_judged_by_its_exit_status(server):
    async with connect(server.host, server.port) as client:
        await client.put_many("unread", [b"x" * 200_000] * 3)  # more than a pipe holds
        with work(server, "unread", "--concurrency", "3", "--", "true") as proc:
            await until_stats(client, lambda s: s["queues"]["unread"]["acked_total"] == 3)
            code, _, err = stop(proc)
        assert code == 0, err
        assert "3 acked, 0 failed" in err


async def test_ending_a_program_ends_what_it_started_too(server, tmp_path):
    """The program's leader dies of SIGTERM at once; the child it started ignores SIGTERM.
    Ending the program must still end the child (SIGKILL to the group)."""
    child_file = tmp_path / "child"
    script = (f"(trap '' TERM; exec sleep 600) & echo $! > {child_file}.tmp; "
              f"mv {child_file}.tmp {child_file}; wait")
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("tree", b"x")
        with work(server, "tree", "--command-timeout", "0.5", "--retry-delay", "600", "--",
                  "sh", "-c", script) as proc:
            await until(lambda: client.message_info("tree", msg_id),
                        lambda i: i["state"] == "delayed")
            code, _, err = stop(proc)
        assert_ended(int(child_file.read_text()))
        assert code == 0, err


async def test_a_program_ignoring_sigterm_is_gone_when_work_stops_with_a_short_timeout(
        server, tmp_path):
    """--timeout 2 bounds the wait for cancelled programs to 2 s: the SIGKILL must come
    within it (at half of it), not after the tool has gone."""
    pid_file = tmp_path / "pid"
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("stubborn", b"x")
        with work(server, "stubborn", "--grace", "0", "--timeout", "2", "--visibility",
                  "3600", "--", "sh", "-c",
                  f"trap '' TERM; echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; "
                  "while :; do sleep 0.05; done") as proc:
            await until(lambda: path_exists(pid_file), bool)
            code, _, err = stop(proc)
        assert_ended(int(pid_file.read_text()))
        assert code == 0, err
        assert "1 given back" in err
        [msg] = await client.receive("stubborn", wait=EVENT_TIMEOUT_S)
        assert msg.id == msg_id


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_killed_worker_takes_its_running_program_with_it(server, tmp_path):
    """SIGKILL of the tool runs no cleanup: the kernel's parent-death signal ends the program
    (which would otherwise go on with a message that is about to be delivered again)."""
    pid_file = tmp_path / "pid"
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("orphans", b"x")
        with work(server, "orphans", "--visibility", "1", "--", "sh", "-c",
                  f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; "
                  "while :; do sleep 0.05; done") as proc:
            await until(lambda: path_exists(pid_file), bool)
            program = int(pid_file.read_text())
            assert alive(program)
            proc.kill()
            proc.wait()
        await until(lambda: still_alive(program), lambda running: not running)
        # Its lease runs out, and the message goes to whoever receives next.
        [msg] = await client.receive("orphans", wait=EVENT_TIMEOUT_S)
        assert (msg.id, msg.deliveries) == (msg_id, 2)


FORKED_WORKER = """
import os, sys
from wonderq_cli import main
pid = os.fork()  # as a supervisor or multiprocessing may, after the import
if pid == 0:
    code = main.main(sys.argv[1:])
    os._exit(code if isinstance(code, int) else 0)
os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


async def test_a_worker_forked_after_the_import_still_runs_its_programs(server, tmp_path):
    """The parent-death check compares the program's parent with the worker's pid: it must
    be the pid of the process that runs, not of the one that imported the module."""
    done_file = tmp_path / "ran"
    async with connect(server.host, server.port) as client:
        await client.put("forked", b"x")
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", FORKED_WORKER, "--host", server.host, "--port",
             str(server.port), "work", "forked", "--max-messages", "1", "--", "sh", "-c",
             f"touch {done_file}"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert done_file.exists(), result.stderr
        assert (await client.stats())["queues"]["forked"]["acked_total"] == 1


async def still_alive(pid: int) -> bool:
    return alive(pid)


async def test_work_help_after_the_queue_is_help(server):
    with work(server, "jobs", "-h") as proc:
        out, _ = proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 0
    assert "usage: wonderq work" in out


async def test_max_messages_ends_work_by_itself_after_that_many(server):
    async with connect(server.host, server.port) as client:
        await client.put_many("counted", [b"a", b"b", b"c"])
        with work(server, "counted", "--max-messages", "2", "--", "true") as proc:
            _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 0, err
        assert "stopped after 2 messages: 2 acked, 0 failed" in err
        assert (await client.queue_info("counted"))["messages"] == 1


async def test_burst_handles_the_queue_then_exits(server):
    async with connect(server.host, server.port) as client:
        await client.put_many("drained", [b"x"] * 5)
        with work(server, "drained", "--burst", "--concurrency", "2", "--", "cat") as proc:
            out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 0, err
        assert out == "x" * 5
        assert "stopped after 5 messages: 5 acked" in err
        assert (await client.queue_info("drained"))["messages"] == 0


async def test_exit_status_75_retries_the_message_without_a_failure(server):
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("tempfail", b"x")
        with work(server, "tempfail", "--max-messages", "1", "--retry-delay", "600", "--",
                  "sh", "-c", "exit 75") as proc:
            _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 0, err
        info = await client.message_info("tempfail", msg_id)
        assert info["state"] == "delayed"
        assert info["deadline_at"] > info["enqueued_at"] + 590
        assert f"message {msg_id} of 'tempfail': retrying in 600 s (sh exited with status " \
               "75 (EX_TEMPFAIL))" in err
        assert "0 failed, 1 retried" in err
        assert "handler failed" not in err


PYTHON_PRINTER = [sys.executable, "-c", "import sys; print(sys.stdin.read())"]


@pytest.mark.parametrize("program", [["cat"], PYTHON_PRINTER], ids=["sigpipe", "exit-status"])
async def test_work_whose_reader_has_gone_gives_messages_back_and_exits_141(server, program):
    """`wonderq work q -- prog | head`, once head has gone: each program dies of SIGPIPE
    (cat) or exits with an error (Python's BrokenPipeError). That is not the message's
    fault: nothing may be dead-lettered (max_deliveries is 1), and the tool stops as a
    filter whose reader left."""
    async with connect(server.host, server.port) as client:
        await client.create_queue("piped-dead")
        await client.create_queue("piped", max_deliveries=1, dead_letter_queue="piped-dead")
        await client.put_many("piped", [b"1", b"2", b"3"])
        with OutputPipe() as output:
            output.reader_leaves()  # the reader is gone before anything is written
            with work(server, "piped", "--concurrency", "2", "--", *program,
                      stdout=output.write_end) as proc:
                _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 141, err
        assert "standard output is closed (its reader has gone); stopping" in err
        assert "0 acked, 0 failed" in err
        stats = (await client.stats())["queues"]
        assert stats["piped"]["messages"] == 3
        assert stats["piped"]["in_flight"] == 0  # given back, not left to their leases
        assert stats.get("piped-dead", {}).get("messages", 0) == 0
        [first, *_] = await client.receive("piped", max=3)
        assert first.deliveries == 1  # the SIGPIPE'd delivery was taken off the count


async def test_a_program_killed_by_sigpipe_is_a_failure_while_the_output_is_there(server):
    """A program killed by SIGPIPE while this tool's output is still read (a pipe of the
    program's own broke) has failed, as with any other status."""
    async with connect(server.host, server.port) as client:
        msg_id = await client.put("ownpipe", b"x")
        with work(server, "ownpipe", "--max-messages", "1", "--retry-delay", "600", "--",
                  "sh", "-c", "kill -PIPE $$") as proc:
            _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 0, err
        assert "1 failed" in err
        assert (await client.message_info("ownpipe", msg_id))["state"] == "delayed"


async def test_a_reader_gone_after_a_stop_does_not_hurry_the_stop(server, tmp_path):
    """A Ctrl-C reaches both `wonderq work` and `head`: the stop comes first, then the
    reader goes. The program that writes dies of SIGPIPE and is put back; the quiet one
    still has its grace, finishes and is acked; the exit status is the stop's, 0."""
    go = tmp_path / "go"
    script = (f'body=$(cat); touch {tmp_path}/started-$body; '
              f'until [ -e {go} ]; do sleep 0.02; done; '
              f'if [ "$body" = loud ]; then echo loud; fi')
    async with connect(server.host, server.port) as client:
        await client.put_many("ctrl-c", [b"quiet", b"loud"])
        with OutputPipe() as output, work(server, "ctrl-c", "--concurrency", "3", "--", "sh",
                                          "-c", script, stdout=output.write_end) as proc:
            output.handed_over()
            for name in ("started-quiet", "started-loud"):
                await until(lambda name=name: path_exists(tmp_path / name), bool)
            # The third slot's long poll waits on the server; the stop withdraws it.
            await until_stats(client, lambda s: s["queues"]["ctrl-c"]["waiting"] == 1)
            proc.send_signal(signal.SIGTERM)
            await until_stats(client, lambda s: s["queues"]["ctrl-c"]["waiting"] == 0)
            output.reader_leaves()
            go.touch()
            _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 0, err
        assert "1 acked, 0 failed, 1 retried, 0 given back" in err
        assert "standard output is closed (its reader has gone)\n" in err  # no "stopping"
        [msg] = await client.receive("ctrl-c")
        assert (msg.body, msg.deliveries) == (b"loud", 1)


async def test_a_signal_racing_the_end_of_a_burst_does_not_kill_the_tool(server):
    """A Ctrl-C as a burst finishes (a reviewer: exit -2/-15 in 19 of 20 runs): the work
    is done and the summary said, so the exit status stays 0."""
    async with connect(server.host, server.port) as client:
        await client.put_many("race", [b"a", b"b", b"c"])
        with work(server, "race", "--burst", "--", "true") as proc:
            await until_stats(client, lambda s: s["queues"]["race"]["acked_total"] == 3)
            sent, err = await signal_until_exit(proc, signal.SIGINT)
        assert proc.returncode == 0, (sent, err)
        assert "stopped after 3 messages: 3 acked" in err


def test_a_burst_that_cannot_reach_the_server_ends_with_exit_2(server_factory):
    """`wonderq work q --burst` from cron, with the server down or the port wrong: it
    says so and exits 2 (a daemon worker rides this out; a burst would wait for ever).
    A listening socket that never answers (another service's port) ends it too."""
    argv = wonderq_command()
    down = server_factory()
    host, port = down.host, down.port
    down.stop()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        for where, why in ((port, "Connection refused"),
                           (silent.getsockname()[1], "no answer to a receive")):
            done = subprocess.run([*argv, "--host", host, "--port", str(where), "--timeout",
                                   "0.5", "work", "q", "--burst", "--", "cat"],
                                  capture_output=True, text=True, timeout=EVENT_TIMEOUT_S)
            assert done.returncode == 2, done
            assert f"cannot reach the server at {host}:{where}: {why}" in done.stderr, done
    finally:
        silent.close()


async def test_signals_that_keep_coming_after_the_stop_do_not_kill_the_tool(server):
    """A user pressing Ctrl-C again and again: the stop is graceful, and a signal that
    lands after the worker ended (its handlers gone, the tool on its way out) must not
    end it by that signal; a reviewer saw exit -2/-15 in 6 of 16 trials."""
    async with connect(server.host, server.port) as client:
        with work(server, "storm", "--", "true") as proc:
            await until_stats(client, lambda s: s["queues"].get("storm", {}).get("waiting") == 1)
            sent, err = await signal_until_exit(proc, signal.SIGTERM)
        assert proc.returncode == 0, (sent, err)
        assert "stopped after 0 messages" in err


async def test_work_with_its_standard_output_closed_runs_programs_on_dev_null(server):
    """`wonderq work ... >&-`: the programs' output goes nowhere, and they succeed (libuv
    aborted the tool, and every program, when fd 1 was closed)."""
    argv = wonderq_command()
    async with connect(server.host, server.port) as client:
        await client.put_many("closed-out", [b"a", b"b"])
        proc = subprocess.run(
            ["sh", "-c", 'exec "$@" >&-', "sh", *argv, "--host", server.host, "--port",
             str(server.port), "work", "closed-out", "--burst", "--", "sh", "-c",
             "cat; echo"], capture_output=True, text=True, timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr
        assert "stopped after 2 messages: 2 acked" in proc.stderr
        assert (await client.queue_info("closed-out"))["messages"] == 0


async def test_a_signal_after_the_reader_has_gone_leaves_the_grace_alone(server, tmp_path):
    """The closed output began the stop; systemd's SIGTERM comes next. That one signal must
    not hurry the stop: a program still running keeps its grace and is acked."""
    go, quiet_go = tmp_path / "go", tmp_path / "quiet-go"
    script = (f'body=$(cat); echo $$ > {tmp_path}/pid-$body.tmp; '
              f'mv {tmp_path}/pid-$body.tmp {tmp_path}/pid-$body; '
              f'if [ "$body" = loud ]; then until [ -e {go} ]; do sleep 0.02; done; '
              f'echo loud; else until [ -e {quiet_go} ]; do sleep 0.02; done; fi')
    async with connect(server.host, server.port) as client:
        await client.put_many("systemd", [b"quiet", b"loud"])
        with OutputPipe() as output, work(server, "systemd", "--concurrency", "3", "--",
                                          "sh", "-c", script, stdout=output.write_end) as proc:
            output.handed_over()
            for name in ("pid-quiet", "pid-loud"):
                await until(lambda name=name: path_exists(tmp_path / name), bool)
            output.reader_leaves()
            go.touch()  # loud dies of SIGPIPE: the tool stops, withdrawing its poll
            await until_stats(client, lambda s: s["queues"]["systemd"]["waiting"] == 0)
            proc.send_signal(signal.SIGTERM)
            # The clock: a long poll on the server. A hurried stop would end quiet now.
            assert await client.receive("systemd-clock", wait=1.0) == []
            assert alive(int((tmp_path / "pid-quiet").read_text()))
            quiet_go.touch()
            _, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
        assert proc.returncode == 141, err
        assert "(its reader has gone); stopping" in err
        assert "1 acked, 0 failed, 1 retried, 0 given back" in err


def closed_stream_run(server: ServerProcess, redirect: str, *args: str,
                      ) -> subprocess.CompletedProcess[str]:
    """closed_stream_run runs `python -m wonderq_cli ARGS` with a standard stream closed by
    `redirect` (`<&-`, `>&-`, `2>&-`); not through a console-script shim, which may keep the
    stream open itself."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirect}', "sh", sys.executable, "-m", "wonderq_cli",
         "--host", server.host, "--port", str(server.port), *args],
        capture_output=True, text=True, timeout=EVENT_TIMEOUT_S)


def test_a_stream_open_the_wrong_way_counts_as_closed(server):
    # `2</dev/null` (or pyenv's shell shim, which leaves its script read-only on a closed
    # fd 2): the error line failed with EBADF, and the unreachable server's exit 2 was 1.
    unreachable = subprocess.run(
        ["sh", "-c", 'exec "$@" 2</dev/null', "sh", sys.executable, "-m", "wonderq_cli",
         "--port", "1", "stats"], capture_output=True, text=True, timeout=EVENT_TIMEOUT_S)
    assert (unreachable.returncode, unreachable.stdout) == (2, "")
    # stdout read-only is as closed: receive refuses rather than lease into nothing
    receive = closed_stream_run(server, "1</dev/null", "receive", "wrong-way", "--ack")
    assert receive.returncode == 2
    assert "wonderq receive: standard output is closed (or not open for writing)" \
        in receive.stderr
    # stdin write-only: put with no BODY refuses rather than put an empty body
    put = closed_stream_run(server, "0>/dev/null", "put", "wrong-way")
    assert put.returncode == 2
    assert "wonderq put: standard input is closed (or not open for reading)" in put.stderr


async def test_only_commands_that_need_a_closed_stdin_or_stdout_refuse_it(server):
    async with connect(server.host, server.port) as client:
        await client.put("closed", b"x")
        put = closed_stream_run(server, "<&-", "put", "closed")  # the body from stdin
        assert (put.returncode, put.stdout) == (2, "")
        assert "wonderq put: standard input is closed" in put.stderr
        receive = closed_stream_run(server, ">&-", "receive", "closed", "--ack")
        assert receive.returncode == 2
        assert "wonderq receive: standard output is closed" in receive.stderr
        # Nothing was written, so nothing was acked.
        assert (await client.queue_info("closed"))["messages"] == 1
        # Commands that neither read a body from stdin nor lease by what they write run.
        assert closed_stream_run(server, "<&-", "put", "closed", "body").returncode == 0
        assert closed_stream_run(server, "<&-", "stats").returncode == 0
        assert closed_stream_run(server, ">&-", "peek", "closed").returncode == 0
        top = closed_stream_run(server, ">&-", "top")  # would draw into nothing, for ever
        assert top.returncode == 2 and "wonderq top: standard output is closed" in top.stderr
        # A closed stderr is no error, and what would go there does not go to stdout.
        missing = closed_stream_run(server, "2>&-", "receive", "nothing-here")
        assert (missing.returncode, missing.stdout) == (0, "")  # "no message" went nowhere
