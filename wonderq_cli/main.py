"""`wonderq`: one command line tool with a subcommand per job.

Design decision: every subcommand is a function `run(args) -> int` (the exit
code) in a module of its own, registered here with its flags; this module
owns only what they share: `--host` and `--port` (and WONDERQ_HOST,
WONDERQ_PORT, as the server reads them), the event loop, and turning a
server that cannot be reached into one clear line on stderr and exit code 2.

Rules:
* Output meant for scripts (`--json`) goes to stdout as one JSON document;
  everything for people may use rich's formatting.
* Exit codes: 0 success, 1 the server refused the request (its error code
  is printed), 2 the server could not be reached or the usage was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from wonderq_client import DEFAULT_HOST, DEFAULT_PORT, ConnectionClosed, WonderQError

from . import demo, queue_commands, stats_command, top

Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value <= 65535:
        raise argparse.ArgumentTypeError("must be 1-65535")
    return value


def _connection_flags(parser: argparse.ArgumentParser, env: Mapping[str, str],
                      suppress: bool) -> None:
    """_connection_flags adds --host and --port. On subcommands their default is
    SUPPRESS, so `wonderq --port 1 stats` and `wonderq stats --port 1` both work and a
    subcommand never overwrites what was given before it."""
    host = argparse.SUPPRESS if suppress else env.get("WONDERQ_HOST", DEFAULT_HOST)
    port = argparse.SUPPRESS if suppress else _port(env.get("WONDERQ_PORT", str(DEFAULT_PORT)))
    parser.add_argument("--host", default=host,
                        help="server address (env WONDERQ_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=port,
                        help="server port (env WONDERQ_PORT; default 7711)")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, env, suppress=True)
    parser = argparse.ArgumentParser(prog="wonderq",
                                     description="Talk to a WonderQ server from a shell.")
    _connection_flags(parser, env, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (stats_command, top, queue_commands, demo):
        module.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """main runs one subcommand and returns its exit code (the console script exits with it)."""
    try:
        parser = build_parser()
    except ValueError as exc:  # a bad WONDERQ_PORT
        print(f"wonderq: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    args = parser.parse_args(argv)
    runner: Runner = args.run
    try:
        return _run(runner(args))
    except KeyboardInterrupt:
        return 130
    except WonderQError as exc:
        if isinstance(exc, ConnectionClosed):
            print(f"wonderq: lost the connection to {args.host}:{args.port}: {exc.message}",
                  file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"wonderq: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (TimeoutError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
            str(exc) or type(exc).__name__)
        print(f"wonderq: cannot reach the server at {args.host}:{args.port}: {reason}",
              file=sys.stderr)
        return EXIT_UNREACHABLE


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def console_script() -> None:
    sys.exit(main())
