"""End to end: a real `wonderq-server --auth-token`, with the real client and raw sockets.

Before AUTH only AUTH and QUIT run; a wrong token is answered AUTH_FAILED and
the server closes the connection about a second later (the test waits for
that EOF, it does not sleep); the token can come from the flag, the
environment or a file, and never shows in the server's log or --help.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from raw_socket import BinarySocket, TextSocket, frame
from server_process import server_command

from wonderq_client import AuthFailed, AuthRequired, BadArgument, connect
from wonderq_server.auth import AUTH_FAILURE_DELAY_S, MAX_TOKEN_BYTES

TOKEN = "e2e-s3cret-Tok3n"
PREAMBLE = b"WQ\x00\x01"


@pytest.fixture
def secured(server_factory):
    return server_factory("--auth-token", TOKEN)


async def test_commands_before_auth_are_auth_required_and_the_connection_stays(secured):
    async with connect(secured.host, secured.port) as client:
        with pytest.raises(AuthRequired) as info:
            await client.put("jobs", b"not stored")
        assert "AUTH <token>" in info.value.message
        with pytest.raises(AuthRequired):
            await client.ping()
        assert not client.closed
    async with connect(secured.host, secured.port, auth_token=TOKEN) as client:
        assert (await client.stats())["queues"] == {}


async def test_the_right_token_then_put_receive_ack(secured):
    async with connect(secured.host, secured.port, auth_token=TOKEN) as client:
        message_id = await client.put("jobs", b"hello")
        [message] = await client.receive("jobs", visibility=60)
        assert (message.id, message.body) == (message_id, b"hello")
        await message.ack()
        server = (await client.stats())["server"]
        assert server["auth_failures_total"] == 0 and server["tls"] is False


async def test_a_wrong_token_fails_connect_and_is_counted(secured):
    with pytest.raises(AuthFailed):
        await connect(secured.host, secured.port, auth_token="wrong")
    async with connect(secured.host, secured.port, auth_token=TOKEN) as client:
        assert (await client.stats())["server"]["auth_failures_total"] == 1


async def test_a_token_given_to_a_server_without_one_is_refused(server):
    with pytest.raises(BadArgument, match="this server has no auth token"):
        await connect(server.host, server.port, auth_token=TOKEN)


def test_text_mode_auth_required_then_auth(secured):
    text = TextSocket(secured.host, secured.port)
    try:
        text.send(b"PUT jobs hello\r\nPING\r\n")
        assert text.line().startswith(b"ERR AUTH_REQUIRED ")
        assert text.line().startswith(b"ERR AUTH_REQUIRED ")
        text.send(b"AUTH " + TOKEN.encode() + b"\r\nPUT jobs hello\r\n")
        assert text.line() == b"OK"
        assert text.line().startswith(b"OK ")
    finally:
        text.close()


def test_quit_works_before_auth(secured):
    text = TextSocket(secured.host, secured.port)
    try:
        text.send(b"QUIT\r\n")
        assert text.line() == b"BYE"
        assert text.at_eof()
    finally:
        text.close()


def test_binary_mode_auth_required_with_the_request_id(secured):
    raw = BinarySocket(secured.host, secured.port)
    try:
        raw.send(PREAMBLE + frame([1, "stats", {}]))
        request_id, error, result = raw.reply()
        assert (request_id, error[0], result) == (1, "AUTH_REQUIRED", None)
        raw.send(frame([2, "auth", {"token": TOKEN}]) + frame([3, "ping", {}]))
        assert raw.reply() == [2, None, None]
        assert raw.reply() == [3, None, "pong"]
    finally:
        raw.close()


def test_a_big_request_pipelined_behind_auth_runs_under_the_servers_limits(secured):
    # Sent in the same write as its AUTH, a 100 KB put was decoded under a stranger's
    # limits (64 KiB): refused LINE_TOO_LONG in text mode, and in binary mode
    # FRAME_TOO_LARGE, which closes the connection.
    body = b"b" * 100_000
    text = TextSocket(secured.host, secured.port)
    try:
        text.send(b"AUTH " + TOKEN.encode() + b"\r\nPUT jobs " + body + b"\r\nGET jobs\r\n")
        assert text.line() == b"OK"
        assert text.line().startswith(b"OK ")
        assert text.line().split()[-1] == str(len(body)).encode()  # the MSG line
    finally:
        text.close()
    raw = BinarySocket(secured.host, secured.port)
    try:
        raw.send(PREAMBLE + frame([1, "auth", {"token": TOKEN}])
                 + frame([2, "put", {"queue": "jobs", "body": body}])
                 + frame([3, "ping", {}]))
        assert raw.reply() == [1, None, None]
        request_id, error, message_id = raw.reply()
        assert (request_id, error, type(message_id)) == (2, None, int)
        assert raw.reply() == [3, None, "pong"]
    finally:
        raw.close()


def test_a_wrong_token_is_answered_then_closed_after_the_delay(secured):
    text = TextSocket(secured.host, secured.port)
    try:
        text.send(b"AUTH wrong\r\nPING\r\n")
        assert text.line().startswith(b"ERR AUTH_FAILED ")
        answered = time.monotonic()
        assert text.at_eof()  # waits for the server's close
        assert time.monotonic() - answered >= AUTH_FAILURE_DELAY_S - 0.1
        assert text.buffer == b""  # the PING after the wrong token was never run
    finally:
        text.close()
    # The server goes on serving everyone else.
    good = TextSocket(secured.host, secured.port)
    try:
        good.send(b"AUTH " + TOKEN.encode() + b"\r\nPING\r\n")
        assert (good.line(), good.line()) == (b"OK", b"PONG")
    finally:
        good.close()


async def test_token_from_the_environment(server_factory):
    proc = server_factory(env={"WONDERQ_AUTH_TOKEN": TOKEN})
    async with connect(proc.host, proc.port) as client:
        with pytest.raises(AuthRequired):
            await client.ping()
    async with connect(proc.host, proc.port, auth_token=TOKEN) as client:
        assert await client.ping() == "pong"


async def test_token_from_a_file(server_factory, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    proc = server_factory("--auth-token-file", str(path))
    async with connect(proc.host, proc.port, auth_token=TOKEN) as client:
        assert await client.ping() == "pong"
    with pytest.raises(AuthFailed):
        await connect(proc.host, proc.port, auth_token=TOKEN + "\n")


async def test_the_token_never_shows_in_the_log(server_factory):
    proc = server_factory("--auth-token", TOKEN, "--log-level", "debug", "--host",
                          "127.0.0.1")
    async with connect(proc.host, proc.port, auth_token=TOKEN) as client:
        await client.put("jobs", b"x")
    with pytest.raises(AuthFailed):
        await connect(proc.host, proc.port, auth_token=TOKEN[:-1])
    assert await asyncio.to_thread(proc.stop, signal.SIGTERM) == 0
    assert "wonderq-server stopped" in proc.log
    assert TOKEN not in proc.log and TOKEN[:-1] not in proc.log
    assert "which other machines may reach" not in proc.log  # loopback: no warning


def test_the_token_never_shows_in_help():
    result = subprocess.run([*server_command(), "--help"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "WONDERQ_AUTH_TOKEN": TOKEN},
                            check=False)
    assert result.returncode == 0
    assert TOKEN not in result.stdout + result.stderr
    assert "default set" in result.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["--auth-token-file", "/nonexistent/token"], "cannot read --auth-token-file"),
    (["--auth-token", TOKEN, "--auth-token-file", "/etc/hostname"], "not both"),
    (["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert and --tls-key go together"),
])
def test_bad_security_flags_stop_start_up_with_a_usage_error(argv, message):
    result = subprocess.run([*server_command(), "--in-memory", "--port", "0", *argv],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert TOKEN not in result.stderr


def test_a_token_over_the_limit_stops_start_up():
    result = subprocess.run([*server_command(), "--in-memory", "--port", "0", "--auth-token",
                             "t" * (MAX_TOKEN_BYTES + 1)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert (f"--auth-token is {MAX_TOKEN_BYTES + 1} bytes long, over the limit of "
            f"{MAX_TOKEN_BYTES}") in result.stderr
    assert "t" * 100 not in result.stderr


async def test_the_longest_token_authenticates_in_both_modes_under_small_limits(
        server_factory):
    # Before AUTH a text line was held to --max-message-bytes + 1024: a reviewer's server
    # with --max-message-bytes 100 and a 1,500-character token refused `AUTH <token>` as
    # LINE_TOO_LONG, so no text client could ever authenticate. Frames likewise under a
    # small --max-frame-bytes.
    token = "T" * MAX_TOKEN_BYTES
    server = server_factory("--max-message-bytes", "100", "--max-frame-bytes", "300",
                            "--auth-token", token)
    text = TextSocket(server.host, server.port)
    try:
        text.send(b"AUTH " + token.encode() + b"\nPING\nPUT q " + b"x" * 2000 + b"\n")
        assert text.line() == b"OK"
        assert text.line() == b"PONG"
        # Authenticated, the server's own line limit holds again.
        assert text.line().startswith(b"ERR LINE_TOO_LONG line is over the limit of 1124 ")
    finally:
        text.close()
    async with connect(server.host, server.port, auth_token=token) as client:
        assert await client.ping() == "pong"


async def test_a_stranger_that_never_authenticates_loses_its_slot(server_factory):
    proc = server_factory("--auth-token", TOKEN, "--auth-timeout", "0.3")
    stranger = TextSocket(proc.host, proc.port)
    try:
        stranger.send(b"PING\r\n")
        assert (await asyncio.to_thread(stranger.line)).startswith(b"ERR AUTH_REQUIRED ")
        assert (await asyncio.to_thread(stranger.line)).startswith(b"ERR AUTH_TIMEOUT ")
        assert await asyncio.to_thread(stranger.at_eof)
    finally:
        stranger.close()
    async with connect(proc.host, proc.port, auth_token=TOKEN) as client:
        assert (await client.stats())["server"]["auth_timeouts_total"] == 1


def test_wrong_tokens_and_refused_connections_are_logged_with_their_peer(server_factory):
    # An operator's review: 95 refusals and the wrong tokens left no line in the log, not
    # even at debug; only counters in STATS said anything.
    server = server_factory("--auth-token", TOKEN, "--max-connections", "1")
    text = TextSocket(server.host, server.port)
    try:
        text.send(b"AUTH wrong\r\n")
        assert text.line().startswith(b"ERR AUTH_FAILED ")
        port = text.sock.getsockname()[1]
        refused = TextSocket(server.host, server.port)  # the second: over the limit
        try:
            refused.send(b"PING\r\n")
            assert refused.line().startswith(b"ERR TOO_MANY_CONNECTIONS ")
        finally:
            refused.close()
        assert text.at_eof()
    finally:
        text.close()
    server.stop()
    assert f"wrong auth token from ('127.0.0.1', {port}); its connection closes" in server.log
    assert "refused a connection from ('127.0.0.1', " in server.log
    assert "already serves 1 (--max-connections)" in server.log
    assert TOKEN not in server.log
