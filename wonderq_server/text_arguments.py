"""How the words of one text command line become that command's raw arguments.

Design decision: this module only splits and converts; it returns the same
kind of argument map a binary request carries, and `make_command`
(commands.py) checks it. So a text request is valid exactly when the same
binary request would be.

Syntax (the first word, the command, is already taken off):

    most commands   <required...> [optional...]  positional in the order of
                    commands.COMMANDS, or name=value in any order
    PUT             <queue> [option=value ...] [--] <body>
    PUT_MANY        <queue> <count> [option=value ...]   (the bodies follow
                    on their own lines; see text_codec.py)
    ACK_MANY        <queue> <id>:<lease> ...
    NACK_MANY       <queue> [delay=S] <id>:<lease> ...
    CREATE_QUEUE, CONFIGURE_QUEUE   <queue> [setting=value ...]  (settings by
                    name only: six positional numbers would be unreadable)
    AUTH            <token>   (the rest of the line, as bytes, surrounding
                    spaces dropped: a token may hold `=` and any other byte)

Rules:
* PUT options are leading words `delay=S`, `priority=N`, `expiry=S` and
  `header.KEY=VALUE`; the body starts at the first other word, or after a
  single `--` word, and runs to the end of the line (spaces kept). KEY and
  VALUE are percent-decoded and must then be UTF-8.
* A leading word that looks like an option but names none (`dealy=30`: a
  lowercase name, then `=`) is BAD_ARGUMENT, as an unknown field is in
  binary mode. It started the body, so a misspelt option was stored as part
  of the body and its default used, without a word (a newcomer's review). A
  body that starts with such a word goes after `--`; `Delay=5`, not
  lowercase, still starts a body.
* An `<id>:<lease>` word that cannot be read becomes that item's error (a
  CommandError in the item list), as a malformed item does in binary mode;
  the other items go ahead.
* Option names are case-sensitive; command words are not (text_codec.py).
* Counts are checked before the words they count are read: ACK_MANY and
  NACK_MANY's items against --max-batch, PUT and PUT_MANY's headers against
  --max-headers. Reading first cost a reviewer's 262 KB ACK_MANY line of
  131,000 malformed items 0.2 s of the event loop (an error object each),
  and 20 such lines, sent before AUTH, held every client for 4 s.

Must not know: sockets, the broker, how lines are framed.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from .commands import COMMANDS, TEXT_CONVERTERS, Limits
from .errors import BATCH_TOO_LARGE, HEADERS_TOO_LARGE, CommandError, bad_argument, detached

PUT_OPTIONS = (b"delay", b"priority", b"expiry")
HEADER_PREFIX = b"header."
END_OF_OPTIONS = b"--"
NAMED_ONLY = frozenset({"create_queue", "configure_queue"})
# A word that looks like a PUT option, known or not: a lowercase name, then `=`.
_OPTION_LIKE = re.compile(rb"[a-z][a-z0-9_.-]*=")
# The start of a word holding `=` (a name=value word): linear, as a word cannot hold a space.
_NAMED_WORD = re.compile(rb"(?<!\S)[^\s=]*=")
# A % that two hex digits do not follow: unquote_to_bytes keeps it as it is, so `%zz`
# would be stored as the three characters and sent back as `%25zz`.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")

PUT_USAGE = "PUT <queue> [option=value ...] [--] <body>"
PUT_MANY_USAGE = "PUT_MANY <queue> <count> [option=value ...]"


def arguments(name: str, rest: bytes, limits: Limits, typed: str = "") -> dict[str, Any]:
    """arguments reads what follows the command word of any one-line command; `typed` is
    that word as the user wrote it, for errors (RECEIVE, not GET; uppercase)."""
    if name == "put":
        return put_arguments(rest, limits)
    if name in ("ack_many", "nack_many"):
        return lease_item_arguments(name, rest.split(), limits)
    if name == "auth":
        token = rest.strip()
        return {"token": token} if token else {}  # none: make_command says it is needed
    return named_or_positional(name, rest.split(), typed)


def put_arguments(rest: bytes, limits: Limits) -> dict[str, Any]:
    """put_arguments: PUT <queue> [option=value ...] [--] <body>. Spaces before the queue
    are skipped, as between any command's words; the body is all after one space."""
    queue, _, tail = rest.lstrip(b" ").partition(b" ")
    if not queue:
        raise bad_argument(f"PUT needs a queue: {PUT_USAGE}")
    args: dict[str, Any] = {"queue": queue.decode(errors="replace")}
    while True:
        word, space, after = tail.partition(b" ")
        if word == END_OF_OPTIONS:
            tail = after
            break
        if not is_put_option(word):
            if _OPTION_LIKE.match(word):
                raise _unknown_put_option(word)
            break
        try:
            add_put_option(args, word, limits)
        except _OverMaxHeaders:
            raise _headers_too_large(limits, tail.split(b" ")) from None
        tail = after
        if not space:
            break
    args["body"] = tail
    return args


def _unknown_put_option(word: bytes) -> CommandError:
    name = word.partition(b"=")[0].decode()
    return bad_argument(
        f"PUT has no field {name:.40}; its options are delay=, priority=, expiry= and "
        f"header.KEY= (a body that starts with such a word goes after --: "
        f"PUT <queue> -- <body>)")


def is_put_option(word: bytes) -> bool:
    name, eq, _ = word.partition(b"=")
    return bool(eq) and (name in PUT_OPTIONS or name.startswith(HEADER_PREFIX))


class _OverMaxHeaders(Exception):
    """A header word past --max-headers: the caller counts the rest (_headers_too_large)."""


def add_put_option(args: dict[str, Any], word: bytes, limits: Limits) -> None:
    """add_put_option adds one `name=value` word of PUT or PUT_MANY to `args`; a header
    past --max-headers raises _OverMaxHeaders before it is read."""
    name, _, value = word.partition(b"=")
    if name.startswith(HEADER_PREFIX):
        headers = args.setdefault("headers", {})
        if len(headers) == limits.max_headers:
            raise _OverMaxHeaders
        key = _percent_decoded("header key", name[len(HEADER_PREFIX):])
        if key in headers:
            raise bad_argument(f"header {key!r:.60} given twice")
        headers[key] = _percent_decoded(f"header {key!r:.60}", value)
        return
    field = name.decode()
    if field in args:
        raise bad_argument(f"{field} given twice")
    args[field] = TEXT_CONVERTERS[field](field, value.decode(errors="replace"))


def _headers_too_large(limits: Limits, words: list[bytes]) -> CommandError:
    """_headers_too_large is the error for a line whose header words past --max-headers
    begin `words`: the count is the header words among the options leading them."""
    count = limits.max_headers
    for word in words:
        if word == END_OF_OPTIONS or not is_put_option(word):
            break
        count += word.startswith(HEADER_PREFIX)
    return CommandError(HEADERS_TOO_LARGE, f"headers has {count} entries, over the limit of "
                        f"{limits.max_headers} (--max-headers)")


def _percent_decoded(what: str, raw: bytes) -> str:
    if b"%" in raw and _BAD_ESCAPE.search(raw):
        raise bad_argument(f"{what} has a % not followed by two hex digits (write % as "
                           f"%25): {raw!r:.60}")
    try:
        return unquote_to_bytes(raw).decode()
    except UnicodeDecodeError:
        raise bad_argument(f"{what} is not UTF-8 once percent-decoded: {raw!r:.60}") from None


def put_many_header(rest: bytes, limits: Limits) -> tuple[dict[str, Any], int]:
    """put_many_header reads `PUT_MANY <queue> <count> [option=value ...]`.

    Returns the raw arguments (without bodies) and the number of body lines
    to expect. The count is checked against --max-batch here, before a
    single body line is read.
    """
    words = rest.split()
    if len(words) < 2:
        missing = ", ".join(["queue", "count"][len(words):])
        raise bad_argument(f"PUT_MANY needs {missing}: {PUT_MANY_USAGE}")
    args: dict[str, Any] = {"queue": words[0].decode(errors="replace")}
    count = TEXT_CONVERTERS["max"]("count", words[1].decode(errors="replace"))
    if count < 1:
        raise bad_argument(f"count must be at least 1, got {count}")
    if count > limits.max_batch:
        raise CommandError(BATCH_TOO_LARGE, f"count is {count}, over the limit of "
                           f"{limits.max_batch} (--max-batch)")
    for index, word in enumerate(words[2:], 2):
        if is_put_option(word):
            try:
                add_put_option(args, word, limits)
            except _OverMaxHeaders:
                raise _headers_too_large(limits, words[index:]) from None
        elif b"=" in word:
            field, _, value = word.decode(errors="replace").partition("=")
            if not field:
                _set_named({}, field, value)  # raises: a word that starts with '='
            raise bad_argument(f"PUT_MANY has no field {field}")
        else:
            raise bad_argument(f"too many arguments for PUT_MANY: {PUT_MANY_USAGE}")
    return args, count


def put_many_count_given(rest: bytes, most: int) -> int | None:
    """put_many_count_given is the body count a PUT_MANY header line names (`rest` is the
    line after its first word), whatever else is wrong with the line, if it is a whole
    number from 1 to `most`; else None. A count over --max-frame-bytes cannot be a real
    request (every body line takes a byte at least): a typo, whose dropped lines would
    swallow the connection for good."""
    words = rest.split(None, 2)
    digits = words[1].lstrip(b"0") if len(words) >= 2 else b""
    if len(words) < 2 or not words[1].isdigit() or len(digits) > len(str(most)):
        return None  # (and int() refuses over 4,300 digits: never try)
    count = int(digits or b"0")  # leading zeros are a count too, as the header parser reads
    return count if 1 <= count <= most else None


def lease_item_arguments(name: str, words: list[bytes], limits: Limits) -> dict[str, Any]:
    """lease_item_arguments reads `<queue> [name=value ...] <id>:<lease> ...`."""
    args: dict[str, Any] = {}
    item_words: list[bytes] = []
    for index, word in enumerate(words):
        if b"=" in word:
            field, _, value = word.decode(errors="replace").partition("=")
            if field == "items":
                raise bad_argument(f"{name.upper()} takes its items as <id>:<lease> words")
            _set_named(args, field, value)
        elif "queue" not in args:
            args["queue"] = word.decode(errors="replace")
        else:
            item_words.append(word)
            if len(item_words) > limits.max_batch:  # before any item is read (the rules)
                rest = words[index + 1:]  # counted in C: no Python step per word
                count = len(item_words) + len(rest) - len(_NAMED_WORD.findall(b" ".join(rest)))
                raise CommandError(BATCH_TOO_LARGE, f"items has {count} items, over the "
                                   f"limit of {limits.max_batch} (--max-batch)")
    if "queue" not in args:
        raise bad_argument(f"{name.upper()} needs queue: {name.upper()} <queue> "
                           + ("[delay=S] " if name == "nack_many" else "")
                           + "<id>:<lease> ...")
    args["items"] = [_lease_item(f"items[{index}]", word.decode(errors="replace"))
                     for index, word in enumerate(item_words)]
    return args


def _lease_item(field: str, text: str) -> list[int] | CommandError:
    message_id, colon, lease = text.partition(":")
    if not colon:
        return bad_argument(f"{field} must be <id>:<lease>, got {text!r:.60}")
    try:
        return [TEXT_CONVERTERS["id"](f"{field}.id", message_id),
                TEXT_CONVERTERS["lease"](f"{field}.lease", lease)]
    except CommandError as exc:
        return detached(exc)  # kept as the item's result (errors.py's rules)


def named_or_positional(name: str, words: list[bytes], typed: str = "") -> dict[str, Any]:
    """named_or_positional reads words as positional fields in table order, or name=value;
    its errors name the command as `typed` (else as the documents write it)."""
    shown = typed or _shown(name)
    required, optional = COMMANDS[name]
    order = list(required) if name in NAMED_ONLY else [*required, *optional]
    args: dict[str, Any] = {}
    for position, word in enumerate(words):
        text = word.decode(errors="replace")
        field, eq, value = text.partition("=")
        if not eq:
            if position >= len(order):
                raise bad_argument(f"too many arguments for {shown}: {usage(name, shown)}")
            field, value = order[position], text
            if field in args:  # named before: "GET max=5 q" gave only "max given twice"
                raise bad_argument(f"{field} given twice: by name, and as the word "
                                   f"{text!r:.40} in its place: {usage(name, shown)}")
        _set_named(args, field, value)
    missing = [f for f in required if f not in args]
    if missing:
        raise bad_argument(f"{shown} needs {', '.join(missing)}: {usage(name, shown)}")
    return args


def _set_named(args: dict[str, Any], field: str, value: str) -> None:
    if not field:
        raise bad_argument(f"a word starts with '=' (={value!r:.40}): options are name=value")
    if field in args:
        raise bad_argument(f"{field} given twice")
    convert = TEXT_CONVERTERS.get(field)
    args[field] = convert(field, value) if convert else value


def usage(name: str, shown: str = "") -> str:
    """usage is a command's text syntax, for error messages: required fields in <>,
    optional ones in [] (a command with none, PING, is its name alone)."""
    required, optional = COMMANDS[name]
    if name in NAMED_ONLY:
        return f"{name.upper()} <queue> [setting=value ...]"
    words = [shown or _shown(name), *(f"<{f}>" for f in required),
             *(f"[{f}=...]" for f in optional)]
    return " ".join(words)


def _shown(name: str) -> str:
    """_shown: a command's name as text mode's documents write it (GET, not RECEIVE)."""
    return "GET" if name == "receive" else name.upper()
