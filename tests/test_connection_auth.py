"""The authentication gate of connection.py, with a fake transport and the clock as numbers.

On a hub whose service has a token, a connection must AUTH before anything
but QUIT; a wrong token is answered, reading stops, and the close comes
AUTH_FAILURE_DELAY_S later by the hub's clock (no sleeping: `advance`).
"""

from __future__ import annotations

import itertools

import pytest
from connection_fakes import FakeHub, req

from wonderq_server.auth import AUTH_FAILURE_DELAY_S
from wonderq_server.binary_codec import PREAMBLE
from wonderq_server.connection_limits import PRE_AUTH_REQUEST_BYTES
from wonderq_server.errors import (
    AUTH_FAILED,
    AUTH_REQUIRED,
    AUTH_TIMEOUT,
    BAD_ARGUMENT,
    FRAME_TOO_LARGE,
)

TOKEN = b"s3cret-token"


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub(auth_token=TOKEN)


def kinds(transport) -> list[str]:
    return [kind for kind, _ in transport.events]


def test_without_a_token_connections_start_authenticated():
    connection, _ = FakeHub().connect()
    assert connection.authenticated


def test_binary_commands_before_auth_are_auth_required_and_the_connection_goes_on(hub):
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(1, "put", queue="q", body=b"x") + req(2, "ping"))
    replies = transport.frames()
    assert [(r[0], r[1][0], r[2]) for r in replies] == [(1, AUTH_REQUIRED, None),
                                                       (2, AUTH_REQUIRED, None)]
    assert "AUTH <token>" in replies[0][1][1]
    assert "q" not in hub.broker.queues and not transport.closed
    hub.send(connection, req(3, "auth", token=TOKEN.decode()) + req(4, "put", queue="q",
                                                                     body=b"x"))
    assert transport.frames()[2:4] == [[3, None, None], [4, None, transport.frames()[3][2]]]
    assert hub.broker.stats(hub.clock)["messages"] == 1
    assert connection.authenticated


def test_text_auth_then_commands(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"STATS\r\nAUTH " + TOKEN + b"\r\nPING\r\n")
    lines = transport.data.split(b"\r\n")
    assert lines[0].startswith(b"ERR AUTH_REQUIRED ")
    assert lines[1:] == [b"OK", b"PONG", b""]


def test_quit_works_before_auth(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"QUIT\r\n")
    assert transport.events == [("write", b"BYE\r\n"), ("close", None)]


def test_a_wrong_token_is_answered_then_closed_after_the_delay_reading_nothing(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"AUTH wrong\r\nPUT q after\r\n")
    assert transport.data.startswith(b"ERR AUTH_FAILED ") and transport.data.count(b"\r\n") == 1
    assert not transport.closed and not transport.reading
    hub.send(connection, b"AUTH " + TOKEN + b"\r\nPUT q later\r\n")  # read despite the pause
    assert transport.data.count(b"\r\n") == 1
    hub.advance(AUTH_FAILURE_DELAY_S / 2)
    assert not transport.closed
    hub.advance(AUTH_FAILURE_DELAY_S / 2)
    assert kinds(transport) == ["pause_reading", "write", "close"]
    assert hub.broker.stats(hub.clock)["messages"] == 0
    assert hub.service.auth.failures == 1


def test_a_wrong_token_in_binary_mode_carries_the_request_id(hub):
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(7, "auth", token="nope") + req(8, "ping"))
    [reply] = transport.frames()
    assert reply[0] == 7 and reply[1][0] == AUTH_FAILED and reply[2] is None
    hub.advance(AUTH_FAILURE_DELAY_S)
    assert transport.closed


def test_a_wrong_token_after_eof_still_waits_out_the_delay(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"AUTH wrong\r\n")
    connection.eof_received()
    hub.run()
    assert not transport.closed
    hub.advance(AUTH_FAILURE_DELAY_S)
    assert transport.closed


def test_the_connection_gone_before_the_delay_ends_is_no_error(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"AUTH wrong\r\n")
    connection.connection_lost(None)
    hub.advance(AUTH_FAILURE_DELAY_S)
    assert kinds(transport) == ["pause_reading", "write"]


def test_auth_again_with_the_right_token_is_ok_and_a_wrong_one_closes(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"AUTH " + TOKEN + b"\r\nAUTH " + TOKEN + b"\r\n")
    assert transport.data == b"OK\r\nOK\r\n"
    hub.send(connection, b"AUTH other\r\nPING\r\n")
    assert transport.data.split(b"\r\n")[2].startswith(b"ERR AUTH_FAILED ")
    assert b"PONG" not in transport.data
    hub.advance(AUTH_FAILURE_DELAY_S)
    assert transport.closed


def test_auth_on_a_server_without_a_token_is_an_error_and_the_connection_stays():
    hub = FakeHub()
    connection, transport = hub.connect()
    hub.send(connection, b"AUTH anything\r\nPING\r\n")
    error, pong, _ = transport.data.split(b"\r\n")
    assert error == (b"ERR " + BAD_ARGUMENT.encode()
                     + b" AUTH sent, but this server has no auth token (it was started "
                     b"without --auth-token): connect without one")
    assert pong == b"PONG" and not transport.closed
    assert hub.service.auth.failures == 0


def test_a_receive_before_auth_never_waits(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"GET q wait=30\r\nPING\r\n")
    assert transport.data.count(b"ERR AUTH_REQUIRED") == 2
    assert hub.broker.stats(hub.clock)["waiting_consumers"] == 0


def test_a_bug_while_checking_the_token_is_internal_and_opens_nothing(hub, monkeypatch,
                                                                       caplog):
    def broken(given: bytes) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(hub.service.auth, "check", broken)
    connection, transport = hub.connect()
    hub.send(connection, b"AUTH " + TOKEN + b"\r\nPING\r\n")
    lines = transport.data.split(b"\r\n")
    assert lines[0].startswith(b"ERR INTERNAL ") and lines[1].startswith(b"ERR AUTH_REQUIRED ")
    assert not connection.authenticated and not transport.closed
    assert "internal error running 'auth'" in caplog.text
    assert TOKEN.decode() not in caplog.text


# ------------------------------------------------ --auth-timeout and the size of strangers

def test_a_connection_that_never_authenticates_is_closed_after_the_auth_timeout(hub):
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(1, "ping"))  # activity, but no AUTH
    hub.advance(hub.connection_limits.auth_timeout_s - 0.01)
    assert not transport.closed
    hub.advance(0.01)
    assert transport.closed
    assert transport.frames()[-1][:2] == [None, [AUTH_TIMEOUT, "no AUTH within 10 s (the "
                                                 "server's --auth-timeout)"]]
    assert hub.counters.auth_timeouts == 1


def test_a_connection_that_authenticates_in_time_stays(hub):
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(1, "auth", token=TOKEN.decode()))
    hub.advance(hub.connection_limits.auth_timeout_s * 10)
    assert not transport.closed
    assert hub.counters.auth_timeouts == 0
    assert all(timer.cancelled for timer in hub.timers)


def test_a_stranger_whose_auth_timeout_close_cannot_finish_is_dropped(hub):
    # A close waits until the client has read every reply (the fake never sends
    # connection_lost): with --idle-timeout off (the default), a stranger that never
    # reads would keep its --max-connections slot for ever.
    _connection, transport = hub.connect()
    timeout_s = hub.connection_limits.auth_timeout_s
    hub.advance(timeout_s)
    assert transport.closed and not transport.aborted
    hub.advance(timeout_s - 0.01)
    assert not transport.aborted
    hub.advance(0.01)
    assert transport.aborted
    assert hub.counters.auth_timeouts == 1


def test_a_wrong_token_whose_close_cannot_finish_is_dropped_at_the_auth_timeout(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"AUTH wrong\r\n")
    hub.advance(AUTH_FAILURE_DELAY_S)
    assert transport.closed and not transport.aborted
    hub.advance(hub.connection_limits.auth_timeout_s - AUTH_FAILURE_DELAY_S)
    assert transport.aborted
    assert hub.counters.auth_timeouts == 0  # it was answered AUTH_FAILED, not timed out


def test_a_wrong_token_just_before_the_auth_timeout_still_gets_its_delay(hub):
    connection, transport = hub.connect()
    hub.advance(hub.connection_limits.auth_timeout_s - 0.5)
    hub.send(connection, b"AUTH wrong\r\n")
    hub.advance(0.5)  # the auth timer fires inside the delay: no AUTH_TIMEOUT, no abort
    assert not transport.closed and transport.data.count(b"\r\n") == 1
    hub.advance(AUTH_FAILURE_DELAY_S)
    assert transport.closed and not transport.aborted
    hub.advance(hub.connection_limits.auth_timeout_s)
    assert transport.aborted


def test_a_stranger_whose_close_finishes_leaves_no_timer(hub):
    connection, transport = hub.connect()
    hub.advance(hub.connection_limits.auth_timeout_s)
    connection.connection_lost(None)  # the client read AUTH_TIMEOUT
    hub.advance(hub.connection_limits.auth_timeout_s * 3)
    assert not transport.aborted
    assert all(timer.cancelled for timer in hub.timers)


def test_without_a_token_there_is_no_auth_timer():
    hub = FakeHub()
    hub.connect()
    assert hub.timers == []


def test_before_auth_a_frame_over_the_small_limit_is_refused_and_closes(hub):
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + (PRE_AUTH_REQUEST_BYTES + 1).to_bytes(4, "big")
              + b"x" * 16)  # and the first bytes, which do not name a request
    [[request_id, [code, message], _]] = transport.frames()
    assert (request_id, code, transport.closed) == (None, FRAME_TOO_LARGE, True)
    # It names the limit that applies, not --max-frame-bytes (set far higher).
    assert message == (f"frame of {PRE_AUTH_REQUEST_BYTES + 1} bytes is over the limit of "
                       f"{PRE_AUTH_REQUEST_BYTES} (the limit for a request before AUTH)")


def test_after_auth_frames_may_be_as_big_as_the_server_allows(hub):
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(1, "auth", token=TOKEN.decode()))
    body = b"b" * (PRE_AUTH_REQUEST_BYTES * 3)
    hub.send(connection, req(2, "put", queue="q", body=body))
    assert transport.frames()[1][:2] == [2, None]
    assert hub.broker.stats(hub.clock)["messages"] == 1


@pytest.mark.parametrize("in_pieces", [False, True])
def test_what_is_pipelined_behind_auth_is_read_under_the_servers_limits(hub, in_pieces):
    # Decoded in the same feed as its AUTH, a big put was held to a stranger's limits:
    # FRAME_TOO_LARGE, and the connection closed (text: LINE_TOO_LONG).
    body = b"b" * (PRE_AUTH_REQUEST_BYTES * 2)
    wire = (PREAMBLE + req(1, "auth", token=TOKEN.decode())
            + req(2, "put", queue="q", body=body) + req(3, "ping"))
    connection, transport = hub.connect()
    if in_pieces:  # the AUTH's frame split, and the rest behind it in its last read
        hub.send(connection, wire[:10])
        hub.send(connection, wire[10:])
    else:
        hub.send(connection, wire)
    replies = transport.frames()
    assert [reply[:2] for reply in replies] == [[1, None], [2, None], [3, None]]
    assert not transport.closed and hub.broker.stats(hub.clock)["messages"] == 1
    text, text_transport = hub.connect()
    hub.send(text, b"AUTH " + TOKEN + b"\r\nPUT q " + body + b"\r\nPING\r\n")
    assert text_transport.data.split(b"\r\n")[:3] == [b"OK", b"OK %d" % (replies[1][2] + 1),
                                                       b"PONG"]


def test_what_is_pipelined_behind_a_failed_auth_is_answered(hub, monkeypatch):
    # A bug while checking the token (INTERNAL) leaves the connection open: what came
    # after the AUTH is still answered (AUTH_REQUIRED), not left unread for good.
    def broken(given: bytes) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(hub.service.auth, "check", broken)
    connection, transport = hub.connect()
    hub.send(connection, PREAMBLE + req(1, "auth", token="x") + req(2, "ping"))
    assert [reply[1][0] for reply in transport.frames()] == ["INTERNAL", "AUTH_REQUIRED"]


def test_before_auth_a_long_text_line_is_skipped(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"PUT q " + b"x" * PRE_AUTH_REQUEST_BYTES + b"\r\nAUTH "
             + TOKEN + b"\r\n")
    # It names the limit that applies, not --max-message-bytes (a newcomer's review).
    assert transport.data.startswith(
        b"ERR LINE_TOO_LONG line is over the limit of %d bytes (the limit for a request "
        b"before AUTH); skipped to its end\r\n" % PRE_AUTH_REQUEST_BYTES)
    assert transport.data.endswith(b"OK\r\n")  # the AUTH after it still counts


def test_an_auth_at_a_turn_check_does_not_stretch_the_turn():
    # Read on after an AUTH that came as the turn's 64th request, the rest ran in the same
    # turn past TURN_SECONDS: the AUTH had taken the turn check's place (a reviewer).
    def replies_in_first_turn(hub: FakeHub, data: bytes) -> int:
        ticks = itertools.count()
        hub.now = lambda: hub.clock + next(ticks) * 0.001  # every clock read is late
        connection, _ = hub.connect()
        connection.data_received(data)
        return sum(part.count(b"\r\n") for part in connection._out)

    pings = b"PING\r\n" * 1000
    baseline = replies_in_first_turn(FakeHub(), b"PING\r\n" * 64 + pings)
    authed = replies_in_first_turn(FakeHub(auth_token=TOKEN),
                                   b"PING\r\n" * 63 + b"AUTH " + TOKEN + b"\r\n" + pings)
    assert 0 < authed <= baseline < 1064, (baseline, authed)
