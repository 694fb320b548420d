"""Text-mode replies: results and errors in, reply lines out.

Design decision: every reply is a line or a block ending in END, easy to
read on a terminal and to parse in a shell script; a body always travels
with its length, so a delivered body is binary-safe.

    OK [<value>]        put (the id), touch (the deadline), purge,
                        delete_queue and redrive (a count), ack, nack
    MSG block per message, then END       receive, peek (lease printed as 0)
        MSG <id> <lease> <deliveries> <enqueued_at> <bytes> [extra words]
        <body>
    one line per item, then END           put_many (OK <id> or ERR ...),
                                          ack_many and nack_many (OK or ERR ...)
    QUEUE <name> messages=N ready=N in_flight=N delayed=N explicit=true|false
                        one per queue, then END (queues)
    name: value lines, then END           stats, queue_info, message_info,
                                          create_queue, configure_queue
    ERR <CODE> <message>                  any failure

Rules:
* A MSG line's extra words appear only when not default: `priority=N`,
  `dead_letter=<origin queue> dead_lettered_at=<time>`, and one
  `header.KEY=VALUE` per header, KEY and VALUE percent-encoded (so a word
  never holds a space or a line break).
* In "name: value" lines: nested maps join their names with dots (since a
  queue name may contain dots, split a stats figure off at the last dot);
  true/false for booleans; nothing after the colon for nil (and for an
  empty string); times (`*_at`) with 3 decimals, as in MSG lines. A
  message's headers are `headers.KEY: VALUE` lines, percent-encoded as in
  MSG lines; its dead-letter origin is `dead_letter: <queue>` and
  `dead_lettered_at: <time>`.
* Replies end in CRLF. An error message never contains a line break (each is
  a space) or any other control character: those it would echo from a
  request (a stray ESC in an option's name, say) are written as `\\xNN`, so
  a reply shown on a terminal (`nc`, telnet) cannot move its cursor or
  retitle its window; bidirectional marks and overrides (U+202E) as
  `\\uNNNN`, so it cannot show its words in another order.

Must not know: sockets, asyncio, the broker.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .commands import Command
from .errors import WonderQError


class TextEncoder:
    """Turns results and errors into reply lines."""

    __slots__ = ()

    def result(self, command: Command, result: Any) -> bytes:
        return REPLIES.get(command.name, _ok)(result)

    def error(self, request_id: Any, error: WonderQError) -> bytes:
        return error_line(error)


# C0, DEL and C1; and the bidirectional marks, overrides and isolates, which can make a
# line show its words in another order (U+202E, a reviewer's).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(control: re.Match[str]) -> str:
    code = ord(control.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def error_line(error: WonderQError) -> bytes:
    message = _CONTROL.sub(_escaped, error.message.replace("\r", " ").replace("\n", " "))
    return f"ERR {error.code} {message}\r\n".encode()


def _ok(result: Any) -> bytes:
    return b"OK\r\n"


def _ok_number(result: int) -> bytes:
    return b"OK %d\r\n" % result


def _put_many(results: list[Any]) -> bytes:
    lines = [error_line(r) if isinstance(r, WonderQError) else b"OK %d\r\n" % r
             for r in results]
    return b"".join(lines) + b"END\r\n"


def _each_ok(results: list[Any]) -> bytes:
    lines = [error_line(r) if isinstance(r, WonderQError) else b"OK\r\n" for r in results]
    return b"".join(lines) + b"END\r\n"


def _deliveries(messages: list[Any]) -> bytes:
    return b"".join(message_block(m, m.lease) for m in messages) + b"END\r\n"


def _peeked(messages: list[Any]) -> bytes:
    return b"".join(message_block(m, 0) for m in messages) + b"END\r\n"


def message_block(m: Any, lease: int) -> bytes:
    """message_block is one MSG line and the body after it."""
    words = [b"MSG %d %d %d %.3f %d" % (m.id, lease, m.deliveries, m.enqueued_at, len(m.body))]
    if m.priority:
        words.append(b"priority=%d" % m.priority)
    if m.origin is not None:
        origin_queue, moved_at = m.origin
        words.append(b"dead_letter=%s dead_lettered_at=%.3f" % (origin_queue.encode(),
                                                                  moved_at))
    if m.headers:
        words.extend(f"header.{_encoded(k)}={_encoded(v)}".encode()
                     for k, v in m.headers.items())
    return b" ".join(words) + b"\r\n" + m.body + b"\r\n"


def _encoded(text: str) -> str:
    return quote(text, safe="")


def _touch(deadline: float) -> bytes:
    return b"OK %.3f\r\n" % deadline


def _info(tree: dict[str, Any]) -> bytes:
    """_info: info_lines' lines, written straight into one list (STATS of 10,000 queues is
    150,000 lines: this took 88 ms, building every pair first)."""
    parts: list[str] = []
    for key, value in tree.items():
        if key in ("headers", "dead_letter"):
            parts.extend(f"{name}: {text}\r\n" for name, text in info_lines({key: value}))
        elif type(value) is dict:
            _write_lines(parts, f"{key}.", value)
        else:
            _write_lines(parts, "", {key: value})
    parts.append("END\r\n")
    return "".join(parts).encode()


def _write_lines(parts: list[str], prefix: str, tree: dict[str, Any]) -> None:
    """_write_lines appends `tree`'s "name: value" lines, as flatten and text_value make
    them; ints, strings and floats that are not times are written as they are."""
    for key, value in tree.items():
        kind = type(value)
        if kind is int or kind is str or (kind is float and not key.endswith("_at")):
            parts.append(f"{prefix}{key}: {value}\r\n")
        elif kind is dict:
            _write_lines(parts, f"{prefix}{key}.", value)
        else:
            parts.append(f"{prefix}{key}: {text_value(key, value)}\r\n")


def _queues(rows: list[dict[str, Any]]) -> bytes:
    lines = [f"QUEUE {row['queue']} messages={row['messages']} ready={row['ready']} "
             f"in_flight={row['in_flight']} delayed={row['delayed']} "
             f"explicit={text_value('explicit', row['explicit'])}\r\n" for row in rows]
    return ("".join(lines) + "END\r\n").encode()


REPLIES: dict[str, Callable[[Any], bytes]] = {
    "put": _ok_number,
    "put_many": _put_many,
    "receive": _deliveries,
    "ack_many": _each_ok,
    "nack_many": _each_ok,
    "touch": _touch,
    "create_queue": _info,
    "configure_queue": _info,
    "queue_info": _info,
    "queues": _queues,
    "peek": _peeked,
    "purge": _ok_number,
    "delete_queue": _ok_number,
    "redrive": _ok_number,
    "message_info": _info,
    "stats": _info,
    "ping": lambda result: b"PONG\r\n",
    "quit": lambda result: b"BYE\r\n",
}


def info_lines(tree: dict[str, Any]) -> list[tuple[str, str]]:
    """info_lines turns a reply map into (name, value) text pairs; see the module rules."""
    lines: list[tuple[str, str]] = []
    for key, value in tree.items():
        if key == "headers" and isinstance(value, dict):
            lines.extend((f"headers.{_encoded(k)}", _encoded(v)) for k, v in value.items())
        elif key == "dead_letter":
            origin_queue, moved_at = value if value else (None, None)
            lines.append(("dead_letter", text_value(key, origin_queue)))
            lines.append(("dead_lettered_at", text_value("dead_lettered_at", moved_at)))
        else:
            lines.extend((name, text_value(name, v)) for name, v in flatten({key: value}))
    return lines


def text_value(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and name.endswith("_at"):
        return f"{value:.3f}"
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
