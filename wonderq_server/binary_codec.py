"""The binary protocol, sans-I/O: bytes in, commands out; results in, bytes out.

Design decision: a binary connection opens with the 4-byte preamble
`b"WQ\\x00" + version`, then carries frames both ways. A frame is a 4-byte
big-endian length followed by that many bytes of msgpack:

    request  [request_id, command, {field: value, ...}]
    reply    [request_id, nil, result]            on success
             [request_id, [code, message], nil]   on error

A batch command (put_many, ack_many, nack_many) succeeds as a whole and
reports on each item in its result: the item's value, or [code, message]
for an item that failed.

Replies may come back in any order; the request id pairs them up (a client
picks ids, any msgpack value; the client library uses integers).

Rules:
* The length prefix keeps the stream in step: a frame whose content is not
  msgpack, or not a request, is answered with an error and the next frame is
  read as usual. Only a length over `max_frame_bytes` (or a bad preamble)
  makes the stream untrustworthy: that is a ProtocolError, and the
  connection closes after the reply.
* The length is checked before the frame is buffered, so a client cannot make
  the server set aside memory by claiming a huge frame (only its first
  ID_PEEK_BYTES are waited for, to name its request in the refusal).
* `feed` never raises for anything the peer sends; it returns Commands and
  Rejected items in stream order.
* Before a connection has authenticated (`stop_after_auth`), a feed ends
  with an auth request, and what follows stays unread until the caller has
  run it and takes it back (`take_unread`): the requests behind an AUTH are
  read under the limits it brings, not a stranger's.
* Decoding builds a frame's objects before any check sees them, and one
  byte of msgpack can become 70 bytes of Python (an empty map, a dict). So a
  frame over SMALL_FRAME_BYTES is decoded with a count: msgpack refuses an
  array or map longer than `commands.request_container_limit`, and hooks
  add up the items of every array and map as each is built and stop the
  decode once the sum passes `commands.request_values_limit`
  (BATCH_TOO_LARGE). Measured: a 64 MiB put_many of
  67 million empty maps held the event loop 9 s and took 4.9 GB before;
  now it is refused at once. A frame up to SMALL_FRAME_BYTES is decoded in
  one call with no count: it can build at most about 5 MB, and the usual
  request, small, pays nothing for the rule.
* A frame that cannot be decoded is answered with its request id when the
  id can be read on its own (read with a small count of its own), else nil;
  so is one over the limit, from its first ID_PEEK_BYTES.
* A request id is any msgpack value of at most MAX_REQUEST_ID_BYTES packed
  (`plain_request_id`); a bigger one is BAD_ARGUMENT, answered with nil, and
  the request is not run. The server keeps a waiting receive's request, id
  included, for as long as it waits, and counts it as
  connection_limits.WAITING_RECEIVE_BYTES against --max-client-memory: a
  reviewer's id of 65,000 empty maps (a 65 KB frame) held 4.5 MB a wait, 100
  waits 448 MB, counted as 100 KiB. Integers, the usual id, are told apart
  by one type check; a string's size needs no packing.

Must not know: sockets, asyncio, the broker.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .commands import (
    REQUEST_ID_VALUES,
    Command,
    Limits,
    Rejected,
    make_command,
    request_container_limit,
    request_values_limit,
)
from .errors import (
    BAD_ARGUMENT,
    BATCH_TOO_LARGE,
    FRAME_TOO_LARGE,
    MALFORMED,
    UNSUPPORTED_VERSION,
    CommandError,
    ProtocolError,
    WonderQError,
)

MAGIC = b"WQ\x00"
VERSION = 1
PREAMBLE = MAGIC + bytes([VERSION])
HEADER_BYTES = 4
# Frames up to this size are decoded without counting their values (see the rules).
SMALL_FRAME_BYTES = 64 * 1024
# Of a frame over the limit, this much is read for its request id: an array header and an
# id of up to 9 bytes (any msgpack int) fit, with room.
ID_PEEK_BYTES = 16
# The most a request id may pack to (the rules): a UUID, a ULID, [worker, sequence] fit.
MAX_REQUEST_ID_BYTES = 256


class BinaryDecoder:
    """Turns the byte stream of one binary connection into commands."""

    __slots__ = ("_buffer", "_limits", "_preamble_seen", "broken", "stop_after_auth")

    def __init__(self, limits: Limits, stop_after_auth: bool = False) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._preamble_seen = False
        self.broken = False  # set after a ProtocolError: ignore all further input
        # While set (a connection that has not authenticated), a feed ends with an auth
        # request: what follows it is kept unread (take_unread), to be decoded under the
        # limits the AUTH brings (use_limits), not the stranger's small ones.
        self.stop_after_auth = stop_after_auth

    def buffered_bytes(self) -> int:
        """buffered_bytes: input held for a frame not yet complete (the client memory
        budget, server.py)."""
        return len(self._buffer)

    def use_limits(self, limits: Limits) -> None:
        """use_limits changes the limits for what comes next (once a connection has
        authenticated, its requests may be as big as the server's limits allow); a feed no
        longer stops after an auth request."""
        self._limits = limits
        self.stop_after_auth = False

    def take_unread(self) -> bytes:
        """take_unread hands back the bytes kept unread after an auth request (or a frame
        not yet complete), and forgets them: the caller feeds them again."""
        unread, self._buffer = bytes(self._buffer), bytearray()
        return unread

    def feed(self, data: bytes | bytearray) -> list[Command | Rejected]:
        """feed takes the next bytes of the stream and returns what they complete."""
        if self.broken:
            return []
        buf = self._buffer
        if not buf and self._preamble_seen and len(data) > HEADER_BYTES:
            # The usual read of a client that waits for each reply: one whole frame
            # and nothing buffered. Decoded straight from `data`, as the loop below
            # would, without the copy into and out of the buffer.
            size = int.from_bytes(data[:HEADER_BYTES], "big")
            if size == len(data) - HEADER_BYTES and size <= self._limits.max_frame_bytes:
                return [self._decode(data[HEADER_BYTES:])]
        buf += data
        out: list[Command | Rejected] = []
        pos = 0
        if not self._preamble_seen:
            if len(buf) < len(PREAMBLE):
                return out
            if buf[:len(MAGIC)] != MAGIC or buf[len(MAGIC)] != VERSION:
                return self._break(ProtocolError(
                    UNSUPPORTED_VERSION, f"this server speaks binary protocol version {VERSION}; "
                    f"the preamble was {bytes(buf[:len(PREAMBLE)])!r}"))
            self._preamble_seen = True
            pos = len(PREAMBLE)
        end = len(buf)
        max_frame = self._limits.max_frame_bytes
        while end - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos:pos + HEADER_BYTES], "big")
            if size > max_frame:
                # The reply names the request when its id is in the frame's first
                # ID_PEEK_BYTES (the client library's are), so a client fails that request
                # alone: with nil, every request in flight on the connection took the
                # blame, and a client that does not retry a request too big lost small
                # puts (a reviewer). Those bytes are waited for, so the answer does not
                # depend on how the stream was cut.
                start = pos + HEADER_BYTES
                peek_end = start + min(size, ID_PEEK_BYTES)
                if end < peek_end:
                    break
                request_id = readable_request_id(bytes(buf[start:peek_end]))
                out.append(self._break(self._too_large(size), request_id)[0])
                return out
            if end - pos - HEADER_BYTES < size:
                break
            start = pos + HEADER_BYTES
            pos = start + size
            request = self._decode(buf[start:pos])
            out.append(request)
            if self.stop_after_auth and type(request) is Command and request.name == "auth":
                break
        if pos:
            del buf[:pos]
        return out

    def end_of_input(self) -> list[Command | Rejected]:
        """end_of_input: the peer will send nothing more. A frame it cut short (or a
        preamble) is answered MALFORMED, naming its request when the id came, and not
        run, as text mode answers a last line without its newline; before, it was
        dropped without a word (a reviewer)."""
        buf = self._buffer
        if self.broken or not buf:
            return []
        if not self._preamble_seen:
            return self._break(ProtocolError(
                MALFORMED, f"the input ended inside the preamble ({len(buf)} of its "
                f"{len(PREAMBLE)} bytes came)"))
        request_id = None
        if len(buf) < HEADER_BYTES:
            what = f"{len(buf)} of a frame's {HEADER_BYTES}-byte length"
        else:
            size = int.from_bytes(buf[:HEADER_BYTES], "big")
            what = f"{len(buf) - HEADER_BYTES} of a frame's {size} bytes"
            request_id = readable_request_id(bytes(buf[HEADER_BYTES:HEADER_BYTES + ID_PEEK_BYTES]))
            if size > self._limits.max_frame_bytes:  # as feed answers it, however cut
                return self._break(self._too_large(size), request_id)
        return self._break(ProtocolError(
            MALFORMED, f"the input ended inside a request ({what} came); it was not run"),
            request_id)

    def _too_large(self, size: int) -> ProtocolError:
        return ProtocolError(FRAME_TOO_LARGE, f"frame of {size} bytes is over the limit of "
                             f"{self._limits.max_frame_bytes} ({self._limits.max_frame_source})")

    def _break(self, error: ProtocolError, request_id: Any = None) -> list[Command | Rejected]:
        self.broken = True
        self._buffer = bytearray()
        return [Rejected(error, request_id)]

    def _decode(self, frame: bytes | bytearray) -> Command | Rejected:
        try:
            if len(frame) <= SMALL_FRAME_BYTES:
                request = msgpack.unpackb(frame, raw=False, strict_map_key=False)
            else:
                request = unpack_counted(frame, request_values_limit(self._limits),
                                         request_container_limit(self._limits))
        except TooManyValues as too_many:  # (each `except` its own name: mypyc types them)
            return Rejected(CommandError(BATCH_TOO_LARGE, str(too_many)),
                            readable_request_id(frame))
        except Exception as undecodable:  # any undecodable frame; the stream is still in step
            # msgpack's FormatError (a byte that starts no value: 0xc1) has no message
            why = str(undecodable) or (
                "a byte that starts no msgpack value (0xc1 is reserved)"
                if isinstance(undecodable, msgpack.FormatError) else type(undecodable).__name__)
            return Rejected(CommandError(MALFORMED, f"frame is not valid msgpack: {why}"),
                            readable_request_id(frame))
        if not isinstance(request, list) or len(request) != 3:
            return Rejected(CommandError(
                MALFORMED, "a request is [request_id, command, {arguments}]"),
                request[0] if isinstance(request, list) and request else None)
        request_id, name, args = request
        if type(request_id) is not int and not plain_request_id(request_id):
            return Rejected(CommandError(
                BAD_ARGUMENT, f"a request id is at most {MAX_REQUEST_ID_BYTES} bytes of "
                f"msgpack, not {_described(request_id)} over that; the request was not run"))
        try:
            return make_command(name, args, self._limits, request_id)
        except CommandError as exc:
            return Rejected(exc, request_id)


def plain_request_id(request_id: Any) -> bool:
    """plain_request_id: `request_id` packs to at most MAX_REQUEST_ID_BYTES (the rules)."""
    kind = type(request_id)
    if request_id is None or kind is int or kind is float or kind is bool:
        return True
    if kind is str:
        return len(request_id) <= MAX_REQUEST_ID_BYTES and \
            len(request_id.encode(errors="surrogatepass")) <= MAX_REQUEST_ID_BYTES
    if kind is bytes:
        return len(request_id) <= MAX_REQUEST_ID_BYTES
    try:  # an array, a map, an ext value: as the client packed it
        return len(msgpack.packb(request_id, use_bin_type=True)) <= MAX_REQUEST_ID_BYTES
    except Exception:
        return False


def _described(value: Any) -> str:
    """_described names a refused request id by its type and size, never its contents."""
    if isinstance(value, list | dict | str | bytes):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


class TooManyValues(ValueError):
    """A frame holds more values (array items plus map entries) than a request may."""

    def __init__(self, limit: int, longest: int) -> None:
        super().__init__(f"the request holds more values than any valid one can: over "
                         f"{limit} in its arrays and maps, or over {longest} in one of them "
                         "(twice what a batch of --max-batch items with --max-headers "
                         "headers holds)")


class _ValueCount:
    """_ValueCount is msgpack's list_hook and object_hook: it sums the items of each
    array and map as msgpack builds it, and stops the decode past `limit`."""

    __slots__ = ("left", "limit", "longest")

    def __init__(self, limit: int, longest: int) -> None:
        self.limit, self.longest = limit, longest
        self.left = limit

    def add(self, container: Any) -> Any:
        self.left -= len(container)
        if self.left < 0:
            raise TooManyValues(self.limit, self.longest)
        return container


def unpack_counted(frame: bytes | bytearray, limit: int, longest: int) -> Any:
    """unpack_counted decodes one msgpack value holding at most `limit` values, in arrays
    and maps of at most `longest` items (the rules); raises TooManyValues past either,
    and msgpack's errors for what is not msgpack.

    The hooks count an array once it is complete, so the values of arrays still
    being filled, nested up to msgpack's depth limit, are bounded by `longest`
    alone: a reviewer filled 880 nested arrays of 75,928 one-byte ints each (2.6 GB
    from a 64 MiB frame) under a `longest` of `limit`."""
    count = _ValueCount(limit, longest)
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False, max_array_len=longest,
                               max_map_len=longest, list_hook=count.add, object_hook=count.add)
    except ValueError as exc:
        # msgpack's own refusal of one array or map over the limit, before building it
        if "exceeds max_array_len" in str(exc) or "exceeds max_map_len" in str(exc):
            raise TooManyValues(limit, longest) from exc
        raise


def readable_request_id(frame: bytes | bytearray) -> Any:
    """readable_request_id is the id of a request frame that did not decode as a whole,
    read alone when the frame starts as a request does, else None."""
    count = _ValueCount(REQUEST_ID_VALUES, REQUEST_ID_VALUES)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(frame) + 1,
                                max_array_len=REQUEST_ID_VALUES, max_map_len=REQUEST_ID_VALUES,
                                list_hook=count.add, object_hook=count.add)
    try:
        unpacker.feed(frame)
        if unpacker.read_array_header() < 1:
            return None
        return unpacker.unpack()
    except Exception:  # the id itself is not readable (or too big): nil, as the protocol says
        return None


class BinaryEncoder:
    """Turns results and errors into reply frames."""

    __slots__ = ("_packer",)

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)

    def result(self, command: Command, result: Any) -> bytes:
        name = command.name
        if name == "receive":
            result = delivery_rows(result)
        elif name == "peek":
            result = [peek_fields(m) for m in result]
        elif name in PER_ITEM_COMMANDS:  # ids or None, and errors: only errors change
            result = [r if r is None or type(r) is int else item_result(r) for r in result]
        return self._frame([command.request_id, None, result])

    def error(self, request_id: Any, error: WonderQError) -> bytes:
        return self._frame([request_id, [error.code, error.message], None])

    def _frame(self, reply: list[Any]) -> bytes:
        payload = self._packer.pack(reply)
        return len(payload).to_bytes(HEADER_BYTES, "big") + payload


# Commands whose result is a list with one entry per item of the request.
PER_ITEM_COMMANDS = frozenset({"put_many", "ack_many", "nack_many"})


def delivery_rows(messages: Any) -> list[list[Any]]:
    """delivery_rows is how delivered messages travel: a positional array each.

    Positions, not names, because a receive may carry a thousand of them:
    [id, body, lease, deliveries, enqueued_at, priority, headers,
    dead_letter]. `headers` is a map, or nil when there are none;
    `dead_letter` is [origin_queue, moved_at] for a dead-lettered message,
    else nil. New fields are only ever appended, so old clients keep working.
    One comprehension with no call per message: a batch consumer's receive
    runs it for every message.
    """
    return [[m.id, m.body, m.lease, m.deliveries, m.enqueued_at, m.priority,
             m.headers or None, None if m.origin is None else [m.origin[0], m.origin[1]]]
            for m in messages]


def delivery_fields(message: Any) -> list[Any]:
    """delivery_fields is one delivered message's array (see delivery_rows)."""
    return delivery_rows((message,))[0]


def peek_fields(message: Any) -> list[Any]:
    """peek_fields: a delivery's array with lease nil (a peek hands out no lease)."""
    fields = delivery_fields(message)
    fields[2] = None
    return fields


def item_result(result: Any) -> Any:
    """item_result is one entry of a per-item reply: the value, or [code, message]."""
    if isinstance(result, WonderQError):
        return [result.code, result.message]
    return result


def encode_request(request_id: Any, name: str, args: dict[str, Any]) -> bytes:
    """encode_request frames one request (used by tests and tools on the server side)."""
    payload = msgpack.packb([request_id, name, args], use_bin_type=True)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload
