"""`wonderq put | receive | ack | peek | purge | queues`: poking at queues from a shell.

Design decision: each subcommand is one client call (or two, for
`receive --ack`), printed for people by default and as JSON with `--json`,
so shell scripts can chain them (`wonderq receive jobs --json | jq ...`).

Rules:
* A body is the BODY argument, or standard input when BODY is `-` or left
  out (bytes as they are, no newline added or removed).
* Bodies are shown as text when they are UTF-8; in JSON a body that is not
  UTF-8 is given as "body_base64" instead of "body".
* `receive --ack` acks what it printed, in one round trip; without --ack
  the messages stay leased until their visibility timeout, as the lease
  printed with each says.
* A `receive --wait` answered with nothing before its wait ran out (a stopping
  server does that before its goodbye; so does a delete-queue) is sent again
  for the rest of the wait, so a stop ends it as a lost connection (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from wonderq_client import Message, WonderQError
from wonderq_client.errors import BatchTooLarge
from wonderq_client.worker import batch_limit

from . import argument_types, deadline
from .connection_options import open_client
from .output import OutputFailed, counted, print_rich, say, write_out
from .text_table import Column, text_table

PEEK_DEFAULT = 10  # `wonderq peek` without --max

def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    put = commands.add_parser("put", parents=[common], help="put one message")
    put.add_argument("queue", type=argument_types.text)
    put.add_argument("body", nargs="?", default=None,
                     help="the message; '-' or nothing reads standard input")
    put.add_argument("--delay", type=argument_types.seconds,
                     help="seconds before it can be received")
    put.add_argument("--priority", type=argument_types.priority,
                     help="lower is handed out first (default 0)")
    put.add_argument("--expiry", type=argument_types.seconds,
                     help="drop it if not acked within these seconds")
    put.add_argument("--header", action=argument_types.Headers, metavar="KEY=VALUE",
                     type=argument_types.header,
                     help="a header (repeatable, each KEY once)")
    put.add_argument("--json", action="store_true", help='print {"id": ...}')
    put.set_defaults(run=run_put, prepare=read_body, uses_stdin=body_from_stdin,
                     take_extras=body_after_flags)

    receive = commands.add_parser("receive", parents=[common], help="receive (lease) messages")
    receive.add_argument("queue", type=argument_types.text)
    receive.add_argument("--max", type=argument_types.positive, default=1,
                         help="most messages (default 1)")
    receive.add_argument("--wait", type=argument_types.seconds, default=0.0,
                         help="seconds to wait for a first message (default 0)")
    receive.add_argument("--visibility", type=argument_types.positive_seconds,
                         help="lease length in seconds (default: the queue's)")
    receive.add_argument("--ack", action="store_true", help="ack them once printed")
    receive.add_argument("--json", action="store_true",
                         help='print a JSON array ("body", or "body_base64" when not UTF-8)')
    receive.set_defaults(run=run_receive, needs_stdout="what it receives would be leased "
                         "(and with --ack deleted) unseen")

    ack = commands.add_parser("ack", parents=[common], help="ack (delete) one message")
    ack.add_argument("queue", type=argument_types.text)
    ack.add_argument("id", type=argument_types.unsigned)
    ack.add_argument("lease", type=argument_types.unsigned)
    ack.set_defaults(run=run_ack)

    peek = commands.add_parser("peek", parents=[common],
                               help="show the next messages without leasing them")
    peek.add_argument("queue", type=argument_types.text)
    peek.add_argument("--max", type=argument_types.positive, default=None,
                      help=f"most messages (default {PEEK_DEFAULT}, or the server's "
                      "--max-batch if lower)")
    peek.add_argument("--json", action="store_true",
                      help='print a JSON array ("body", or "body_base64" when not UTF-8)')
    peek.set_defaults(run=run_peek)

    purge = commands.add_parser("purge", parents=[common],
                                help="delete every message of a queue")
    purge.add_argument("queue", type=argument_types.text)
    purge.add_argument("--json", action="store_true", help='print {"purged": N}')
    purge.set_defaults(run=run_purge)

    queues = commands.add_parser("queues", parents=[common], help="list the queues")
    queues.add_argument("--json", action="store_true", help="print a JSON array")
    queues.set_defaults(run=run_queues)


def body_from_stdin(args: argparse.Namespace) -> bool:
    """body_from_stdin: put's BODY is '-' (or not given): it is read from standard input."""
    return args.body is None or args.body == "-"


def body_after_flags(args: argparse.Namespace, extras: list[str]) -> bool:
    """body_after_flags (main's `take_extras`): argparse fills QUEUE and the optional BODY
    from the first run of plain words, so in `put jobs --delay 5 hello` (or `put jobs
    --delay 5 -- -x`) BODY comes back unparsed. When no BODY was given, that one word is
    it; anything else stays an unrecognized argument."""
    if args.body is not None:
        return False
    after_dashes = extras[:1] == ["--"]
    words = extras[1:] if after_dashes else extras
    if len(words) != 1 or (words[0].startswith("-") and words[0] != "-" and not after_dashes):
        return False
    args.body = words[0]
    return True


def read_body(args: argparse.Namespace) -> None:
    """read_body runs before the event loop starts (main's `prepare`), so Ctrl-C stops a
    read from a terminal at once."""
    if body_from_stdin(args):
        if sys.stdin.isatty():
            print("wonderq: reading the body from standard input; Ctrl-D ends it",
                  file=sys.stderr)
        args.body_bytes = sys.stdin.buffer.read()
    else:
        args.body_bytes = os.fsencode(args.body)  # the argument's bytes, UTF-8 or not


def shown(body: bytes) -> Text:
    """shown is a body as a table cell: literal text (never rich markup), with control
    characters escaped so a body cannot drive the terminal."""
    return Text(escaped(body.decode(errors="backslashreplace")))


def escaped(text: str) -> str:
    """escaped: `text` with its control characters (line breaks, escape sequences) written
    as escapes, so what a producer put cannot drive the terminal or forge lines."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode()
                   for ch in text)


def print_json(value: Any) -> None:
    write_out(json.dumps(value, indent=2) + "\n")


def print_result(args: argparse.Namespace, for_scripts: Any, for_people: str) -> int:
    """print_result prints a command's result, as JSON with --json; returns exit code 0."""
    if args.json:
        print_json(for_scripts)
    else:
        say(for_people)
    return 0


def id_json(value: int | None) -> str | None:
    """id_json is a message id or lease as --json gives it: a string of its digits. They
    are 64-bit numbers, over 2**53, which jq 1.6 and JavaScript round when they read a
    JSON number: a script that acked with the id jq gave found no message (a reviewer)."""
    return None if value is None else str(value)


def message_json(msg: Message) -> dict[str, Any]:
    """message_json is one message as scripts get it from --json."""
    fields: dict[str, Any] = {"id": id_json(msg.id), "lease": id_json(msg.lease),
                              "deliveries": msg.deliveries,
                              "enqueued_at": msg.enqueued_at, "priority": msg.priority,
                              "headers": msg.headers}
    try:
        fields["body"] = msg.body.decode()
    except UnicodeDecodeError:
        fields["body_base64"] = base64.b64encode(msg.body).decode()
    if msg.dead_letter is not None:
        fields["dead_letter"] = list(msg.dead_letter)
    return fields


def messages_table(title: str, messages: Sequence[Message], leased: bool) -> Table:
    """messages_table: ids and leases whole on one line each (they are copied into
    `wonderq ack`), the body folded into what width is left."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, min_width=19)
    if leased:
        table.add_column("lease", no_wrap=True, min_width=19)
    table.add_column("dlv", justify="right", no_wrap=True)
    table.add_column("pri", justify="right", no_wrap=True)
    table.add_column("body", overflow="fold", ratio=1)
    for msg in messages:
        table.add_row(str(msg.id), *([str(msg.lease)] if leased else []), str(msg.deliveries),
                      str(msg.priority), shown(msg.body))
    return table


# After Ctrl-C, how long `receive` waits for the server's answer to its cancel.
CTRL_C_CLOSE_S = 1.0


async def run_put(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        msg_id = await client.put(args.queue, args.body_bytes, delay=args.delay,
                                  priority=args.priority, headers=args.header,
                                  expiry=args.expiry)
    return print_result(args, {"id": id_json(msg_id)}, str(msg_id))


async def run_receive(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    async with open_client(args) as client:
        wait_ends = loop.time() + args.wait
        try:
            messages = await client.receive(args.queue, max=args.max, wait=args.wait,
                                            visibility=args.visibility)
            while not messages and (left := wait_ends - loop.time()) > 0:
                # Answered with nothing before its wait ran out: a server that stops does
                # that before its goodbye (PROTOCOL.md, "A server that stops says so"),
                # and so does a delete-queue. Asked again for what is left of the wait, a
                # stopping server, which reads no more, ends the connection: exit 2, not
                # "no message" and 0, which a script takes for an empty queue, however
                # long the stop's journal work takes. A deleted queue is waited on anew.
                messages = await client.receive(args.queue, max=args.max, wait=left,
                                                visibility=args.visibility)
        except asyncio.CancelledError:
            if deadline.passed():
                # --timeout ran out (main.py): the server is not answering, so closing must
                # not wait for its answer to the receive's cancel (close() would, up to 5 s
                # more).
                client.abort()
            else:
                # Ctrl-C: the close stays polite, so what came meanwhile goes back, but for
                # CTRL_C_CLOSE_S at most (a live server answers the cancel in milliseconds).
                asyncio.get_running_loop().call_later(min(CTRL_C_CLOSE_S, args.timeout),
                                                      client.abort)
            raise
        try:
            if args.json:
                print_json([message_json(m) for m in messages])
            elif messages:
                print_rich(messages_table(f"{args.queue}: {len(messages)} received",
                                          messages, leased=True))
            else:
                print(f"{args.queue}: no message", file=sys.stderr)
            if args.ack and messages:
                sys.stdout.flush()  # a reader that has gone raises here (and in print_rich,
                # output.py): nothing is acked
        except (BrokenPipeError, OutputFailed):
            # Not written whole: they go back for others now (a nack), rather than at the
            # end of their lease. Counted as a delivery: the reader may have seen some.
            with contextlib.suppress(WonderQError, OSError):
                await client.nack_many(args.queue, messages)
            raise
        if args.ack and messages:
            failed = [r for r in await client.ack_many(args.queue, messages) if r is not None]
            for error in failed:
                print(f"wonderq: ack failed: {error}", file=sys.stderr)
            # On stderr, so that --json stays one document on stdout.
            print(f"{args.queue}: acked {len(messages) - len(failed)}", file=sys.stderr)
            if failed:
                return 1
    return 0


async def run_ack(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        await client.ack(args.queue, args.id, args.lease)
    say(f"acked {args.id}")
    return 0


async def run_peek(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        messages = await _peek(client, args.queue, args.max)
    if args.json:
        print_json([message_json(m) for m in messages])
    elif messages:
        print_rich(messages_table(f"{args.queue}: next {len(messages)} ready",
                                  messages, leased=False))
    else:  # as receive says it, not an empty table
        print(f"{args.queue}: no message ready", file=sys.stderr)
    return 0


async def _peek(client: Any, queue: str, most: int | None) -> list[Message]:
    """_peek: `most` as given; by default PEEK_DEFAULT, or the limit the server names when
    it refuses that as over its --max-batch (a plain `wonderq peek` failed against
    --max-batch 3, a newcomer's review), as the Worker fits its receives (batch_limit)."""
    if most is not None:
        return await client.peek(queue, max=most)
    most = PEEK_DEFAULT
    while True:
        try:
            return await client.peek(queue, max=most)
        except BatchTooLarge as exc:
            if most == 1:
                raise
            most = batch_limit(exc, most)


async def run_purge(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        purged = await client.purge(args.queue)
    return print_result(args, {"purged": purged},
                        f"purged {counted(purged, 'message')} from {args.queue}")


async def run_queues(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        queues = await client.queues()
    if args.json:
        print_json(queues)
        return 0
    columns = [Column("queue", [q["queue"] for q in queues], right=False)]
    for header, figure in (("messages", "messages"), ("ready", "ready"),
                           ("in flight", "in_flight"), ("delayed", "delayed")):
        columns.append(Column(header, [str(q[figure]) for q in queues]))
    columns.append(Column("explicit", ["yes" if q["explicit"] else "no" for q in queues]))
    table = text_table(f"queues ({len(queues)})", columns)
    print_rich(table)
    return 0
