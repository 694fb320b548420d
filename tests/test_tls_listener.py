"""Tests of the TLS port's own accept loop (tls_listener.py) on a real event loop and
real loopback sockets; the handshake itself is tested end to end (test_e2e_tls.py)."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest

from wonderq_server import tls_listener
from wonderq_server.tls_listener import TlsListener


class OutOfDescriptors:
    """A listening socket whose accept() fails as a process out of descriptors does."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.accepts = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self):
        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")


async def test_out_of_descriptors_stops_accepting_for_a_while_and_says_so(monkeypatch):
    monkeypatch.setattr(tls_listener, "ACCEPT_RETRY_S", 0.0)
    loop = asyncio.get_running_loop()
    reported: list[OSError] = []
    resumed = asyncio.Event()
    listener = TlsListener(loop, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), 1.0,
                           admit=lambda peer: None, handshake_over=lambda protocol: None,
                           out_of_resources=reported.append)
    listener.listen("127.0.0.1", 0)
    try:
        [real] = listener.sockets
        failing = OutOfDescriptors(real)
        real_resume = listener._resume

        def resume(sock):
            real_resume(sock)
            resumed.set()

        listener._resume = resume  # type: ignore[method-assign]
        listener._accept(failing)
        assert [exc.errno for exc in reported] == [errno.EMFILE]
        assert failing.accepts == 1  # it stopped at the first failure
        assert not loop.remove_reader(real.fileno())  # not watched until the retry
        await asyncio.wait_for(resumed.wait(), 10)
        assert loop.remove_reader(real.fileno())  # watched again
    finally:
        listener.close()


async def test_a_refused_client_is_closed_and_an_admitted_one_is_handed_on():
    loop = asyncio.get_running_loop()
    peers: list[object] = []
    over: list[asyncio.Protocol] = []
    ended = asyncio.Event()
    admitted = asyncio.Protocol()

    def admit(peer):
        peers.append(peer)
        return None if len(peers) == 1 else admitted

    def handshake_over(protocol):
        over.append(protocol)
        ended.set()

    listener = TlsListener(loop, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), 60.0,
                           admit=admit, handshake_over=handshake_over,
                           out_of_resources=lambda exc: None)
    listener.listen("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        refused = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert await asyncio.to_thread(refused.recv, 10) == b""  # closed at once
        refused.close()
        plain = socket.create_connection(("127.0.0.1", port), timeout=10)
        plain.sendall(b"PING\r\n")  # not TLS: its handshake fails
        assert await asyncio.to_thread(plain.recv, 10) == b""
        plain.close()
        await asyncio.wait_for(ended.wait(), 10)
        assert over == [admitted]
        assert [peer[0] for peer in peers] == ["127.0.0.1", "127.0.0.1"]
    finally:
        listener.close()


def test_listen_on_an_address_in_use_fails_and_leaves_nothing_open():
    taken = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    try:
        listener = TlsListener(loop, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), 1.0,
                               admit=lambda peer: None, handshake_over=lambda p: None,
                               out_of_resources=lambda exc: None)
        with pytest.raises(OSError):
            listener.listen("127.0.0.1", taken.getsockname()[1])
        assert all(sock.fileno() == -1 for sock in listener.sockets)
    finally:
        loop.close()
        taken.close()
