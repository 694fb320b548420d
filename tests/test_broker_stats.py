"""Unit tests of the broker's stats: per-queue counts and totals, kept through every operation.

Numbers are the clock, as in test_broker.py.
"""

from __future__ import annotations

from broker_helpers import (  # the `b` fixture comes from broker_helpers too, via conftest.py
    T0,
    Inbox,
    check_invariants,
    counts,
    ids_of,
    zero_counts,
)

from wonderq_server.broker import Broker


def test_stats_stay_consistent_through_every_operation(b: Broker) -> None:
    ids = b.put_many("q", [b"1", b"2", b"3", b"4", b"5"], T0)
    assert counts(b) == zero_counts(ready=5, put_total=5)
    taken = b.receive("q", 4, 10.0, T0)
    assert counts(b) == zero_counts(ready=1, in_flight=4, put_total=5)
    b.ack("q", ids[0], taken[0].lease, T0 + 1.0)
    assert counts(b) == zero_counts(ready=1, in_flight=3, put_total=5, acked_total=1)
    b.nack("q", ids[1], taken[1].lease, 0.0, T0 + 1.0)
    assert counts(b) == zero_counts(ready=2, in_flight=2, put_total=5, acked_total=1)
    b.nack("q", ids[2], taken[2].lease, 5.0, T0 + 1.0)
    assert counts(b) == zero_counts(ready=2, in_flight=1, delayed=1, put_total=5,
                                    acked_total=1)
    b.touch("q", ids[3], taken[3].lease, 20.0, T0 + 1.0)
    assert counts(b) == zero_counts(ready=2, in_flight=1, delayed=1, put_total=5,
                                    acked_total=1)
    b.advance(T0 + 6.0)  # the delay ends
    assert counts(b) == zero_counts(ready=3, in_flight=1, put_total=5, acked_total=1)
    again = b.receive("q", 10, 10.0, T0 + 6.0)
    assert ids_of(again) == [ids[1], ids[2], ids[4]]
    assert [m.deliveries for m in again] == [2, 2, 1]
    assert counts(b) == zero_counts(in_flight=4, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.wait("q", 1, None, T0 + 7.0, Inbox(), T0 + 6.0)
    assert counts(b) == zero_counts(in_flight=4, waiting=1, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.advance(T0 + 7.0)
    assert counts(b) == zero_counts(in_flight=4, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.advance(T0 + 16.0)  # three leases run out
    assert counts(b) == zero_counts(ready=3, in_flight=1, put_total=5, acked_total=1,
                                    redelivered_total=2)
    b.advance(T0 + 21.0)  # the touched one too
    assert counts(b) == zero_counts(ready=4, put_total=5, acked_total=1,
                                    redelivered_total=2)
    everything = b.receive("q", 10, None, T0 + 21.0)
    for m in everything:
        b.ack("q", m.id, m.lease, T0 + 22.0)
    assert counts(b) == zero_counts(put_total=5, acked_total=5, redelivered_total=6)
    stats = b.stats(T0)
    assert (stats["messages"], stats["waiting_consumers"], list(stats["queues"])) == (0, 0, ["q"])
    check_invariants(b)


def test_stats_totals_over_several_queues(b: Broker) -> None:
    b.put_many("a", [b"1", b"2"], T0)
    b.put("c", b"3", T0)
    b.wait("w", 1, None, T0 + 9.0, Inbox(), T0)
    b.wait("w", 1, None, T0 + 9.0, Inbox(), T0)
    stats = b.stats(T0)
    assert stats["messages"] == 3
    assert stats["waiting_consumers"] == 2
    assert {name: counts(b, name) for name in stats["queues"]} == {
        "a": zero_counts(ready=2, put_total=2),
        "c": zero_counts(ready=1, put_total=1),
        "w": zero_counts(waiting=2),
    }
