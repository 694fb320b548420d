"""`wonderq work QUEUE -- COMMAND [ARG...]`: a worker that runs a program on each message.

Design decision: this is the client's Worker with a program for its handler, for jobs
written in any language or as a shell script. Each message's body goes to the program's
standard input. Exit status 0 acks the message; 75 (EX_TEMPFAIL, sysexits.h: "try again
later") retries it without logging a failure (the Worker's Retry); any other status, or a run
past --command-timeout, nacks it with the worker's back-off, so the queue's max_deliveries and
dead-letter queue deal with poison, as for a Python handler. The program inherits this
tool's stdout and stderr, and finds the message's particulars in its environment:

    WONDERQ_QUEUE, WONDERQ_MESSAGE_ID, WONDERQ_DELIVERIES, WONDERQ_ENQUEUED_AT (seconds
    since the epoch), WONDERQ_HEADERS (a JSON object)

and the server's address as WONDERQ_HOST and WONDERQ_PORT, and this run's TLS settings as
WONDERQ_CLIENT_TLS, WONDERQ_CLIENT_TLS_CA, WONDERQ_CLIENT_TLS_CERT and
WONDERQ_CLIENT_TLS_KEY (connection_options.py; files as absolute paths), so that a
program running `wonderq put` for follow-up work reaches the same server the same way
(an auth token reaches it only through WONDERQ_AUTH_TOKEN in this tool's own environment,
never from --auth-token: a secret is not copied into more places).

Rules:
* SIGTERM, SIGINT and SIGHUP stop the worker gracefully (Worker.stop): no more receives;
  programs still running get --grace seconds, then are ended (below) and their messages
  given back. A second signal skips the rest of the grace. Exit status 0 after a stop;
  once the worker has ended (a stop, --burst, --max-messages), stop signals are ignored
  on the way out.
  Programs run in sessions of their own, so a terminal's signals reach only this tool.
  SIGKILL of this tool (which no cleanup sees) sends each running program SIGTERM from
  the kernel, on Linux (parent_death.py); what a program started itself is its to stop,
  and a program that changes its user, or runs a setuid or file-capability program
  (`su`, `sudo`), loses the signal, as the kernel clears it then. Its message's lease
  then runs out and it is delivered again. Stop the tool with SIGTERM, as init systems
  do, for the grace and the give-back.
* --timeout bounds the connect and every request's answer (the Worker's reply_timeout).
* A server that is down or restarting is not an error: the worker reconnects, saying so on
  stderr (a --burst that has had no answer yet excepted, below). What retrying cannot
  mend (AUTH_FAILED, a --wait over the server's --max-wait) ends it with main.py's exit
  codes.
* A program that cannot be found is a usage error (exit 2), found before connecting.
* --max-messages N and --burst end the worker after N messages, or once the queue is
  found empty, with the programs started allowed to finish (the Worker's max_messages and
  burst). Exit status 0; a burst the server never answered (down, a wrong port) exits 2.
* When this tool's standard output is a pipe or socket whose reader has gone (`wonderq
  work q -- prog | head`, once head has its lines), a program that exits with any status
  but 0 (killed by SIGPIPE, or a Python one's BrokenPipeError) did not fail: the output it
  was given is gone. Its message is put back at once, unseen (counted as retried), and so
  is the next one before its program starts; the worker stops and exits 141, as a filter
  whose reader left; otherwise every message would be retried until dead-lettered. If a
  stop came first (a Ctrl-C reaches head too), that stop goes on as it was, and the exit
  status is 0; the first signal after a stop the closed output began does not hurry it. (A
  closed fd 1, `>&-`, is /dev/null by then: main.py opens it.)
* Each program runs in a session of its own, so that ending it (this tool alive to do it)
  ends whatever it started (`sh -c` pipelines) and a Ctrl-C at the terminal reaches only
  this tool, which decides.
  Ending is SIGTERM to the whole group, then, once the program exited or KILL_AFTER_S
  (at most half of --timeout) passed, SIGKILL to what is left of the group.
* Log lines (failures, reconnects) are one line each on stderr: a failed program is not a
  Python traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import signal
import sys
from collections.abc import Callable, Sequence

from wonderq_client import Message, Retry, Worker
from wonderq_client.worker import retry_backoff

from . import argument_types
from .connection_options import tls_environment, without_tls_variables
from .output import counted
from .parent_death import die_with_parent

# How long a program told to end (SIGTERM) has before it is killed (SIGKILL).
KILL_AFTER_S = 5.0
# Signals that stop the worker gracefully: an init system's, Ctrl-C, a closed terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# sysexits.h's "temporary failure; the user is invited to retry": the message is retried
# with the back-off, as a Python handler's Retry, and no failure is logged.
EX_TEMPFAIL = 75
# The exit status of a tool whose reader went away, as if SIGPIPE had killed it.
EXIT_OUTPUT_GONE = 128 + signal.SIGPIPE


class ProgramFailed(Exception):
    """The program exited with a status other than 0, or ran past --command-timeout."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # its exit status; None if it was ended for running too long


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    work = commands.add_parser(
        "work", parents=[common],
        help="run a program on each message: exit 0 acks it, anything else retries it later",
        description="Receives messages from QUEUE and runs COMMAND for each, with the body on "
                    "its standard input and WONDERQ_QUEUE, WONDERQ_MESSAGE_ID, "
                    "WONDERQ_DELIVERIES, WONDERQ_ENQUEUED_AT and WONDERQ_HEADERS (JSON) in "
                    "its environment, with the server's WONDERQ_HOST and WONDERQ_PORT and "
                    "this run's TLS settings (WONDERQ_CLIENT_TLS*). Exit status 0 acks the "
                    "message; 75 (EX_TEMPFAIL) retries it without counting a failure; "
                    "anything else nacks it with a back-off delay. Leases are renewed while "
                    "COMMAND runs. SIGTERM, SIGHUP or Ctrl-C stops it gracefully; a second "
                    "one skips the grace.")
    work.add_argument("queue", type=argument_types.text)
    work.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG ...]",
                      help="the program to run, and its arguments")
    work.add_argument("--concurrency", type=argument_types.positive, default=1,
                      help="programs running at once (default %(default)s)")
    work.add_argument("--visibility", type=argument_types.positive_seconds, default=30.0,
                      help="lease length, renewed while the program runs (default %(default)g)")
    work.add_argument("--wait", type=argument_types.positive_seconds, default=20.0,
                      help="long-poll seconds (default %(default)g)")
    work.add_argument("--retry-delay", type=argument_types.seconds, default=None,
                      help="seconds before a failed message is tried again (default: 1 s "
                           "after the first delivery, doubling, at most 300)")
    work.add_argument("--command-timeout", type=argument_types.positive_seconds, default=None,
                      help="end a program that runs longer than this; the message is retried "
                           "(default: no limit)")
    work.add_argument("--grace", type=argument_types.seconds, default=30.0,
                      help="seconds programs still running get to finish after a stop "
                           "(default %(default)g)")
    work.add_argument("--max-messages", type=argument_types.positive, default=None,
                      metavar="N",
                      help="exit after handling N messages (default: run until stopped)")
    work.add_argument("--burst", action="store_true",
                      help="exit once the queue is found empty and the programs started "
                           "have finished; each message is run once (receives do not wait)")
    work.set_defaults(run=run, parse_rest=split_program, work_parser=work)


def split_program(args: argparse.Namespace) -> None:
    """split_program (main's `parse_rest`) sets `args.program`, COMMAND [ARG...]. argparse
    hands everything after QUEUE to the program (REMAINDER), so flags written between QUEUE
    and `--` (`work jobs --concurrency 4 -- ./job.sh`) are parsed here, by the same parser; a
    bad one is the same usage error (exit 2). What follows QUEUE is the program itself when
    it does not start with `-` (`work jobs git log -- file` runs `git log -- file`)."""
    argv = list(args.argv)
    if argv[:1] in (["-h"], ["--help"]):  # `wonderq work jobs -h`: help, not a program
        args.work_parser.print_help()
        raise SystemExit(0)
    if "--" not in argv or not argv[0].startswith("-"):
        args.program = argv
        return
    split = argv.index("--")
    flags, args.program = argv[:split], argv[split + 1:]
    if flags:
        args.work_parser.parse_args([*flags, args.queue], namespace=args)


def base_environment(args: argparse.Namespace) -> dict[str, str]:
    """base_environment is what every program's environment starts from, read once: this
    tool's, the server's address and this run's TLS settings in place of the TLS variables
    it inherited (so a program that runs `wonderq put` reaches the same server, the same
    way, with --no-tls too)."""
    return {**without_tls_variables(os.environ), "WONDERQ_HOST": args.host,
            "WONDERQ_PORT": str(args.port), **tls_environment(args)}


def environment(msg: Message, base: dict[str, str]) -> dict[str, str]:
    """environment is one program's environment: the base, and the message's particulars."""
    return {**base, "WONDERQ_QUEUE": msg.queue,
            "WONDERQ_MESSAGE_ID": str(msg.id), "WONDERQ_DELIVERIES": str(msg.deliveries),
            "WONDERQ_ENQUEUED_AT": f"{msg.enqueued_at:.6f}",
            "WONDERQ_HEADERS": json.dumps(msg.headers)}


async def run_program(argv: Sequence[str], msg: Message, timeout: float | None,
                      kill_after: float, base_env: dict[str, str],
                      preexec: Callable[[], None] | None = None) -> None:
    """run_program runs the program on one message; raises ProgramFailed unless it exits 0.
    Cancelled (a stop past the grace), it ends the program before it lets go."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, env=environment(msg, base_env),
        start_new_session=True, preexec_fn=preexec)
    try:
        async with asyncio.timeout(timeout):
            await feed(process, msg.body)
            await process.wait()
    except TimeoutError:
        await end_program(process, kill_after)
        raise ProgramFailed(f"{argv[0]} ran past --command-timeout ({timeout:g} s); "
                            f"ended it") from None
    except asyncio.CancelledError:
        await end_program(process, kill_after)
        raise
    if process.returncode == EX_TEMPFAIL:
        raise Retry(reason=f"{argv[0]} exited with status {EX_TEMPFAIL} (EX_TEMPFAIL)")
    if process.returncode != 0:
        raise ProgramFailed(f"{argv[0]} exited with status {process.returncode}",
                            process.returncode)


def output_gone(fd: int = 1) -> bool:
    """output_gone: `fd` is a pipe or socket whose reader has gone (poll reports an error
    or hang-up on it). A file, /dev/null or a terminal still there says no."""
    poller = select.poll()
    poller.register(fd, 0)  # errors and hang-ups are reported whatever is asked
    gone = select.POLLERR | select.POLLHUP
    return any(events & gone for _, events in poller.poll(0))


async def feed(process: asyncio.subprocess.Process, body: bytes) -> None:
    """feed writes the body to the program's standard input and closes it. A program may
    exit without reading it all: that is its right (its exit status decides), so a pipe
    closed early is not an error; uvloop says so with RuntimeError, asyncio with
    BrokenPipeError or ConnectionResetError."""
    stdin = process.stdin
    assert stdin is not None
    try:
        stdin.write(body)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            stdin.close()


async def end_program(process: asyncio.subprocess.Process, kill_after: float) -> None:
    """end_program sends SIGTERM to the program's whole group, waits up to `kill_after`
    seconds for the program to exit, then sends SIGKILL to the group in any case, even if
    this wait is cancelled: whatever it started that outlived it (a child ignoring SIGTERM)
    goes too. The group's id cannot be reused while any member lives, so the SIGKILL
    reaches only them."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(kill_after):
                await process.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


class OneLine(logging.Formatter):
    """OneLine formats a log record as one line, its exception as its message alone."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text}: {record.exc_info[1]}"
        return f"wonderq work: {text}"


def _stop_listening(loop: asyncio.AbstractEventLoop) -> None:
    """_stop_listening takes back the stop signals' handlers as the worker ends.

    Once the worker has ended (a stop, --burst, --max-messages) the tool is on its way
    out, its summary said, and a signal then (a user pressing Ctrl-C again, a
    supervisor's follow-up, a Ctrl-C that races the end of a burst) must not turn exit
    status 0 into death by that signal: from then on the stop signals are ignored. They
    are blocked while the handlers change, so none falls between the loop's handler and
    SIG_IGN into the default action; one the loop had caught but not yet run is moot."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


async def run(args: argparse.Namespace) -> int:
    argv = args.program
    if not argv:
        print("wonderq work: give the program to run: wonderq work QUEUE -- COMMAND [ARG...]",
              file=sys.stderr)
        return 2
    if shutil.which(argv[0]) is None:
        hint = " (flags after QUEUE need -- before the program)" \
            if argv[0].startswith("-") else ""
        print(f"wonderq work: {argv[0]}: command not found (or not executable){hint}",
              file=sys.stderr)
        return 2

    # A program told to end must be gone within the Worker's wait for cancelled handlers
    # (reply_timeout, which is --timeout), or it would outlive this tool.
    kill_after = min(KILL_AFTER_S, args.timeout / 2)

    base_env = base_environment(args)
    # SIGTERM from the kernel to every program if this process is killed outright; made
    # here, in the process that runs, since it checks for its parent by pid.
    die_with_worker = die_with_parent()

    output_closed = False  # seen once: said once
    stopped_for_output = False  # it was the first stop: exit 141

    def put_back(why: str) -> Retry:
        """put_back: the Retry that gives a message back unseen, the output being gone;
        the first time, it stops the worker too (unless a stop came first)."""
        nonlocal output_closed, stopped_for_output
        if not output_closed:
            output_closed = True
            stopped_for_output = not worker.stopping
            logging.getLogger("wonderq_client.worker").error(
                "standard output is closed (its reader has gone)%s",
                "; stopping" if stopped_for_output else "")
            if stopped_for_output:
                worker.stop()
        return Retry(0.0, reason=why, unseen=True)

    async def handler(msg: Message) -> None:
        if output_gone():
            raise put_back("not run: this tool's output is closed")
        try:
            await run_program(argv, msg, args.command_timeout, kill_after, base_env,
                              die_with_worker)
        except (ProgramFailed, Retry) as failure:
            if not output_gone():
                raise
            raise put_back(f"{failure}; this tool's output is closed") from None

    log_handler = logging.StreamHandler(sys.stderr)
    log_handler.setFormatter(OneLine())
    logger = logging.getLogger("wonderq_client.worker")
    saved = logger.level, logger.propagate
    logger.addHandler(log_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    worker = Worker(args.queue, handler, host=args.host, port=args.port,
                    concurrency=args.concurrency, visibility=args.visibility, wait=args.wait,
                    retry_delay=retry_backoff if args.retry_delay is None else args.retry_delay,
                    shutdown_grace=args.grace, connect_timeout=args.timeout,
                    reply_timeout=args.timeout, max_messages=args.max_messages,
                    burst=args.burst, **args.connect_options)
    signals = 0

    def on_signal() -> None:
        """on_signal stops the worker; a second signal hurries it. A stop the closed output
        began is not the first: the first signal after it leaves the grace alone."""
        nonlocal signals
        signals += 1
        if not (stopped_for_output and signals == 1):
            worker.stop()

    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        await worker.run()
    finally:
        _stop_listening(loop)
        logger.removeHandler(log_handler)
        logger.level, logger.propagate = saved
        counts = worker.counts
        with contextlib.suppress(OSError):  # stderr may be a terminal gone (SIGHUP)
            print(f"wonderq work: stopped after {counted(counts.received, 'message')}: "
                  f"{counts.acked} "
                  f"acked, {counts.failed} failed, {counts.retried} retried, "
                  f"{counts.given_back} given back, {counts.lease_lost} leases lost, "
                  f"{counts.unsettled} unsettled"
                  f"{f', {counts.abandoned} abandoned' if counts.abandoned else ''}; "
                  f"{counts.reconnects} reconnects",
                  file=sys.stderr)
    return EXIT_OUTPUT_GONE if stopped_for_output else 0
