"""The server's error paths leave no reference cycles.

An error kept past its `except` (a batch item's result, a Rejected request), or raised
again from a frame whose local names it, holds through its traceback the frames that
raised it, and through them the request's objects up to its connection: a cycle, which
only the cyclic collector frees, and never once gc_policy.py froze it. Each test runs one
path with the collector off, then counts what a collection finds unreachable (0: reference
counting freed everything). bench/probes/cyclic_garbage.py does the same for whole servers.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from broker_helpers import T0
from connection_fakes import FakeHub, binary_client, req

from wonderq_server import metrics_http
from wonderq_server.broker import Broker
from wonderq_server.commands import Rejected
from wonderq_server.errors import BAD_ARGUMENT, CommandError


def cyclic_garbage_of(action: Callable[[], Any]) -> int:
    """cyclic_garbage_of: the objects that `action` left for the cyclic collector."""
    gc.collect()
    gc.disable()
    try:
        action()
        return gc.collect()
    finally:
        gc.enable()


def refused(call: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            call()
        except CommandError:
            pass
        else:
            raise AssertionError("the call was not refused")
    return run


@pytest.fixture
def broker() -> Broker:
    b = Broker(visibility_timeout_s=30.0, max_message_bytes=1000)
    b.create_queue("dlq", {}, T0)
    b.create_queue("q", {"max_deliveries": 3, "dead_letter_queue": "dlq"}, T0)
    b.put_many("q", [b"a", b"b", b"c"], T0)
    return b


def test_an_ack_with_a_stale_lease(broker):
    # LEASE_LOST: _kept_lease_holder raised the queue's error again from its own frame.
    message = broker.receive("q", 1, 30.0, T0)[0]
    assert cyclic_garbage_of(refused(lambda: broker.ack("q", message.id, message.lease + 1,
                                                        T0))) == 0


def test_an_ack_of_a_message_not_there_on_a_queue_with_a_dead_letter_queue(broker):
    # NOT_FOUND, after _dead_lettered looked in the dead-letter queue.
    assert cyclic_garbage_of(refused(lambda: broker.ack("q", 12345, 12346, T0))) == 0


def test_a_nack_and_a_touch_of_a_message_not_there(broker):
    assert cyclic_garbage_of(refused(lambda: broker.nack("q", 12345, 12346, 0.0, T0))) == 0
    assert cyclic_garbage_of(refused(lambda: broker.touch("q", 12345, 12346, None,
                                                          T0))) == 0


def test_an_ack_many_whose_items_fail(broker):
    # Each item's error is kept as its result; the results are let go after (a reply).
    leased = broker.receive("q", 2, 30.0, T0)
    items = [(leased[0].id, leased[0].lease + 1), (12345, 12346), (leased[1].id,
                                                                     leased[1].lease)]
    kinds: list[str] = []
    assert cyclic_garbage_of(lambda: kinds.extend(
        type(r).__name__ for r in broker.ack_many("q", items, T0))) == 0
    assert kinds == ["CommandError", "CommandError", "NoneType"]


def test_a_put_many_whose_items_fail(broker):
    kinds: list[str] = []
    assert cyclic_garbage_of(lambda: kinds.extend(
        type(r).__name__ for r in broker.put_many("q", [b"fits", b"x" * 2000], T0))) == 0
    assert kinds == ["int", "CommandError"]


def test_a_rejected_request_holding_an_error_raised_while_handling_another():
    # A codec's error raised in an `except` carries the first error as its context,
    # and that one its own traceback: Rejected kept both before.
    def decode() -> list[Rejected]:
        items: list[Rejected] = []
        try:
            try:
                int("not a number")
            except ValueError:
                raise CommandError(BAD_ARGUMENT, "not a number") from None
        except CommandError as exc:
            items.append(Rejected(exc))
        return items

    assert cyclic_garbage_of(decode) == 0


@pytest.mark.parametrize(("name", "args"), [
    ("ack_many", {"queue": "q", "items": [[1, 2], [3, "x"]]}),
    ("nack_many", {"queue": "q", "items": [[1, -1]]}),
    ("put_many", {"queue": "q", "bodies": [b"a", 5]}),
    ("put_many", {"queue": "q", "bodies": [{"body": b"x", "nope": 1}]}),
])
def test_a_batch_whose_item_the_request_checks_refuse(name, args):
    # commands._lease_item and _put_item return an item's error as its result (a
    # reviewer): its traceback reached the request's args, which hold the items.
    hub = FakeHub()
    connection, transport = binary_client(hub)
    assert cyclic_garbage_of(lambda: hub.send(connection, req(1, name, **args))) == 0
    assert b"BAD_ARGUMENT" in transport.data


@pytest.mark.parametrize("line", [b"ACK_MANY q 1:x 2:3\r\n", b"NACK_MANY q 1:2:3\r\n"])
def test_a_text_batch_whose_item_the_request_checks_refuse(line):
    hub = FakeHub()
    connection, transport = hub.connect()
    assert cyclic_garbage_of(lambda: hub.send(connection, line)) == 0
    assert b"BAD_ARGUMENT" in transport.data


class AnyTransport:
    """A transport that takes every call and does nothing."""

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


async def test_a_request_that_is_not_http_at_the_metrics_port():
    # h11 raises its error again from a frame whose `self` is the error.
    http = metrics_http.HttpEndpoint({})
    connection = metrics_http.HttpConnection(http, asyncio.get_running_loop())
    connection.connection_made(AnyTransport())  # type: ignore[arg-type]
    assert cyclic_garbage_of(lambda: connection.data_received(b"NOT HTTP AT ALL\r\n\r\n")) == 0
