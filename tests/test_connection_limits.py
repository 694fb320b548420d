"""Tests of the connection limits (connection_limits.py) on a Connection with a fake
transport and a number clock: idle timeout, refusal, slow readers; and the
open-file arithmetic. The byte limit on held text input is tested with the
rest of text holding in test_connection.py; end-to-end checks of all of them
are in test_e2e_limits.py."""

from __future__ import annotations

import pytest
from connection_fakes import (
    PREAMBLE,
    TCP_CLOSE_WAIT,
    FakeHub,
    binary_client,
    put_via_text,
    req,
)

from wonderq_server.connection_limits import (
    REFUSAL_WAIT_S,
    REPLY_HOLD_BYTES,
    RESERVED_FILE_DESCRIPTORS,
    WAITING_RECEIVE_BYTES,
    ConnectionLimits,
    address_key,
    fit_open_files,
    metrics_file_descriptors,
)
from wonderq_server.errors import IDLE_TIMEOUT, TOO_MANY_CONNECTIONS, ProtocolError

IDLE_S = 10.0


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub(connection_limits=ConnectionLimits(idle_timeout_s=IDLE_S))


# ------------------------------------------------------------------ idle timeout

def test_an_idle_connection_is_answered_and_closed(hub):
    _connection, transport = binary_client(hub)
    hub.advance(IDLE_S - 0.5)
    assert not transport.closed
    hub.advance(0.5)
    assert transport.closed
    (frame,) = transport.frames()
    assert frame[0] is None and frame[1][0] == IDLE_TIMEOUT
    assert hub.counters.idle_disconnects == 1


def test_idle_timeout_in_text_mode_says_so_in_a_line(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"PING\r\n")
    hub.advance(IDLE_S)
    assert transport.closed
    assert transport.data.startswith(b"PONG\r\nERR IDLE_TIMEOUT ")


def test_each_request_restarts_the_idle_time(hub):
    connection, transport = binary_client(hub)
    for request_id in range(5):
        hub.advance(IDLE_S - 1)
        hub.send(connection, req(request_id, "ping"))
    assert not transport.closed
    hub.advance(IDLE_S - 0.001)
    assert not transport.closed
    hub.advance(0.001)
    assert transport.closed


def test_a_partial_request_is_not_activity(hub):
    connection, transport = binary_client(hub)
    frame = req(1, "ping")
    hub.advance(IDLE_S - 1)
    hub.send(connection, frame[:3])  # a client dribbling bytes is not working
    hub.advance(1)
    assert transport.closed
    assert hub.counters.idle_disconnects == 1


def test_a_waiting_receive_keeps_the_connection_and_its_end_counts_as_activity(hub):
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "receive", queue="q", wait=100))
    hub.advance(IDLE_S * 5)
    assert not transport.closed  # waiting for 50 s, idle for none of it
    put_via_text(hub, b"x")
    assert transport.frames()[0][0] == 1
    hub.advance(IDLE_S - 1)  # the wait ended 9 s ago: not idle yet
    assert not transport.closed
    hub.advance(1)
    assert transport.closed
    assert transport.frames()[-1][1][0] == IDLE_TIMEOUT


def test_a_wait_that_runs_out_counts_as_activity_too(hub):
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "receive", queue="q", wait=25))
    hub.advance(25)  # the receive is answered empty: activity at 25 s
    assert transport.frames() == [[1, None, []]]
    hub.advance(IDLE_S - 1)
    assert not transport.closed
    hub.advance(1)
    assert transport.closed


def test_an_idle_client_that_does_not_read_is_dropped_when_its_close_cannot_finish(hub):
    # A close waits until the client has read every reply (connection_lost only comes
    # then; the fake never sends it): a client that never reads would stay for ever.
    _connection, transport = binary_client(hub)
    transport.unsent = 100_000  # replies it has not read, under --max-reply-buffer-bytes
    hub.advance(IDLE_S)
    assert transport.closed and not transport.aborted
    assert transport.frames()[-1][1][0] == IDLE_TIMEOUT
    hub.advance(IDLE_S - 0.5)
    assert not transport.aborted
    hub.advance(0.5)
    assert transport.aborted


def test_a_quit_whose_replies_are_never_read_is_dropped_an_idle_time_later(hub):
    connection, transport = hub.connect()
    transport.unsent = 100_000
    hub.send(connection, b"QUIT\r\n")
    assert transport.closed and not transport.aborted
    hub.advance(IDLE_S)
    assert transport.aborted
    assert hub.counters.idle_disconnects == 0  # it asked to go; it was not idle


def test_a_quit_just_before_the_timer_fires_gets_its_whole_idle_time(hub):
    connection, transport = hub.connect()
    transport.unsent = 100_000
    hub.advance(IDLE_S - 1)
    hub.send(connection, b"QUIT\r\n")
    hub.advance(1)  # the timer armed at the start fires now
    assert not transport.aborted
    hub.advance(IDLE_S - 1)
    assert transport.aborted


def test_a_close_that_finishes_cancels_the_timer(hub):
    connection, transport = hub.connect()
    hub.send(connection, b"QUIT\r\n")
    connection.connection_lost(None)  # the client read BYE
    hub.advance(IDLE_S * 3)
    assert not transport.aborted
    assert all(timer.cancelled for timer in hub.timers)


def test_idle_timeout_off_sets_no_timer():
    hub = FakeHub()
    _connection, transport = binary_client(hub)
    assert hub.timers == []
    hub.advance(10**6)
    assert not transport.closed


def test_a_closed_connection_cancels_its_idle_timer(hub):
    connection, _ = binary_client(hub)
    (timer,) = hub.timers
    connection.connection_lost(None)
    assert timer.cancelled


# ----------------------------------------------------------------------- refusal

REFUSAL = ProtocolError(TOO_MANY_CONNECTIONS, "the server already serves its maximum")


def refused(hub: FakeHub):
    hub.refusing = REFUSAL
    return hub.connect()


def test_a_refused_binary_client_gets_a_frame_it_can_read(hub):
    connection, transport = refused(hub)
    hub.send(connection, PREAMBLE + req(1, "put", queue="q", body=b"x"))
    assert transport.closed
    (frame,) = transport.frames()
    assert frame[0] is None and frame[1][0] == TOO_MANY_CONNECTIONS
    assert hub.broker.stats(hub.clock)["messages"] == 0  # its request did not run


def test_a_refused_text_client_gets_a_line(hub):
    connection, transport = refused(hub)
    hub.send(connection, b"PUT q x\r\n")
    assert transport.closed
    assert transport.data.startswith(b"ERR TOO_MANY_CONNECTIONS ")
    assert hub.broker.stats(hub.clock)["messages"] == 0


def test_a_refused_client_that_says_nothing_is_cut_off(hub):
    _connection, transport = refused(hub)
    hub.advance(REFUSAL_WAIT_S - 0.01)
    assert not transport.closed
    hub.advance(0.01)
    assert transport.aborted
    assert transport.data == b""


def test_a_refused_client_has_only_the_refusal_timer(hub):
    _connection, _transport = refused(hub)
    assert [timer.at for timer in hub.timers] == [hub.clock + REFUSAL_WAIT_S]


# ------------------------------------------------------------------ slow readers

LIMIT = 1000


@pytest.fixture
def tight_hub() -> FakeHub:
    return FakeHub(connection_limits=ConnectionLimits(max_reply_buffer_bytes=LIMIT))


def test_a_client_with_too_much_unsent_is_cut_off(tight_hub):
    hub = tight_hub
    connection, transport = binary_client(hub)
    transport.unsent = LIMIT + 1  # what the socket could not send yet
    hub.send(connection, req(1, "ping"))
    assert transport.aborted
    assert transport.frames() == []  # nothing more was written
    assert hub.counters.slow_reader_disconnects == 1


def test_a_client_at_the_limit_is_served(tight_hub):
    hub = tight_hub
    connection, transport = binary_client(hub)
    transport.unsent = LIMIT
    hub.send(connection, req(1, "ping"))
    assert not transport.closed
    assert transport.frames() == [[1, None, "pong"]]


def test_one_reply_bigger_than_the_limit_goes_out_when_nothing_is_queued(tight_hub):
    hub = tight_hub
    for _ in range(3):
        put_via_text(hub, b"b" * LIMIT)
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "receive", queue="q", max=3))
    (frame,) = transport.frames()
    assert len(frame[2]) == 3 and not transport.closed


def test_leases_of_a_cut_off_client_run_out_and_the_message_comes_back(tight_hub):
    hub = tight_hub
    put_via_text(hub, b"x")
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "receive", queue="q", visibility=5))
    [[request_id, error, [row]]] = transport.frames()
    assert (request_id, error, row[1]) == (1, None, b"x")
    assert hub.queue_stats()["in_flight"] == 1
    transport.unsent = LIMIT + 1
    hub.send(connection, req(2, "ping"))
    assert transport.aborted
    connection.connection_lost(None)
    hub.advance(5)
    assert hub.queue_stats()["ready"] == 1


def test_a_waiting_receive_of_a_cut_off_client_takes_nothing(tight_hub):
    hub = tight_hub
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "receive", queue="q", wait=60))
    transport.unsent = LIMIT + 1
    hub.send(connection, req(2, "ping"))
    assert transport.aborted
    put_via_text(hub, b"x")  # before connection_lost arrives: must not go to the dead client
    assert hub.queue_stats()["ready"] == 1


# ------------------------------------------------------------- open-file limit

# ------------------------------------------------------ connections per address

@pytest.mark.parametrize(("peer", "key"), [
    (("10.1.2.3", 5000), "10.1.2.3"),
    (("::ffff:10.1.2.3", 5000, 0, 0), "10.1.2.3"),  # IPv4 mapped into an IPv6 socket
    (("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 5000, 0, 0), "2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
    (("2001:0db8:0001:0002:0000:0000:0000:0001", 5001, 0, 0), "2001:db8:1:2::1"),
    (("fe80::1%eth0", 5000, 0, 2), "fe80::1"),
    (("::1", 5000, 0, 0), "::1"),
    ("", None),  # no IP address
    (None, None),
    (("not an address", 1), None),
])
def test_address_key_is_the_whole_address_in_its_normal_form(peer, key):
    assert address_key(peer) == key


def test_fit_open_files_leaves_a_large_enough_limit_alone():
    assert fit_open_files(100, 10_000, 20_000) == (10_000, 100)
    assert fit_open_files(100, -1, -1) == (-1, 100)


def test_fit_open_files_raises_the_soft_limit_to_fit():
    needed = 10_000 + RESERVED_FILE_DESCRIPTORS
    assert fit_open_files(10_000, 1024, 1_000_000) == (needed, 10_000)
    assert fit_open_files(10_000, 1024, -1) == (needed, 10_000)


def test_fit_open_files_lowers_the_connection_limit_to_the_hard_limit():
    assert fit_open_files(10_000, 1024, 4096) == (4096, 4096 - RESERVED_FILE_DESCRIPTORS)
    assert fit_open_files(10_000, 10, 10) == (10, 1)  # always at least one


def test_the_metrics_endpoint_keeps_its_descriptors_beside_the_reserve():
    # Its open connections (TLS handshakes in progress among them) and as many refusals
    # waiting: a --metrics-max-connections in the thousands took the descriptors
    # --max-connections had been fitted to (a reviewer's note).
    assert metrics_file_descriptors(None) == 0
    assert metrics_file_descriptors(32) == 64
    reserved = RESERVED_FILE_DESCRIPTORS + metrics_file_descriptors(1000)
    assert fit_open_files(10_000, 1024, 4096, reserved) == (4096, 4096 - reserved)
    assert fit_open_files(10_000, 1024, -1, reserved) == (10_000 + reserved, 10_000)


# ------------------------------------------- big replies to many requests in one read

BIG = 200 * 1024  # six replies pass REPLY_HOLD_BYTES (1 MiB)


def test_requests_with_big_replies_wait_for_the_earlier_replies_to_be_written():
    hub = FakeHub()
    put_via_text(hub, b"b" * BIG)
    connection, transport = binary_client(hub)
    transport.full_after_write = True
    hub.send(connection, b"".join(req(i, "peek", queue="q") for i in range(15)))
    assert [f[0] for f in transport.frames()] == list(range(6))  # then it waits
    assert not transport.reading
    hub.send(connection, req(15, "ping"))  # read before the pause took effect: held, in order
    transport.drain()
    hub.run()
    assert [f[0] for f in transport.frames()] == list(range(12))
    transport.drain()
    hub.run()
    assert [f[0] for f in transport.frames()] == list(range(16))
    assert transport.frames()[-1] == [15, None, "pong"]
    transport.drain()
    hub.run()
    assert transport.reading


def test_a_request_alone_in_its_read_with_a_big_reply_holds_the_next_read():
    # A read with one request skips _run's loop (data_received); a reply over
    # REPLY_HOLD_BYTES must still hold what comes next until it is written.
    hub = FakeHub()
    for _ in range(6):
        put_via_text(hub, b"b" * BIG)
    connection, transport = binary_client(hub)
    transport.full_after_write = True
    hub.send(connection, req(1, "peek", queue="q", max=6))
    hub.send(connection, req(2, "ping"))
    assert [f[0] for f in transport.frames()] == [1]  # the ping waits for the peek's write
    transport.drain()
    hub.run()
    assert [f[0] for f in transport.frames()] == [1, 2]


def test_a_socket_that_keeps_up_gets_every_reply_in_several_writes():
    hub = FakeHub()
    put_via_text(hub, b"b" * BIG)
    connection, transport = binary_client(hub)
    hub.send(connection, b"".join(req(i, "peek", queue="q") for i in range(15)))
    assert [f[0] for f in transport.frames()] == list(range(15))
    assert len(transport.writes) == 3
    assert max(len(w) for w in transport.writes) < 7 * BIG


def test_text_requests_with_big_replies_wait_in_order_too():
    hub = FakeHub()
    put_via_text(hub, b"b" * BIG)
    connection, transport = hub.connect()
    transport.full_after_write = True
    hub.send(connection, b"PEEK q\r\n" * 8 + b"PING\r\n")
    assert transport.data.count(b"END\r\n") == 6
    transport.drain()
    hub.run()
    assert transport.data.count(b"END\r\n") == 8
    assert transport.data.endswith(b"END\r\nPONG\r\n")


def test_error_replies_wait_for_the_earlier_replies_to_be_written_too():
    # Each 2-byte unknown command is answered with a line of about 200 bytes; many of
    # them in one read must be held at REPLY_HOLD_BYTES like any other replies.
    hub = FakeHub()
    connection, transport = hub.connect()
    transport.full_after_write = True
    lines = 20_000
    hub.send(connection, b"X\n" * lines + b"PING\r\n")
    reply_bytes = len(transport.data) // transport.data.count(b"\r\n")
    assert len(transport.writes) == 1
    assert len(transport.data) <= REPLY_HOLD_BYTES + reply_bytes
    for _ in range(lines):  # bounded: each turn writes at least one reply
        if transport.data.endswith(b"PONG\r\n"):
            break
        transport.drain()
        hub.run()
    assert transport.data.count(b"ERR UNKNOWN_COMMAND ") == lines
    assert max(len(w) for w in transport.writes) <= REPLY_HOLD_BYTES + reply_bytes


# ------------------------------------------------- waiting receives on one connection

def test_waiting_receives_past_the_request_buffer_pause_reading_until_one_ends():
    # A waiting receive is a request the server holds (about a kilobyte of it); a binary
    # client could otherwise park any number of them without ever being paused.
    waits = 10
    hub = FakeHub(connection_limits=ConnectionLimits(
        max_request_buffer_bytes=waits * WAITING_RECEIVE_BYTES, min_waits_room_bytes=0))
    connection, transport = binary_client(hub)
    hub.send(connection, b"".join(req(i, "receive", queue="q", wait=60) for i in range(waits)))
    assert transport.reading
    hub.send(connection, req(waits, "receive", queue="q", wait=60))
    assert not transport.reading and connection.paused
    put_via_text(hub, b"x")  # one wait ends: back under the limit
    assert transport.reading and not connection.paused
    assert [f[0] for f in transport.frames()] == [0]


def test_requests_in_the_read_that_passed_the_waits_limit_still_run_at_once():
    # Reading stops, but the read that took the waits past the limit runs whole: a CANCEL
    # (or an ack, a QUIT) sent with its receives reaches them now. A session's attempt to
    # hold the rest of that read held such a CANCEL for the whole wait (a reviewer).
    waits = 10
    hub = FakeHub(connection_limits=ConnectionLimits(
        max_request_buffer_bytes=waits * WAITING_RECEIVE_BYTES, min_waits_room_bytes=0))
    connection, transport = binary_client(hub)
    hub.send(connection, b"".join(req(i, "receive", queue="q", wait=60)
                                  for i in range(waits + 2))
             + req(50, "cancel", request=0) + req(51, "ping"))
    hub.run()
    assert [(f[0], f[2]) for f in transport.frames()] == [(0, []), (50, 1), (51, "pong")]
    assert hub.broker.stats(hub.clock)["waiting_consumers"] == waits + 1
    assert not transport.reading


def paused_by_waits(waits: int = 10):
    """paused_by_waits: a binary connection with one receive more waiting than the
    request buffer allows, so the server has stopped reading from it."""
    hub = FakeHub(connection_limits=ConnectionLimits(
        max_request_buffer_bytes=waits * WAITING_RECEIVE_BYTES, min_waits_room_bytes=0))
    connection, transport = binary_client(hub)
    hub.send(connection, b"".join(req(i, "receive", queue="q", wait=60)
                                  for i in range(waits + 1)))
    assert not transport.reading
    return hub, connection, transport


def test_a_paused_client_that_closed_is_leased_nothing():
    # While reading is paused the server cannot see the client's FIN: before a lease to
    # one of its waits, it asks the socket (peer_state.py), and answers them with nothing.
    hub, connection, transport = paused_by_waits()
    transport.tcp_state = TCP_CLOSE_WAIT
    put_via_text(hub, b"x")
    hub.run()
    assert transport.tcp_state_asked == 1  # once; then the connection remembers
    assert sorted(f[0] for f in transport.frames()) == list(range(11))
    assert all(f[1] is None and f[2] == [] for f in transport.frames())
    stats = hub.broker.stats(hub.clock)["queues"]["q"]
    assert (stats["ready"], stats["in_flight"]) == (1, 0)
    assert transport.reading  # no waits left: reading resumes, and will meet the EOF
    # What it sent before its FIN still runs, as at EOF: a receive that would wait gets
    # nothing at once, a put is stored.
    hub.send(connection, req(11, "receive", queue="empty", wait=60)
             + req(12, "put", queue="q", body=b"y"))
    hub.run()
    by_id = {f[0]: f for f in transport.frames()}
    assert by_id[11][2] == [] and isinstance(by_id[12][2], int)
    stats = hub.broker.stats(hub.clock)
    assert stats["waiting_consumers"] == 0
    assert (stats["queues"]["q"]["ready"], stats["queues"]["q"]["in_flight"]) == (2, 0)
    # The messages go to a consumer that is there.
    other, other_transport = hub.connect()
    hub.send(other, b"GET q max=5\r\n")
    assert other_transport.data.count(b"MSG ") == 2


def test_a_paused_client_that_closed_has_all_its_waits_answered():
    hub = FakeHub(connection_limits=ConnectionLimits(
        max_request_buffer_bytes=2 * WAITING_RECEIVE_BYTES, min_waits_room_bytes=0))
    connection, transport = binary_client(hub)
    hub.send(connection, req(0, "receive", queue="a", wait=60)
             + req(1, "receive", queue="b", wait=60) + req(2, "receive", queue="b", wait=60))
    assert not transport.reading
    transport.tcp_state = TCP_CLOSE_WAIT
    put_via_text(hub, b"x", queue="a")
    hub.run()
    # The wait on "a" met the socket's state; those on "b" follow, as at EOF.
    assert sorted((f[0], f[2]) for f in transport.frames()) == [(0, []), (1, []), (2, [])]
    assert hub.broker.stats(hub.clock)["waiting_consumers"] == 0


def test_a_paused_client_that_is_still_there_is_served():
    hub, _connection, transport = paused_by_waits()
    put_via_text(hub, b"x")
    hub.run()
    assert transport.tcp_state_asked == 1
    [(request_id, error, [message])] = transport.frames()
    assert request_id == 0 and error is None and message[1] == b"x"
    assert transport.reading  # back under the limit


def test_the_socket_is_asked_once_per_waiting_receive_served_and_never_otherwise():
    hub = FakeHub()
    connection, transport = binary_client(hub)
    hub.send(connection, b"".join(req(i, "receive", queue="q", wait=60) for i in range(3)))
    for body in (b"a", b"b", b"c"):
        put_via_text(hub, body)
    hub.run()
    assert len(transport.frames()) == 3
    assert transport.tcp_state_asked == 3  # one per waiting receive served
    for body in (b"d", b"e"):
        put_via_text(hub, body)
    hub.send(connection, req(9, "receive", queue="q", max=2, wait=60))  # finds them at once
    hub.run()
    assert len(transport.frames()) == 4
    assert transport.tcp_state_asked == 3


def test_a_fin_not_yet_read_keeps_a_message_from_a_connection_being_read():
    # The client's FIN came in the same batch of events as the put, after it: asyncio has
    # not read it when the put serves the waits. The socket says so.
    hub = FakeHub()
    connection, transport = binary_client(hub)
    other, other_transport = binary_client(hub)
    hub.send(connection, req(1, "receive", queue="q", wait=60))
    hub.send(other, req(1, "receive", queue="q", wait=60))
    transport.tcp_state = TCP_CLOSE_WAIT
    put_via_text(hub, b"only")
    hub.run()
    [reply] = transport.frames()
    assert reply == [1, None, []]  # answered with nothing, as at EOF
    [[_, _, [message]]] = other_transport.frames()
    assert b"only" in message


def test_a_text_client_that_half_closed_while_paused_is_treated_as_at_eof():
    # `nc -N` shuts down only its sending side and still reads: its waits get nothing, as
    # at EOF, but the receives it sent behind them still take what is ready.
    hub = FakeHub(connection_limits=ConnectionLimits(max_request_buffer_bytes=64))
    for body in (b"r1", b"r2", b"r3"):
        put_via_text(hub, body, queue="r")
    connection, transport = hub.connect()
    hub.send(connection, b"GET q wait=60\r\n")
    hub.send(connection, b"GET r\r\n" * 4 + b"GET s wait=60\r\n" * 10)  # held, past the limit
    assert not transport.reading
    transport.tcp_state = TCP_CLOSE_WAIT
    put_via_text(hub, b"x")
    hub.run()
    lines = transport.data.split(b"\r\n")
    assert transport.data.count(b"MSG ") == 3 and b"x" not in lines
    assert transport.data.count(b"END\r\n") == 1 + 4 + 10  # each GET's reply ends so
    assert hub.broker.stats(hub.clock)["queues"]["q"]["ready"] == 1
    assert hub.broker.stats(hub.clock)["waiting_consumers"] == 0


def test_a_connection_paused_for_its_waits_stays_paused_while_writing_is():
    hub = FakeHub(connection_limits=ConnectionLimits(
        max_request_buffer_bytes=WAITING_RECEIVE_BYTES, min_waits_room_bytes=0))
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "receive", queue="q", wait=60) + req(2, "receive", queue="q",
                                                                      wait=60))
    assert not transport.reading
    connection.pause_writing()
    put_via_text(hub, b"x")
    assert not transport.reading  # still paused for its socket
    connection.resume_writing()
    assert transport.reading


def test_a_server_that_stops_reading_is_not_resumed_by_a_drain():
    hub = FakeHub()
    connection, transport = binary_client(hub)
    connection.pause_writing()
    connection.stop_reading()
    connection.resume_writing()  # the socket drained: reading stays stopped
    assert not transport.reading


def test_requests_held_when_the_server_stops_are_not_run():
    hub = FakeHub()
    connection, transport = hub.connect()
    hub.send(connection, b"GET q wait=10\r\nPUT q held\r\n")
    connection.stop_reading()  # the wait is answered with nothing, as at EOF
    hub.run()
    assert transport.data == b"END\r\n"
    put_via_text(hub, b"x")  # what was held behind the wait must not run now
    hub.run()
    assert transport.data == b"END\r\n"  # nor is x leased to a stopping connection
    stats = hub.broker.stats(hub.clock)
    assert stats["messages"] == 1 and stats["queues"]["q"]["ready"] == 1  # only x; no "held"
