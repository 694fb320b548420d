"""`wonderq nack | redrive | queue-info | message-info | create-queue | configure-queue |
delete-queue`: looking after queues and dead letters from a shell.

Design decision: the commands of PROTOCOL.md that queue_commands.py leaves out,
one client call each, so an operator can go through the whole dead-letter
routine (look at a message, give one back, redrive, change a queue's settings)
without writing a script or speaking text mode through `nc`. Like
queue_commands.py they print for people by default and one JSON document with
`--json`.

Rules:
* Flags are the protocol's field names with dashes (`--max-deliveries` for
  max_deliveries); a setting left out is not sent, so create-queue gives it
  its default and configure-queue leaves it as it is.
* Maps (queue-info, message-info, a queue's settings) print as `name: value`
  lines in the server's order, as text mode prints them; nil is empty, times
  (`*_at`, a dead letter's move) are shown as UTC dates too.
* Nothing here creates a queue but create-queue; on a queue that does not
  exist the others fail as the commands do (QUEUE_NOT_FOUND; NOT_FOUND for
  nack, as for ack), exit 1. configure-queue with no setting is a usage error.
* Values shown for people have their control characters escaped, so a header
  cannot print lines that look like other fields.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Mapping
from typing import Any

from wonderq_client import QueueExists

from . import argument_types
from .connection_options import open_client
from .output import counted, say, write_out
from .queue_commands import escaped, id_json, print_json, print_result


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    nack = commands.add_parser("nack", parents=[common],
                               help="give a leased message back (ready again at once, or later)")
    nack.add_argument("queue", type=argument_types.text)
    nack.add_argument("id", type=argument_types.unsigned)
    nack.add_argument("lease", type=argument_types.unsigned)
    nack.add_argument("--delay", type=argument_types.seconds, default=0.0,
                      help="seconds before it can be received again (default 0)")
    nack.add_argument("--unseen", action="store_true",
                      help="nobody worked on it: this delivery does not count toward the "
                           "queue's max_deliveries")
    nack.set_defaults(run=run_nack)

    redrive = commands.add_parser("redrive", parents=[common],
                                  help="move dead letters back to the queues they came from")
    redrive.add_argument("queue", type=argument_types.text, help="the dead-letter queue")
    redrive.add_argument("--max", type=argument_types.positive,
                         help="most messages to move (default: all)")
    redrive.add_argument("--json", action="store_true", help='print {"moved": N}')
    redrive.set_defaults(run=run_redrive)

    queue_info = commands.add_parser("queue-info", parents=[common],
                                     help="a queue's settings and figures")
    queue_info.add_argument("queue", type=argument_types.text)
    queue_info.add_argument("--json", action="store_true", help="print a JSON object")
    queue_info.set_defaults(run=run_queue_info)

    message_info = commands.add_parser("message-info", parents=[common],
                                       help="one message's state, without leasing it")
    message_info.add_argument("queue", type=argument_types.text)
    message_info.add_argument("id", type=argument_types.unsigned)
    message_info.add_argument("--json", action="store_true", help="print a JSON object")
    message_info.set_defaults(run=run_message_info)

    for name, run, text in (
            ("create-queue", run_create_queue,
             "create a queue with settings (the same again succeeds; different: QUEUE_EXISTS)"),
            ("configure-queue", run_configure_queue, "change the settings given")):
        parser = commands.add_parser(name, parents=[common], help=text)
        parser.add_argument("queue", type=argument_types.text)
        _settings_flags(parser)
        parser.add_argument("--json", action="store_true",
                            help="print the queue's settings as a JSON object")
        parser.set_defaults(run=run)

    delete = commands.add_parser("delete-queue", parents=[common],
                                 help="delete a queue, its settings and its messages")
    delete.add_argument("queue", type=argument_types.text)
    delete.add_argument("--json", action="store_true", help='print {"deleted": N}')
    delete.set_defaults(run=run_delete_queue)


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--visibility-timeout", type=argument_types.seconds,
                        help="lease length for receives that give none (0: the server's)")
    parser.add_argument("--max-deliveries", type=argument_types.unsigned,
                        help="deliveries before a message goes to the dead-letter queue "
                             "(0: never; needs --dead-letter-queue)")
    parser.add_argument("--dead-letter-queue", metavar="QUEUE", type=argument_types.text,
                        help="where messages go after --max-deliveries ('' for none)")
    parser.add_argument("--delay", type=argument_types.seconds,
                        help="seconds before a put can be received, for puts that give none")
    parser.add_argument("--max-length", type=argument_types.unsigned,
                        help="most messages; more puts are refused with FULL (0: no limit)")
    parser.add_argument("--expiry", type=argument_types.seconds,
                        help="seconds after which an unacked message is dropped (0: never)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"visibility_timeout": args.visibility_timeout,
            "max_deliveries": args.max_deliveries,
            "dead_letter_queue": args.dead_letter_queue, "delay": args.delay,
            "max_length": args.max_length, "expiry": args.expiry}


def print_fields(fields: Mapping[str, Any]) -> None:
    """print_fields: a reply map as `name: value` lines (see the rules); a map inside it
    (a message's headers) as `name.key: value`."""
    write_out("".join(f"{line}\n" for line in field_lines(fields)))


def field_lines(fields: Mapping[str, Any], prefix: str = "") -> list[str]:
    """field_lines: print_fields' lines."""
    lines = []
    for name, value in fields.items():
        if isinstance(value, Mapping):
            lines += field_lines(value, f"{prefix}{name}.")
            continue
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif name == "dead_letter" and isinstance(value, list) and len(value) == 2:
            text = f"from {value[0]}, moved at {_time(value[1])}"
        elif isinstance(value, list):
            text = " ".join(map(str, value))
        elif name.endswith("_at") and isinstance(value, int | float):
            text = _time(value)
        elif name == "visibility_timeout" and value == 0:  # a reviewer read it as no lease
            text = f"{value} (the server's --visibility-timeout applies)"
        else:
            text = str(value)
        lines.append(f"{escaped(prefix + name)}: {escaped(text)}")
    return lines


def _time(seconds: float) -> str:
    """_time: seconds since the epoch, with the UTC date for people."""
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, ValueError, OSError):  # past year 9999 (an expiry of 1e300 s)
        return f"{seconds:.3f}"
    return f"{seconds:.3f} ({moment:%Y-%m-%d %H:%M:%S} UTC)"


async def run_nack(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        await client.nack(args.queue, args.id, args.lease, delay=args.delay,
                          unseen=args.unseen)
    say(f"nacked {args.id}" + (f", ready in {args.delay:g} s" if args.delay else ""))
    return 0


async def run_redrive(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        moved = await client.redrive(args.queue, max=args.max)
    return print_result(args, {"moved": moved},
                        f"moved {counted(moved, 'message')} from {args.queue} back to their queues")


async def run_queue_info(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        return _show_fields(args, await client.queue_info(args.queue))


async def run_message_info(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        return _show_fields(args, await client.message_info(args.queue, args.id))


def _show_fields(args: argparse.Namespace, fields: Mapping[str, Any]) -> int:
    if args.json:
        print_json({key: id_json(value) if key in ("id", "lease") else value
                    for key, value in fields.items()})
    else:
        print_fields(fields)
    return 0


async def run_create_queue(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        try:
            settings = await client.create_queue(args.queue, **_settings(args))
        except QueueExists as exc:
            # The server names the request; here the command is what to run.
            exc.message = exc.message.replace("use configure_queue",
                                              "use `wonderq configure-queue`")
            raise
    return _print_settings(args, "created", settings)


async def run_configure_queue(args: argparse.Namespace) -> int:
    if all(value is None for value in _settings(args).values()):
        print("wonderq configure-queue: give at least one setting to change (see --help)",
              file=sys.stderr)
        return 2
    async with open_client(args) as client:
        settings = await client.configure_queue(args.queue, **_settings(args))
    return _print_settings(args, "configured", settings)


def _print_settings(args: argparse.Namespace, done: str, settings: Mapping[str, Any]) -> int:
    if not args.json:
        print(f"{done} {args.queue}", file=sys.stderr)
    return _show_fields(args, settings)


async def run_delete_queue(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        deleted = await client.delete_queue(args.queue)
    return print_result(args, {"deleted": deleted},
                        f"deleted {args.queue} and its {counted(deleted, 'message')}")
