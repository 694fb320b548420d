"""REDRIVE a step at a time (service.py): each loop turn moves at most a step, the reply
comes with the total, and what the connection sent after it waits behind it. Fake
transport and manual loop (connection_fakes.py); one `hub.turn()` is one loop turn."""

from __future__ import annotations

import math

import pytest
from connection_fakes import FakeHub, binary_client, req

from wonderq_server.broker import MESSAGE_OVERHEAD_BYTES
from wonderq_server.errors import INTERRUPTED, REDRIVE_RUNNING, STORAGE_ERROR
from wonderq_server.service import REDRIVE_STEP_BYTES, REDRIVE_STEP_MESSAGES

STEP = REDRIVE_STEP_MESSAGES


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


def dead_letter(hub: FakeHub, n: int, body: bytes = b"x") -> None:
    """dead_letter: `n` messages put in "q", which dead-letters to "dlq" after one
    delivery, received and nacked: all `n` are ready in "dlq"."""
    broker, now = hub.broker, hub.clock
    broker.create_queue("q", {"max_deliveries": 1, "dead_letter_queue": "dlq"}, now)
    for _ in range(n):
        broker.put("q", body, now)
    for msg in broker.receive("q", n, 30.0, now):
        broker.nack("q", msg.id, msg.lease, 0.0, now)
    assert len(broker.queues["dlq"].messages) == n


def in_dlq(hub: FakeHub) -> int:
    return len(hub.broker.queues["dlq"].messages)


def test_a_big_redrive_moves_a_step_per_turn_and_answers_the_total(hub):
    dead_letter(hub, 3 * STEP + 10)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))
    left = [in_dlq(hub)]
    while not transport.frames():
        hub.turn()
        left.append(in_dlq(hub))
        assert len(left) < 10, "the redrive never ended"
    assert transport.frames() == [[1, None, 3 * STEP + 10]]
    assert left[:4] == [2 * STEP + 10, STEP + 10, 10, 0]
    assert len(hub.broker.queues["q"].messages) == 3 * STEP + 10


def test_others_are_served_between_the_steps(hub):
    dead_letter(hub, 3 * STEP)
    redriver, redriven = binary_client(hub)
    other, answered = binary_client(hub)
    redriver.data_received(req(1, "redrive", queue="dlq"))
    other.data_received(req(2, "ping"))  # read after the REDRIVE, in the same turn
    hub.turn()
    assert answered.frames() == [[2, None, "pong"]]
    assert redriven.frames() == []
    hub.run()
    assert redriven.frames() == [[1, None, 3 * STEP]]


def test_requests_after_a_redrive_wait_for_its_reply_binary(hub):
    dead_letter(hub, 2 * STEP + 1)
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "redrive", queue="dlq") + req(2, "ping")
             + req(3, "queue_info", queue="dlq"))
    frames = transport.frames()
    assert frames[:2] == [[1, None, 2 * STEP + 1], [2, None, "pong"]]
    assert frames[2][0] == 3 and frames[2][2]["messages"] == 0


def test_requests_after_a_redrive_wait_for_its_reply_text(hub):
    dead_letter(hub, STEP + 1)
    connection, transport = hub.connect()
    hub.send(connection, b"REDRIVE dlq\r\nPING\r\n")
    assert transport.data == b"OK %d\r\nPONG\r\n" % (STEP + 1)


def test_redrive_max_is_moved_in_steps_too(hub):
    dead_letter(hub, 3 * STEP)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq", max=STEP + 5))
    assert in_dlq(hub) == 2 * STEP
    hub.run()
    assert transport.frames() == [[1, None, STEP + 5]]
    assert in_dlq(hub) == 2 * STEP - 5


def test_steps_are_bounded_by_bytes_too(hub):
    body = b"b" * 200_000
    per_step = math.ceil(REDRIVE_STEP_BYTES / (len(body) + MESSAGE_OVERHEAD_BYTES))
    dead_letter(hub, 3 * per_step, body)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))
    assert in_dlq(hub) == 2 * per_step
    hub.turn()
    assert in_dlq(hub) == per_step
    hub.run()
    assert transport.frames() == [[1, None, 3 * per_step]]


def test_the_total_is_fixed_when_it_starts(hub):
    # Messages that come (back) to the dead-letter queue while a redrive runs are not
    # part of it: a consumer failing the redriven messages at once could keep it going.
    dead_letter(hub, STEP + 40)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))
    broker, now = hub.broker, hub.clock
    for _ in range(5):  # failed again meanwhile: dead-lettered once more
        broker.put("q", b"new", now)
    for msg in broker.receive("q", 5, 30.0, now):
        broker.nack("q", msg.id, msg.lease, 0.0, now)
    hub.run()
    assert transport.frames() == [[1, None, STEP + 40]]
    assert in_dlq(hub) == 5


def test_a_dead_letter_queue_deleted_meanwhile_ends_it_with_what_it_moved(hub):
    dead_letter(hub, 2 * STEP)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))
    hub.broker.delete_queue("dlq", hub.clock)
    hub.run()
    assert transport.frames() == [[1, None, STEP]]


def test_a_redrive_of_a_missing_queue_is_still_an_error(hub):
    connection, transport = binary_client(hub)
    hub.send(connection, req(1, "redrive", queue="nothing"))
    [[request_id, error, _]] = transport.frames()
    assert request_id == 1 and error[0] == "QUEUE_NOT_FOUND"


def test_a_redrive_whose_connection_goes_mid_way_runs_to_its_end(hub):
    # As one done at once did: a client whose own timeout ran out (the CLI's --timeout)
    # and closed still gets the whole move.
    dead_letter(hub, 3 * STEP + 1)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq") + req(2, "ping"))
    connection.connection_lost(None)
    hub.run()
    assert in_dlq(hub) == 0
    assert transport.frames() == []


def test_a_client_that_half_closes_after_it_is_answered_then_closed(hub):
    dead_letter(hub, 2 * STEP)
    connection, transport = hub.connect()
    connection.data_received(b"REDRIVE dlq\r\n")
    connection.eof_received()
    hub.run()
    assert transport.data == b"OK %d\r\n" % (2 * STEP)
    assert transport.closed


def test_a_stop_mid_way_answers_how_far_it_got(hub):
    dead_letter(hub, 3 * STEP)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq") + req(2, "ping"))
    connection.stop_reading()
    hub.run()
    [[request_id, error, _]] = transport.frames()
    assert request_id == 1 and error[0] == INTERRUPTED
    assert f"moved {STEP} messages" in error[1]
    assert in_dlq(hub) == 2 * STEP


def test_text_a_stop_mid_way_is_told_apart_from_the_goodbye(hub):
    # Answered SHUTTING_DOWN, a text client read that code twice, the first its REDRIVE's,
    # and by PROTOCOL.md's Errors table "not run", though it had moved messages (a
    # reviewer).
    dead_letter(hub, 3 * STEP)
    connection, transport = hub.connect()
    connection.data_received(b"REDRIVE dlq\r\n")
    connection.stop_reading()
    hub.run()
    transport.can_write_eof = lambda: False  # the goodbye, then the close
    connection.say_goodbye()
    assert transport.data.splitlines() == [
        b"ERR INTERRUPTED the server is stopping: this redrive moved %d messages and stops "
        b"there; the rest stay in 'dlq'" % STEP,
        b"ERR SHUTTING_DOWN the server is stopping; a request it did not answer was not run"]


def test_a_redrive_runs_to_its_end_while_its_client_does_not_read():
    # Its steps write nothing: they go on while the socket is full; what follows it waits
    # for the replies to be read (a reviewer's stopped half way for as long as its client
    # did not read).
    hub = FakeHub()
    dead_letter(hub, 3 * STEP)
    connection, transport = binary_client(hub)
    transport.full_after_write = True  # every write fills the socket: writing pauses
    connection.data_received(req(1, "ping") + req(2, "redrive", queue="dlq") + req(3, "ping"))
    hub.run()
    assert in_dlq(hub) == 0
    assert [frame[0] for frame in transport.frames()] == [1, 2]
    transport.full_after_write = False
    transport.drain()
    hub.run()
    assert transport.frames() == [[1, None, "pong"], [2, None, 3 * STEP], [3, None, "pong"]]


def test_a_redrive_whose_connection_begins_to_close_runs_on(hub):
    # Dropped with what was held once the close began (--idle-timeout, a cut-off), it
    # stopped half way, answered to nobody and unlogged (a reviewer).
    dead_letter(hub, 3 * STEP)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))
    connection.close()
    hub.run()
    assert in_dlq(hub) == 0
    assert transport.closed



def test_journal_writes_failing_mid_way_answer_storage_error_with_the_count(hub):
    dead_letter(hub, 3 * STEP)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))
    hub.refusing_changes = True  # the step's write failed (server.py)
    hub.run()
    [[request_id, error, _]] = transport.frames()
    assert request_id == 1 and error[0] == STORAGE_ERROR
    assert f"after it had moved {STEP} messages" in error[1]
    assert in_dlq(hub) == 2 * STEP


def test_a_failed_write_of_the_last_step_answers_storage_error_with_the_count(hub):
    # It got the plain STORAGE_ERROR of any change, without the count that the same failure
    # one step earlier gives.
    dead_letter(hub, 5)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))  # one step: all of it
    output = connection.take_output()
    assert output is not None and output.durable
    connection.send_output(output, failed=True)  # as the server does when the write fails
    [[request_id, error, _]] = transport.frames()
    assert request_id == 1 and error[0] == STORAGE_ERROR
    assert "after it had moved 5 messages" in error[1]


def test_a_stop_whose_write_fails_still_says_the_server_is_stopping(hub):
    # Its INTERRUPTED reply waits for the write as any change's: failed, the count came
    # with "retry later (the server tries the journal again every second)" from a server
    # that was stopping (a reviewer).
    dead_letter(hub, 3 * STEP)
    connection, transport = binary_client(hub)
    connection.data_received(req(1, "redrive", queue="dlq"))
    connection.stop_reading()
    output = connection.take_output()
    assert output is not None and output.durable
    connection.send_output(output, failed=True)
    [[request_id, error, _]] = transport.frames()
    assert request_id == 1 and error[0] == STORAGE_ERROR
    assert f"after it had moved {STEP} messages" in error[1]
    assert "the server is stopping" in error[1] and "retry" not in error[1]


def test_a_second_redrive_of_the_queue_meanwhile_is_refused(hub):
    # One at a time, as SQS has one move task a queue: each held a copy of the queue's
    # heap, and a loop of REDRIVE and reset grew the server by 8 MB a time on a queue of
    # 1,000,000 (a reviewer).
    dead_letter(hub, 3 * STEP)
    first, first_replies = binary_client(hub)
    second, second_replies = binary_client(hub)
    first.data_received(req(1, "redrive", queue="dlq"))
    second.data_received(req(2, "redrive", queue="dlq"))
    hub.turn()
    [[request_id, error, _]] = second_replies.frames()
    assert request_id == 2 and error[0] == REDRIVE_RUNNING
    assert error[1] == f"a redrive of 'dlq' is under way ({STEP} moved so far); retry once it " \
        "has ended"
    hub.run()
    assert first_replies.frames() == [[1, None, 3 * STEP]]
    hub.send(second, req(3, "redrive", queue="dlq"))  # ended: this one may run
    assert second_replies.frames()[-1] == [3, None, 0]
