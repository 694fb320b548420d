"""End to end: the `wonderq` command line tool against the real server.

Each test runs the installed console script as a subprocess (as a user
would, with --host/--port or the WONDERQ_* variables) and checks its output
and exit code against what the server holds, read back with the client.
`top` is tested by rendering frames from a real server's stats, and its
poller across the server going away and coming back.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import time

import pytest
from fault_proxy import FaultProxy
from polling import EVENT_TIMEOUT_S, until, until_stats, until_true
from raw_socket import TextSocket
from rich.console import Console
from server_process import ServerProcess, wonderq_command

from wonderq_cli.stats_view import server_line
from wonderq_cli.top import FRAME_LINES, History, Poll, Poller, frame
from wonderq_client import ConnectionClosed, connect


def wonderq(*args: str | bytes, stdin: bytes = b"", env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[bytes]:
    argv = wonderq_command()
    return subprocess.run([*argv, *args], input=stdin, capture_output=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, check=False)


def at(server: ServerProcess) -> list[str]:
    return ["--host", server.host, "--port", str(server.port)]


async def cli(*args: str | bytes, stdin: bytes = b"", env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(wonderq, *args, stdin=stdin, env=env)


def test_version_is_printed_as_the_servers_is():
    # A newcomer's review: `wonderq-server --version` worked, `wonderq --version` did not.
    from wonderq_client import __version__
    done = wonderq("--version")
    assert (done.returncode, done.stdout) == (0, f"wonderq {__version__}\n".encode())


async def test_stats_json_is_the_stats_reply(server):
    async with connect(server.host, server.port) as client:
        await client.put_many("jobs", [b"a", b"b", b"c"])
        [msg] = await client.receive("jobs")
        await msg.ack()
    done = await cli("stats", "--json", *at(server))
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    jobs = stats["queues"]["jobs"]
    assert (jobs["ready"], jobs["in_flight"], jobs["put_total"], jobs["acked_total"]) == (
        2, 0, 3, 1)
    assert stats["server"]["messages"] == 2


async def test_stats_tables_name_every_queue_and_figure(server):
    async with connect(server.host, server.port) as client:
        await client.put("first-queue", b"x")
        await client.put_many("second-queue", [b"1", b"2"], delay=60)
    done = await cli("stats", *at(server))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "first-queue" in text and "second-queue" in text
    assert "3 messages" in text and "in memory" in text
    row = next(line for line in text.splitlines() if "second-queue" in line)
    assert row.split()[1:4] == ["0", "0", "2"]  # ready, in flight, delayed


async def test_stats_and_queues_tables_of_thousands_of_queues_show_each_whole(server):
    # A reviewer: rich's Table took 2.7 s of CPU to print 3,000 queues. The rows are
    # now padded as text (text_table.py); every queue is still there, once, with its
    # figures, and a name wider than the column (128, the most) folds, never cut.
    longest = "n" * 128
    async with connect(server.host, server.port) as client:
        puts = [client.put(f"q{i:04d}", b"x") for i in range(3000)]
        puts.append(client.put_many(longest, [b"1", b"2"], delay=60))
        await asyncio.gather(*puts)
    stats = (await cli("stats", *at(server))).stdout.decode().splitlines()
    queues = (await cli("queues", *at(server))).stdout.decode().splitlines()
    for lines in (stats, queues):
        assert "queues (3001)" in lines[0] + lines[1]
        names = [line.split()[0] for line in lines if line.strip().startswith("q")]
        assert sorted(names) == [*(f"q{i:04d}" for i in range(3000)), "queue", "queues"]
    assert next(line for line in queues if "q0042" in line).split() == [
        "q0042", "1", "1", "0", "0", "no"]  # messages, ready, in flight, delayed, explicit
    assert next(line for line in queues if longest in line).split() == [
        longest, "2", "0", "0", "2", "no"]
    at_row = next(i for i, line in enumerate(stats) if line.strip().startswith("n"))
    row, *folds = stats[at_row:at_row + 3]
    assert row.split()[1:4] == ["0", "0", "2"]  # ready, in flight, delayed
    assert "".join([row.split()[0], *(line.strip() for line in folds)]) == longest
    assert row.index("n") == folds[0].index("n") == folds[1].index("n")


async def test_put_receive_ack_from_a_shell(server):
    env = {"WONDERQ_HOST": server.host, "WONDERQ_PORT": str(server.port)}
    done = await cli("put", "jobs", "resize image 42", "--priority", "3", "--header",
                     "trace=abc", "--header", "tenant=7=x", env=env)
    assert done.returncode == 0, done.stderr
    msg_id = int(done.stdout)
    done = await cli("receive", "jobs", "--json", "--visibility", "60", env=env)
    assert done.returncode == 0, done.stderr
    [delivered] = json.loads(done.stdout)
    # Ids and leases are strings: over 2**53, jq 1.6 and JavaScript round JSON numbers.
    assert (delivered["id"], delivered["body"], delivered["priority"], delivered["headers"],
            delivered["deliveries"]) == (str(msg_id), "resize image 42", 3,
                                         {"trace": "abc", "tenant": "7=x"}, 1)
    assert msg_id > 2**53 and delivered["lease"] == str(int(delivered["lease"]))
    info = json.loads((await cli("message-info", "jobs", str(msg_id), "--json",
                                 env=env)).stdout)
    assert (info["id"], info["state"]) == (str(msg_id), "leased")
    done = await cli("put", "ids", "more", "--json", env=env)
    assert int(json.loads(done.stdout)["id"]) > msg_id
    done = await cli("ack", "jobs", str(msg_id), str(delivered["lease"]), env=env)
    assert done.returncode == 0, done.stderr
    async with connect(server.host, server.port) as client:
        info = await client.queue_info("jobs")
    assert (info["messages"], info["acked_total"]) == (0, 1)
    # Acking again: the server's NOT_FOUND, one line, exit code 1.
    done = await cli("ack", "jobs", str(msg_id), str(delivered["lease"]), env=env)
    assert done.returncode == 1
    assert done.stderr.decode().startswith("wonderq: NOT_FOUND: ")
    assert done.stderr.count(b"\n") == 1


def blocked_writing_to_a_pipe(pid: int) -> bool:
    """The process sleeps in the kernel's pipe_write: its reader is not reading."""
    try:
        with open(f"/proc/{pid}/wchan") as wchan:
            return wchan.read().endswith("pipe_write")
    except OSError:
        return False


@pytest.mark.parametrize("ack", [True, False])
async def test_receive_into_a_slow_reader_is_not_a_server_that_did_not_answer(server, ack):
    # `wonderq receive slow --max 200 --ack --json | slow-consumer`: a reviewer's wrote
    # every message, and with --ack the server acked all 200; yet it exited 2, "the server
    # did not answer within 1 s", for the time its reader took (--timeout ran meanwhile).
    # A script takes exit 2 for "nothing happened", though the messages are gone.
    async with connect(server.host, server.port) as client:
        await client.put_many("slow", [b"x" * 1000] * 200)
    proc = subprocess.Popen([*wonderq_command(), *at(server), "--timeout", "1", "receive",
                             "slow", "--max", "200", "--json", *(["--ack"] if ack else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The reply is in: the tool waits for its reader (a pipe holds 64 KiB).
        await until_true(lambda: blocked_writing_to_a_pipe(proc.pid))
        await asyncio.sleep(1.5)  # the reader: slower than --timeout (not a synchronisation)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.count(b'"id"') == 200
    async with connect(server.host, server.port) as client:
        assert (await client.queue_info("slow"))["acked_total"] == (200 if ack else 0)
    assert (b"slow: acked 200" in err) == ack, err


async def test_put_reads_standard_input_and_receive_ack_settles(server):
    body = bytes(range(256))
    done = await cli("put", "bin", "-", *at(server), stdin=body)
    assert done.returncode == 0, done.stderr
    done = await cli("receive", "bin", "--max", "5", "--ack", "--json", *at(server))
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"bin: acked 1\n"  # said aside, so stdout stays one document
    [delivered] = json.loads(done.stdout)
    assert base64.b64decode(delivered["body_base64"]) == body
    async with connect(server.host, server.port) as client:
        assert (await client.queue_info("bin"))["messages"] == 0  # --ack acked it


async def test_peek_purge_and_queues(server):
    async with connect(server.host, server.port) as client:
        await client.put_many("work", [b"low", b"high"], priority=1)
        await client.put("work", b"urgent", priority=-1)
        await client.create_queue("empty")
    done = await cli("peek", "work", "--json", *at(server))
    assert [m["body"] for m in json.loads(done.stdout)] == ["urgent", "low", "high"]
    assert all(m["lease"] is None and m["deliveries"] == 0 for m in json.loads(done.stdout))
    # As a table into a pipe: no line ends in the spaces rich pads it with.
    for command in (["peek", "work"], ["queues"], ["stats"]):
        done = await cli(*command, *at(server))
        assert done.returncode == 0 and b"work" in done.stdout, done
        lines = done.stdout.decode().split("\n")
        assert len(lines) > 2 and all(line == line.rstrip() for line in lines), lines
    done = await cli("queues", "--json", *at(server))
    assert [(q["queue"], q["messages"], q["explicit"]) for q in json.loads(done.stdout)] == [
        ("empty", 0, True), ("work", 3, False)]
    done = await cli("purge", "work", *at(server))
    assert done.returncode == 0 and b"purged 3 messages" in done.stdout
    done = await cli("peek", "work", *at(server))
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"work: no message ready\n")
    done = await cli("peek", "nowhere", *at(server))
    assert done.returncode == 1 and b"QUEUE_NOT_FOUND" in done.stderr


async def test_peek_by_default_fits_the_servers_max_batch(server_factory):
    # A newcomer's review: a plain `wonderq peek` asked for 10 and failed BATCH_TOO_LARGE
    # against --max-batch 3. An explicit --max is still sent as given.
    server = server_factory("--max-batch", "3")
    async with connect(server.host, server.port) as client:
        await client.put_many("work", [b"a", b"b", b"c"])
        await client.put("work", b"d")
    done = await cli("peek", "work", "--json", *at(server))
    assert done.returncode == 0, done
    assert [m["body"] for m in json.loads(done.stdout)] == ["a", "b", "c"]  # the limit
    done = await cli("peek", "work", "--max", "3", "--json", *at(server))
    assert [m["body"] for m in json.loads(done.stdout)] == ["a", "b", "c"]
    done = await cli("peek", "work", "--max", "4", *at(server))
    assert done.returncode == 1 and b"BATCH_TOO_LARGE" in done.stderr


async def test_the_dead_letter_routine_from_a_shell(server):
    # A reviewer could not redrive from the CLI: nack, redrive, queue-info,
    # message-info and the queue settings were text mode's and the client's only.
    done = await cli("create-queue", "jobs-dead", *at(server))
    assert done.returncode == 0 and b"max_deliveries: 0" in done.stdout
    # 0 is the server's default, not "no lease" (a user's review read it so).
    assert b"visibility_timeout: 0.0 (the server's --visibility-timeout applies)\n" \
        in done.stdout
    done = await cli("create-queue", "jobs", "--max-deliveries", "1", "--dead-letter-queue",
                     "jobs-dead", "--visibility-timeout", "30", "--json", *at(server))
    assert json.loads(done.stdout)["max_deliveries"] == 1, done
    message_id = int((await cli("put", "jobs", "poison", "--header", "k=v", *at(server))).stdout)
    [received] = json.loads((await cli("receive", "jobs", "--json", *at(server))).stdout)
    done = await cli("nack", "jobs", str(message_id), str(received["lease"]), *at(server))
    assert (done.returncode, done.stdout) == (0, f"nacked {message_id}\n".encode())
    info = json.loads((await cli("message-info", "jobs-dead", str(message_id), "--json",
                                 *at(server))).stdout)
    assert (info["state"], info["dead_letter"][0], info["headers"]) == (
        "ready", "jobs", {"k": "v"})
    done = await cli("message-info", "jobs-dead", str(message_id), *at(server))
    assert b"dead_letter: from jobs, moved at " in done.stdout and b"headers.k: v" in done.stdout
    info = json.loads((await cli("queue-info", "jobs-dead", "--json", *at(server))).stdout)
    assert (info["messages"], info["explicit"]) == (1, True)
    done = await cli("redrive", "jobs-dead", "--json", *at(server))
    assert json.loads(done.stdout) == {"moved": 1}
    async with connect(server.host, server.port) as client:
        [back] = await client.peek("jobs")
        assert (back.id, back.deliveries) == (message_id, 0)
    done = await cli("configure-queue", "jobs", "--max-length", "5", *at(server))
    assert done.returncode == 0 and b"max_length: 5" in done.stdout
    done = await cli("delete-queue", "jobs", "--json", *at(server))
    assert json.loads(done.stdout) == {"deleted": 1}
    for args in (["queue-info", "jobs"], ["redrive", "jobs"],
                 ["configure-queue", "jobs", "--delay", "1"],
                 ["message-info", "jobs-dead", str(message_id)]):
        done = await cli(*args, *at(server))
        assert done.returncode == 1 and b"wonderq: " in done.stderr, (args, done)
    done = await cli("create-queue", "jobs-dead", "--max-length", "1", *at(server))
    assert done.returncode == 1 and b"QUEUE_EXISTS" in done.stderr
    assert b"use `wonderq configure-queue` to change them" in done.stderr  # a reviewer
    for args in (["redrive", "jobs-dead", "--max", "0"], ["configure-queue", "jobs-dead"]):
        done = await cli(*args, *at(server))  # what the server would refuse: usage errors
        assert done.returncode == 2 and b"wonderq" in done.stderr, (args, done)


async def test_nack_unseen_and_fields_that_cannot_forge_lines(server):
    async with connect(server.host, server.port) as client:
        await client.create_queue("hq-dead")
        await client.create_queue("hq", max_deliveries=1, dead_letter_queue="hq-dead")
        message_id = await client.put("hq", b"x", headers={"note": "hi\nstate: leased"})
        [msg] = await client.receive("hq")
    done = await cli("nack", "hq", str(message_id), str(msg.lease), "--unseen", *at(server))
    assert done.returncode == 0, done
    async with connect(server.host, server.port) as client:
        [again] = await client.receive("hq")  # not dead-lettered: that delivery did not count
        assert (again.id, again.deliveries) == (message_id, 1)
    done = await cli("message-info", "hq", str(message_id), *at(server))
    assert b"headers.note: hi\\nstate: leased\n" in done.stdout
    assert [line for line in done.stdout.splitlines() if line.startswith(b"state:")] == [
        b"state: leased"]


async def test_an_unreachable_server_is_one_line_and_exit_2(server_factory):
    server = server_factory()
    host, port = server.host, server.port
    server.stop()
    for args in (["stats"], ["put", "q", "x"], ["top", "--once"], ["queues", "--json"]):
        done = await cli(*args, "--host", host, "--port", str(port))
        assert done.returncode == 2, (args, done)
        assert done.stderr.decode() == (f"wonderq: cannot reach the server at {host}:{port}: "
                                        "Connection refused\n")
        assert done.stdout == b""


async def test_a_body_over_the_frame_limit_is_refused_exit_1_with_no_tls_hint(server_factory):
    # The server answers FRAME_TOO_LARGE and closes: that is its answer to the request (a
    # retry fails the same way), not a server that could not be reached, and not TLS.
    server = server_factory("--max-frame-bytes", "100000", "--max-message-bytes", "90000")
    done = await cli("put", "big", "-", *at(server), stdin=b"x" * 200_000)
    assert done.returncode == 1, done
    err = done.stderr.decode()
    assert "FRAME_TOO_LARGE" in err and "--max-frame-bytes" in err and "TLS" not in err, err


async def test_a_server_that_says_why_it_closed_gets_no_tls_hint(server_factory):
    server = server_factory("--max-connections", "1")
    async with connect(server.host, server.port) as holder:
        await holder.ping()  # holds the one slot
        done = await cli("stats", *at(server))
    assert done.returncode == 2, done
    err = done.stderr.decode()
    assert "TOO_MANY_CONNECTIONS" in err and "TLS" not in err, err


async def test_a_flag_before_or_after_the_subcommand_beats_the_environment(server):
    env = {"WONDERQ_PORT": "1"}  # nothing listens there
    for args in (["--port", str(server.port), "stats", "--json"],
                 ["stats", "--json", "--port", str(server.port)]):
        done = await cli(*args, env=env)
        assert done.returncode == 0, (args, done.stderr)


# ------------------------------------------------------------------------ top

async def test_top_renders_a_frame_from_a_real_servers_stats(server):
    async with connect(server.host, server.port) as client:
        await client.put_many("busy", [b"x"] * 30)
        first = await client.stats()
        history = History()
        history.update(first["queues"], 100.0)
        for msg in await client.receive("busy", max=10):
            await msg.ack()
        await client.put("idle", b"y")
        second = await client.stats()
    history.update(second["queues"], 101.0)
    console = Console(record=True, width=160)
    console.print(frame(second, history, "wonderq top · test"))
    text = console.export_text()
    assert "wonderq top · test" in text
    busy = next(line for line in text.splitlines() if line.strip().startswith("busy"))
    assert busy.split()[1:3] == ["20", "0"]  # ready, in flight
    assert "█" in busy  # the acks of the last interval peak the sparkline
    assert text.index("busy") < text.index("idle")  # busiest first
    assert history.view()["busy"] == ([0.0], [10.0])
    connections = second["server"]["connections"]
    assert f"{connections} connection{'' if connections == 1 else 's'}" in text
    assert re.search(r"(?<![0-9])1 (connections|messages)", text) is None


def test_top_shows_only_the_busiest_queues_that_fit_its_terminal() -> None:
    # A reviewer: with 3,000 queues top drew every row each frame, about 0.6 s of CPU a
    # frame. It draws what fits, the busiest, and says how many there are.
    queues = {f"q{i:04d}": {"messages": i, "put_total": i, "acked_total": 0}
              for i in range(3000)}
    history = History()
    history.update(queues, 0.0)
    console = Console(record=True, width=160)
    console.print(frame({"server": {}, "queues": queues}, history, "top", height=30))
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.strip().startswith("q")
            and not line.strip().startswith("queue")]
    assert len(rows) == 30 - FRAME_LINES
    assert rows[0].split()[0] == "q2999"  # the busiest first
    assert "queues (3000, the busiest 22 shown)" in text
    console = Console(record=True, width=160)
    console.print(frame({"server": {}, "queues": queues}, history, "top"))  # --once: all
    assert "queues (3000)" in console.export_text()


# Runs as a shell with job control would: a session whose controlling terminal is a pty,
# and `wonderq top > LOG &` in a process group of its own (a background job). Prints what
# became of top: FRAMES (it wrote frames into LOG) or STOPPED (the kernel stopped it).
BACKGROUND_JOB = r"""
import fcntl, os, pathlib, signal, subprocess, sys, termios, time
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
log = sys.argv[1]
with open(log, "wb") as out:
    top = subprocess.Popen(sys.argv[2:], stdin=0, stdout=out, stderr=subprocess.STDOUT,
                           process_group=0)
state = ""
for _ in range(2000):  # bounded: 10 s
    state = pathlib.Path(f"/proc/{top.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    if state == "T" or b"wonderq top" in pathlib.Path(log).read_bytes():
        break
    time.sleep(0.005)
print("STOPPED" if state == "T" else "FRAMES" if b"wonderq top" in
      pathlib.Path(log).read_bytes() else "NOTHING", flush=True)
top.kill()
os.kill(top.pid, signal.SIGCONT)
top.wait()
"""


def test_top_as_a_background_job_into_a_file_is_not_stopped_by_the_terminal(server, tmp_path):
    # `wonderq top > top.log &` at an interactive shell: top puts the terminal (its stdin)
    # into cbreak mode to read `q`, which a background job may not do: the kernel stops it
    # (SIGTTOU, "Stopped (tty output)") and top.log stays empty. README: into a file it
    # prints one frame after another.
    master, slave = pty.openpty()
    try:
        log = tmp_path / "top.log"
        done = subprocess.run(
            [sys.executable, "-c", BACKGROUND_JOB, str(log), *wonderq_command(), *at(server),
             "top", "--interval", "0.2"],
            stdin=slave, capture_output=True, start_new_session=True, timeout=30, check=False)
    finally:
        os.close(slave)
        os.close(master)
    assert done.stdout.strip() == b"FRAMES", (done.stdout, done.stderr)


# BACKGROUND_JOB, then `fg`: the job's group is made the terminal's foreground, and the
# frames written after that are printed (OFFERS_Q if their title offers q).
BACKGROUND_THEN_FOREGROUND = r"""
import fcntl, os, pathlib, subprocess, sys, termios, time
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
log = pathlib.Path(sys.argv[1])
with open(log, "wb") as out:
    top = subprocess.Popen(sys.argv[2:], stdin=0, stdout=out, stderr=subprocess.STDOUT,
                           process_group=0)
for _ in range(2000):  # bounded: 10 s
    if b"wonderq top" in log.read_bytes():
        break
    time.sleep(0.005)
os.tcsetpgrp(0, top.pid)  # fg
seen = len(log.read_bytes())
for _ in range(2000):  # bounded: 10 s; frames come every 0.2 s
    after = log.read_bytes()[seen:]
    if after.count(b"wonderq top") >= 2:
        break
    time.sleep(0.005)
print("OFFERS_Q" if b" q or Ctrl-C" in after else "CTRL_C_ONLY" if b"Ctrl-C quits" in after
      else "NOTHING", flush=True)
top.kill()
top.wait()
"""


def test_top_brought_to_the_foreground_does_not_offer_a_q_it_does_not_read(server, tmp_path):
    # Started in the background, top reads no keys (above). After `fg` its title was
    # judged afresh and said "q or Ctrl-C quits", and q did nothing (a reviewer).
    master, slave = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-c", BACKGROUND_THEN_FOREGROUND, str(tmp_path / "top.log"),
             *wonderq_command(), *at(server), "top", "--interval", "0.2"],
            stdin=slave, capture_output=True, start_new_session=True, timeout=30, check=False)
    finally:
        os.close(slave)
        os.close(master)
    assert done.stdout.strip() == b"CTRL_C_ONLY", (done.stdout, done.stderr)


async def test_top_once_prints_one_frame(server):
    done = await cli("top", "--once", *at(server))
    assert done.returncode == 0, done.stderr
    assert b"connected" in done.stdout and b"queues (0)" in done.stdout
    assert b"quits" not in done.stdout  # nothing to quit: it has ended


async def test_top_poller_survives_the_server_going_away_and_coming_back(server_factory):
    server = server_factory()
    port = server.port
    poller = Poller(server.host, port, timeout_s=2.0)
    async with connect(server.host, port) as client:
        await client.put("q", b"x")
    assert await poller.poll() is Poll.FRESH
    assert poller.stats["queues"]["q"]["ready"] == 1
    server.kill()
    assert await poller.poll() is Poll.AWAY
    assert poller.why  # shown on the status line: what the poll met
    assert poller.stats["queues"]["q"]["ready"] == 1  # the last figures stay on screen
    again = server_factory("--port", str(port))
    started = time.monotonic()
    assert await poller.poll() is Poll.FRESH  # reconnected on its own
    assert time.monotonic() - started < 5
    assert poller.stats["queues"] == {}  # a new in-memory server
    await poller.close()
    again.stop()


async def test_top_keeps_saying_the_server_stopped_while_it_cannot_reconnect(server_factory):
    # A reviewer: after a clean stop, top's status line showed the reconnect's
    # "Connection refused" from the next poll on, and never the server's SHUTTING_DOWN.
    server = server_factory()
    poller = Poller(server.host, server.port, timeout_s=2.0)
    assert await poller.poll() is Poll.FRESH
    assert await asyncio.to_thread(server.stop) == 0  # SIGTERM: the goodbye, then exit
    for _ in range(3):
        assert await poller.poll() is Poll.AWAY
        assert "SHUTTING_DOWN" in poller.why, poller.why
    assert "(before that: SHUTTING_DOWN" in poller.why  # under the reconnect's failure
    again = server_factory("--port", str(server.port))
    assert await poller.poll() is Poll.FRESH
    again.kill()
    assert await poller.poll() is Poll.AWAY
    assert "SHUTTING_DOWN" not in poller.why  # a new connection forgets the old goodbye
    await poller.close()


async def test_a_closed_clients_close_reason_says_what_the_server_said(server_factory):
    server = server_factory()
    client = await connect(server.host, server.port)
    assert client.close_reason is None
    assert await asyncio.to_thread(server.stop) == 0
    await until_true(lambda: client.closed)
    reason = client.close_reason
    assert reason is not None and reason.server_code == "SHUTTING_DOWN"
    assert "the server is stopping" in reason.message
    with pytest.raises(ConnectionClosed) as raised:
        await client.ping()
    assert raised.value.message == reason.message
    await client.close()


async def test_top_waits_for_a_paced_stats_in_its_place_without_reconnecting(server_factory):
    # With thousands of queues the server paces STATS; 20 connections' STATS ahead of
    # top's take seconds. top's poll gives up waiting for an answer after its interval
    # but, the server answering a PING, keeps its request in its place: it neither shows
    # the server away nor reconnects (which would send its STATS to the back again).
    server = server_factory("--max-queues", "3000")
    async with connect(server.host, server.port) as client:
        await asyncio.gather(*(client.put(f"q{i}", b"x") for i in range(3000)))
        poller = Poller(server.host, server.port, timeout_s=10.0, answer_wait_s=0.05)
        assert await poller.poll() is Poll.FRESH
        first_client, shown = poller.client, poller.stats
        ahead = [TextSocket(server.host, server.port) for _ in range(21)]
        try:
            for raw in ahead:  # each one accepted and in text mode
                raw.send(b"PING\r\n")
                assert raw.line() == b"PONG"
            for raw in ahead[:20]:
                raw.send(b"STATS\r\n")
                raw.sock.shutdown(socket.SHUT_WR)
            ahead[20].send(b"PING\r\n")  # answered once the server has read every STATS
            assert ahead[20].line() == b"PONG"
            assert await poller.poll() is Poll.WAITING
            assert poller.stats is shown  # the last figures stay on screen meanwhile
            found = [Poll.WAITING]
            while found[-1] is Poll.WAITING and len(found) < 400:  # 20 s at most
                found.append(await poller.poll())
            assert found[-1] is Poll.FRESH
            assert poller.client is first_client
            assert poller.stats["server"]["connections_total"] == 23  # no new connection
        finally:
            for raw in ahead:
                raw.close()
            await poller.close()


def test_top_sees_a_frozen_server_within_its_timeout_not_later(server):
    # A reviewer: a poll waited its interval for the STATS, then up to its timeout for a
    # PING sent only then, so a frozen server showed "connected" for both. The PING goes
    # with the poll, and its timeout counts from then.
    async def frozen_poll() -> float:
        poller = Poller(server.host, server.port, timeout_s=1.0, answer_wait_s=1.0)
        try:
            assert await poller.poll() is Poll.FRESH
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                assert await poller.poll() is Poll.AWAY
                return time.monotonic() - started
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
        finally:
            await poller.close()

    assert asyncio.run(frozen_poll()) < 1.8  # about 1 s; 2 s before


async def test_top_says_why_a_refusing_server_refused(server_factory):
    # A reviewer: top's STATS and PING written together on a connection the server was
    # refusing met its reset, and the status line said "Broken pipe" instead of why.
    server = server_factory("--max-connections", "1")
    async with connect(server.host, server.port) as holder:
        assert await holder.ping() == "pong"
        poller = Poller(server.host, server.port, timeout_s=5.0, answer_wait_s=1.0)
        try:
            for _ in range(10):
                assert await poller.poll() is Poll.AWAY
                assert poller.why.startswith("TOO_MANY_CONNECTIONS: the server already serves")
                assert len(poller.why) <= 120
        finally:
            await poller.close()


async def test_top_takes_a_stats_that_comes_with_the_pong_as_fresh():
    # A reviewer saw "waiting for their turn" for one frame when the STATS reply and the
    # PONG came together. Here a stand-in for the client gets both answers at once, the
    # STATS first, as one read of the socket would give them.
    loop = asyncio.get_running_loop()

    class AnswersTogether:
        closed = False

        def __init__(self) -> None:
            self.figures: asyncio.Future = loop.create_future()
            self.pong: asyncio.Future = loop.create_future()
            loop.call_later(0.05, self.answer)

        def answer(self) -> None:
            self.figures.set_result({"server": {}, "queues": {"q": {}}})
            self.pong.set_result("pong")

        async def stats(self):
            return await self.figures

        async def ping(self):
            return await self.pong

    poller = Poller("127.0.0.1", 1, timeout_s=5.0, answer_wait_s=0.001)
    poller.client = AnswersTogether()  # type: ignore[assignment]
    assert await poller.poll() is Poll.FRESH
    assert poller.stats["queues"] == {"q": {}}


def test_the_server_line_shows_trouble_only_when_there_is_some() -> None:
    calm = {"version": "1", "journal_bytes": 10, "journal_write_errors": 0,
            "compactions_failed_total": 0, "full_refusals_total": 0,
            "too_many_queues_total": 0}
    assert "fail" not in server_line(calm).plain and "refused" not in server_line(calm).plain
    line = server_line({**calm, "journal_write_errors": 3, "full_refusals_total": 7,
                        "too_many_queues_total": 2})
    assert line.plain.endswith("3 journal writes failed · 7 puts refused FULL · "
                               "2 queues refused (--max-queues)")
    assert any(span.style == "bold red" for span in line.spans)


def test_the_server_line_says_nothing_of_a_journal_before_any_figures() -> None:
    # A reviewer's `top` at a port nothing listened on showed "in memory (no journal)".
    assert "in memory" not in server_line({}).plain
    assert "journal -" in server_line({}).plain
    assert "in memory (no journal)" in server_line({"version": "1"}).plain


def test_the_server_line_breaks_between_figures_never_inside_one() -> None:
    server = {"version": "0.1.0", "uptime_s": 13.1, "connections": 1, "messages": 1,
              "waiting_consumers": 0, "rss_bytes": 30_000_000, "stored_bytes": 205,
              "max_memory": 10_000_000_000, "journal_write_errors": 3}
    whole = server_line(server).plain
    assert "\n" not in whole
    figures = whole.split(" · ")
    for width in (80, 50, 30):
        lines = server_line(server, width).plain.split("\n")
        assert len(lines) > 1
        assert all(len(line) <= width for line in lines), (width, lines)
        assert [f for line in lines for f in line.split(" · ")] == figures


def test_history_restarts_when_totals_go_down() -> None:
    history = History()
    history.update({"q": {"put_total": 10, "acked_total": 5}}, 0.0)
    history.update({"q": {"put_total": 30, "acked_total": 5}}, 2.0)
    assert history.view() == {"q": ([10.0], [0.0])}
    history.update({"q": {"put_total": 1, "acked_total": 0}}, 3.0)  # a restarted server
    assert history.view() == {"q": ([], [])}
    history.update({}, 4.0)  # the queue was deleted
    assert history.view() == {}


@pytest.mark.parametrize("args", [
    ["put"], ["receive"], ["ack", "q", "x", "1"],
    # Values a reviewer found ending in a traceback, or a round trip: usage errors now.
    ["stats", "--timeout", "nan"], ["stats", "--timeout", "0"], ["stats", "--timeout", "-1"],
    ["receive", "q", "--wait", "nan"], ["receive", "q", "--max", str(2 ** 65)],
    ["ack", "q", "99999999999999999999999", "1"], ["put", "q", "x", "--priority", str(2 ** 70)],
    ["put", "q", "x", "--priority", str(2 ** 31)], ["put", "q", "x", "--priority", "-3000000000"],
    ["put", "q", "x", "--header", "noequals"], ["put", "q", "x", "--delay", "inf"],
    ["top", "--interval", "0"],
    # A header key given twice (the server's text mode refuses it too; the CLI kept the
    # last value), and a --max of 0 (receive and peek asked the server and exited 1).
    ["put", "q", "x", "--header", "k=1", "--header", "k=2"],
    ["receive", "q", "--max", "0"], ["peek", "q", "--max", "0"],
    # Bytes that are not UTF-8 where the server takes a string: a traceback, exit 1, before.
    ["put", b"q\xff", "x"], ["peek", b"q\xff"], ["put", "q", "x", "--header", b"k=\xff"],
    ["put", "q", "x", "--header", b"\xfe=v"], ["work", b"q\xff", "--", "true"],
    ["configure-queue", "q", "--max-deliveries", "1", "--dead-letter-queue", b"d\xff"],
    # A BODY after a flag is taken (below), but only one, and no flag-like word unless
    # after `--`.
    ["put", "q", "--delay", "5", "a", "b"], ["put", "q", "a", "--delay", "5", "b"],
    ["put", "q", "--delay", "5", "-x"], ["put", "q", "--bogus"],
])
def test_bad_usage_exits_2(args: list[str | bytes]) -> None:
    done = wonderq(*args, env={"WONDERQ_PORT": "1"})  # nothing listens: never reached
    assert done.returncode == 2
    assert b"usage: wonderq" in done.stderr
    assert b"Traceback" not in done.stderr


def test_a_usage_error_shows_the_subcommands_usage() -> None:
    done = wonderq("put", "q", "a", "b", env={"WONDERQ_PORT": "1"})
    assert done.returncode == 2
    assert b"usage: wonderq put" in done.stderr
    assert b"wonderq put: error: unrecognized arguments: b" in done.stderr
    # ... but only for what came after the subcommand's name
    done = wonderq("--bogus", "stats", env={"WONDERQ_PORT": "1"})
    assert done.returncode == 2
    assert b"wonderq: error: unrecognized arguments: --bogus" in done.stderr


async def test_put_takes_its_body_after_flags_written_between(server):
    # A reviewer's `wonderq put demoq --delay 5 hello` was refused ("unrecognized
    # arguments: hello"): argparse fills QUEUE and the optional BODY from the first run of
    # plain words. So was a body starting with '-' after `--` with a flag before it.
    for args in (["flags", "--priority", "3", "after a flag"],
                 ["flags", "--priority", "3", "--", "-starts-with-a-dash"],
                 ["flags", "before", "--priority", "3"]):
        done = await cli("put", *at(server), *args)
        assert done.returncode == 0, (args, done.stderr)
    async with connect(server.host, server.port) as client:
        got = await client.receive("flags", max=10)
    assert sorted(m.body for m in got) == [b"-starts-with-a-dash", b"after a flag", b"before"]
    assert {m.priority for m in got} == {3}


async def test_a_body_argument_that_is_not_utf8_is_put_as_its_bytes(server):
    # `wonderq put q "$(printf '\xff\xfe')"` ended in a UnicodeEncodeError traceback.
    done = await cli("put", "raw", b"\xff\xfe ok", *at(server))
    assert done.returncode == 0, done.stderr
    async with connect(server.host, server.port) as client:
        [msg] = await client.receive("raw")
    assert msg.body == b"\xff\xfe ok"


async def read_100_bytes_and_stop(server, *args: str) -> tuple[int, bytes]:
    """read_100_bytes_and_stop runs `wonderq ARGS` and closes its output after 100 bytes, as
    `| head -c 100` does; returns its exit code and stderr."""
    argv = wonderq_command()
    proc = await asyncio.to_thread(subprocess.Popen, [*argv, *at(server), *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    await asyncio.to_thread(proc.stdout.read, 100)
    proc.stdout.close()  # as `head` does once it has what it wants
    stderr = await asyncio.to_thread(proc.stderr.read)
    return await asyncio.to_thread(proc.wait, 60), stderr


@pytest.mark.parametrize("form", [("--json",), ()])
async def test_a_reader_that_stops_reading_is_not_a_server_problem(server, form):
    # `wonderq peek q --json | head -c 100` said "cannot reach the server: Broken pipe";
    # the table, written by rich in one go, ended with exit 0 as if all was read.
    async with connect(server.host, server.port) as client:
        await client.put_many("bp", [b"x" * 1000] * 500)
    assert await read_100_bytes_and_stop(server, "peek", "bp", "--max", "500", *form) \
        == (141, b"")


@pytest.mark.parametrize("form", [("--json",), ()])
async def test_receive_ack_acks_nothing_when_its_reader_has_gone(server, form):
    # More output than the pipe holds: the write fails before any ack is sent. The
    # table form acked all 500 (a reviewer's `receive --max 1000 --ack | head -3`):
    # sys.stdout took rich's one big write as done though the pipe took 64 KiB of it.
    async with connect(server.host, server.port) as client:
        await client.put_many("rbp", [b"x" * 1000] * 500)
    assert await read_100_bytes_and_stop(
        server, "receive", "rbp", "--max", "500", "--ack", *form) == (141, b"")
    async with connect(server.host, server.port) as client:
        info = await client.queue_info("rbp")
    assert (info["messages"], info["acked_total"]) == (500, 0)  # not acked
    # ... and given back at once, for others (a user's review: they stayed leased, out of
    # everyone's reach, for the whole lease).
    assert (info["ready"], info["in_flight"]) == (500, 0)


def to_a_full_disk(server, *args: str) -> subprocess.CompletedProcess[bytes]:
    """to_a_full_disk runs `wonderq ARGS > /dev/full`: every write fails with ENOSPC."""
    argv = wonderq_command()
    with open("/dev/full", "wb") as full:
        return subprocess.run([*argv, *at(server), *args], stdout=full, stderr=subprocess.PIPE,
                              timeout=60, check=False)


@pytest.mark.parametrize("form", [("--json",), ()])
async def test_output_that_cannot_be_written_is_not_a_server_that_cannot_be_reached(server,
                                                                                     form):
    # `wonderq put q x > /dev/full` said "cannot reach the server", exit 2, though the
    # message was stored: a script retrying on 2 puts it twice. Now exit 74 (EX_IOERR).
    done = await asyncio.to_thread(to_a_full_disk, server, "put", "full", "x", *form)
    assert done.returncode == 74
    assert done.stderr == b"wonderq: cannot write the output: No space left on device\n"
    done = await asyncio.to_thread(to_a_full_disk, server, "receive", "full", "--ack", *form)
    assert done.returncode == 74, done.stderr
    async with connect(server.host, server.port) as client:
        info = await client.queue_info("full")
    # Not acked; given back at once, as its output could not be written.
    assert (info["messages"], info["in_flight"], info["acked_total"]) == (1, 0, 0)
    for command in (["stats"], ["queues"], ["peek", "full"], ["queue-info", "full"]):
        done = await asyncio.to_thread(to_a_full_disk, server, *command, *form)
        assert done.returncode == 74, (command, done.stderr)


async def test_message_info_shows_an_expiry_past_the_calendar(server_factory):
    # expires_at of a message put with --expiry 1e300 crashed the plain output
    # (OverflowError from datetime); --json showed it. (Over --max-expiry by default.)
    server = server_factory("--max-expiry", "1e301")
    done = await cli("put", "far", "x", "--expiry", "1e300", *at(server))
    assert done.returncode == 0, done.stderr
    done = await cli("message-info", "far", done.stdout.decode().strip(), *at(server))
    assert done.returncode == 0, done.stderr
    assert b"expires_at: 1000000000000000052504760255204420248704468" in done.stdout


# ------------------------------------------------------- hostile input, terminals

async def test_bodies_are_shown_literally_never_as_markup_or_escapes(server):
    async with connect(server.host, server.port) as client:
        await client.put("odd", b"[/oops] x [bold red]not red[/]")
        await client.put("odd", b"\x1b[31mred\x1b[0m")
    for command in (["peek", "odd", "--max", "5"], ["receive", "odd", "--max", "5"]):
        done = await cli(*command, *at(server))
        assert done.returncode == 0, done.stderr
        assert b"[/oops] x [bold red]not red[/]" in done.stdout
        assert b"\x1b" not in done.stdout and b"\\x1b[31mred" in done.stdout


async def test_narrow_terminals_keep_names_ids_and_leases_whole(server):
    name = "a-rather-long-queue-name-for-emails"
    async with connect(server.host, server.port) as client:
        await client.put(name, b"x" * 300)
    narrow = {"COLUMNS": "80"}
    done = await cli("stats", *at(server), env=narrow)
    assert name.encode() in done.stdout
    assert all(len(line) <= 80 for line in done.stdout.decode().splitlines())
    done = await cli("receive", name, *at(server), env=narrow)
    async with connect(server.host, server.port) as client:
        [info] = [q for q in await client.queues() if q["queue"] == name]
    assert info["in_flight"] == 1
    text = done.stdout.decode()
    row = next(line for line in text.splitlines() if line.strip()[:1].isdigit())
    msg_id, lease = row.split()[:2]
    assert len(msg_id) >= 19 and len(lease) >= 19  # whole, so they can be copied
    done = await cli("ack", name, msg_id, lease, *at(server))
    assert done.returncode == 0, done.stderr


async def test_a_server_that_does_not_answer_is_one_line_and_exit_2(server_factory):
    server = server_factory()
    server.proc.send_signal(signal.SIGSTOP)
    try:
        done = await cli("stats", "--timeout", "1", *at(server))
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert done.returncode == 2
    assert done.stderr.decode() == (
        f"wonderq: the server at {server.host}:{server.port} did not answer within 1 s; on a "
        "server busy with many queues and many stats callers, stats and queues wait their "
        "turn (PROTOCOL.md): a longer --timeout may get one; else check that it is a "
        "WonderQ server's port and uses TLS as this command does\n")


async def test_a_port_that_answers_in_another_protocol_gets_no_tls_hint():
    # A reviewer's `wonderq --port <the metrics port> stats` was told the peer sent
    # "HTTP/1.1 400", and then "if the server uses TLS, add --tls": it had spoken.
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(http, "127.0.0.1", 0)
    try:
        port = other.sockets[0].getsockname()[1]
        done = await cli("stats", "--host", "127.0.0.1", "--port", str(port))
    finally:
        other.close()
    assert done.returncode == 2
    assert b"HTTP/1.1 400" in done.stderr and b"is this a WonderQ server's port?" \
        in done.stderr
    assert b"TLS" not in done.stderr, done.stderr


async def test_tls_to_a_plain_port_is_told_the_server_does_not_seem_to_use_it(server):
    # A reviewer had only "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)".
    done = await cli("stats", "--tls", *at(server))
    assert done.returncode == 2
    assert b"the server does not seem to use TLS on this port: connect without (--no-tls)" \
        in done.stderr


async def test_a_bad_port_in_the_environment_is_named(server):
    done = await cli("stats", env={"WONDERQ_PORT": "99999"})
    assert done.returncode == 2
    assert done.stderr.decode() == "wonderq: WONDERQ_PORT='99999': must be 1-65535, got 99999\n"
    done = await cli("stats", "--json", "--port", str(server.port), env={"WONDERQ_PORT": "abc"})
    assert done.returncode == 0, done.stderr  # a flag wins; the variable is not even read


async def test_a_token_from_the_environment_that_the_server_lacks_is_named(server):
    # A newcomer's WONDERQ_AUTH_TOKEN, exported for another server, was refused in words
    # that named only a flag nobody had typed.
    done = await cli("stats", *at(server), env={"WONDERQ_AUTH_TOKEN": "exported"})
    assert done.returncode == 1
    assert done.stderr.decode() == (
        "wonderq: BAD_ARGUMENT: AUTH sent, but this server has no auth token (it was started "
        "without --auth-token): connect without one (this command's token came from "
        "WONDERQ_AUTH_TOKEN: unset it for this server)\n")
    done = await cli("stats", *at(server), "--auth-token", "typed")
    assert done.returncode == 1 and b"came from" not in done.stderr  # typed: nothing to add


async def test_empty_host_and_port_variables_are_not_given(server):
    # `export WONDERQ_HOST=` was "cannot reach the server at :PORT" (a newcomer's review).
    done = await cli("stats", "--json", "--port", str(server.port),
                     env={"WONDERQ_HOST": ""})
    assert done.returncode == 0, done.stderr  # the default host, where the server is
    done = await cli("stats", "--timeout", "1", env={"WONDERQ_PORT": ""})
    assert b"not a port number" not in done.stderr  # the default port (7711), whatever is there


def run_in_terminal(argv: list[str], keys: bytes, ready: bytes,
                    timeout_s: float = 20.0) -> tuple[int, bytes, list, list]:
    """run_in_terminal runs `argv` on a pseudo-terminal, waits until its output shows
    `ready`, types `keys`, and waits for it to exit; returns the exit code, the output,
    and the terminal's attributes before and after."""
    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)

    def own_terminal() -> None:  # a session of its own, with this terminal controlling it
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                            preexec_fn=own_terminal, env={**os.environ, "TERM": "xterm"})
    os.close(terminal)
    output = b""
    give_up = time.monotonic() + timeout_s
    typed = False
    try:
        while proc.poll() is None and time.monotonic() < give_up:
            readable, _, _ = select.select([controller], [], [], 0.1)
            if readable:
                try:
                    output += os.read(controller, 65536)
                except OSError:
                    break
            if not typed and ready in output:
                os.write(controller, keys)
                typed = True
        code = proc.wait(timeout=max(0.1, give_up - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    # The child's terminal settings live on the terminal: read them from our side.
    after = termios.tcgetattr(controller)
    os.close(controller)
    return code, output, before, after


@pytest.mark.parametrize("keys", [b"xq", b"\x03"])  # a q behind another key; Ctrl-C
async def test_top_quits_on_q_or_ctrl_c_and_restores_the_terminal(server, keys):
    argv = wonderq_command()
    code, output, before, after = await asyncio.to_thread(
        run_in_terminal, [*argv, "top", "--interval", "0.2", *at(server)], keys, b"connected")
    assert code == 0, output[-500:]
    assert b"connected" in output
    assert before[3] == after[3]  # local modes (echo, canonical input) are back


def test_top_into_a_pipe_prints_each_frame_as_it_goes(server):
    # A reviewer's `top > f` wrote one frame, at exit: rich's Live draws nothing into a
    # pipe until it stops. Two frames must come while it runs.
    async def fill() -> None:  # more queues than a 25-line screen shows
        async with connect(server.host, server.port) as client:
            await asyncio.gather(*(client.put(f"q{i:02}", b"x") for i in range(40)))

    asyncio.run(fill())
    proc = subprocess.Popen([*wonderq_command(), "top", "--interval", "0.2", *at(server)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    try:
        while seen.count(b"wonderq top \xc2\xb7") < 2 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], deadline - time.monotonic())[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
        assert seen.count(b"wonderq top \xc2\xb7") >= 2, (seen, proc.poll())
        assert proc.poll() is None  # still running: they came while it ran
        first = seen.split(b"wonderq top \xc2\xb7")[1]
        assert b"queues (40)" in first and b"q39" in first  # all, not a screen's worth
        assert b"Ctrl-C quits" in first and b" q or " not in first  # no terminal: no q
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=EVENT_TIMEOUT_S)
    assert proc.returncode == 0


async def test_ctrl_c_stops_a_put_reading_its_body_from_the_terminal(server):
    argv = wonderq_command()
    code, output, _, _ = await asyncio.to_thread(
        run_in_terminal, [*argv, "put", "jobs", *at(server)], b"\x03", b"Ctrl-D ends it")
    assert code == 130, output


def run_while_stopped(server, *args: str, timeout_s: float) -> subprocess.CompletedProcess:
    """run_while_stopped runs `wonderq` at `server` while the server is stopped (SIGSTOP):
    it takes the connection (the kernel's backlog) and answers nothing."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        return subprocess.run([*wonderq_command(), *at(server), *args], capture_output=True,
                              timeout=timeout_s, check=False)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_receive_with_a_server_that_does_not_answer_ends_within_timeout_and_wait(server):
    """main.py bounds a command by --timeout (plus receive's --wait); closing after that
    must not wait for the server's answer to the cancel (close() would, 5 s more)."""
    done = run_while_stopped(server, "--timeout", "1", "receive", "q", "--wait", "1",
                             timeout_s=4.5)
    assert done.returncode == 2
    # It said 1 s, having waited 2 (a reviewer): the message counts the --wait.
    assert b"did not answer within 2 s (--timeout 1 + --wait 1)" in done.stderr
    # Not a paced command: the port is what to check (a newcomer's review).
    assert b"; check that it is a WonderQ server's port and uses TLS as" in done.stderr
    assert b"wait their turn" not in done.stderr


def test_redrive_past_its_timeout_says_a_begun_redrive_goes_on(server):
    # A big REDRIVE runs in steps and, once begun, to its end even when its client gave up
    # (PROTOCOL.md): told only "did not answer", a user would think nothing moved.
    done = run_while_stopped(server, "--timeout", "1", "redrive", "dlq", timeout_s=10)
    assert done.returncode == 2
    assert b"did not answer within 1 s; check that it is a WonderQ server's port" \
        in done.stderr
    assert b"a big redrive the server has begun goes on to its end without us" in done.stderr


def test_top_once_with_a_server_that_does_not_answer_ends_within_timeout(server):
    # A reviewer's `top --once` against a port that accepts and never answers ran until
    # killed: top is unbounded, its --once was too.
    done = run_while_stopped(server, "--timeout", "1", "top", "--once", timeout_s=10)
    assert done.returncode == 2
    assert b"did not answer within 1 s" in done.stderr
    # Its STATS may only have been waiting its turn (paced): it says so, and what helps.
    assert b"stats and queues wait their turn (PROTOCOL.md): a longer --timeout" \
        in done.stderr


async def test_ctrl_c_on_receive_gives_back_a_message_still_on_its_way(server):
    """Ctrl-C while the receive's reply is on its way (the proxy holds it): the tool must
    close politely, so the message that came is given back, not left leased."""
    proxy = await FaultProxy(server.host, server.port).start()
    argv = wonderq_command()
    try:
        async with connect(server.host, server.port) as client:
            proc = subprocess.Popen([*argv, "--port", str(proxy.port), "receive", "slow",
                                     "--wait", "30", "--visibility", "3600"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                await until_stats(client, lambda s: s["server"]["waiting_consumers"] == 1)
                proxy.hold_down()
                msg_id = await client.put("slow", b"on its way")
                await until_stats(client, lambda s: s["queues"]["slow"]["in_flight"] == 1)
                up_before = proxy.up_bytes
                proc.send_signal(signal.SIGINT)

                async def reacted() -> bool:
                    # Its cancel went out (a polite close), or its connection is gone.
                    stats = await client.stats()
                    return proxy.up_bytes > up_before or stats["server"]["connections"] == 1

                await until(reacted, bool)
                proxy.release_down()
                code = await asyncio.to_thread(proc.wait, EVENT_TIMEOUT_S)
            finally:
                proc.kill()
                proc.communicate()
            assert code == 130
            info = await client.message_info("slow", msg_id)
            assert info["state"] == "ready"
    finally:
        await proxy.close()


def test_ctrl_c_on_receive_with_a_server_that_does_not_answer_ends_soon(server):
    """After Ctrl-C the close is polite (it waits for the cancel's answer) but only for
    about a second: a server that stopped answering cannot hold the tool for 5 s."""
    argv = wonderq_command()
    proc = subprocess.Popen([*argv, *at(server), "--timeout", "20", "receive", "q",
                             "--wait", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert server.proc is not None
    try:
        asyncio.run(_until_waiting(server))
        os.kill(server.proc.pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=3.5)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        proc.kill()
        proc.communicate()
    assert code == 130


def test_receive_waiting_through_a_server_stop_exits_2_not_no_message(server):
    """A stopping server answers a waiting receive with nothing, then says SHUTTING_DOWN:
    `receive --wait` says the connection was lost, exit 2, where it printed "no message"
    and exited 0, which a script takes for an empty queue."""
    proc = subprocess.Popen([*wonderq_command(), *at(server), "receive", "q", "--wait", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        asyncio.run(_until_waiting(server))
        assert server.stop() == 0
        out, err = proc.communicate(timeout=EVENT_TIMEOUT_S)
    finally:
        proc.kill()
        proc.communicate()
    assert (proc.returncode, out) == (2, b""), err
    assert b"lost the connection" in err and b"SHUTTING_DOWN" in err, err


async def test_receive_waiting_on_a_queue_deleted_under_it_waits_on(server):
    """The other wait answered empty before its time: the queue was deleted under it. The
    tool asks again for what is left of its --wait, so a message put since is received."""
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [*wonderq_command(), *at(server), "receive", "q", "--wait", "60", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await _until_waiting(server)
        async with connect(server.host, server.port) as client:
            assert await client.delete_queue("q") == 0
            await until_stats(client, lambda s: s["server"]["waiting_consumers"] == 1)
            await client.put("q", b"after the delete")
        out, err = await asyncio.to_thread(proc.communicate, timeout=EVENT_TIMEOUT_S)
    finally:
        proc.kill()
        await asyncio.to_thread(proc.communicate)
    assert proc.returncode == 0, err
    assert [m["body"] for m in json.loads(out)] == ["after the delete"]


async def _until_waiting(server: ServerProcess) -> None:
    async with connect(server.host, server.port) as client:
        await until_stats(client, lambda s: s["server"]["waiting_consumers"] == 1)


async def test_counts_of_one_are_singular(server):
    # A reviewer: "purged 1 messages", "deleted q1 and its 1 messages".
    async with connect(server.host, server.port) as client:
        await client.put("one", b"x")
        await client.put("other", b"x")
    done = await cli("purge", "one", *at(server))
    assert done.stdout == b"purged 1 message from one\n", done.stdout
    done = await cli("delete-queue", "other", *at(server))
    assert done.stdout == b"deleted other and its 1 message\n", done.stdout


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example", b"\xff"])
def test_a_host_name_that_cannot_be_encoded_is_one_line_not_a_traceback(host):
    # A typo such as `--host a..b` (or WONDERQ_HOST=a..b), or a label over 63 characters,
    # ended every command in a UnicodeError traceback and exit 1, which README keeps for
    # "the server refused the request" (a reviewer).
    for command in (["stats"], ["put", "q", "x"], ["top", "--interval", "0.2"],
                    ["work", "q", "--burst", "--", "true"]):
        done = wonderq("--host", host, "--port", "1", *command)
        assert b"Traceback" not in done.stderr, (command, done.stderr[-300:])
        assert done.returncode == 2, (command, done.stderr[-300:])
        assert b"is not a host name or address" in done.stderr, (command, done.stderr)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_auth_token_that_is_not_utf8_is_one_line_not_a_traceback(server, how):
    token = b"s\xffcret"  # `--auth-token "$(cat token)"` with a stray byte: a traceback, exit 1
    if how == "flag":
        done = wonderq(*at(server), "--auth-token", token, "stats")
    else:
        done = wonderq(*at(server), "stats", env={"WONDERQ_AUTH_TOKEN": os.fsdecode(token)})
    assert b"Traceback" not in done.stderr, done.stderr[-300:]
    assert done.returncode == 2, done.stderr[-300:]
    assert b"is not UTF-8 text" in done.stderr, done.stderr
