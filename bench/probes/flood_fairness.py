"""A polite client's PING round trip while other connections flood the server with PINGs
they never read the answers to: how long one client waits behind others' cheap requests.

    python bench/probes/flood_fairness.py [FLOODERS] [SECONDS] (defaults 50, 10)

Starts `python -m wonderq_server --in-memory` on a free loopback port (the
wonderq_server that python imports: set PYTHONPATH to measure another tree),
then, in a child process, FLOODERS connections (half text, half binary) that
send PINGs as fast as their sockets take them and never read, for SECONDS
plus 2 s of head start; meanwhile one polite text connection sends a PING,
waits for its PONG (at most 25 s), and pauses 10 ms, over and over. Prints
the polite round trips (count, p50, p99, max in ms) before, during and
after the flood, and the server's CPU during it (% of a core, from /proc).
Bounded: the flood ends after its time, every socket has a timeout, and the
server is stopped by its PID. No peer needed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import selectors
import socket
import sys
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import server_cpu_s, start_in_memory_server, whole_numbers

HEAD_START_S = 2.0


def flood(port: int, connections: int, seconds: float) -> None:
    """flood: `connections` sockets sending PINGs without reading, for `seconds`."""
    frame = msgpack.packb([1, "ping", {}])
    binary_ping = len(frame).to_bytes(4, "big") + frame
    selector = selectors.DefaultSelector()
    for index in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        payload = (binary_ping if index % 2 else b"PING\n") * 5000
        if index % 2:
            sock.sendall(b"WQ\x00\x01")  # the binary preamble
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_WRITE, payload)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in selector.select(timeout=0.1):
            with contextlib.suppress(BlockingIOError, ConnectionError):
                key.fileobj.send(key.data)  # type: ignore[union-attr]
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]


def polite(port: int, seconds: float) -> str:
    """polite: PING round trips on a connection of its own for `seconds`, summarised."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=25) as sock:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            sock.sendall(b"PING\n")
            if not sock.recv(100):
                return f"closed after {len(times)} pings"
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
    times.sort()
    return (f"{len(times)} pings, p50 {times[len(times) // 2]:.2f} ms, "
            f"p99 {times[int(len(times) * 0.99)]:.1f} ms, max {times[-1]:.1f} ms")


def main(flooders: int, seconds: int) -> None:
    server, port = start_in_memory_server()
    try:
        print(f"{flooders} flooders, {seconds} s")
        print("before:", polite(port, 3))
        child = multiprocessing.Process(target=flood,
                                        args=(port, flooders, seconds + HEAD_START_S))
        child.start()
        time.sleep(HEAD_START_S)  # the flood is under way (a probe, not a test)
        cpu0, wall0 = server_cpu_s(server.pid), time.monotonic()
        during = polite(port, seconds)
        cpu = 100 * (server_cpu_s(server.pid) - cpu0) / (time.monotonic() - wall0)
        print(f"during: {during}; server CPU {cpu:.0f}% of a core")
        child.join(seconds + 30)
        if child.is_alive():
            child.kill()
        print("after:", polite(port, 2))
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 0, (50, 10)))
