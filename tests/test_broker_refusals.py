"""Unit tests of what the broker refuses: bodies over the size limit and invalid queue names.

A refused put stores nothing, uses no id and serves no waiter. Numbers are
the clock, as in test_broker.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from broker_helpers import (  # the `b` fixture comes from broker_helpers too, via conftest.py
    BROKER_COMPILED,
    MAX_BYTES,
    T0,
    Inbox,
    assert_empty,
    check_invariants,
    counts,
    error_code,
    first_id,
    ids_of,
    zero_counts,
)

from wonderq_server.broker import Broker
from wonderq_server.errors import BODY_TOO_LARGE, INVALID_QUEUE_NAME, CommandError


def test_body_at_the_limit_is_accepted(b: Broker) -> None:
    b.put("q", b"x" * MAX_BYTES, T0)
    [m] = b.receive("q", 1, None, T0)
    assert len(m.body) == MAX_BYTES


def test_body_too_large_is_refused_and_stores_nothing(b: Broker) -> None:
    inbox = Inbox()
    b.wait("w", 1, None, T0 + 10.0, inbox, T0)
    assert error_code(b.put, "q", b"x" * (MAX_BYTES + 1), T0) == BODY_TOO_LARGE
    assert error_code(b.put, "w", b"x" * (MAX_BYTES + 1), T0) == BODY_TOO_LARGE
    assert "q" not in b.queues
    assert counts(b, "w") == zero_counts(waiting=1)
    assert inbox.calls == []
    assert b.stats(T0)["messages"] == 0
    assert b.put("q", b"ok", T0) == first_id(T0)  # not even an id was used


def test_put_many_stores_each_item_on_its_own(b: Broker) -> None:
    inbox = Inbox()
    b.wait("q", 10, None, T0 + 10.0, inbox, T0)
    bodies = [b"a", b"b", b"x" * (MAX_BYTES + 1), b"d"]
    results = b.put_many("q", bodies, T0)
    assert results[:2] == [first_id(T0), first_id(T0) + 1]
    assert isinstance(results[2], CommandError) and results[2].code == BODY_TOO_LARGE
    assert results[3] == first_id(T0) + 2  # the refused item used no id
    assert inbox.ids == [[results[0], results[1], results[3]]]  # one delivery, after all
    assert counts(b) == zero_counts(in_flight=3, put_total=3)
    check_invariants(b)


def test_put_many_with_a_bad_queue_name_stores_nothing(b: Broker) -> None:
    assert error_code(b.put_many, "bad name", [b"a"], T0) == INVALID_QUEUE_NAME
    assert_empty(b)


VALID_128 = ("AZaz09_-." * 15)[:128]


@pytest.mark.parametrize("name", [
    "q", "Q", "0", "_", "-", ".", "..", "a.b-c_D9", VALID_128,
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.",
])
def test_valid_queue_names_are_accepted(b: Broker, name: str) -> None:
    assert len(name) <= 128
    msg_id = b.put(name, b"x", T0)
    assert ids_of(b.receive(name, 1, None, T0)) == [msg_id]
    assert list(b.queues) == [name]


@pytest.mark.parametrize("name", [
    "", VALID_128 + "a", "a" * 129, "a" * 1000, " ", "a b", "a/b", "/", "a\\b", "a\n",
    "\na", "a\tb", "a:b", "a*", "é", "ü", "q\x00", "\u0661", "\uff51",
    None, 5, 5.0, b"q", ["q"], ("q",), {"q": 1},
])
def test_invalid_queue_names_are_refused(b: Broker, name: Any) -> None:
    calls = [(b.put, (name, b"x", T0)), (b.put_many, (name, [b"x"], T0)),
             (b.receive, (name, 1, None, T0)), (b.wait, (name, 1, None, T0 + 1.0, Inbox(), T0))]
    for call, args in calls:
        if BROKER_COMPILED and not isinstance(name, str):
            # Compiled, the call itself checks that a name is a str; on the wire the
            # request checks (commands.py) refuse such a name before the broker.
            with pytest.raises(TypeError):
                call(*args)
        else:
            assert error_code(call, *args) == INVALID_QUEUE_NAME
    assert_empty(b)
    assert b.next_deadline() is None
