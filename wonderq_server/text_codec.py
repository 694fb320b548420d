"""The text protocol for people with nc or telnet, sans-I/O: lines in, commands out.

Design decision: one command per line, words separated by spaces, replies
that read well on a terminal and parse easily in a script. The one command
that spans lines is PUT_MANY: its header line says how many body lines
follow, and the decoder collects them (across feeds) into one command.

    PUT <queue> [option=value ...] [--] <body...>       -> OK <id>
    PUT_MANY <queue> <count> [option=value ...]
        then exactly <count> lines, each one body
                        -> OK <id> or ERR ... per body, then END
    GET|RECEIVE <queue> [max=N] [wait=S] [visibility=S]
                        -> MSG <id> <lease> <deliveries> <enqueued_at> <bytes> [extras]
                           <body>
                           ... one MSG block per message, then END
    ACK <queue> <id> <lease>                      -> OK
    ACK_MANY <queue> <id>:<lease> ...             -> OK or ERR ... per item, then END
    NACK <queue> <id> <lease> [delay=S]           -> OK
    NACK_MANY <queue> [delay=S] <id>:<lease> ...  -> OK or ERR ... per item, then END
    TOUCH <queue> <id> <lease> [visibility=S]     -> OK <visible_again_at>
    CREATE_QUEUE <queue> [setting=value ...]      -> "name: value" lines, then END
    CONFIGURE_QUEUE <queue> [setting=value ...]   -> "name: value" lines, then END
    QUEUE_INFO <queue>                            -> "name: value" lines, then END
    QUEUES              -> QUEUE <name> messages=N ... lines, then END
    PEEK <queue> [max=N]                          -> MSG blocks (lease 0), then END
    PURGE <queue> | DELETE_QUEUE <queue>          -> OK <messages removed>
    REDRIVE <queue> [max=N]                       -> OK <messages moved>
    MESSAGE_INFO <queue> <id>                     -> "name: value" lines, then END
    STATS                                         -> "name: value" lines, then END
    PING                                          -> PONG
    AUTH <token>                                  -> OK (see auth.py)
    QUIT                                          -> BYE, then the server closes
    anything that fails                           -> ERR <CODE> <message>

(PUT options are delay=S, priority=N, expiry=S and header.KEY=VALUE, KEY and
VALUE percent-encoded; text_arguments.py has the details of each syntax and
text_replies.py those of each reply.)

Rules:
* Lines end in LF or CRLF; replies end in CRLF. Empty lines are ignored,
  except inside a PUT_MANY block, where an empty line is an empty body.
  Command words are case-insensitive.
* A PUT body runs to the end of the line, so it may contain spaces but not a
  line break; the binary protocol carries any bytes. A delivered body is
  sent with its length, so it is binary-safe.
* A line longer than `max_line_bytes`, not counting its LF or CRLF (so both
  ends give the same answer), is answered with LINE_TOO_LONG and
  skipped up to its end; the connection stays usable. Inside a PUT_MANY
  block such a line is that body's BODY_TOO_LARGE result instead, counted once
  the line has ended.
* Before AUTH (`stop_after_auth`), a feed ends with an AUTH line, as the
  binary decoder's does with an auth request (see its rules).
* A PUT_MANY header line that is refused (bad queue, option, a count over
  --max-batch, a line over the line limit) is one ERR line, at once; if it
  names a count (a whole number from 1 to --max-frame-bytes), the next
  <count> lines are still its bodies, read and dropped, as beanstalkd skips
  the body of a put it refuses once it knows the body's size. Read as
  commands instead, they ran whatever they said (a body "PURGE q" purged
  q). A header without a readable count starts no block: there is no
  telling where bodies would end. Once accepted, the next <count> lines are
  bodies, whatever they say. If the bodies together pass `max_frame_bytes`
  (the size of the largest binary request), the decoder keeps no more of
  them and the whole request is refused with BATCH_TOO_LARGE once its last
  line has arrived: a text connection cannot make the server buffer more
  than a binary one can.
* At the end of input (`end_of_input`), a line without its newline or a
  PUT_MANY block short of its count is answered MALFORMED and not run.
* A refused line that is an HTTP request line ("POST / HTTP/1.1") or an HTTP
  header naming the host ("Host: ...") is answered HTTP_REQUEST, a protocol
  error: the connection reads nothing more and closes. Any web page can make
  a browser POST a text body to a loopback port; read on, its lines ran as
  commands ("PURGE jobs" purged jobs: a reviewer), which is why Redis closes
  such connections too. The request line comes first, and the Host header
  still catches one whose request line was refused as too long. Only lines
  already refused are looked at, so no command pays for it.
* `feed` never raises for anything the peer sends.

Must not know: sockets, asyncio, the broker.
"""

from __future__ import annotations

import re
from typing import Any

from .commands import Command, Limits, Rejected, make_command
from .errors import (
    BATCH_TOO_LARGE,
    BODY_TOO_LARGE,
    HTTP_REQUEST,
    LINE_TOO_LONG,
    MALFORMED,
    UNKNOWN_COMMAND,
    CommandError,
    ProtocolError,
    WonderQError,
)
from .text_arguments import arguments, put_many_count_given, put_many_header
from .text_replies import TextEncoder, flatten

__all__ = ["TEXT_COMMANDS", "TextDecoder", "TextEncoder", "flatten"]

# Words a person may type, and the command each one means: every command but
# cancel, which names a request by its id (binary mode only; _parse says so).
TEXT_COMMANDS = {
    b"PUT": "put",
    b"PUT_MANY": "put_many",
    b"GET": "receive",
    b"RECEIVE": "receive",
    b"ACK": "ack",
    b"ACK_MANY": "ack_many",
    b"NACK": "nack",
    b"NACK_MANY": "nack_many",
    b"TOUCH": "touch",
    b"CREATE_QUEUE": "create_queue",
    b"CONFIGURE_QUEUE": "configure_queue",
    b"QUEUE_INFO": "queue_info",
    b"QUEUES": "queues",
    b"PEEK": "peek",
    b"PURGE": "purge",
    b"DELETE_QUEUE": "delete_queue",
    b"REDRIVE": "redrive",
    b"MESSAGE_INFO": "message_info",
    b"STATS": "stats",
    b"PING": "ping",
    b"QUIT": "quit",
    b"AUTH": "auth",
}


# How much of an over-long line is kept to see whether it is a PUT_MANY header with a
# count: the command, a queue name (at most 128 bytes, or a longer one that is refused)
# and the count, with room to spare.
HEADER_PEEK_BYTES = 4096
# An HTTP request line ("GET / HTTP/1.1") or Host header: a refused line like either
# ends the connection (the rules).
HTTP_REQUEST_LINE = re.compile(rb"[A-Z]+ \S+ HTTP/\d(\.\d)?")
HTTP_HOST_HEADER = re.compile(rb"host:", re.IGNORECASE)
CR = 13  # b"\r"[0]: a line's last byte, before its LF, that the line limit does not count


def _command_word(line: bytes) -> tuple[bytes, bytes]:
    """_command_word splits a line's command word from the rest at the first space or tab
    (the rest's words are split on either too); "GET\tjobs" was an unknown command
    'GET\tjobs' while "GET jobs\t10" was taken (a reviewer)."""
    parts = line.split(None, 1)
    if not parts:
        return b"", b""
    return parts[0], parts[1] if len(parts) > 1 else b""


def _dropped(count: int) -> str:
    """_dropped: what a refused PUT_MANY header's error adds about its body lines."""
    if count == 1:
        return "; nothing is stored, and the line after it is read as its body and dropped"
    return f"; nothing is stored, and the {count} lines after it are read as its bodies and dropped"


class _BodyBlock:
    """The body lines of a PUT_MANY whose header was accepted, while they arrive."""

    __slots__ = ("args", "bodies", "count", "lines", "refused", "size", "too_big")

    def __init__(self, args: dict[str, Any], count: int, refused: bool = False) -> None:
        self.args = args
        self.count = count
        self.refused = refused  # the header was refused (answered): the lines are dropped
        self.lines = 0
        self.bodies: list[bytes | CommandError] = []
        self.size = 0
        self.too_big = False  # the bodies passed max_frame_bytes: keep no more


class TextDecoder:
    """Turns the byte stream of one text connection into commands."""

    __slots__ = ("_block", "_buffer", "_discarding", "_drop_after_line", "_limits",
                 "stop_after_auth")

    def __init__(self, limits: Limits, stop_after_auth: bool = False) -> None:
        self._limits = limits
        # As BinaryDecoder's: a feed ends with an AUTH line while set (before AUTH), and
        # what follows it is kept unread (take_unread), for the limits the AUTH brings.
        self.stop_after_auth = stop_after_auth
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line, skipping to its end
        self._block: _BodyBlock | None = None  # inside a PUT_MANY, collecting bodies
        # An over-long PUT_MANY header being skipped: its body count, to drop once it ends.
        self._drop_after_line: int | None = None

    def buffered_bytes(self) -> int:
        """buffered_bytes: input held for a line or PUT_MANY block not yet complete (the
        client memory budget, server.py). A block's bodies count only while it keeps them:
        those of a refused header, or past max_frame_bytes, are dropped as they come."""
        block = self._block
        if block is None or block.refused or block.too_big:
            return len(self._buffer)
        return len(self._buffer) + block.size

    def use_limits(self, limits: Limits) -> None:
        """use_limits changes the limits for what comes next (once a connection has
        authenticated, its requests may be as big as the server's limits allow); a feed no
        longer stops after AUTH."""
        self._limits = limits
        self.stop_after_auth = False

    def take_unread(self) -> bytes:
        """take_unread hands back the input kept unread after an AUTH line (or a line not
        yet complete), and forgets it: the caller feeds it again."""
        unread, self._buffer = bytes(self._buffer), bytearray()
        return unread

    def feed(self, data: bytes | bytearray) -> list[Command | Rejected]:
        buf = self._buffer
        buf += data
        out: list[Command | Rejected] = []
        pos = 0
        max_line = self._limits.max_line_bytes
        while True:
            newline = buf.find(b"\n", pos)
            if newline < 0:
                waiting = len(buf) - pos  # a CR at its end may be the CRLF's, not counted
                if waiting > max_line and (waiting > max_line + 1 or buf[-1] != CR):
                    if not self._discarding and self._block is None:
                        # said now; the rest is skipped
                        out.extend(self._too_long(bytes(buf[pos:pos + HEADER_PEEK_BYTES])))
                    self._discarding = True
                    pos = len(buf)
                break
            line = bytes(buf[pos:newline])
            pos = newline + 1
            if self._discarding:
                self._discarding = False
                if self._block is not None:
                    # A body line counts once it has ended: one the input never ends
                    # leaves the block short (end_of_input), and nothing is stored.
                    out.extend(self._too_long())
                self._drop_bodies_of_skipped_header()
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > max_line:
                out.extend(self._too_long(line[:HEADER_PEEK_BYTES]))
                self._drop_bodies_of_skipped_header()
                continue
            if self._block is not None:
                out.extend(self._body_line(line))
            elif line.strip():
                parsed = self._parse(line)
                out.extend(parsed)
                if self.stop_after_auth and parsed and type(parsed[-1]) is Command \
                        and parsed[-1].name == "auth":
                    break
        if pos:
            del buf[:pos]
        return out

    def end_of_input(self) -> list[Command | Rejected]:
        """end_of_input: the peer will send nothing more (its FIN, once what it sent
        has run). What is left unfinished is answered MALFORMED and not run: a line
        without its newline (`printf 'PUT q hello' | nc -N`), or a PUT_MANY block short
        of its count. beanstalkd and Redis drop such a tail without a word, and the
        user cannot tell whether the put was stored; running it could run a command cut
        short that is not the one meant."""
        block, self._block = self._block, None
        rest = bytes(self._buffer).strip()
        self._buffer.clear()
        discarding, self._discarding = self._discarding, False
        self._drop_after_line = None  # an over-long header the input cut short: no block
        if block is not None and block.refused:
            return []  # answered with its header; a body line cut short is dropped too
        if block is not None:
            return [Rejected(CommandError(
                MALFORMED, f"the input ended after {block.lines} of the PUT_MANY's "
                f"{block.count} body lines (each ends with a newline); nothing was stored"))]
        if rest and not discarding:
            return [Rejected(CommandError(
                MALFORMED, "the input ended inside a line (no newline after it); it was "
                "not run"))]
        return []

    def _too_long(self, start: bytes = b"") -> list[Command | Rejected]:
        """_too_long answers an over-long line (`start` is its beginning): a body line's
        error inside a block, else LINE_TOO_LONG. An over-long PUT_MANY header that names
        a count still has its bodies dropped (the rules), from the end of the line."""
        limits = self._limits
        if self._block is not None:
            return self._body_line(CommandError(
                BODY_TOO_LARGE, f"body line is over {limits.max_line_bytes} bytes, over the "
                f"limit of {limits.max_message_bytes} (--max-message-bytes); skipped"))
        why = (f"line is over the limit of {limits.max_line_bytes} bytes "
               f"({limits.max_line_source}); skipped to its end")
        word, rest = _command_word(start)
        words = len(rest.split(None, 2))
        if word.upper() == b"PUT_MANY" and (words == 3 or (words == 2 and rest[-1:].isspace())):
            # The count is whole, not cut off by the end of `start`: a third word, or only
            # whitespace, follows it there (a header padded with blanks: a reviewer's
            # bodies ran as commands).
            self._drop_after_line = put_many_count_given(rest, limits.max_frame_bytes)
            if self._drop_after_line is not None:
                why += f"{_dropped(self._drop_after_line)}"
        return [Rejected(CommandError(LINE_TOO_LONG, why))]

    def _drop_bodies_of_skipped_header(self) -> None:
        """_drop_bodies_of_skipped_header: the over-long line has ended; if it was a PUT_MANY
        header with a count, that many lines now are its bodies, dropped."""
        count, self._drop_after_line = self._drop_after_line, None
        if count is not None:
            self._block = _BodyBlock({}, count, refused=True)

    def _parse(self, line: bytes) -> list[Command | Rejected]:
        word, rest = _command_word(line)
        typed = word.upper()  # whole: _command_word split it off at any whitespace
        name = TEXT_COMMANDS.get(typed)
        try:
            if name is None:
                if typed == b"CANCEL":
                    raise CommandError(UNKNOWN_COMMAND, "CANCEL is for binary mode, whose "
                                       "requests have ids; in text mode a waiting RECEIVE "
                                       "holds the lines after it, so close the connection "
                                       "to stop it")
                shown = word.decode(errors="replace")
                known = " ".join(w.decode() for w in TEXT_COMMANDS)
                raise CommandError(UNKNOWN_COMMAND, f"unknown command {shown!r:.40}; "
                                   f"known: {known}")
            if name == "put_many":
                self._start_block(rest)
                return []  # the command comes with its last body line
            return [make_command(name, arguments(name, rest, self._limits, typed.decode()),
                                 self._limits)]
        except CommandError as exc:
            refusal: WonderQError = exc
            stripped = line.strip()
            if HTTP_REQUEST_LINE.fullmatch(stripped) or HTTP_HOST_HEADER.match(stripped):
                # A browser or scraper at the message port (see the rules). Its request
                # line was answered "max must be an integer, got 'HTTP/1.1'" once (a
                # newcomer's review), so the answer says where HTTP is served.
                refusal = ProtocolError(HTTP_REQUEST, "an HTTP request: this port speaks "
                                        "WonderQ's protocol (PROTOCOL.md), not HTTP, and "
                                        "closes the connection; the server serves /metrics "
                                        "and /stats on its --metrics-port")
            return [Rejected(refusal)]

    def _start_block(self, rest: bytes) -> None:
        """_start_block checks a PUT_MANY header line; if it is good, bodies come next.

        It checks the queue and the options now (with a stand-in body), so
        that a bad header is answered at once (CommandError); if it names a
        count, a block that drops its lines starts all the same (the rules).
        """
        try:
            args, count = put_many_header(rest, self._limits)
            make_command("put_many", {**args, "bodies": [b""]}, self._limits)
        except CommandError as exc:
            given = put_many_count_given(rest, self._limits.max_frame_bytes)
            if given is None:
                raise
            self._block = _BodyBlock({}, given, refused=True)
            raise CommandError(exc.code, f"{exc.message}{_dropped(given)}") from None
        self._block = _BodyBlock(args, count)

    def _body_line(self, body: bytes | CommandError) -> list[Command | Rejected]:
        block = self._block
        assert block is not None
        block.lines += 1
        if isinstance(body, bytes):
            block.size += len(body)
            block.too_big = block.too_big or block.size > self._limits.max_frame_bytes
        if not (block.too_big or block.refused):
            block.bodies.append(body)
        else:
            block.bodies.clear()
        if block.lines < block.count:
            return []
        self._block = None
        if block.refused:
            return []  # answered with its header
        if block.too_big:
            return [Rejected(CommandError(
                BATCH_TOO_LARGE, f"the {block.count} bodies are over "
                f"{self._limits.max_frame_bytes} bytes together (--max-frame-bytes); "
                "nothing was stored"))]
        try:
            return [make_command("put_many", {**block.args, "bodies": block.bodies},
                                 self._limits)]
        except CommandError as exc:  # not expected: the header was checked
            return [Rejected(exc)]
