"""What the probes share: their arguments, and the server's CPU seconds and resident memory,
from /proc."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def whole_numbers(usage: str, required: int, defaults: tuple[int, ...] = ()) -> list[int]:
    """whole_numbers: the probe's arguments, `required` whole numbers and then up to
    len(defaults) optional ones (the defaults fill in the rest). Anything else (-h,
    --help, too few, too many, not a number) prints `usage` (the probe's docstring) and
    exits: 0 when help was asked for, else 2."""
    given = sys.argv[1:]
    if given in (["-h"], ["--help"]):
        print(usage.strip())
        raise SystemExit(0)
    if not required <= len(given) <= required + len(defaults) \
            or not all(a.isdigit() for a in given):
        print(usage.strip(), file=sys.stderr)
        raise SystemExit(2)
    values = [int(a) for a in given]
    return values + list(defaults[len(values) - required:])


def server_times(pid: int) -> tuple[float, float]:
    """server_times: (user, system) CPU seconds of process `pid`, from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def server_cpu_s(pid: int) -> float:
    """server_cpu_s: user + system CPU seconds of process `pid`."""
    return sum(server_times(pid))


def resident_bytes(pid: int, field: str = "VmRSS") -> int:
    """resident_bytes: process `pid`'s resident memory now (VmRSS), or another of
    /proc/PID/status's sizes (VmHWM: its peak)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def on_fresh_server(tmp: str, name: str, run: int, argv: Callable[[int, Path], list[str]],
                    measure: Callable[[Any, int], Awaitable[Any]]) -> Any:
    """on_fresh_server starts server `name` (`argv(port, data_dir)`, a fresh data directory
    under `tmp`) for run `run`, runs `measure(server, port)` on an event loop, and stops
    the server by its PID whatever happens. Needs bench/ on sys.path (the probes that
    start servers put it there)."""
    import servers
    from runner import run_event_loop

    port, data_dir = servers.free_port(), Path(tmp) / f"{name}-{run}"
    data_dir.mkdir()
    server = servers.ServerProcess(name, argv(port, data_dir), Path(tmp) / f"{name}-{run}.log")
    try:
        return run_event_loop(measure(server, port))
    finally:
        server.stop()


def rotate_fresh_servers(systems: dict[str, tuple[Callable[[int, Path], list[str]],
                                                   Callable[[Any, int], Awaitable[Any]]]],
                         runs: int, prefix: str) -> dict[str, list[Any]]:
    """rotate_fresh_servers runs `runs` rounds; each round measures every system of
    `systems` (name -> (argv, measure), as on_fresh_server takes them) on a fresh server of
    its own, the order rotating each round so that the machine's noise spreads evenly.
    Returns each system's results, a round at a time. Every server is stopped by its PID,
    also on errors. A name's part before any ':' names its data directory and log."""
    import tempfile

    import servers

    names = list(systems)
    rows: dict[str, list[Any]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            for run in range(runs):
                shift = run % len(names)
                for name in names[shift:] + names[:shift]:
                    argv, measure = systems[name]
                    rows[name].append(on_fresh_server(tmp, name.split(":")[0], run, argv,
                                                      measure))
        finally:
            servers.stop_all()
    return rows


def start_in_memory_server(*flags: str, ready_s: float = 20.0) -> tuple[Any, int]:
    """start_in_memory_server: `python -m wonderq_server --in-memory` (the wonderq_server
    that python imports) on a free loopback port with `flags`, once it accepts
    connections: (its Popen, the port). The caller stops it by its PID."""
    import socket
    import subprocess
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen([sys.executable, "-m", "wonderq_server", "--in-memory",
                               "--port", str(port), *flags], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=dict(os.environ))
    give_up = time.monotonic() + ready_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.monotonic() > give_up or server.poll() is not None:
                server.kill()
                raise SystemExit("the server did not start") from None
            time.sleep(0.05)
