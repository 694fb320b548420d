"""A do-nothing uvloop server answering WonderQ binary frames: the floor of a Python server.

    python bench/probes/nothing_server.py PORT   (Ctrl-C stops it)

It answers every request at once (an id for anything, one canned message for
a receive), with no queue behind it: what is left of a request's cost is the
event loop, the system calls and msgpack.
"""

from __future__ import annotations

import asyncio
import struct

import msgpack
import uvloop
from _common import whole_numbers

# The body as bench/scenarios.py stamps S3's: a put time, then the number UNNUMBERED
# (2**64 - 1), which S3's consumers count without checking it was not delivered before.
CANNED = [[1, struct.pack("<dQ", 0.0, 2**64 - 1) + b"x" * 84, 2, 1, 1.0]]


class Nothing(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.preamble_seen = False

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        if not self.preamble_seen:
            if len(buffer) < 4:
                return
            pos, self.preamble_seen = 4, True
        out = []
        while len(buffer) - pos >= 4:
            size = int.from_bytes(buffer[pos:pos + 4], "big")
            if len(buffer) - pos - 4 < size:
                break
            request = msgpack.unpackb(buffer[pos + 4:pos + 4 + size])
            pos += 4 + size
            result = CANNED if request[1] == "receive" else 1
            reply = msgpack.packb([request[0], None, result])
            out.append(len(reply).to_bytes(4, "big") + reply)
        del buffer[:pos]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(Nothing, "127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(*whole_numbers(__doc__, 1)))
