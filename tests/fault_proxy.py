"""A TCP proxy on 127.0.0.1 for network faults a real server cannot be asked to make.

Design decision: the tests put it between the real client and the real server when the
fault is in the path, not in either end: a path that dies without a FIN or RST, or a
client's requests that reach the server late (as behind a busy network) while the
server's replies flow. Each link is two pipes (client to server, "up"; server to
client, "down") copying bytes as they come.

Rules:
* silence(): the links open now stop passing data both ways but stay open; links made
  after it pass data as usual.
* hold_up() / release_up(): while held, data (and the end of data) from clients waits
  in the proxy, in order; data from the server still passes. `down_bytes` counts what
  passed toward clients, so a test can wait for a reply to have arrived (`up_bytes`, for
  a request to have left).
* hold_down() / release_down(): the same for data from the server (a slow reply).
* refuse_new: while True, a new link is closed as soon as it is made (a server that
  takes connections and drops them).
* close() closes the listener and every link.
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.down_bytes = 0
        self.up_bytes = 0
        self._listener: asyncio.Server | None = None
        self._silenced: set[int] = set()  # ids of links silenced
        self._links: list[tuple[int, asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._up_open = asyncio.Event()
        self._up_open.set()
        self._down_open = asyncio.Event()
        self._down_open.set()
        self.refuse_new = False

    async def start(self) -> FaultProxy:
        self._listener = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        return self

    def silence(self) -> None:
        self._silenced.update(link_id for link_id, _, _ in self._links)

    def hold_up(self) -> None:
        self._up_open.clear()

    def release_up(self) -> None:
        self._up_open.set()

    def hold_down(self) -> None:
        self._down_open.clear()

    def release_down(self) -> None:
        self._down_open.set()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for _, client_writer, server_writer in self._links:
            client_writer.close()
            server_writer.close()

    async def _link(self, client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        if self.refuse_new:
            client_writer.close()
            return
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        link_id = len(self._links)
        self._links.append((link_id, client_writer, server_writer))
        with contextlib.suppress(OSError):
            await asyncio.gather(self._pipe(link_id, client_reader, server_writer, up=True),
                                 self._pipe(link_id, server_reader, client_writer, up=False))

    async def _pipe(self, link_id: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, up: bool) -> None:
        gate = self._up_open if up else self._down_open
        while data := await reader.read(65536):
            await gate.wait()
            if link_id in self._silenced:
                continue
            writer.write(data)
            await writer.drain()
            if up:
                self.up_bytes += len(data)
            else:
                self.down_bytes += len(data)
        await gate.wait()
        if link_id not in self._silenced and writer.can_write_eof():
            writer.write_eof()
