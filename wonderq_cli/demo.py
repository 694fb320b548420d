"""`wonderq demo`: watch producers and misbehaving consumers, then account for every message.

Design decision: the demo is a test harness a person can watch. It runs the
real server (its own in-memory one, or `--connect` to a running one) with
producers and consumers that are steady, slow, crash or nack (see
demo_workers.py), on a queue whose leases last a second and whose messages
go to a dead-letter queue after a few deliveries, so leases running out,
redeliveries and dead letters all happen within seconds. Every body carries
a sequence number, and at the end the demo reads back what is left and
accounts by content (demo_ledger.py): produced = acked + dead-lettered +
still queued, or something was lost.

The run, in order: start the server; create the two queues; run the workers
until every message is settled or the work time is up; stop the workers;
read back both queues; print the accounting; delete the queues (with
--connect) and stop the server.

Interruptions: Ctrl-C (SIGINT), SIGTERM and SIGHUP all cancel the run, so
the same cleanup runs (workers stopped, queues deleted with --connect, the
demo's server stopped); then one "interrupted" line says what was cleaned
up. The demo's server runs in a session of its own (demo_server.py), so a
terminal's Ctrl-C reaches only the demo, which stops the server itself.

Rules:
* --seconds bounds the whole run: the work stops WRAP_UP_S before it even
  if unfinished, and what is still queued then is reported, not lost. A
  server that stops answering cannot stretch it: OVERRUN_S after --seconds
  the run is cut off (exit 2, no accounting).
* Exit codes: 0 every message accounted for; 1 a message was lost or acked
  twice (or acked and still stored), and nothing else; 2 the server could
  not be started or reached, the connection was lost, the server refused a
  request the demo did not expect (one line names its error code; no
  accounting is made then), or the --connect queue names are taken;
  128 + the signal's number when interrupted (130 Ctrl-C, 143 SIGTERM,
  129 SIGHUP).
* Batches stay within the server's --max-batch, which the demo learns as it
  goes (demo_workers.BatchLimit): a BATCH_TOO_LARGE is retried smaller, never
  fatal.
* With --connect the demo uses only queues it creates (it refuses names that
  exist) and deletes them when it ends, however it ends.
* With --connect every connection (its own and each worker's) uses the
  connection flags (--auth-token, --tls...); its own server needs none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from wonderq_client import (
    Client,
    ConnectionClosed,
    NotFound,
    QueueNotFound,
    WonderQError,
    connect,
)

from . import argument_types
from .demo_ledger import Accounting, Ledger, account
from .demo_server import ServerStartError, own_server
from .demo_view import Narrator, accounting_table, banner, verdict
from .demo_workers import (
    RECEIVE_WAIT_S,
    BatchLimit,
    Consumer,
    Crew,
    Plan,
    Producer,
    Watcher,
    seq_of,
)
from .output import OutputFailed

EXIT_OK, EXIT_BROKEN_PROMISE, EXIT_UNAVAILABLE = 0, 1, 2
STOP_GRACE_S = RECEIVE_WAIT_S + 1.0  # a stopping worker finishes its receive and its ack
READ_BACK_S = 1.0  # kept for reading back the queues
WRAP_UP_S = STOP_GRACE_S + READ_BACK_S
DRAIN_BATCH = 100
DRAIN_VISIBILITY_S = 60.0  # read-back leases outlive the demo
MIN_SECONDS = 5.0
MAX_SECONDS = 86_400.0  # a day: a demo, not a soak
# A server that stops answering (stopped, hung) would hold the read-back and the queue
# deletion for ever: --seconds bounds the run, plus this much, whatever the server does.
OVERRUN_S = 5.0
# Handled as Ctrl-C is (asyncio.run handles SIGINT itself): by cancelling the run.
INTERRUPTING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                             if hasattr(signal, name))


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "demo", parents=[common],
        help="watch producers and misbehaving consumers; every message is accounted for",
        description="Runs producers and consumers (steady, slow, crashing, nacking) against "
                    "an in-memory server of its own, shows leases running out, redeliveries "
                    "and dead letters as they happen, and ends with an accounting of every "
                    "message. Exits 1 if a message was lost or acked twice.")
    parser.add_argument("--messages", type=_at_least(1), default=300,
                        help="messages to put (default %(default)s)")
    parser.add_argument("--producers", type=_at_least(1), default=3,
                        help="producers putting at once (default %(default)s)")
    parser.add_argument("--consumers", type=_at_least(1), default=5,
                        help="consumers, in turn steady, slow, crashy, nacky "
                             "(default %(default)s)")
    parser.add_argument("--seconds", type=_run_seconds, default=25.0,
                        help="the whole run, accounting included, ends within this even if "
                             f"unfinished: the work stops {WRAP_UP_S:g} s before it, to "
                             "account for every message (default %(default)s)")
    parser.add_argument("--queue", type=argument_types.text, default=None,
                        help="queue name; its dead letters go to QUEUE-dead (default: demo, "
                             "or demo-<random> with --connect)")
    parser.add_argument("--connect", action="store_true",
                        help="use the running server at --host/--port instead of starting one; "
                             "the demo's queues are deleted at the end")
    parser.set_defaults(run=run)


def _run_seconds(text: str) -> float:
    """_run_seconds: --seconds, finite, from MIN_SECONDS to MAX_SECONDS. A reviewer's nan,
    inf and 1e308 ended in tracebacks from the event loop's timers."""
    value = argument_types.positive_seconds(text)
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be {MIN_SECONDS:g} to {MAX_SECONDS:g} seconds, got {text!r}")
    return value


def _at_least(low: float, kind: type = int):
    def convert(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its error
    return convert


async def run(args: argparse.Namespace) -> int:
    """run is `wonderq demo`. SIGTERM and SIGHUP cancel it as Ctrl-C does, so the cleanup
    of every `finally` and `async with` runs (the demo's server is stopped); then one
    line says the run was interrupted. Ctrl-C ends in KeyboardInterrupt (exit 130, as
    main.py maps it), a handled signal in 128 + its number."""
    loop = asyncio.get_running_loop()
    run_task = asyncio.current_task()
    assert run_task is not None
    received: list[int] = []

    def interrupt(signum: int) -> None:
        received.append(signum)
        run_task.cancel()

    handled = _handle_signals(loop, interrupt)
    try:
        return await _run(args)
    except (asyncio.CancelledError, Exception) as exc:
        # After a handled signal, whatever ended the cleanup (a write to a terminal that
        # hung up, say) is part of the interruption.
        if not (received or isinstance(exc, asyncio.CancelledError)):
            raise
        how = f" by {signal.Signals(received[0]).name}" if received else ""
        undone = (f"its queues on {args.host}:{args.port} are deleted" if args.connect
                  else "its server is stopped")
        _say(f"wonderq demo: interrupted{how}; {undone}; no accounting was made")
        if not received:
            raise  # Ctrl-C: asyncio.run turns the cancellation into KeyboardInterrupt
        return 128 + received[0]
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def _handle_signals(loop: asyncio.AbstractEventLoop,
                    interrupt: Callable[[int], None]) -> list[int]:
    """_handle_signals routes INTERRUPTING_SIGNALS to `interrupt`; returns those it could
    (none on Windows, or off the main thread)."""
    handled = []
    for signum in INTERRUPTING_SIGNALS:
        try:
            loop.add_signal_handler(signum, interrupt, signum)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        handled.append(signum)
    return handled


def _say(line: str) -> None:
    """_say prints one line on stderr; a terminal that has gone (SIGHUP) is no error."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    queue = args.queue or ("demo-" + secrets.token_hex(3) if args.connect else "demo")
    plan = Plan(queue=queue, dead_letter_queue=f"{queue}-dead", messages=args.messages,
                producers=args.producers, consumers=args.consumers, seconds=args.seconds)
    if args.connect:
        where = f"the server at {args.host}:{args.port}"
        return await _demo_or_exit(args.host, args.port, plan, started, where,
                                   shared_server=True, options=args.connect_options)
    try:
        async with own_server() as (host, port):
            where = f"its own in-memory server at {host}:{port}"
            return await _demo_or_exit(host, port, plan, started, where, shared_server=False,
                                       options={})
    except ServerStartError as exc:
        _say(f"wonderq demo: {exc}")
        return EXIT_UNAVAILABLE


# What a failed write of the demo's own output raises (its table and narration go to standard
# output through rich and print): no socket fails so.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


async def _demo_or_exit(host: str, port: int, plan: Plan, started: float, where: str,
                        shared_server: bool, options: dict[str, Any]) -> int:
    """_demo_or_exit runs _demo and turns a server that failed the demo into one line and
    EXIT_UNAVAILABLE, so that exit 1 only ever means a broken promise."""
    bound = asyncio.timeout(plan.seconds + OVERRUN_S - (time.monotonic() - started))
    try:
        async with bound:
            return await _demo(host, port, plan, started, where, shared_server, options)
    except ConnectionClosed as exc:
        _say(f"wonderq demo: lost the connection to {host}:{port}: {exc.message}; "
             f"no accounting was made")
    except WonderQError as exc:
        _say(f"wonderq demo: the server at {host}:{port} refused a request the demo did not "
             f"expect: {exc.code}: {exc.message}; no accounting was made")
    except BrokenPipeError:
        raise  # its reader has gone (`| head`): main.py's exit 141, quietly, as any command's
    except OSError as exc:  # TimeoutError included
        if exc.errno in OUTPUT_ERRNOS:
            # Its own output failed (`> /dev/full`), not the server: main.py's exit 74. A
            # reviewer's demo said "cannot talk to the server ...: No space left on device".
            raise OutputFailed(exc.strerror or str(exc)) from None
        if bound.expired():
            _say(f"wonderq demo: the server at {host}:{port} stopped answering; the run was "
                 f"cut off {OVERRUN_S:g} s after --seconds ran out, and no accounting was "
                 f"made")
        else:
            reason = exc.strerror or str(exc) or type(exc).__name__
            _say(f"wonderq demo: cannot talk to the server at {host}:{port}: {reason}")
    return EXIT_UNAVAILABLE


async def _demo(host: str, port: int, plan: Plan, started: float, where: str,
                shared_server: bool, options: dict[str, Any]) -> int:
    """_demo creates the queues, runs the show, prints the accounting, returns the exit code.

    On a shared server (--connect) it first makes sure the queue names are
    new, and deletes the queues at the end, however the run ends. `options`
    are connect()'s auth_token and ssl (--connect's; none for its own server).
    """
    async with connect(host, port, **options) as admin:
        if shared_server:
            for name in (plan.queue, plan.dead_letter_queue):
                if await _exists(admin, name):
                    print(f"wonderq demo: queue {name!r} already exists on {host}:{port}; the "
                          f"demo deletes its queues at the end, so it uses only new ones: "
                          f"pick another --queue", file=sys.stderr)
                    return EXIT_UNAVAILABLE
        try:
            await admin.create_queue(plan.dead_letter_queue)
            await admin.create_queue(plan.queue, visibility_timeout=plan.visibility_s,
                                     max_deliveries=plan.max_deliveries,
                                     dead_letter_queue=plan.dead_letter_queue)
            console = Console(highlight=False)
            console.print(banner(plan, where))
            accounting = await _show(admin, host, port, plan, started, console, options)
        finally:
            if shared_server:
                await _delete_queues(admin, plan)
    console.print(accounting_table(accounting, plan))
    console.print(verdict(accounting), style="bold green" if accounting.ok else "bold red")
    return EXIT_OK if accounting.ok else EXIT_BROKEN_PROMISE


async def _show(admin: Client, host: str, port: int, plan: Plan, started: float,
                console: Console, options: dict[str, Any]) -> Accounting:
    """_show runs the workers under narration, stops them, reads back the queues, accounts."""
    crew = Crew(host, port, plan, Ledger(plan.messages), asyncio.Event(),
                lambda: time.monotonic() - started, random.Random(), connect_options=options)
    producers = [Producer(crew, f"producer-{i + 1}", list(range(i + 1, plan.messages + 1,
                                                                  plan.producers)))
                 for i in range(plan.producers)]
    consumers = [Consumer(crew, f"worker-{i + 1}", plan.behaviour(i))
                 for i in range(plan.consumers)]
    watcher = Watcher(crew)
    producer_tasks = [asyncio.create_task(p.run()) for p in producers]
    tasks = [*producer_tasks, *(asyncio.create_task(c.run()) for c in consumers),
             asyncio.create_task(watcher.run(admin, lambda: all(t.done()
                                                                 for t in producer_tasks)))]
    narrator = Narrator(console, crew, lambda: watcher.figures)
    narrator.start()
    try:
        await _work(tasks, watcher.settled, plan.seconds - WRAP_UP_S - crew.clock())
        crew.stop.set()
        finished, unfinished = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in unfinished:  # an ack still unanswered stays in doubt in the ledger
            task.cancel()
        _raise_failure(finished)
        queued, dead = await _read_back(admin, plan, crew.ledger, crew.batches)
        return account(crew.ledger, dead, queued)
    finally:
        try:
            await _stop_workers(crew, tasks)
        finally:
            await narrator.close()


async def _stop_workers(crew: Crew, tasks: list[asyncio.Task[None]]) -> None:
    """_stop_workers tells the workers to stop and gives them STOP_GRACE_S to do it as at
    the end of a run (give back what they hold, close their connections), then cancels
    the rest. Interrupted (Ctrl-C, SIGTERM), the run gets here too: a second interrupt
    cuts the grace short, and is raised once every worker is cancelled."""
    crew.stop.set()
    interrupted = False
    try:
        await asyncio.wait(tasks, timeout=STOP_GRACE_S)
    except asyncio.CancelledError:
        interrupted = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if interrupted:
        raise asyncio.CancelledError


async def _work(tasks: list[asyncio.Task[None]], settled: asyncio.Event,
                timeout_s: float) -> None:
    """_work waits until the work is settled or time is up; a worker's bug is raised at once."""
    deadline = time.monotonic() + timeout_s
    settled_wait = asyncio.create_task(settled.wait())
    pending: set[asyncio.Task[Any]] = {*tasks, settled_wait}
    try:
        for _ in range(len(pending) + 1):  # each round ends a task, or the time is up
            remaining = deadline - time.monotonic()
            if remaining <= 0 or settled_wait.done():
                return
            done, pending = await asyncio.wait(pending, timeout=remaining,
                                               return_when=asyncio.FIRST_COMPLETED)
            _raise_failure(done - {settled_wait})
    finally:
        settled_wait.cancel()


def _raise_failure(finished: set[asyncio.Task[Any]]) -> None:
    """_raise_failure raises what ended a worker early: a lost connection, or a bug."""
    for task in finished:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _read_back(admin: Client, plan: Plan, ledger: Ledger,
                     batches: BatchLimit) -> tuple[set[int], set[int]]:
    """_read_back finds every produced body not acked: (still queued, dead-lettered).

    Ready messages of both queues are received, and stay leased past the
    demo's end. A message still leased or delayed (a crashed worker's, or
    one nacked with a delay) cannot be received, so each body not found so
    far is looked up by its id: first in the queue, then in the dead-letter
    queue, where its lease may just have sent it.
    """
    queued = await _receive_all(admin, plan.queue, plan, batches)
    dead = await _receive_all(admin, plan.dead_letter_queue, plan, batches)
    for seq in sorted(ledger.produced - ledger.acked - queued - dead):
        for queue, found in ((plan.queue, queued), (plan.dead_letter_queue, dead)):
            try:
                await admin.message_info(queue, ledger.ids[seq])
            except NotFound:
                continue
            found.add(seq)
            break
    return queued, dead


async def _receive_all(admin: Client, queue: str, plan: Plan, batches: BatchLimit) -> set[int]:
    """_receive_all receives every ready message of `queue`; returns their sequence numbers.

    Bounded: each round receives at least one message or ends, and the demo's
    queues hold at most plan.messages.
    """
    seqs: set[int] = set()
    for _ in range(plan.messages + 2):
        batch = await batches.call(
            lambda n: admin.receive(queue, max=n, visibility=DRAIN_VISIBILITY_S), DRAIN_BATCH)
        if not batch:
            break
        seqs.update(seq for seq in map(seq_of, (msg.body for msg in batch)) if seq is not None)
    return seqs


async def _exists(admin: Client, queue: str) -> bool:
    try:
        await admin.queue_info(queue)
    except QueueNotFound:
        return False
    return True


async def _delete_queues(admin: Client, plan: Plan) -> None:
    """_delete_queues removes the demo's queues from a shared server; a server that does
    not answer within STOP_GRACE_S keeps them (the run ends anyway, and says so)."""
    try:
        async with asyncio.timeout(STOP_GRACE_S):
            for name in (plan.queue, plan.dead_letter_queue):
                with contextlib.suppress(QueueNotFound):
                    await admin.delete_queue(name)
    except TimeoutError:
        _say(f"wonderq demo: the server did not answer; queues {plan.queue!r} and "
             f"{plan.dead_letter_queue!r} may still be there")
