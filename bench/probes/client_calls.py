"""Each client's own Python per call of S3's loop, with no event loop and no transport at all.

    python bench/probes/client_calls.py [CALLS] [REPEATS]     (defaults 100000, 7)

client_python.py runs S3's whole loop over in-process transports; its figures
move by about half a microsecond from one run to the next, as much as an
optimisation of the client's request path wins. This probe is narrower and
steadier: it drives each bench adapter's coroutine (bench/systems/) by hand,
the way the event loop would, through one call of put, receive one and ack,
and hands it its reply at once. What is timed is the adapter, the client
library under it, the request's encoding and the reply's decoding: nothing of
the loop's scheduling, the sockets or the server. The replies are made
beforehand (WonderQ's as a server sends them, each for request 1: the
client's id counter is set back before every call).

Rules: both clients are timed in this process, on the same kind of fake
transport (writes go nowhere); each figure is the minimum of REPEATS timings
of CALLS calls (timeit's advice: the minimum is the run least disturbed).
Prints µs per call and per message (put + receive + ack).
"""

from __future__ import annotations

import asyncio
import sys
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgpack
import uvloop

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from _common import whole_numbers  # noqa: E402
from scenarios import BODY  # noqa: E402
from systems import beanstalkd, wonderq  # noqa: E402
from systems.beanstalk_protocol import BeanstalkProtocol  # noqa: E402

from wonderq_client.client import Client, _ClientProtocol  # noqa: E402


class _Nowhere(asyncio.Transport):
    """A transport whose writes go nowhere: the probe hands each reply over itself."""

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def drive(call: Coroutine[Any, Any, Any], reply: Callable[[], None]) -> Any:
    """drive runs one adapter call to its await of the reply, hands the reply over, and runs
    it to its end, as the loop would; returns what the call returned."""
    try:
        call.send(None)
        reply()
        call.send(None)
    except StopIteration as end:
        return end.value
    raise RuntimeError("the call awaited more than one reply")


def wonderq_calls(loop: asyncio.AbstractEventLoop) -> dict[str, Callable[[], Any]]:
    """wonderq_calls: put, receive and ack through bench/systems/wonderq.py. Every call is
    request 1 (the id counter is set back first), so its reply is made once, beforehand."""
    protocol = _ClientProtocol(loop)
    protocol.connection_made(_Nowhere())
    protocol._out.clear()  # the preamble: nothing to flush
    protocol._flush_scheduled = False
    conn = wonderq.Connection(Client(protocol, "in-process", 0), "q")
    pack = msgpack.Packer(use_bin_type=True).pack

    def reply(result: Any) -> Callable[[], None]:
        payload = pack([1, None, result])
        frame = len(payload).to_bytes(4, "big") + payload
        return lambda: protocol.data_received(frame)

    def as_request_1(call: Callable[[], Coroutine[Any, Any, Any]],
                     answer: Callable[[], None]) -> Callable[[], Any]:
        def one() -> Any:
            protocol._last_id = 0
            return drive(call(), answer)
        return one

    delivered = reply([[1, BODY, 3, 1, 1.0, 0, None, None]])
    handle = as_request_1(lambda: conn.receive_one(0.1), delivered)()[0]
    return {"put": as_request_1(lambda: conn.put(BODY), reply(7)),
            "receive": as_request_1(lambda: conn.receive_one(0.1), delivered),
            "ack": as_request_1(lambda: conn.ack(handle), reply(None))}


def beanstalkd_calls(loop: asyncio.AbstractEventLoop) -> dict[str, Callable[[], Any]]:
    """beanstalkd_calls: put, reserve and delete through bench/systems/beanstalkd.py."""
    protocol = BeanstalkProtocol(loop)
    protocol.connection_made(_Nowhere())
    conn = beanstalkd.Connection(protocol)
    reserved = b"RESERVED 7 %d\r\n%s\r\n" % (len(BODY), BODY)
    return {
        "put": lambda: drive(conn.put(BODY), lambda: protocol.data_received(b"INSERTED 7\r\n")),
        "receive": lambda: drive(conn.receive_one(0.1), lambda: protocol.data_received(reserved)),
        "ack": lambda: drive(conn.ack(b"7"), lambda: protocol.data_received(b"DELETED\r\n")),
    }


def best_us(call: Callable[[], Any], calls: int, repeats: int) -> float:
    """best_us is the least µs per call over `repeats` timings of `calls` calls."""
    return min(timeit.repeat(call, number=calls, repeat=repeats)) / calls * 1e6


def main(calls: int, repeats: int) -> None:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        systems = {"wonderq_client": wonderq_calls(loop),
                   "beanstalkd (bench)": beanstalkd_calls(loop)}
        print(f"one call of each, {calls} calls x {repeats}: µs per call (the best of {repeats})")
        for name, table in systems.items():
            costs = {what: best_us(call, calls, repeats) for what, call in table.items()}
            each = "  ".join(f"{what} {cost:5.2f}" for what, cost in costs.items())
            print(f"{name:20s} {each}  per message {sum(costs.values()):5.2f}")
    finally:
        loop.close()


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (100_000, 7)))
