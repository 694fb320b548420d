"""`wonderq`: one command line tool with a subcommand per job.

Design decision: every subcommand is a function `run(args) -> int` (the exit
code) in a module of its own, registered here with its flags; this module
owns only what they share: `--host` and `--port` (and WONDERQ_HOST,
WONDERQ_PORT, as the server reads them), the auth token and TLS flags
(connection_options.py; subcommands connect with its `open_client`), the
event loop, and turning a server that cannot be reached into one clear line
on stderr and exit code 2.

Rules:
* Output meant for scripts (`--json`) goes to stdout as one JSON document;
  everything for people may use rich's formatting.
* Exit codes: 0 success, 1 the server refused the request (its error code
  is printed; a wrong auth token is AUTH_FAILED), 2 the server could not be
  reached (a failed TLS handshake included) or the usage was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from wonderq_client import DEFAULT_HOST, DEFAULT_PORT, ConnectionClosed, WonderQError
from wonderq_client import __version__ as client_version

from . import (
    admin_commands,
    argument_types,
    connection_options,
    demo,
    queue_commands,
    stats_command,
    top,
    work_command,
)
from . import deadline as command_deadline
from .output import OutputFailed

Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2
EXIT_USAGE = 2  # argparse's code for a usage error; the same number as unreachable
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a tool that SIGPIPE ended
EXIT_OUTPUT_FAILED = 74  # sysexits.h's EX_IOERR: the output could not be written
# Closes that refuse the request itself: retrying it as it is can only fail the same way
# (a body over --max-frame-bytes), so they are the server's answer (exit 1), not "lost".
REFUSING_CLOSES = frozenset({"FRAME_TOO_LARGE", "UNSUPPORTED_VERSION"})


DEFAULT_TIMEOUT_S = 10.0
UNBOUNDED_COMMANDS = frozenset({"top", "demo", "work"})
# Commands whose request the server paces (STATS, QUEUES): one may wait its turn.
PACED_COMMANDS = frozenset({"stats", "queues", "top"})


# How a server without an auth token answers one (the server's auth.NO_TOKEN_MESSAGE).
NO_TOKEN_REFUSAL = "AUTH sent, but this server has no auth token"


class NoAnswer(Exception):
    """The server took the connection but did not answer within --timeout."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {value}")
    return value


def _connection_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """_connection_flags adds --host, --port and --timeout. On subcommands their default
    is SUPPRESS, so `wonderq --port 1 stats` and `wonderq stats --port 1` both work and a
    subcommand never overwrites what was given before it. The environment is read after
    parsing (`_from_environment`), only for what no flag gave."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--host", default=default,
                        help="server address (env WONDERQ_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=default,
                        help="server port (env WONDERQ_PORT; default 7711)")
    parser.add_argument("--timeout", type=argument_types.positive_seconds, default=default,
                        help="seconds to wait for the server's answer "
                             f"(default {DEFAULT_TIMEOUT_S:g}; receive adds its --wait)")
    connection_options.add_flags(parser, default)


def _from_environment(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """_from_environment fills in what no flag gave (and the security options); raises
    ValueError naming the variable or the flag."""
    # An empty variable is one not given, as the WONDERQ_CLIENT_TLS* ones are (`export
    # WONDERQ_HOST=` was "cannot reach the server at :7711", a newcomer's review).
    host_source = "--host"
    if args.host is None:
        args.host = env.get("WONDERQ_HOST") or DEFAULT_HOST
        host_source = "WONDERQ_HOST"
    try:
        # As the resolver will encode it: a typo such as "a..b", a label over 63
        # characters or a byte that is not UTF-8 raised UnicodeError from inside every
        # command, a traceback and exit 1 (a reviewer).
        args.host.encode("idna")
    except UnicodeError as exc:
        reason = str(exc.__cause__ or exc).removeprefix("UnicodeError: ")
        raise ValueError(f"{host_source}={args.host!r} is not a host name or address: "
                         f"{reason}") from None
    if args.port is None:
        text = env.get("WONDERQ_PORT") or str(DEFAULT_PORT)
        try:
            args.port = _port(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"WONDERQ_PORT={text!r}: {exc}") from None
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT_S
    if args.command == "demo" and not args.connect:
        # Its own server is in memory and plain: a token or TLS setting from the
        # environment (a stale WONDERQ_CLIENT_TLS_CA, say) is not its business.
        args.connect_options = {}
        return
    connection_options.resolve(args, env)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, suppress=True)
    parser = argparse.ArgumentParser(prog="wonderq",
                                     description="Talk to a WonderQ server from a shell.")
    parser.add_argument("--version", action="version", version=f"wonderq {client_version}")
    _connection_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (stats_command, top, queue_commands, admin_commands, work_command, demo):
        module.add_commands(commands, common)
    for command_parser in commands.choices.values():  # usage errors show its own usage
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         closed_streams: Sequence[str] = ()) -> int:
    """main runs one subcommand and returns its exit code (the console script exits with it).

    A subcommand may set `take_extras` (given the words argparse left
    unrecognized; True if it made sense of them, else they are a usage error:
    `put` takes a BODY written after a flag), `parse_rest` (run right after parsing, before the
    environment is read: `work` parses the flags between its QUEUE and `--`)
    and `prepare` (run before the event loop starts, e.g. to read a body from
    stdin, so Ctrl-C interrupts it). Every command but top, demo and work
    (which run until told to stop) must be answered within --timeout (plus
    receive's --wait).

    `closed_streams` names the standard streams that were closed, or open the wrong way,
    when the program started (now /dev/null). A command that would read its input from a
    closed stdin (`put` with no BODY: its `uses_stdin`) or whose output is the point
    (`receive`, which leases what it writes, and `top`: its `needs_stdout`, the reason) is
    refused with a usage error, rather than put an empty body or lease messages into
    nothing; the rest run as with /dev/null.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        take_extras = getattr(args, "take_extras", None)
        if take_extras is None or not take_extras(args, extras):
            # Blame the subcommand only for what came after its name.
            words = list(sys.argv[1:] if argv is None else argv)
            before_command = args.command in words and extras[0] in words \
                and words.index(extras[0]) < words.index(args.command)
            (parser if before_command else getattr(args, "command_parser", parser)).error(
                f"unrecognized arguments: {' '.join(extras)}")
    refusal = closed_stream_refusal(args, closed_streams)
    if refusal:
        print(f"wonderq {args.command}: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    parse_rest = getattr(args, "parse_rest", None)
    if parse_rest is not None:
        parse_rest(args)
    try:
        _from_environment(args, os.environ if environ is None else environ)
    except ValueError as exc:
        print(f"wonderq: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if getattr(args, "warning", ""):
        print(f"wonderq: warning: {args.warning}", file=sys.stderr)
    runner: Runner = args.run
    try:
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        if args.command not in UNBOUNDED_COMMANDS or getattr(args, "once", False):
            # `top --once` is one stats call: bounded like one (a silent port held it).
            limit = args.timeout + float(getattr(args, "wait", 0.0) or 0.0)
            return _run(_bounded(runner(args), limit))
        return _run(runner(args))
    except KeyboardInterrupt:
        return 130
    except NoAnswer:
        waited = float(getattr(args, "wait", 0.0) or 0.0)
        within = f"{args.timeout:g} s" if not waited else \
            f"{args.timeout + waited:g} s (--timeout {args.timeout:g} + --wait {waited:g})"
        # A port that takes connections and says nothing is most often not WonderQ's, or
        # one whose TLS setting is not ours (a newcomer's review waited here, at a port
        # of another program, told only of stats' pacing).
        check = "check that it is a WonderQ server's port and uses TLS as this command does"
        why = f"; {check}" if args.command not in PACED_COMMANDS else (
            "; on a server busy with many queues and many stats callers, stats and queues "
            f"wait their turn (PROTOCOL.md): a longer --timeout may get one; else {check}")
        if args.command == "redrive":
            # It may be busy with the redrive itself: a big one is moved in steps, and
            # runs on to its end once begun, whoever waits for it (PROTOCOL.md).
            why += ("; a big redrive the server has begun goes on to its end without us: "
                    "queue-info on the dead-letter queue shows how far it got")
        print(f"wonderq: the server at {args.host}:{args.port} did not answer within "
              f"{within}{why}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except WonderQError as exc:
        if isinstance(exc, ConnectionClosed) and exc.server_code in REFUSING_CLOSES:
            print(f"wonderq: {exc.message}", file=sys.stderr)  # names the code
            return EXIT_REFUSED
        if isinstance(exc, ConnectionClosed):
            # A TLS port closes a plain connection without a word, and a server that
            # requires client certificates one without: say what may be wrong. A server
            # that said why it closed (IDLE_TIMEOUT, TOO_MANY_CONNECTIONS) spoke WonderQ
            # over this very connection: TLS is not what is wrong; nor is it when the
            # peer sent anything (another program's port answering in its own protocol).
            if exc.server_code is not None or exc.peer_spoke:
                hint = ""
            elif args.connect_options["ssl"] is None:
                hint = ("; if the server uses TLS, drop --no-tls" if getattr(args, "no_tls", None)
                        else "; if the server uses TLS, add --tls or --tls-ca")
            else:
                hint = _client_certificate_hint(args)
            print(f"wonderq: lost the connection to {args.host}:{args.port}: {exc.message}"
                  f"{hint}", file=sys.stderr)
            return EXIT_UNREACHABLE
        hint = ""
        if getattr(args, "token_from_env", False) and exc.message.startswith(NO_TOKEN_REFUSAL):
            # The user typed no token: it was exported, likely for another server.
            hint = (f" (this command's token came from {connection_options.TOKEN_VARIABLE}: "
                    f"unset it for this server)")
        print(f"wonderq: {exc.code}: {exc.message}{hint}", file=sys.stderr)
        return EXIT_REFUSED
    except OutputFailed as exc:
        # Not the server's fault, and not "not reached": whatever the command did on the
        # server is done (a put is stored), so a script must not take it for exit 2.
        print(f"wonderq: cannot write the output: {exc}", file=sys.stderr)
        return EXIT_OUTPUT_FAILED
    except BrokenPipeError:
        # Whoever read our output stopped (`| head`): not the server's fault. Quietly,
        # as a tool killed by SIGPIPE; stdout goes to /dev/null so the interpreter's
        # last flush does not fail again on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (TimeoutError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
            str(exc) or type(exc).__name__)
        print(f"wonderq: cannot reach the server at {args.host}:{args.port}: {reason}"
              f"{_tls_mismatch_hint(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE


def closed_stream_refusal(args: argparse.Namespace, closed_streams: Sequence[str]) -> str:
    """closed_stream_refusal says why the command cannot run with the standard streams
    `closed_streams` closed (or open the wrong way), or "" if it can."""
    uses_stdin = getattr(args, "uses_stdin", None)
    if "stdin" in closed_streams and uses_stdin is not None and uses_stdin(args):
        return ("standard input is closed (or not open for reading), and the body would be "
                "read from it: give BODY as an argument, or standard input a file")
    needs_stdout = getattr(args, "needs_stdout", "")
    if "stdout" in closed_streams and needs_stdout:
        return (f"standard output is closed (or not open for writing): {needs_stdout}; give "
                "it a file or a pipe")
    return ""


def _tls_mismatch_hint(error: BaseException) -> str:
    """_tls_mismatch_hint: a TLS handshake answered by a port that speaks no TLS fails
    with OpenSSL's WRONG_VERSION_NUMBER (a reviewer had only those words)."""
    if "WRONG_VERSION_NUMBER" in str(error):
        return "; the server does not seem to use TLS on this port: connect without (--no-tls)"
    return ""


def _client_certificate_hint(args: argparse.Namespace) -> str:
    """_client_certificate_hint: a TLS connection that the server ends after the handshake
    may be missing the client certificate a server with --tls-ca requires (TLS 1.3 checks
    it after the handshake, so the client sees no more than a reset), or not trust the one
    given. A refusal during the handshake names itself (TLSV13_ALERT_CERTIFICATE_REQUIRED)
    and needs no hint."""
    if args.tls_cert is None:
        return "; if the server requires client certificates (its --tls-ca), add --tls-cert"
    # A certificate the server does not trust ends the same way (a reviewer's, signed by
    # another CA, had only "connection to the server closed").
    return ("; if the server requires client certificates, its --tls-ca must have signed "
            "this --tls-cert")


async def _bounded(coroutine: Coroutine[Any, Any, int], seconds: float) -> int:
    """_bounded runs a command under a deadline; only its own expiry is NoAnswer (a
    connect that times out inside it is "cannot reach")."""
    deadline = asyncio.timeout(seconds)
    command_deadline.COMMAND_DEADLINE.set(deadline)
    try:
        async with deadline:
            return await coroutine
    except TimeoutError:
        if deadline.expired():
            raise NoAnswer from None
        raise


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


STANDARD_STREAMS = ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w"))


def open_missing_standard_streams() -> tuple[str, ...]:
    """open_missing_standard_streams opens /dev/null on whichever of fds 0, 1 and 2 is
    closed (`wonderq work ... >&-`), as daemons do: else the next file opened takes that
    number, and libuv aborts when a subprocess's pipe is one of them. Python has made that
    stream None; it becomes the /dev/null one (else a print to a missing stderr would go
    to stdout). A stream open the wrong way (`2</dev/null`; pyenv's shell shims leave their
    script read-only on a closed fd 2) counts as closed too: a write to it failed with
    EBADF, and the unreachable server's exit 2 became an exit 1. Returns the names of the
    streams that were closed."""
    closed = []
    for fd, name, mode in STANDARD_STREAMS:
        if not _usable(fd, mode):
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            closed.append(name)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 (for good)
    return tuple(closed)


def _usable(fd: int, mode: str) -> bool:
    """_usable: `fd` is open for reading (mode "r") or writing ("w"); only open, where
    there is no fcntl (Windows)."""
    try:
        if fcntl is None:
            os.fstat(fd)
            return True
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return False
    return access == os.O_RDWR or access == (os.O_RDONLY if mode == "r" else os.O_WRONLY)


def console_script() -> None:
    sys.exit(main(closed_streams=open_missing_standard_streams()))
