"""End to end: the server process itself, its flags, signals and bad binary input."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time

import pytest
from polling import until_stats, until_true
from raw_socket import PREAMBLE, TextSocket, frame
from raw_socket import BinarySocket as Raw
from server_process import ServerProcess, server_command

from wonderq_client import ConnectionClosed, connect


@pytest.fixture
def raw(server):
    conn = Raw(server.host, server.port)
    conn.send(PREAMBLE)
    yield conn
    conn.close()


def test_pipelined_requests_keep_their_ids(raw):
    raw.send(frame([7, "put", {"queue": "p", "body": b"a"}])
             + frame(["x", "ping", {}])
             + frame([9, "receive", {"queue": "p"}]))
    replies = [raw.reply() for _ in range(3)]
    assert [r[0] for r in replies] == [7, "x", 9]
    assert replies[1] == ["x", None, "pong"]
    [[msg_id, body, _lease, deliveries, _at, priority, headers, dead_letter]] = replies[2][2]
    assert (priority, headers, dead_letter) == (0, None, None)
    assert (msg_id, body, deliveries) == (replies[0][2], b"a", 1)


@pytest.mark.parametrize(("tail", "request_id", "came"), [
    (frame([7, "put", {"queue": "cut", "body": b"x" * 50}])[:20], 7, "16 of a frame's 74 bytes"),
    (b"\x00\x00", None, "2 of a frame's 4-byte length"),
])
def test_a_request_cut_short_by_the_end_of_input_is_answered_not_dropped(
        raw, tail, request_id, came):
    # Text mode answered a last line without its newline; binary dropped a frame cut
    # short by the client's FIN without a word (a reviewer). The whole put before it runs.
    raw.send(frame([6, "put", {"queue": "cut", "body": b"whole"}]) + tail)
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.reply()[:2] == [6, None]
    assert raw.reply() == [request_id, ["MALFORMED", f"the input ended inside a request "
                                        f"({came} came); it was not run"], None]
    assert raw.at_eof()


@pytest.mark.parametrize(("request_frame", "request_id", "code"), [
    (b"\x00\x00\x00\x03\xc1\xc1\xc1", None, "MALFORMED"),  # 0xc1 is never valid msgpack
    (frame({"not": "a list"}), None, "MALFORMED"),
    (frame([1, "put"]), 1, "MALFORMED"),
    (frame([2, "frobnicate", {}]), 2, "UNKNOWN_COMMAND"),
    (frame([3, "put", {"queue": "q"}]), 3, "BAD_ARGUMENT"),
    (frame([4, "put", {"queue": "q", "body": 12}]), 4, "BAD_ARGUMENT"),
    (frame([5, "ack", {"queue": "q", "id": "1", "lease": 1}]), 5, "BAD_ARGUMENT"),
    (frame([6, "receive", {"queue": "q", "visibility": True}]), 6, "BAD_ARGUMENT"),
    (frame([7, "put", "args"]), 7, "BAD_ARGUMENT"),
    (frame([8, "put", {"queue": "", "body": b""}]), 8, "INVALID_QUEUE_NAME"),
])
def test_bad_frames_get_an_error_and_the_connection_survives(raw, request_frame, request_id,
                                                             code):
    raw.send(request_frame + frame([99, "ping", {}]))
    rid, error, result = raw.reply()
    assert (rid, error[0], result) == (request_id, code, None)
    assert isinstance(error[1], str) and error[1]
    assert raw.reply() == [99, None, "pong"]


def test_limits_that_refuse_what_the_server_is_for_are_said_at_the_start(server_factory):
    # An operator's review: `--max-client-memory 2` (meant as 2G) cut off every
    # long-polling consumer within a second, `--max-memory 1` made every put FULL, and
    # the log said nothing at the start.
    server = server_factory("--max-memory", "2", "--max-client-memory", "2")
    assert "--max-memory 2 is below one message" in server.log
    assert "--max-client-memory 2 is below what one connection may hold" in server.log
    server.stop()
    server = server_factory("--max-memory", "1M", "--max-client-memory", "1M")
    assert "WARNING" not in server.log, server.log
    server.stop()
    # 1,024 waits may always be parked, whatever a lower --max-request-buffer-bytes says.
    server = server_factory("--max-request-buffer-bytes", "65536",
                            "--max-client-memory", "512K")
    assert "--max-client-memory 524288 is below what one connection may hold, 1048576" \
        in server.log


def test_oversized_frame_is_refused_then_closed_and_others_unharmed(server_factory):
    server = server_factory("--max-frame-bytes", "1000")
    # Below --max-message-bytes (256 KiB): said at the start (an operator's review).
    assert "WARNING" in server.log and "--max-frame-bytes 1000 is below" in server.log
    bystander = Raw(server.host, server.port)
    bystander.send(PREAMBLE + frame([1, "put", {"queue": "keep", "body": b"safe"}]))
    assert bystander.reply()[1] is None
    bad = Raw(server.host, server.port)
    bad.send(PREAMBLE + (10**6).to_bytes(4, "big") + b"x" * 100)
    rid, error, _ = bad.reply()
    assert (rid, error[0]) == (None, "FRAME_TOO_LARGE")
    assert bad.at_eof()
    bystander.send(frame([2, "receive", {"queue": "keep"}]))
    [[_, body, *_]] = bystander.reply()[2]
    assert body == b"safe"
    bad.close()
    bystander.close()


def test_unsupported_protocol_version_is_refused_then_closed(server):
    conn = Raw(server.host, server.port)
    conn.send(b"WQ\x00\x09" + frame([1, "ping", {}]))
    rid, error, _ = conn.reply()
    assert (rid, error[0]) == (None, "UNSUPPORTED_VERSION")
    assert conn.at_eof()
    conn.close()


def test_garbage_bytes_on_a_fresh_connection_do_not_hurt_the_server(server):
    garbage = Raw(server.host, server.port)
    garbage.send(bytes(range(256)) * 40)
    garbage.close()

    async def check() -> None:
        async with connect(server.host, server.port) as client:
            assert await client.ping() == "pong"

    asyncio.run(check())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_stops_the_server_cleanly(sig):
    proc = ServerProcess().start()
    assert f"listening on 127.0.0.1:{proc.port}" in proc.log
    assert proc.stop(sig) == 0
    assert "stopped" in proc.log
    # It names the signal: a stray SIGHUP is not a stop asked for (an operator's review).
    assert f"wonderq-server stopping ({sig.name} received)" in proc.log


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2], ids=lambda sig: sig.name)
def test_a_user_signal_is_logged_and_the_server_goes_on(sig):
    # By default SIGUSR1 killed the server without its stop (beanstalkd users send it for
    # drain mode; nginx and NATS reopen their logs on it).
    proc = ServerProcess().start()
    try:
        assert proc.proc is not None
        proc.proc.send_signal(sig)

        async def check() -> None:
            await until_true(lambda: f"{sig.name} received" in proc.log)
            async with connect(proc.host, proc.port) as client:
                assert await client.ping() == "pong"

        asyncio.run(check())
    finally:
        assert proc.stop() == 0
    assert "stopped" in proc.log


@pytest.mark.parametrize("mode", ["binary", "text"])
def test_a_stop_answers_waiting_receives_with_nothing(server_factory, mode):
    # "Answer what is in flight": a long poll ended with a lost connection before.
    server = server_factory()

    async def check() -> None:
        async with connect(server.host, server.port) as watcher:
            if mode == "binary":
                consumer = await connect(server.host, server.port)
                waiting = asyncio.ensure_future(consumer.receive("idle", wait=60))
            else:
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(b"GET idle wait=60\r\n")
                waiting = asyncio.ensure_future(reader.readline())
            await until_stats(watcher, lambda s: s["server"]["waiting_consumers"] == 1)
            assert await asyncio.to_thread(server.stop) == 0
            answer = await asyncio.wait_for(waiting, 10)
            assert answer == ([] if mode == "binary" else b"END\r\n")
            if mode == "binary":
                await consumer.close()
            else:
                writer.close()

    asyncio.run(check())


def test_a_stop_says_shutting_down_after_the_last_reply_and_ran_nothing_unanswered(
        server_factory, tmp_path):
    # A text GET that waits holds the lines behind it; past --max-request-buffer-bytes the
    # server stops reading, so the client has puts in the server's kernel, never read.
    # Closing with them unread answered them with a reset: the client could not tell a
    # stop from a crash, nor know its unanswered puts were not run.
    data_dir = str(tmp_path / "data")
    server = server_factory("--data-dir", data_dir, "--max-request-buffer-bytes", "1024")
    text = TextSocket(server.host, server.port)
    text.send(b"PUT q kept\r\n")
    assert text.line().startswith(b"OK ")
    text.send(b"GET idle wait=60\r\n" + b"PUT q unanswered\r\n" * 20_000)  # 380 KB

    async def until_paused() -> None:
        async with connect(server.host, server.port) as watcher:
            await until_stats(watcher, lambda s: s["server"]["connections_paused"] == 1)

    asyncio.run(until_paused())
    stop = subprocess.Popen(["kill", "-TERM", str(server.proc.pid)])
    assert text.line() == b"END"  # the wait, answered with nothing
    goodbye = text.line()
    assert goodbye.startswith(b"ERR SHUTTING_DOWN ") and b"not run" in goodbye
    assert text.at_eof()  # a close, not a reset (which raises ConnectionResetError)
    text.close()
    assert stop.wait(10) == 0 and server.wait_exit() == 0

    async def count() -> dict:
        async with connect(restarted.host, restarted.port) as client:
            return (await client.stats())["queues"]["q"]["ready"]

    restarted = server_factory("--data-dir", data_dir)
    assert asyncio.run(count()) == 1  # "kept"; no unanswered put was run


def test_a_client_still_reading_its_replies_at_the_stop_gets_them_all(server_factory,
                                                                     tmp_path):
    # Its requests ran: cut off after GOODBYE_WAIT_S with replies unread, it could not know,
    # and would put them again. While what is unsent shrinks, the stop waits on.
    data_dir = str(tmp_path / "data")
    server = server_factory("--data-dir", data_dir, "--fsync", "never")
    reader = TextSocket.__new__(TextSocket)
    reader.buffer = b""
    reader.sock = socket.socket()
    reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # before connecting
    reader.sock.settimeout(10)
    reader.sock.connect((server.host, server.port))
    reader.send(b"PUT q x\r\n" * 20_000)  # 480 KB of replies, most left in the server's

    async def until_run() -> None:
        async with connect(server.host, server.port) as watcher:
            await until_stats(watcher, lambda s: s["server"]["messages"] == 20_000)

    asyncio.run(until_run())
    stop = subprocess.Popen(["kill", "-TERM", str(server.proc.pid)])
    answered = 0
    while True:  # about 160 KB/s: the backlog takes about 3 s to read
        chunk = reader.sock.recv(16384)
        if not chunk:
            break
        reader.buffer += chunk
        *lines, reader.buffer = reader.buffer.split(b"\r\n")
        answered += sum(1 for line in lines if line.startswith(b"OK "))
        if any(line.startswith(b"ERR SHUTTING_DOWN") for line in lines):
            assert reader.sock.recv(100) == b""  # the goodbye was the last word
            break
        time.sleep(0.1)
    else:
        raise AssertionError("unreachable")
    reader.close()
    assert stop.wait(20) == 0 and server.wait_exit() == 0
    assert "cut off" not in server.log, server.log

    async def stored() -> int:
        async with connect(restarted.host, restarted.port) as client:
            return (await client.stats())["queues"]["q"]["ready"]

    restarted = server_factory("--data-dir", data_dir)
    assert asyncio.run(stored()) == answered == 20_000


def test_a_client_cut_off_at_the_stop_still_reads_the_replies_its_kernel_holds(
        server_factory):
    # Its 100 replies sit unread in its own kernel buffer (nothing left for the server to
    # send, so no progress to wait for) and it keeps writing, so it is cut off after
    # GOODBYE_WAIT_S and its next write meets a reset. The replies and the goodbye were
    # written before it, in order, and Linux's TCP keeps what it had received.
    server = server_factory()
    slow = Raw(server.host, server.port)
    slow.send(PREAMBLE + b"".join(frame([i, "put", {"queue": "q", "body": b"x"}])
                                  for i in range(1, 101)))

    async def until_stored() -> None:
        async with connect(server.host, server.port) as watcher:
            await until_stats(watcher, lambda s: s["server"]["messages"] == 100)

    asyncio.run(until_stored())
    server.proc.send_signal(signal.SIGTERM)
    reset = None
    for _ in range(1000):  # a ping every 10 ms until the cut-off's reset, 10 s at most
        try:
            slow.send(frame([0, "ping", {}]))
        except OSError as exc:
            reset = exc
            break
        time.sleep(0.01)
    assert isinstance(reset, BrokenPipeError | ConnectionResetError), reset
    assert server.wait_exit() == 0
    assert "cut off 1 connection that did not close" in server.log
    assert [slow.reply()[:2] for _ in range(100)] == [[i, None] for i in range(1, 101)]
    after = slow.reply()
    while after == [0, None, "pong"]:  # pings read before the stop began were answered
        after = slow.reply()
    assert after[0] is None and after[1][0] == "SHUTTING_DOWN", after
    assert slow.at_eof()
    slow.close()


def test_every_client_hears_the_stop_and_one_that_never_closes_does_not_hold_it(
        server_factory):
    server = server_factory()
    binary = Raw(server.host, server.port)
    binary.send(PREAMBLE + frame([1, "ping", {}]))
    assert binary.reply() == [1, None, "pong"]
    text = TextSocket(server.host, server.port)
    text.send(b"PING\r\n")
    assert text.line() == b"PONG"
    silent = Raw(server.host, server.port)  # reads nothing, closes nothing
    silent.send(PREAMBLE + frame([1, "ping", {}]))

    async def stop_and_hear_it() -> None:
        async with connect(server.host, server.port) as client:
            await until_stats(client, lambda s: s["server"]["connections"] == 4)
            stopping = asyncio.ensure_future(asyncio.to_thread(server.stop))
            await until_true(lambda: client.closed)
            with pytest.raises(ConnectionClosed) as info:
                await client.ping()
            assert info.value.server_code == "SHUTTING_DOWN"
            request_id, (code, message), result = await asyncio.to_thread(binary.reply)
            assert (request_id, code, result) == (None, "SHUTTING_DOWN", None) and message
            assert await asyncio.to_thread(binary.at_eof)
            assert (await asyncio.to_thread(text.line)).startswith(b"ERR SHUTTING_DOWN ")
            assert await asyncio.to_thread(text.at_eof)
            binary.close()
            text.close()
            assert await stopping == 0

    asyncio.run(stop_and_hear_it())
    assert "cut off 1 connection that did not close" in server.log  # the silent one
    silent.close()


def test_environment_sets_flags(server_factory):
    server = server_factory(env={"WONDERQ_MAX_MESSAGE_BYTES": "5", "WONDERQ_PORT": "0"})

    async def check() -> None:
        async with connect(server.host, server.port) as client:
            await client.put("q", b"12345")
            with pytest.raises(Exception) as info:
                await client.put("q", b"123456")
            assert info.value.code == "BODY_TOO_LARGE"

    asyncio.run(check())


def test_default_visibility_timeout_flag(server_factory):
    server = server_factory("--visibility-timeout", "0.1")

    async def check() -> None:
        async with connect(server.host, server.port) as client:
            await client.put("v", b"x")
            [first] = await client.receive("v")  # uses the server default of 0.1 s
            [again] = await client.receive("v", wait=10)
            assert (again.id, again.deliveries) == (first.id, 2)

    asyncio.run(check())


@pytest.mark.parametrize("args", [
    ["--port", "70000"],
    ["--visibility-timeout", "-1"],
    ["--max-batch", "zero"],
    ["--log-level", "loud"],
])
def test_bad_flags_stop_start_up_with_a_message(args):
    result = subprocess.run([*server_command(), *args], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert args[0] in result.stderr
    # One line: argparse's 25 lines of usage buried it (an operator's review).
    [line] = result.stderr.splitlines()
    assert line.startswith("wonderq-server: error: ") and "invalid literal" not in line


def test_port_in_use_exits_with_a_message(server):
    result = subprocess.run([*server_command(), "--port", str(server.port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot start" in result.stderr


def test_a_data_dir_that_is_a_file_is_named_not_blamed_on_the_port(tmp_path):
    # It said "cannot start on 127.0.0.1:0: [Errno 17] File exists".
    in_the_way = tmp_path / "data"
    in_the_way.write_bytes(b"not a directory")
    result = subprocess.run([*server_command(), "--port", "0", "--data-dir", str(in_the_way)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"the data directory {in_the_way} cannot be used: it is not a directory" \
        in result.stderr
    assert "Traceback" not in result.stderr and "cannot start on" not in result.stderr
    assert in_the_way.read_bytes() == b"not a directory"


def test_a_journal_file_that_cannot_be_read_is_named_not_blamed_on_the_port(tmp_path):
    # It said "cannot start on 127.0.0.1:0: [Errno 21] Is a directory: '.../journal.000001'".
    data = tmp_path / "data"
    (data / "journal.000001").mkdir(parents=True)
    result = subprocess.run([*server_command(), "--port", "0", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot start: [Errno 21] Is a directory" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "cannot start on" not in result.stderr


@pytest.mark.parametrize("repair", [[], ["--repair"]])
def test_a_newer_servers_journal_is_named_as_such_not_sent_to_repair(tmp_path, repair):
    # An operator's rollback: version 5 in the header was "the journal is damaged ...
    # (start with --repair ...)", and --repair said the same again.
    data = tmp_path / "data"
    data.mkdir()
    (data / "journal.000001").write_bytes(b"WQJRNL\x05\n")
    result = subprocess.run([*server_command(), "--port", "0", "--data-dir", str(data),
                             *repair], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot start: the journal cannot be read: " in result.stderr, result.stderr
    assert "journal format version 5 is newer than this server's" in result.stderr
    assert "start this one on a fresh data directory" in result.stderr
    assert "--repair cannot help" in result.stderr and "damaged" not in result.stderr
    assert (data / "journal.000001").read_bytes() == b"WQJRNL\x05\n"  # left as it was


@pytest.mark.parametrize("level", ["warning", "error"])
def test_the_ready_line_is_logged_at_any_log_level(server_factory, level):
    # With --port 0 it is the only way to learn the port; at warning it was not logged.
    server = server_factory("--log-level", level)  # waits for the ready line
    assert server.port > 0
    [info] = [line for line in server.log.splitlines() if " INFO " in line]  # that alone
    assert "wonderq-server listening on" in info
