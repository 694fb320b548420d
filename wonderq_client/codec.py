"""The client's half of the binary protocol, sans-I/O and independent of the server.

Design decision: the client carries its own small codec rather than importing
the server's, so it installs without the server. Shared test vectors (the
examples in PROTOCOL.md) keep the two in step.

    preamble  b"WQ\\x00\\x01" once, when the connection opens
    frame     4-byte big-endian length + msgpack
    request   [request_id, command, {field: value}]
    reply     [request_id, nil, result] or [request_id, [code, message], nil]
"""

from __future__ import annotations

from typing import Any

import msgpack

PREAMBLE = b"WQ\x00\x01"
HEADER_BYTES = 4


class ReplyDecoder:
    """Collects reply frames from the stream; `feed` returns complete replies."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        buf = self._buffer
        buf += data
        replies = []
        pos, end = 0, len(buf)
        while end - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos:pos + HEADER_BYTES], "big")
            if end - pos - HEADER_BYTES < size:
                break
            start = pos + HEADER_BYTES
            pos = start + size
            replies.append(msgpack.unpackb(buf[start:pos], raw=False, strict_map_key=False))
        if pos:
            del buf[:pos]
        return replies


_packer = msgpack.Packer(use_bin_type=True)


def encode_request(request_id: int, command: str, args: dict[str, Any]) -> bytes:
    """encode_request frames one request."""
    payload = _packer.pack([request_id, command, args])
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload
