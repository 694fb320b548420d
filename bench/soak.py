"""Soak: hours of work squeezed into minutes, with kill -9 and dying consumers, then an audit.

    python bench/soak.py                          # 10 minutes, kill -9 every ~30 s
    python bench/soak.py --seconds 60 --kill-every 10 --json /tmp/soak.json
    python bench/soak.py --seconds 300 --kill-every 0   # one long incarnation: memory only

Design decision: one real `wonderq-server --fsync always` on 127.0.0.1 and a
fresh data directory (soak_server.py); producers and consumers that know
nothing of the kills and reconnect with backoff (soak_workers.py); a ledger
of every answer, keyed by a sequence number carried in each body
(soak_ledger.py); memory sampled over time (soak_memory.py). The phases:

1. load for `--seconds`, while a supervisor kills the server with SIGKILL
   every `--kill-every` seconds (each interval drawn within +-20% of it, so
   kills land at varied points of the work) and starts it again at once on
   the same data directory and port;
2. stop the load (producers, then consumers finish the request in hand),
   stop the server cleanly (SIGTERM) and start it once more;
3. drain the queue with one consumer (receive + ack until a receive finds
   nothing and the queue holds nothing), stop the server;
4. judge: the ledger's verdict, the drain finished, no incarnation ended
   by itself, no memory growth flagged. Any failure is listed under the
   verdict and makes the exit code 1; 0 means everything held.

Rules:
* Loopback only; every loop is bounded in count and time; the server is
  killed on every way out (normal end, error, Ctrl-C, SIGTERM) and, through
  PR_SET_PDEATHSIG, even if the soak itself is killed.
* The data directory must start empty (the ledger must know every message);
  a fresh temporary one is the default and is removed at the end unless
  `--keep`. A directory given with `--data-dir` is never removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak_ledger import Ledger
from soak_memory import by_incarnation, growth_tolerance, sample_memory
from soak_report import Results, as_json, summary
from soak_server import SoakServer, monotonic_clock
from soak_workers import QUEUE, WAIT_S, Load, consume, drain, produce

from wonderq_client import connect

KILL_JITTER = 0.2  # each interval between kills is kill_every * (1 +- this)
SUPERVISE_S = 1.0  # how often the supervisor looks for a server that exited by itself
STOP_GRACE_S = 30.0  # workers finish the request in hand within this, or are cancelled
DRAIN_LIMIT_S = 120.0  # the drain's own time limit (plus visibility timeouts)
MAX_TICKS = 10_000_000  # bound on the supervisor's loop; time ends it long before


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names it in "invalid float value: 'x'"
    return parse


def not_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def chance(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=positive(float), default=600.0,
                   help="seconds of load (default 600)")
    p.add_argument("--kill-every", type=not_negative(float), default=30.0,
                   help="kill -9 the server about every this many seconds; 0 = never "
                        "(default 30)")
    p.add_argument("--producers", type=positive(int), default=4, help="default 4")
    p.add_argument("--consumers", type=positive(int), default=4, help="default 4")
    p.add_argument("--visibility", type=positive(float), default=2.0,
                   help="lease length of every receive, seconds (default 2)")
    p.add_argument("--die-chance", type=chance, default=0.01,
                   help="chance that a consumer dies after a receive, holding unacked "
                        "leases (default 0.01)")
    p.add_argument("--min-backlog", type=not_negative(int), default=1000,
                   help="consumers pause while fewer answered puts than this wait for an "
                        "ack: the messages at risk at each kill (default 1000)")
    p.add_argument("--max-backlog", type=positive(int), default=2000,
                   help="producers pause while more answered puts than this wait for an ack "
                        "(default 2000)")
    p.add_argument("--body-bytes", type=positive(int), default=100, help="default 100")
    p.add_argument("--seed", type=int, default=1, help="default 1")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the server's data directory, empty or new (default: a fresh "
                        "temporary one)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary data directory (its path is printed)")
    p.add_argument("--sample-every", type=positive(float), default=5.0,
                   help="seconds between memory samples (default 5)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="write the results, every sample included, to FILE")
    args = p.parse_args(argv)
    if args.min_backlog >= args.max_backlog:
        p.error(f"--min-backlog ({args.min_backlog}) must be below --max-backlog "
                f"({args.max_backlog})")
    return args


def prepare_data_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    """prepare_data_dir returns (directory, made here); refuses one holding a journal."""
    if args.data_dir is None:
        return Path(tempfile.mkdtemp(prefix="wonderq-soak-")), True
    if args.data_dir.exists() and not args.data_dir.is_dir():
        raise SystemExit(f"soak: --data-dir {args.data_dir} is not a directory")
    if args.data_dir.exists() and any(args.data_dir.glob("journal.*")):
        raise SystemExit(f"soak: {args.data_dir} already holds a journal; the ledger must "
                         f"know every message, so give an empty or new directory")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    return args.data_dir, False


async def supervise(server: SoakServer, args: argparse.Namespace, rng: random.Random,
                    stop: asyncio.Event, problems: list[str], clock) -> int:
    """supervise kills -9 and restarts the server on schedule, and restarts one that died.

    Returns the number of kills, when `stop` is set or, early, when a restart
    failed (which ends the load: run_load waits for this task).
    """
    kills = 0
    next_kill = clock() + args.kill_every * rng.uniform(1 - KILL_JITTER, 1 + KILL_JITTER)
    for _ in range(MAX_TICKS):
        try:
            await asyncio.wait_for(stop.wait(), SUPERVISE_S)
            return kills
        except TimeoutError:
            pass
        died = server.check_exit()
        due = args.kill_every > 0 and clock() >= next_kill
        if not died and not due:
            continue
        if died:
            problems.append(f"incarnation {server.current.number} {server.current.end}")
        else:
            server.kill()
            kills += 1
            next_kill = clock() + args.kill_every * rng.uniform(1 - KILL_JITTER, 1 + KILL_JITTER)
        try:
            await server.start()
        except RuntimeError as exc:
            problems.append(f"the server did not start again: {exc}")
            return kills
    return kills


async def run_load(server: SoakServer, load: Load, args: argparse.Namespace,
                   problems: list[str], samples: list, clock) -> tuple[float, int]:
    """run_load runs the workers, the supervisor and the sampler; returns (seconds, kills)."""
    rng = random.Random(args.seed)
    started = clock()
    producers = [asyncio.create_task(produce(load, random.Random(rng.random())))
                 for _ in range(args.producers)]
    consumers = [asyncio.create_task(consume(load, random.Random(rng.random())))
                 for _ in range(args.consumers)]
    end_supervision = asyncio.Event()
    supervisor = asyncio.create_task(
        supervise(server, args, random.Random(rng.random()), end_supervision, problems, clock))
    end_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(server, load.ledger, args.sample_every,
                                                end_sampling, samples, clock))
    try:
        # The load runs until time is up, or until the supervisor gives up on the server.
        await asyncio.wait([supervisor], timeout=args.seconds)
        end_supervision.set()
        kills = await supervisor  # a restart in progress finishes first
        load.end()
        workers = producers + consumers
        _, late = await asyncio.wait(workers, timeout=STOP_GRACE_S + WAIT_S)
        if late:
            problems.append(f"{len(late)} workers did not stop within {STOP_GRACE_S:g} s "
                            f"(cancelled; their requests count as unanswered or uncertain)")
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=STOP_GRACE_S)
        for task in workers:
            if task.done() and not task.cancelled() and task.exception() is not None:
                problems.append(f"a worker failed: {task.exception()!r}")
        load_s = clock() - started
        end_sampling.set()
        await sampler
        return load_s, kills
    finally:
        for task in [*producers, *consumers, supervisor, sampler]:
            task.cancel()


def stop_cleanly(server: SoakServer, stage: str, problems: list[str]) -> None:
    """stop_cleanly stops the server with SIGTERM; anything but a clean exit is a problem."""
    code = server.stop()
    inc = server.current
    if code != 0 or inc is None or not inc.end.startswith("stopped"):
        problems.append(f"the clean stop {stage}: incarnation "
                        f"{inc.number if inc else '?'} {inc.end if inc else ''}")


async def soak(args: argparse.Namespace, data_dir: Path) -> Results:
    clock = monotonic_clock()
    server = SoakServer(data_dir, clock)
    ledger = Ledger(args.body_bytes)
    load = Load(server, ledger, args.visibility, args.die_chance, args.min_backlog,
                args.max_backlog, args.body_bytes)
    problems: list[str] = []
    samples: list = []
    drained, left, finished = 0, 0, False
    try:
        await server.start()
        async with connect(server.host, server.port) as client:
            await client.create_queue(QUEUE, visibility_timeout=args.visibility)
        load.update_room()
        load_s, kills = await run_load(server, load, args, problems, samples, clock)
        try:
            stop_cleanly(server, "after the load", problems)
            await server.start()
            drained, left, finished = await drain(load, DRAIN_LIMIT_S, clock)
            stop_cleanly(server, "after the drain", problems)
        except RuntimeError as exc:
            problems.append(f"the server did not start for the drain: {exc}")
    finally:
        server.close()

    verdict = ledger.verdict()
    tolerance = growth_tolerance(args.max_backlog, args.body_bytes)
    memory = by_incarnation(samples, {inc.number: inc.ready_at for inc in server.incarnations},
                            tolerance)
    problems += [f"ledger: {kind}: {count}" for kind, (count, _) in verdict.errors.items()]
    if not finished:
        problems.append(f"the drain did not finish: {left} messages left")
    problems += [f"memory: incarnation {m.incarnation} grew {m.growth / 2**20:.1f} MiB "
                 f"between halves (tolerance {m.tolerance / 2**20:.1f} MiB)"
                 for m in memory if m.flagged]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["data_dir"] = str(data_dir)
    return Results(settings, load_s, kills, server.incarnations, verdict, drained, left,
                   finished, samples, memory, tolerance, load.deaths, load.leases_dropped,
                   load.reconnects, dict(load.unexpected), problems)


async def soak_until_signalled(args: argparse.Namespace, data_dir: Path) -> Results:
    """soak_until_signalled runs the soak; SIGTERM cancels it like Ctrl-C does."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await soak(args, data_dir)


def run(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir, made_here = prepare_data_dir(args)
    print(f"soak: {args.seconds:g} s, data in {data_dir}", flush=True)
    try:
        results = run(soak_until_signalled(args, data_dir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted; the server was killed", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # the first start failed: there was no soak to judge
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    finally:
        if made_here and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(summary(results), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(results), indent=1) + "\n")
        print(f"results written to {args.json}")
    if made_here and args.keep:
        print(f"data directory kept: {data_dir}")
    return 0 if results.passed else 1


if __name__ == "__main__":
    sys.exit(main())
