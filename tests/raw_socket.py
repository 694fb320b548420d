"""Raw loopback sockets for end-to-end tests that speak the wire protocol by hand."""

from __future__ import annotations

import socket

import msgpack

TIMEOUT_S = 10.0
PREAMBLE = b"WQ\x00\x01"


def frame(obj: object) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return len(payload).to_bytes(4, "big") + payload


class RawSocket:
    """A blocking socket with a read buffer; every read waits at most TIMEOUT_S."""

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        # source: the local address to connect from (all of 127/8 is loopback, so each
        # address there is another client host to the server).
        self.sock = socket.create_connection(
            (host, port), timeout=TIMEOUT_S,
            source_address=None if source is None else (source, 0))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"server closed the connection; unread: {self.buffer[:200]!r}")
        self.buffer += data

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def at_eof(self) -> bool:
        """at_eof waits for the server to close the connection."""
        try:
            while True:
                self._fill()
        except EOFError:
            return True

    def close(self) -> None:
        self.sock.close()


class TextSocket(RawSocket):
    """Text mode: reads CRLF-terminated reply lines."""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def until_end(self) -> list[bytes]:
        lines = []
        while (line := self.line()) != b"END":
            lines.append(line)
        return lines


class BinarySocket(RawSocket):
    """Binary mode: reads reply frames."""

    def reply(self) -> list:
        size = int.from_bytes(self.exactly(4), "big")
        return msgpack.unpackb(self.exactly(size), raw=False)
