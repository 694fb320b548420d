"""Which of the server's paths leave cyclic garbage: what a gc.freeze() would keep for ever.

    python bench/probes/cyclic_garbage.py [ROUNDS]     (default 50)

Reference counting frees what the server makes, except objects in reference cycles,
which wait for the cyclic collector. A server that froze its objects (gc.freeze(),
so that collections stop rescanning millions of leased messages) would never free a
cycle frozen while alive. This counts such cycles by path. Each run starts a fresh
server through this file (`--serve`: gc.set_debug(DEBUG_SAVEALL), so every cycle the
collector finds is kept in gc.garbage; at the stop it collects once more and prints how
many objects of each type it found there, to stderr), with --gc-freeze off, which
would keep a cycle alive at a collection out of gc.garbage. A first run only starts, pings
and stops (the baseline: what start-up and stopping leave); each later run does one
path ROUNDS times, each round on a new connection. It prints, for each path, the
objects beyond the baseline, per round (0.0: the path leaves no cycles). The paths:

* binary: puts, put_many with headers, delays and priorities, receives (one, 100,
  waiting and answered, waiting and timed out), ack, ack_many, nack, touch, errors
  (a stale lease, an unknown command; in ack_many and put_many, as items'
  results, and items the request checks refuse), queue_info, peek, message_info, stats;
* dead-letter: leases that run out into a dead-letter queue, a redrive, a purge,
  and a delete_queue of a queue holding leased messages;
* text: the same kinds of command as text lines, errors among them, and QUIT;
* resets: a connection that sends half a frame and resets, one whose receive waits
  when it resets, one over --max-frame-bytes, and one left to --idle-timeout;
* journal: a --data-dir server with a small --compact-min-bytes, so it compacts;
* metrics: GET /metrics on --metrics-port, and a request that is not HTTP;
* tls: binary and text connections over TLS (a certificate made with trustme).

Every wait is bounded; every server is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

MARK = "cyclic-garbage"
STOP_S = 30.0
TOP = 40  # types named per path


def serve(argv: list[str]) -> int:
    """serve: the server, its cyclic garbage counted by type at the stop (stderr)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    from wonderq_server.main import main as server_main
    try:
        return server_main(argv)
    finally:
        gc.collect()
        found = collections.Counter(_kind(o) for o in gc.garbage)
        print(f"{MARK} total {len(gc.garbage)}", file=sys.stderr, flush=True)
        for name, count in found.items():
            print(f"{MARK} {name} {count}", file=sys.stderr, flush=True)


def _kind(obj: object) -> str:
    """_kind: an object's type name; a frame's with its function (file:function), which
    names the code that made a cycle."""
    if isinstance(obj, types.FrameType):
        code = obj.f_code
        return f"frame:{Path(code.co_filename).name}:{code.co_name}"
    return type(obj).__qualname__


def frame(request_id: int, command: str, args: dict) -> bytes:
    import msgpack
    payload = msgpack.packb([request_id, command, args], use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


async def text_lines(port: int, lines: list[bytes], ssl=None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl)
    writer.write(b"".join(lines))
    await writer.drain()
    async with asyncio.timeout(10):
        got = await reader.read(1 << 20)
        while not got.rstrip().endswith(b"BYE"):
            more = await reader.read(1 << 20)
            if not more:
                break
            got += more
    writer.close()
    return got


async def binary_round(client, queue: str) -> None:
    from wonderq_client import LeaseLost, UnknownCommand

    await client.put(queue, b"one")
    await client.put_many(queue, [b"two", {"body": b"three", "headers": {"k": "v"}},
                                  {"body": b"four", "priority": 3, "delay": 0.0}])
    for message in await client.receive(queue, max=100):
        await client.ack(queue, message.id, message.lease)
    await client.put_many(queue, [b"x"] * 10, headers={"a": "b"})
    got = await client.receive(queue, max=10, visibility=30)
    await client.ack_many(queue, [(m.id, m.lease) for m in got[:5]])
    await client.nack(queue, got[5].id, got[5].lease)
    await client.touch(queue, got[6].id, got[6].lease, visibility=10)
    with contextlib.suppress(LeaseLost):  # a late ack of a nacked message
        await client.ack(queue, got[5].id, got[5].lease)
    # Errors kept as batch items' results: a stale lease, a body over --max-message-bytes.
    await client.ack_many(queue, [(got[5].id, got[5].lease + 1), (got[8].id, got[8].lease)])
    await client.put_many(queue, [b"fits", b"z" * 2000])
    # ... and items the request checks refuse, as sent by a client other than this one.
    await client._call("ack_many", {"queue": queue, "items": [[1, "x"]]})
    await client._call("put_many", {"queue": queue, "bodies": [b"a", 5]})
    with contextlib.suppress(UnknownCommand):
        await client._call("no_such_command", {})
    await client.receive(queue, max=1, wait=0.01)  # ready at once
    await client.receive(queue + "-empty", wait=0.02)  # times out
    waiting = asyncio.ensure_future(client.receive(queue + "-later", wait=5))
    await client.ping()
    await client.put(queue + "-later", b"for the waiting one")
    for message in await waiting:
        await client.ack(queue + "-later", message.id, message.lease)
    await client.queue_info(queue)
    await client.peek(queue, 2)
    await client.message_info(queue, got[7].id)
    await client.stats()
    await client.purge(queue)


async def dead_letter_round(client, queue: str) -> None:
    dlq = queue + "-dlq"
    await client.create_queue(dlq)
    await client.create_queue(queue, max_deliveries=1, dead_letter_queue=dlq)
    await client.put_many(queue, [b"y"] * 20)
    await client.receive(queue, max=20, visibility=0.01)
    async with asyncio.timeout(10):
        while (await client.queue_info(dlq))["ready"] < 20:
            await asyncio.sleep(0.01)  # the server's timer moves them (a bounded poll)
    await client.redrive(dlq)
    await client.receive(queue, max=10, visibility=30)
    await client.delete_queue(queue)  # with leased messages in it
    await client.delete_queue(dlq)


def text_round(queue: str) -> list[bytes]:
    return [f"PUT {queue} hello\r\n".encode(), f"PUT_MANY {queue} 2\r\na\r\nb\r\n".encode(),
            f"GET {queue} max=10\r\n".encode(), b"NOPE\r\n", f"ACK {queue} 1 2\r\n".encode(),
            b"STATS\r\n", f"QUEUE_INFO {queue}\r\n".encode(), f"PURGE {queue}\r\n".encode(),
            b"PING\r\n", b"QUIT\r\n"]


async def reset_round(port: int, queue: str) -> None:
    from wonderq_server.binary_codec import PREAMBLE

    def reset(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    with socket.create_connection(("127.0.0.1", port)) as sock:  # half a frame
        sock.sendall(PREAMBLE + frame(1, "put", {"queue": queue, "body": b"z"})[:7])
        reset(sock)
    with socket.create_connection(("127.0.0.1", port)) as sock:  # a waiting receive
        sock.sendall(PREAMBLE + frame(1, "receive", {"queue": queue + "-none", "wait": 30}))
        sock.sendall(PREAMBLE[:0] + frame(2, "ping", {}))
        sock.settimeout(10)
        sock.recv(100)  # the ping's reply: the receive waits on the server
        reset(sock)
    with socket.create_connection(("127.0.0.1", port)) as sock:  # over --max-frame-bytes
        sock.settimeout(10)
        sock.sendall(PREAMBLE + frame(1, "put", {"queue": queue, "body": b"z" * 70_000}))
        while sock.recv(4096):
            pass
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # --idle-timeout
    writer.write(b"PING\r\n")
    async with asyncio.timeout(10):
        while await reader.read(4096):
            pass
    writer.close()


async def metrics_round(metrics_port: int) -> None:
    for request in (b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    b"NOT HTTP AT ALL\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
        writer.write(request)
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
        writer.close()


async def exercise(path: str, port: int, rounds: int, extra: dict) -> None:
    from wonderq_client import connect

    for round_number in range(rounds):
        queue = f"q{round_number}"
        if path in ("binary", "journal"):
            async with connect("127.0.0.1", port) as client:
                await binary_round(client, queue)
        elif path == "dead-letter":
            async with connect("127.0.0.1", port) as client:
                await dead_letter_round(client, queue)
        elif path == "text":
            await text_lines(port, text_round(queue))
        elif path == "resets":
            await reset_round(port, queue)
        elif path == "metrics":
            await metrics_round(extra["metrics_port"])
        elif path == "tls":
            async with connect("127.0.0.1", port, ssl=extra["client_ssl"]) as client:
                await binary_round(client, queue)
            await text_lines(port, text_round(queue), ssl=extra["client_ssl"])


def one_run(path: str, rounds: int, tmp: Path, extra: dict) -> collections.Counter:
    import servers

    from wonderq_client import connect

    port = servers.free_port()
    argv = [sys.executable, __file__, "--serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--max-frame-bytes", "65536", "--idle-timeout", "0.2",
            "--max-message-bytes", "1000",
            # The freeze would keep a cycle alive at a collection out of gc.garbage: off,
            # every cycle is found (a reviewer).
            "--gc-freeze", "off"]
    if path == "journal":
        argv += ["--data-dir", str(tmp / "data"), "--compact-min-bytes", "4096"]
    else:
        argv += ["--in-memory"]
    if path == "metrics":
        extra["metrics_port"] = servers.free_port()
        argv += ["--metrics-port", str(extra["metrics_port"])]
    if path == "tls":
        argv += ["--tls-cert", str(extra["cert"]), "--tls-key", str(extra["key"])]
    log = tmp / f"{path}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL)
    try:
        async def run() -> None:
            give_up = time.monotonic() + STOP_S
            while True:
                try:
                    async with connect("127.0.0.1", port, timeout=1.0,
                                       ssl=extra.get("client_ssl") if path == "tls" else None
                                       ) as client:
                        await client.ping()
                    break
                except Exception:
                    if time.monotonic() > give_up or proc.poll() is not None:
                        raise
                    await asyncio.sleep(0.05)
            if path != "baseline":
                await exercise(path, port, rounds, extra)

        asyncio.run(run())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    found = collections.Counter()
    for line in log.read_text().splitlines():
        if line.startswith(MARK + " ") and not line.startswith(MARK + " total"):
            _, name, count = line.split()
            found[name] += int(count)
    if not any(line.startswith(MARK + " total") for line in log.read_text().splitlines()):
        raise SystemExit(f"{path}: the server printed no count:\n{log.read_text()[-2000:]}")
    return found


PATHS = ("binary", "dead-letter", "text", "resets", "journal", "metrics", "tls")


def left_per_path(rounds: int, paths: tuple[str, ...] = PATHS
                  ) -> tuple[collections.Counter, dict[str, dict[str, int]]]:
    """left_per_path: the baseline run's cyclic garbage by type, and for each path what its
    run left beyond that (types with more than the baseline had; tests use it too)."""
    import ssl

    import trustme

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_pem.write_to_path(tmp / "key.pem")
        cert.cert_chain_pems[0].write_to_path(tmp / "cert.pem")
        client_ssl = ssl.create_default_context()
        ca.configure_trust(client_ssl)
        extra = {"cert": tmp / "cert.pem", "key": tmp / "key.pem", "client_ssl": client_ssl}
        baseline = one_run("baseline", rounds, tmp, extra)
        left = {}
        for path in paths:
            found = one_run(path, rounds, tmp, dict(extra))
            beyond = {name: count - baseline.get(name, 0) for name, count in found.items()}
            left[path] = {name: count for name, count in beyond.items() if count > 0}
        return baseline, left


def main(rounds: int) -> None:
    baseline, left = left_per_path(rounds)
    print(f"baseline (start, one ping, stop): {sum(baseline.values())} objects "
          f"({', '.join(f'{n} {c}' for n, c in baseline.most_common(4))}, ...)")
    print(f"{rounds} rounds per path; cyclic garbage beyond the baseline, per round:")
    for path, beyond in left.items():
        top = sorted(beyond.items(), key=lambda item: -item[1])[:TOP]
        print(f"  {path:12s} {sum(beyond.values()) / rounds:8.1f}  "
              + ", ".join(f"{name} {count / rounds:.1f}" for name, count in top))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        raise SystemExit(serve(sys.argv[2:]))
    from _common import whole_numbers
    main(*whole_numbers(__doc__, 0, (50,)))
