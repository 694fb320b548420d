"""The text protocol for people with nc or telnet, sans-I/O.

Design decision: one command per line, words separated by spaces, replies
that read well on a terminal and parse easily in a script:

    PUT <queue> <body...>                         -> OK <id>
    GET|RECEIVE <queue> [max=N] [wait=S] [visibility=S]
                        -> MSG <id> <lease> <deliveries> <enqueued_at> <bytes>
                           <body>
                           ... one MSG block per message, then END
    ACK <queue> <id> <lease>                      -> OK
    NACK <queue> <id> <lease> [delay=S]           -> OK
    TOUCH <queue> <id> <lease> [visibility=S]     -> OK <visible_again_at>
    STATS                                         -> "name: value" lines, then END
    PING                                          -> PONG
    QUIT                                          -> BYE, then the server closes
    anything that fails                           -> ERR <CODE> <message>

Rules:
* Lines end in LF or CRLF; replies end in CRLF. Empty lines are ignored.
  Command words are case-insensitive.
* A PUT body is the rest of the line after the queue name and one space, so
  it may contain spaces but not a line break; the binary protocol carries any
  bytes. A delivered body is sent with its length, so it is binary-safe.
* Optional arguments may be given as name=value or in the order shown.
* A line longer than `max_line_bytes` is answered with LINE_TOO_LONG and
  skipped up to its end; the connection stays usable.
* `feed` never raises for anything the peer sends.

Must not know: sockets, asyncio, the broker.
"""

from __future__ import annotations

from typing import Any

from .commands import COMMANDS, TEXT_CONVERTERS, Command, Limits, Rejected, make_command
from .errors import (
    LINE_TOO_LONG,
    UNKNOWN_COMMAND,
    CommandError,
    WonderQError,
    bad_argument,
)

# Words a person may type, and the command each one means.
TEXT_COMMANDS = {
    b"PUT": "put",
    b"GET": "receive",
    b"RECEIVE": "receive",
    b"ACK": "ack",
    b"NACK": "nack",
    b"TOUCH": "touch",
    b"STATS": "stats",
    b"PING": "ping",
    b"QUIT": "quit",
}


class TextDecoder:
    """Turns the byte stream of one text connection into commands."""

    __slots__ = ("_buffer", "_discarding", "_limits")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line, skipping to its end

    def feed(self, data: bytes) -> list[Command | Rejected]:
        buf = self._buffer
        buf += data
        out: list[Command | Rejected] = []
        pos = 0
        max_line = self._limits.max_line_bytes
        while True:
            newline = buf.find(b"\n", pos)
            if newline < 0:
                if len(buf) - pos > max_line:
                    if not self._discarding:
                        out.append(self._too_long())
                    self._discarding = True
                    pos = len(buf)
                break
            line = bytes(buf[pos:newline])
            pos = newline + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > max_line:
                out.append(self._too_long())
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.strip():
                out.append(self._parse(line))
        if pos:
            del buf[:pos]
        return out

    def _too_long(self) -> Rejected:
        return Rejected(CommandError(LINE_TOO_LONG, f"line is over the limit of "
                                     f"{self._limits.max_line_bytes} bytes; skipped to its end"))

    def _parse(self, line: bytes) -> Command | Rejected:
        word, _, rest = line.lstrip().partition(b" ")
        name = TEXT_COMMANDS.get(word.upper())
        try:
            if name is None:
                typed = word.decode(errors="replace")
                known = " ".join(w.decode() for w in TEXT_COMMANDS)
                raise CommandError(UNKNOWN_COMMAND, f"unknown command {typed!r:.40}; "
                                   f"known: {known}")
            if name == "put":
                queue, _, body = rest.partition(b" ")
                args: dict[str, Any] = {"queue": queue.decode(errors="replace"), "body": body}
                if not queue:
                    raise bad_argument("PUT needs a queue: PUT <queue> <body>")
            else:
                args = self._arguments(name, rest.split())
            return make_command(name, args, self._limits)
        except CommandError as exc:
            return Rejected(exc)

    @staticmethod
    def _arguments(name: str, words: list[bytes]) -> dict[str, Any]:
        required, optional = COMMANDS[name]
        order = list(required) + list(optional)
        args: dict[str, Any] = {}
        for position, word in enumerate(words):
            text = word.decode(errors="replace")
            field, eq, value = text.partition("=")
            if not eq:
                if position >= len(order):
                    raise bad_argument(f"too many arguments for {name.upper()}: "
                                       f"{name.upper()} {' '.join(f'<{f}>' for f in order)}")
                field, value = order[position], text
            if field in args:
                raise bad_argument(f"{field} given twice")
            convert = TEXT_CONVERTERS.get(field)
            args[field] = convert(field, value) if convert else value
        missing = [f for f in required if f not in args]
        if missing:
            usage = " ".join(f"<{f}>" for f in required)
            raise bad_argument(f"{name.upper()} needs {', '.join(missing)}: "
                               f"{name.upper()} {usage}")
        return args


class TextEncoder:
    """Turns results and errors into reply lines."""

    __slots__ = ()

    def result(self, command: Command, result: Any) -> bytes:
        name = command.name
        if name == "put":
            return b"OK %d\r\n" % result
        if name == "receive":
            parts = []
            for m in result:
                parts.append(b"MSG %d %d %d %.3f %d\r\n" % (
                    m.id, m.lease, m.deliveries, m.enqueued_at, len(m.body)))
                parts.append(m.body)
                parts.append(b"\r\n")
            parts.append(b"END\r\n")
            return b"".join(parts)
        if name == "touch":
            return b"OK %.3f\r\n" % result
        if name == "stats":
            lines = [f"{key}: {_text_value(value)}\r\n" for key, value in flatten(result)]
            return ("".join(lines) + "END\r\n").encode()
        if name == "ping":
            return b"PONG\r\n"
        if name == "quit":
            return b"BYE\r\n"
        return b"OK\r\n"

    def error(self, request_id: Any, error: WonderQError) -> bytes:
        message = error.message.replace("\r", " ").replace("\n", " ")
        return f"ERR {error.code} {message}\r\n".encode()


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """flatten turns nested stats into dotted names: queues.jobs.ready: 3."""
    items: list[tuple[str, Any]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(flatten(value, name + "."))
        else:
            items.append((name, value))
    return items
