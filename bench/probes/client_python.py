"""S3's loop over in-process transports: each client's own Python per message, no system call.

    python bench/probes/client_python.py [MESSAGES] [RUNS]     (defaults 40000, 5)

S1-S3 are bound by the load generator, in which the client library is the
part that differs between systems (issue 6: "the client library ... must be
as lean as the server"). This probe runs S3's loop (bench/scenarios.py) with
WonderQ's client and with the bench's beanstalkd client, each connected to a
transport that answers every request at once, in this process: what is left
is the client's Python and the event loop, without the system calls and the
server that dominate a real run. The transports' own work (decoding each
request, making its reply) is counted too; WonderQ's costs more (msgpack),
so the gap printed is a little wider than the clients' own.

Rules: both clients run the same loop on the same event loop (uvloop), runs
alternate between them, and the medians (with min and max) are printed, in
µs of this process's CPU per message.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import uvloop

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from _common import whole_numbers  # noqa: E402
from scenarios import BODY, Progress, producers_consumers  # noqa: E402
from systems import beanstalkd, wonderq  # noqa: E402
from systems.beanstalk_protocol import BeanstalkProtocol  # noqa: E402

from wonderq_client.client import Client, _ClientProtocol  # noqa: E402
from wonderq_client.codec import PREAMBLE  # noqa: E402

TIME_LIMIT_S = 60.0


class _Transport(asyncio.Transport):
    """Answers every write on the next loop step, as a server on the same host would."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
        super().__init__()
        self.loop, self.protocol, self.closing = loop, protocol, False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def write(self, data: Any) -> None:
        self.loop.call_soon(self.protocol.data_received, self.answer(bytes(data)))

    def answer(self, data: bytes) -> bytes:
        raise NotImplementedError


class WonderQTransport(_Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
        super().__init__(loop, protocol)
        self.last_id = 0
        self.pack = msgpack.Packer(use_bin_type=True).pack

    def answer(self, data: bytes) -> bytes:
        if data.startswith(PREAMBLE):
            data = data[len(PREAMBLE):]
        replies, pos = [], 0
        while pos < len(data):
            size = int.from_bytes(data[pos:pos + 4], "big")
            request_id, command, _ = msgpack.unpackb(data[pos + 4:pos + 4 + size])
            pos += 4 + size
            if command == "put":
                self.last_id += 1
                result: Any = self.last_id
            elif command == "receive":
                result = [[1, BODY, 3, 1, 1.0, 0, None, None]]
            else:
                result = None
            payload = self.pack([request_id, None, result])
            replies.append(len(payload).to_bytes(4, "big") + payload)
        return b"".join(replies)


class BeanstalkTransport(_Transport):
    def answer(self, data: bytes) -> bytes:
        if data.startswith(b"put "):
            return b"INSERTED 7\r\n"
        if data.startswith(b"reserve"):
            return b"RESERVED 7 %d\r\n%s\r\n" % (len(BODY), BODY)
        return b"DELETED\r\n"


async def connect_wonderq(consumer: str) -> wonderq.Connection:
    loop = asyncio.get_running_loop()
    protocol = _ClientProtocol(loop)
    protocol.connection_made(WonderQTransport(loop, protocol))
    return wonderq.Connection(Client(protocol, "in-process", 0), "q")


async def connect_beanstalkd(consumer: str) -> beanstalkd.Connection:
    loop = asyncio.get_running_loop()
    protocol = BeanstalkProtocol(loop)
    protocol.connection_made(BeanstalkTransport(loop, protocol))
    return beanstalkd.Connection(protocol)


async def one_run(connect: Any, n: int) -> float:
    cpu = time.process_time()
    load = await producers_consumers(connect, n, time.monotonic() + TIME_LIMIT_S, Progress())
    if load.stalled:
        raise SystemExit(f"S3 over in-process transports: {load.stalled}")
    return 1e6 * (time.process_time() - cpu) / load.messages


async def main(n: int, runs: int) -> None:
    clients = {"wonderq_client": connect_wonderq, "beanstalkd (bench)": connect_beanstalkd}
    figures: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(runs):
        for name, connect in clients.items():
            figures[name].append(await one_run(connect, n))
    print(f"S3's loop, {n} messages, {runs} runs: the client process's CPU per message")
    for name, values in figures.items():
        print(f"{name:20s} {statistics.median(values):6.2f} us "
              f"[{min(values):.2f}-{max(values):.2f}]")


if __name__ == "__main__":
    uvloop.run(main(*whole_numbers(__doc__, 0, (40000, 5))))
