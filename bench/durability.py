"""Durability benchmarks: put throughput per fsync policy, recovery time, compaction.

    python bench/durability.py puts [--producers 32] [--seconds 3] [--runs 3]
    python bench/durability.py recovery [--messages 1000000]
    python bench/durability.py compaction [--cycles 1000000]

Every server is the real `wonderq-server` on 127.0.0.1, on a free port, with
a fresh data directory under a temporary folder, stopped by its PID at the
end. Every loop is bounded in count and time. Figures are medians of
`--runs` runs, interleaved across policies so machine noise spreads evenly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wonderq_client import connect

READY = re.compile(r"listening on (\S+):(\d+)")


class Server:
    """A wonderq-server subprocess; `log` collects its stderr."""

    def __init__(self, *args: str) -> None:
        # The Python running this script's server, as compare.py's (not PATH's first
        # wonderq-server, which may be another install's).
        argv = [sys.executable, "-m", "wonderq_server"]
        self.proc = subprocess.Popen([*argv, "--port", "0", "--log-level", "info", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True)
        self.lines: list[str] = []
        self.port = 0
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if m := READY.search(line):
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(600) or not self.port:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        self.started_ready_at = time.perf_counter()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


async def put_load(port: int, producers: int, seconds: float, body: bytes) -> int:
    """put_load runs `producers` connections, one put in flight each, for `seconds`."""
    stop_at = time.perf_counter() + seconds
    max_puts_each = 2_000_000  # a bound on count as well as time

    async def producer() -> int:
        done = 0
        async with connect("127.0.0.1", port) as client:
            while time.perf_counter() < stop_at and done < max_puts_each:
                await client.put("bench", body)
                done += 1
        return done

    return sum(await asyncio.gather(*(producer() for _ in range(producers))))


def bench_puts(args: argparse.Namespace) -> None:
    policies = ["memory", "never", "everysec", "always"]
    results: dict[str, list[tuple[float, float]]] = {p: [] for p in policies}
    body = b"x" * 100
    for run in range(args.runs):
        for policy in policies:
            with tempfile.TemporaryDirectory() as tmp:
                flags = (["--in-memory"] if policy == "memory"
                         else ["--data-dir", tmp, "--fsync", policy])
                server = Server(*flags)
                cpu0 = server.cpu_seconds()
                started = time.perf_counter()
                count = asyncio.run(put_load(server.port, args.producers, args.seconds, body))
                elapsed = time.perf_counter() - started
                cpu = server.cpu_seconds() - cpu0
                server.stop()
                results[policy].append((count / elapsed, 1e6 * cpu / max(count, 1)))
                print(f"run {run + 1} {policy:9s} {count / elapsed:9.0f} puts/s  "
                      f"server {1e6 * cpu / max(count, 1):6.1f} us/put", flush=True)
    print(f"\nput throughput, {args.producers} producers, 100-byte bodies, "
          f"median of {args.runs} runs of {args.seconds:g} s:")
    print(f"{'policy':10s} {'puts/s':>9s} {'min':>9s} {'max':>9s} {'server us/put':>14s}")
    for policy in policies:
        rates = [r for r, _ in results[policy]]
        cpu = statistics.median(c for _, c in results[policy])
        print(f"{policy:10s} {statistics.median(rates):9.0f} {min(rates):9.0f} "
              f"{max(rates):9.0f} {cpu:14.1f}")


async def fill(port: int, messages: int, body: bytes, ack: bool) -> None:
    """fill puts `messages` messages in batches of 1000 over 4 connections; acks them if asked."""
    batch = [body] * 1000
    per_client = messages // 4

    async def worker() -> None:
        async with connect("127.0.0.1", port) as client:
            done = 0
            while done < per_client:
                n = min(1000, per_client - done)
                await client.put_many("bench", batch[:n])
                if ack:
                    got = await client.receive("bench", max=n, visibility=300)
                    await asyncio.gather(*(m.ack() for m in got))
                done += n

    await asyncio.gather(*(worker() for _ in range(4)))


def bench_recovery(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server("--data-dir", tmp, "--fsync", "never")
        asyncio.run(fill(server.port, args.messages, b"x" * 100, ack=False))
        server.stop()
        size = sum(f.stat().st_size for f in Path(tmp).glob("journal.*"))
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            server = Server("--data-dir", tmp)
            times.append(time.perf_counter() - started)
            recovered = [line for line in server.lines if "recovered" in line]
            server.stop()
        print(f"journal of {args.messages} live 100-byte messages: {size / 1e6:.1f} MB")
        print(f"start-up until ready (recovery included), median of {args.runs}: "
              f"{statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})")
        print("server's own report:", recovered[-1].strip() if recovered else "(none)")


def bench_compaction(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for label, flags in (("without compaction", ["--compact-min-bytes", str(1 << 40)]),
                             ("with compaction", [])):
            data = Path(tmp) / label.replace(" ", "-")
            server = Server("--data-dir", str(data), "--fsync", "never", *flags)
            started = time.perf_counter()
            asyncio.run(fill(server.port, args.cycles, b"x" * 100, ack=True))
            elapsed = time.perf_counter() - started
            server.stop()
            size = sum(f.stat().st_size for f in data.glob("journal.*"))
            compactions = sum("compacted the journal" in line for line in server.lines)
            results[label] = (size, compactions, elapsed)
        print(f"{args.cycles} put+ack cycles of 100-byte messages (nothing left live):")
        for label, (size, compactions, elapsed) in results.items():
            print(f"  {label:20s} journal {size / 1e6:8.1f} MB after {compactions} "
                  f"compactions ({elapsed:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("puts")
    p.add_argument("--producers", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("recovery")
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("compaction")
    p.add_argument("--cycles", type=int, default=1_000_000)
    args = parser.parse_args()
    {"puts": bench_puts, "recovery": bench_recovery, "compaction": bench_compaction}[
        args.what](args)


if __name__ == "__main__":
    main()
