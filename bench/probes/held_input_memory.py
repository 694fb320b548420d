"""What a text connection that pipelines garbage behind a waiting receive costs the server.

    python bench/probes/held_input_memory.py PORT SERVER_PID LINES

One raw connection sends `GET q wait=2` and then LINES two-byte unknown
commands ("X\\n") in one write, and never reads. Prints the server's resident
memory growth while the receive waits (the lines are held) and after it has
ended (the lines have run, their error replies are unsent). Bounded: about
five seconds.
"""

from __future__ import annotations

import socket
import time

from _common import resident_bytes, whole_numbers

WAIT_S = 2


def main(port: int, pid: int, lines: int) -> None:
    before = resident_bytes(pid)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET q wait={WAIT_S}\r\n".encode() + b"X\n" * lines)
    time.sleep(WAIT_S / 2)  # a probe, not a test: the server shows no event to wait for
    waiting = resident_bytes(pid)
    time.sleep(WAIT_S + 1)
    after = resident_bytes(pid)
    sock.close()
    print(f"{lines} lines ({2 * lines / 1e6:.1f} MB): RSS +{(waiting - before) / 1e6:.1f} MB "
          f"while the receive waits, +{(after - before) / 1e6:.1f} MB after it ended")


if __name__ == "__main__":
    main(*whole_numbers(__doc__, 3))
