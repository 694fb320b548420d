"""One request at a time through a real Connection, in process: µs per put, receive, ack.

    python bench/probes/request_path.py [MESSAGES]     (default 50,000)

S1-S3 send one request per round trip, so the server's cost per request is
the whole Python path a frame takes: Connection.data_received, the binary
codec, make_command, the service, the broker, the reply's encoding and the
write (in memory, as S1-S3 run). This drives that path with a real Server
and Connection whose transport only keeps the last write: no socket, no
event loop turn, no system call. Beside it, the do-nothing server's
protocol (nothing_server.py) on the same frames: what decoding and
answering msgpack costs with no queue behind it. Prints the minimum of 5
runs; bounded by MESSAGES.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgpack
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import whole_numbers
from nothing_server import Nothing

from wonderq_server.binary_codec import PREAMBLE
from wonderq_server.config import Config
from wonderq_server.connection import Connection
from wonderq_server.server import Server


class KeepLastWrite:
    """A transport that keeps the last reply written and never pushes back."""

    def __init__(self) -> None:
        self.last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def get_extra_info(self, name: str) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def frame(request_id: int, command: str, args: dict) -> bytes:
    payload = msgpack.packb([request_id, command, args], use_bin_type=True)
    return len(payload).to_bytes(4, "big") + payload


def one_run(n: int) -> tuple[float, float, float]:
    """one_run: n puts, then n receive+ack pairs; µs per put, receive and ack."""
    puts = [frame(i, "put", {"queue": "q", "body": b"x" * 100}) for i in range(n)]
    receive = frame(0, "receive", {"queue": "q"})
    loop = uvloop.new_event_loop()
    try:
        server = Server(Config(port=0))
        server._loop = loop  # replies are written at once (in memory: no journal to wait for)
        connection, transport = Connection(server), KeepLastWrite()
        connection.connection_made(transport)  # type: ignore[arg-type]
        feed = connection.data_received
        feed(PREAMBLE)
        started = time.perf_counter()
        for put in puts:
            feed(put)
        put_s = time.perf_counter() - started
        receive_s = ack_s = 0.0
        for i in range(n):
            started = time.perf_counter()
            feed(receive)
            receive_s += time.perf_counter() - started
            delivered = msgpack.unpackb(transport.last[4:])[2][0]
            ack = frame(i, "ack", {"queue": "q", "id": delivered[0], "lease": delivered[2]})
            started = time.perf_counter()
            feed(ack)
            ack_s += time.perf_counter() - started
    finally:
        loop.close()
    return put_s / n * 1e6, receive_s / n * 1e6, ack_s / n * 1e6


def nothing_run(n: int) -> float:
    """nothing_run: the do-nothing server's protocol answering n put frames, µs each."""
    puts = [frame(i, "put", {"queue": "q", "body": b"x" * 100}) for i in range(n)]
    protocol, transport = Nothing(), KeepLastWrite()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(PREAMBLE)
    started = time.perf_counter()
    for put in puts:
        protocol.data_received(put)
    return (time.perf_counter() - started) / n * 1e6


def main(n: int) -> None:
    runs = [one_run(n) for _ in range(5)]
    put_us, receive_us, ack_us = (min(r[k] for r in runs) for k in range(3))
    nothing_us = min(nothing_run(n) for _ in range(5))
    print(f"put {put_us:.2f}  receive {receive_us:.2f}  ack {ack_us:.2f}  "
          f"do-nothing {nothing_us:.2f} us per request (min of 5)")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (50_000,)))
