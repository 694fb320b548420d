"""The command vocabulary: what a request may say, checked in one place.

Design decision: both codecs (binary and text) turn bytes into a command name
and a dict of raw arguments; `make_command` checks that dict against the
table below and fills in defaults. So the two modes cannot disagree about
what is valid, and every rule about an argument is written once.

Rules:
* A field is checked for type and range before anything is stored or any
  memory is set aside in proportion to it (a batch longer than the limit is
  refused by its length, a header map by its number of entries).
* Unknown fields are refused (BAD_ARGUMENT), so a misspelt option is an error
  rather than silently ignored. A field whose value is nil counts as absent.
* Booleans are not numbers; NaN and infinities are not durations.
* Batches (put_many's `bodies`, ack_many's and nack_many's `items`): a
  problem with the batch as a whole (not a list, empty, over --max-batch)
  refuses the request; a problem with one item becomes that item's result:
  the checked list holds a CommandError in its place, which the broker
  passes through, so the other items go ahead. A codec may itself put a
  CommandError in place of an item it could not read (the text codec does).
* put_many's batch-wide options (delay, priority, headers, expiry) are copied
  into every item that does not give its own; each checked item is a dict
  {"body", "delay", "priority", "headers", "expiry"}, None meaning "the
  queue's setting" (priority is always an int).
* Queue settings are checked one field at a time here; the rules that tie
  several settings together (or to the queue's name) are queue_settings.py's.
  Settings left out stay None: create_queue takes defaults for them, and
  configure_queue leaves them as they are.
* The text codec passes strings; `TEXT_CONVERTERS` turns them into the same
  types the binary codec carries, then the same checks apply.
* AUTH's token is kept as auth.SecretBytes, which prints as `<secret>`, so a
  command that is logged or printed never shows it (auth.py has the rules).

Must not know: sockets, the broker's state, wire framing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .auth import SecretBytes
from .errors import (
    BATCH_TOO_LARGE,
    HEADERS_TOO_LARGE,
    UNKNOWN_COMMAND,
    CommandError,
    bad_argument,
    detached,
)
from .queues import VALID_NAMES, check_queue_name

PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1


UINT64_MAX = 2**64 - 1
TEXT_INT_MAX_DIGITS = len(str(UINT64_MAX))  # 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits on requests; each has a server flag (see config.py)."""

    max_message_bytes: int = 256 * 1024
    max_batch: int = 1000
    max_wait_s: float = 300.0
    max_visibility_s: float = 43200.0
    max_delay_s: float = 43200.0
    max_expiry_s: float = 31_536_000.0  # 365 days
    max_frame_bytes: int = 64 * 1024 * 1024
    max_headers: int = 32
    max_header_bytes: int = 4096
    # What sets max_frame_bytes, as its error names it: the flag, or the fixed limit
    # for a connection that has not yet authenticated (connection_limits.py).
    max_frame_source: str = "--max-frame-bytes"
    # The same for a text line's limit (max_line_bytes).
    max_line_source: str = "--max-message-bytes + 1024"

    @property
    def max_line_bytes(self) -> int:
        """A text line holds one body plus the command and its arguments."""
        return self.max_message_bytes + 1024


class Command:
    """One checked request. `args` holds every field of the command, defaults filled in."""

    __slots__ = ("args", "name", "request_id")

    def __init__(self, name: str, args: dict[str, Any], request_id: Any = None) -> None:
        self.name = name
        self.args = args
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"Command({self.name!r}, {self.args!r}, request_id={self.request_id!r})"


# ---------------------------------------------------------------- field checks

Check = Callable[[str, Any, Limits], Any]


def _queue(field: str, value: Any, limits: Limits) -> str:
    if type(value) is str and value in VALID_NAMES:  # check_queue_name's cache, inline
        return value
    return check_queue_name(value)


def _dead_letter_queue(field: str, value: Any, limits: Limits) -> str:
    return "" if value == "" else check_queue_name(value)


def _body(field: str, value: Any, limits: Limits) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # friendly to clients whose msgpack sends str
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise bad_argument(f"{field} must be bytes, got {type(value).__name__}")


def _batch(field: str, value: Any, limits: Limits, what: str) -> list[Any] | tuple[Any, ...]:
    """_batch checks a batch as a whole: a list, 1 to max_batch items long."""
    if type(value) is not list and type(value) is not tuple:  # not isinstance: an ext is one
        raise bad_argument(f"{field} must be a list of {what}, got {type(value).__name__}")
    if len(value) > limits.max_batch:
        raise CommandError(BATCH_TOO_LARGE, f"{field} has {len(value)} items, over the limit "
                           f"of {limits.max_batch} (--max-batch)")
    if not value:
        raise bad_argument(f"{field} must not be empty")
    return value


# The options a put_many item may give for itself (besides its body).
ITEM_OPTIONS = ("delay", "priority", "headers", "expiry")


def request_values_limit(limits: Limits) -> int:
    """request_values_limit is the most values (array items plus map entries, at every
    depth) a binary request may hold: twice what the largest valid request holds, a
    put_many of --max-batch items, each a map of its body, every option and
    --max-headers headers. No valid request comes near it; the binary codec stops
    decoding a frame that goes past it (binary_codec.py)."""
    per_item = 1 + 1 + len(ITEM_OPTIONS) + limits.max_headers  # its slot, body, options, headers
    return 2 * (limits.max_batch * per_item + 64) + REQUEST_ID_VALUES


# A request id may be any msgpack value; this many values of it are always allowed.
REQUEST_ID_VALUES = 1024


def request_container_limit(limits: Limits) -> int:
    """request_container_limit is the longest array or map a binary request may hold:
    twice the longest a valid one holds (a batch of --max-batch items, a map of
    --max-headers headers), plus room for a request id. msgpack refuses a longer one
    before building it; it also bounds what arrays still being filled can hold before
    `request_values_limit` counts them (binary_codec.py)."""
    return 2 * max(limits.max_batch, limits.max_headers) + 64 + REQUEST_ID_VALUES


def _bodies(field: str, value: Any,
            limits: Limits) -> list[bytes | dict[str, Any] | CommandError]:
    items = _batch(field, value, limits, "bytes or maps")
    # The common item, a bytes body, is passed on as it is (the broker takes a
    # body or a map of a body and its options): no per-item name is formatted
    # and no map is made unless needed (this runs for every message of a batch).
    if all(type(item) is bytes for item in items):
        return items if type(items) is list else list(items)  # _apply_batch_options edits it
    return [item if type(item) is bytes else _put_item(f"{field}[{i}]", item, limits)
            for i, item in enumerate(items)]


def _put_item(field: str, item: Any, limits: Limits) -> dict[str, Any] | CommandError:
    """_put_item checks one put_many item: a body, or a map of a body and its options.

    Returns the item's problem as a CommandError rather than raising it.
    """
    if isinstance(item, CommandError):
        return item
    try:
        if not isinstance(item, dict):
            if not isinstance(item, bytes | bytearray | memoryview | str):
                raise bad_argument(f"{field} must be bytes or a map, got {type(item).__name__}")
            return {"body": _body(field, item, limits), "delay": None, "priority": None,
                    "headers": None, "expiry": None}
        if item.get("body") is None:
            raise bad_argument(f"{field} needs the field 'body'")
        extra = sorted(str(k) for k in item if k != "body" and k not in ITEM_OPTIONS)
        if extra:
            raise bad_argument(f"{field} has no field {', '.join(extra)}")
        checked: dict[str, Any] = {"body": _body(f"{field}.body", item["body"], limits)}
        for option in ITEM_OPTIONS:
            value = item.get(option)
            checked[option] = None if value is None else CHECKS[option](
                f"{field}.{option}", value, limits)
        if checked["headers"] is None and item.get("headers") == {}:
            # The item's own empty map: no headers, not the batch's (as its own delay 0
            # is no delay). The broker takes an empty map as none.
            checked["headers"] = {}
        return checked
    except CommandError as exc:
        return detached(exc)  # kept as the item's result (errors.py's rules)


def _items(field: str, value: Any, limits: Limits) -> list[tuple[int, int] | CommandError]:
    items = _batch(field, value, limits, "[id, lease] pairs")
    # The common [id, lease] item is checked inline, without formatting any names
    # (this runs for every message of a batch).
    return [(item[0], item[1])
            if (type(item) in (list, tuple) and len(item) == 2
                and type(item[0]) is int and type(item[1]) is int
                and 0 <= item[0] <= UINT64_MAX and 0 <= item[1] <= UINT64_MAX)
            else _lease_item(f"{field}[{i}]", item)
            for i, item in enumerate(items)]


def _lease_item(field: str, item: Any) -> tuple[int, int] | CommandError:
    """_lease_item checks one [id, lease] pair; its problem is returned, not raised."""
    if isinstance(item, CommandError):
        return item
    try:
        if type(item) is not list and type(item) is not tuple:  # as in _batch
            raise bad_argument(f"{field} must be [id, lease], got {type(item).__name__}")
        if len(item) != 2:
            raise bad_argument(f"{field} must be [id, lease], got an array of {len(item)}")
        return (_whole(f"{field}.id", item[0]), _whole(f"{field}.lease", item[1]))
    except CommandError as exc:
        return detached(exc)  # kept as the item's result (errors.py's rules)


def _whole(field: str, value: Any) -> int:
    """_whole: an unsigned 64-bit integer, the range of ids, leases and counts on the wire
    (and what the journal can store; a larger one must be refused before it is kept)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_argument(f"{field} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise bad_argument(f"{field} must not be negative, got {value}")
    if value > UINT64_MAX:
        raise bad_argument(f"{field} must be at most 2**64-1, got a {value.bit_length()}-bit "
                           "number")
    return value


def _count(field: str, value: Any, limits: Limits) -> int:
    if type(value) is int and 0 <= value <= UINT64_MAX:  # the usual id or lease, inline
        return value
    return _whole(field, value)


def _token(field: str, value: Any, limits: Limits) -> SecretBytes:
    # A string (msgpack str, the usual) or bytes (text mode's word, a client's bin).
    if isinstance(value, str):
        return SecretBytes(value.encode(errors="surrogatepass"))
    if isinstance(value, bytes | bytearray | memoryview):
        return SecretBytes(value)
    raise bad_argument(f"{field} must be a string, got {type(value).__name__}")


def _positive(field: str, value: Any) -> int:
    value = _whole(field, value)
    if value < 1:
        raise bad_argument(f"{field} must be at least 1, got {value}")
    return value


def _max(field: str, value: Any, limits: Limits) -> int:
    value = _positive(field, value)
    if value > limits.max_batch:
        raise CommandError(BATCH_TOO_LARGE, f"{field} is {value}, over the limit of "
                           f"{limits.max_batch} (--max-batch)")
    return value


def _redrive_max(field: str, value: Any, limits: Limits) -> int:
    # Not a batch: redrive replies with a count, so any number may be asked for.
    return _positive(field, value)


def _priority(field: str, value: Any, limits: Limits) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_argument(f"{field} must be an integer, got {type(value).__name__}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise bad_argument(f"{field} must be from {PRIORITY_MIN} to {PRIORITY_MAX}, "
                           f"got {value}")
    return value


def _headers(field: str, value: Any, limits: Limits) -> dict[str, str] | None:
    """_headers checks a header map; an empty map is no headers (None).

    The entry count is checked before any entry is looked at, the byte size
    (UTF-8 of keys and values together) after every entry is known to be a
    string pair.
    """
    if not isinstance(value, dict):
        raise bad_argument(f"{field} must be a map of strings, got {type(value).__name__}")
    if len(value) > limits.max_headers:
        raise CommandError(HEADERS_TOO_LARGE, f"{field} has {len(value)} entries, over the "
                           f"limit of {limits.max_headers} (--max-headers)")
    size = 0
    for key, text in value.items():
        if not isinstance(key, str) or not isinstance(text, str):
            wrong = key if not isinstance(key, str) else text
            raise bad_argument(f"{field} keys and values must be strings, "
                               f"got {type(wrong).__name__}")
        if not key:
            raise bad_argument(f"{field} keys must not be empty")
        size += len(key.encode(errors="surrogatepass")) + len(
            text.encode(errors="surrogatepass"))
    if size > limits.max_header_bytes:
        raise CommandError(HEADERS_TOO_LARGE, f"{field} are {size} bytes, over the limit "
                           f"of {limits.max_header_bytes} (--max-header-bytes)")
    return dict(value) or None


def _seconds(field: str, value: Any, upper: float | None = None, flag: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_argument(f"{field} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise bad_argument(f"{field} must be a finite number of seconds >= 0, got {value}")
    if upper is not None and value > upper:
        # In digits, exactly: 365 days as {:g} read 3.1536e+07, and 43200.25 as 43200.2
        # (reviewers).
        raise bad_argument(f"{field} is {value} s, over the limit of {upper:.15g} s ({flag})")
    return float(value) + 0.0  # -0.0 is 0.0: a setting of -0.0 was kept and shown so


def _wait(field: str, value: Any, limits: Limits) -> float:
    # The usual wait, inline: a float in range (NaN fails both comparisons).
    if type(value) is float and 0.0 <= value <= limits.max_wait_s:
        return value
    return _seconds(field, value, limits.max_wait_s, "--max-wait")


def _visibility(field: str, value: Any, limits: Limits) -> float:
    return _seconds(field, value, limits.max_visibility_s, "--max-visibility-timeout")


MIN_LEASE_S = 0.001  # a receive's or touch's own visibility: PROTOCOL.md, "Limits"


def _lease_length(field: str, value: Any, limits: Limits) -> float:
    # A receive's or touch's own lease. Not 0, which a queue's visibility_timeout uses
    # for "the server's default": a client that copied that 0 got a lease over at once,
    # and each message handed out again (a reviewer). beanstalkd raises a TTR of 0 to
    # 1 s; refusing says why, and nack is the way to give a message back now.
    seconds = _visibility(field, value, limits)
    if seconds < MIN_LEASE_S:
        # Nor shorter than a millisecond, the finest a deadline is shown in: 1e-300 was
        # taken, a lease as over at once as 0's (a reviewer).
        raise bad_argument(f"{field} must be at least {MIN_LEASE_S} s, got {value} (a lease "
                           f"over at once would hand the message out again): leave it out "
                           f"for the queue's setting, or nack to give a message back now")
    return seconds


def _visibility_timeout(field: str, value: Any, limits: Limits) -> float:
    # A queue's setting: 0 is "the server's --visibility-timeout"; otherwise a lease
    # length, so no shorter than a receive's own may be.
    seconds = _visibility(field, value, limits)
    if 0.0 < seconds < MIN_LEASE_S:
        raise bad_argument(f"{field} must be 0 (the server's --visibility-timeout) or at "
                           f"least {MIN_LEASE_S} s, got {value}")
    return seconds


def _delay(field: str, value: Any, limits: Limits) -> float:
    return _seconds(field, value, limits.max_delay_s, "--max-delay")


def _expiry(field: str, value: Any, limits: Limits) -> float:
    # Bounded as delays are: a reviewer's expiry=1e308 was stored, and shown back as a
    # 300-digit expires_at.
    return _seconds(field, value, limits.max_expiry_s, "--max-expiry")


def _flag(field: str, value: Any, limits: Limits) -> bool:
    if type(value) is bool:  # true or false, not a number
        return value
    raise bad_argument(f"{field} must be true or false, got {type(value).__name__}")


def _request_id(field: str, value: Any, limits: Limits) -> int | str:
    # An integer or a string, as clients' request ids are: comparing one with each
    # waiting receive's id then costs next to nothing, where a nested array could
    # take seconds (or recurse past Python's limit). Not a bool: true is not 1.
    if type(value) is int or type(value) is str:
        return value
    raise bad_argument(f"{field} must be the integer or string request id of a waiting "
                       f"receive, got {type(value).__name__}")


CHECKS: dict[str, Check] = {
    "queue": _queue,
    "body": _body,
    "bodies": _bodies,
    "items": _items,
    "id": _count,
    "lease": _count,
    "max": _max,
    "wait": _wait,
    "visibility": _lease_length,
    "delay": _delay,
    "priority": _priority,
    "headers": _headers,
    "expiry": _expiry,
    # queue settings
    "visibility_timeout": _visibility_timeout,
    "max_deliveries": _count,
    "dead_letter_queue": _dead_letter_queue,
    "max_length": _count,
    "token": _token,
    "request": _request_id,
    "unseen": _flag,
}

# Where one command checks a field differently from the rest.
COMMAND_CHECKS: dict[tuple[str, str], Check] = {
    ("redrive", "max"): _redrive_max,
}

# Settings of a queue, each None (not given) unless the request names it.
SETTINGS: dict[str, Any] = {
    "visibility_timeout": None, "max_deliveries": None, "dead_letter_queue": None,
    "delay": None, "max_length": None, "expiry": None,
}
PUT_OPTIONS: dict[str, Any] = {"delay": None, "priority": 0, "headers": None, "expiry": None}

# command -> (required fields in text-mode positional order, optional fields with defaults)
COMMANDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "put": (("queue", "body"), PUT_OPTIONS),
    "put_many": (("queue", "bodies"), PUT_OPTIONS),
    "receive": (("queue",), {"max": 1, "wait": 0.0, "visibility": None}),
    "ack": (("queue", "id", "lease"), {}),
    "ack_many": (("queue", "items"), {}),
    "nack": (("queue", "id", "lease"), {"delay": 0.0, "unseen": False}),
    "nack_many": (("queue", "items"), {"delay": 0.0, "unseen": False}),
    "touch": (("queue", "id", "lease"), {"visibility": None}),
    "create_queue": (("queue",), SETTINGS),
    "configure_queue": (("queue",), SETTINGS),
    "queue_info": (("queue",), {}),
    "queues": ((), {}),
    "peek": (("queue",), {"max": 1}),
    "purge": (("queue",), {}),
    "delete_queue": (("queue",), {}),
    "redrive": (("queue",), {"max": None}),
    "message_info": (("queue", "id"), {}),
    "stats": ((), {}),
    "ping": ((), {}),
    "quit": ((), {}),
    "auth": (("token",), {}),
    "cancel": (("request",), {}),
}


def make_command(name: Any, args: Any, limits: Limits, request_id: Any = None) -> Command:
    """make_command checks a raw request and returns it as a Command, or raises CommandError.

    It runs for every request, so the table is compiled once (`_COMPILED`):
    each field's check is looked up at import, not per request.
    """
    spec = _COMPILED.get(name) if isinstance(name, str) else None
    if spec is None:
        raise CommandError(UNKNOWN_COMMAND, f"unknown command {name!r:.40}; known: "
                           + ", ".join(COMMANDS))
    if not isinstance(args, dict):
        raise bad_argument(f"arguments must be a map, got {type(args).__name__}")
    _, _, defaults, checks = spec
    # The usual request: every field it gives is one of the command's, none is nil,
    # and every required one is there. Its fields are checked as they come, over a
    # copy of the defaults. Anything else (an unknown or nil field, a missing one, a
    # field whose check raises) goes the long way, which looks at the fields in
    # the table's order, so the error is the same as ever. The checks are pure:
    # running one twice does no harm.
    checked = defaults.copy()
    try:
        for field, value in args.items():
            check = checks.get(field)
            if check is None or value is None:
                break
            checked[field] = check(field, value, limits)
        else:
            # Only the command's fields were added, so the count tells whether every
            # required one (a key the defaults lack) is there.
            if len(checked) == len(checks):
                if name == "put_many":
                    _apply_batch_options(checked)
                return Command(name, checked, request_id)
    except Exception:  # the long way raises it again, or the error that comes first
        pass
    return _check_in_full(name, args, limits, request_id)


def _check_in_full(name: str, args: dict[Any, Any], limits: Limits,
                   request_id: Any) -> Command:
    """_check_in_full is make_command's long way, for any request: every field of the
    table looked up, then anything left over refused by name."""
    required, optional, _, _ = _COMPILED[name]
    get = args.get
    checked: dict[str, Any] = {}
    for field, check in required:
        value = get(field)
        if value is None:  # nil counts as absent
            raise bad_argument(f"{name} needs the field {field!r}")
        checked[field] = check(field, value, limits)
    for field, default, check in optional:
        value = get(field)
        checked[field] = default if value is None else check(field, value, limits)
    # Compare names, not counts: optional fields left out would hide a misspelt one.
    if not args.keys() <= checked.keys():
        extra = sorted(str(k) for k in args if k not in checked)
        raise bad_argument(f"{name} has no field {', '.join(extra)}")
    if name == "put_many":
        _apply_batch_options(checked)
    return Command(name, checked, request_id)


def _compile(name: str) -> tuple[tuple[tuple[str, Check], ...],
                                 tuple[tuple[str, Any, Check], ...], dict[str, Any],
                                 dict[str, Check]]:
    """_compile: the required fields and their checks, the optional ones with their
    defaults and checks (both in table order, for the long way), and for the short
    way the defaults as a map and every field's check by name."""
    required, optional = COMMANDS[name]
    return (tuple((field, _checker(name, field)) for field in required),
            tuple((field, default, _checker(name, field))
                  for field, default in optional.items()),
            dict(optional),
            {field: _checker(name, field) for field in (*required, *optional)})


def _checker(name: str, field: str) -> Check:
    return COMMAND_CHECKS.get((name, field), CHECKS[field])


_COMPILED = {name: _compile(name) for name in COMMANDS}


def _apply_batch_options(args: dict[str, Any]) -> None:
    """_apply_batch_options gives every put_many item the batch-wide options it lacks."""
    # The common batch gives nothing: no delay or expiry (None: the queue's own;
    # 0 is a choice that must reach every item), priority 0 (the default) and no
    # headers. Without this shortcut, every body of every batch became a map here.
    if (args["delay"] is None and args["expiry"] is None and not args["priority"]
            and not args["headers"]):
        return
    bodies = args["bodies"]
    for index, item in enumerate(bodies):
        if type(item) is bytes:  # a bare body: it takes every batch-wide option
            bodies[index] = item = {"body": item, "delay": None, "priority": None,
                                    "headers": None, "expiry": None}
        if isinstance(item, dict):
            for option in ITEM_OPTIONS:
                if item[option] is None:
                    item[option] = args[option]


# ------------------------------------------------------------------ text mode

def _text_int(field: str, text: str) -> int:
    # Plain ASCII digits (and a minus, for a clear range error later): int()
    # would also take "+5", "1_0" and other scripts' digits. More digits than
    # any valid value has are refused before int() (which raises past 4300
    # digits, and spends time quadratic in the length before that).
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise bad_argument(f"{field} must be an integer, got {text!r:.40}")
    if len(digits) > TEXT_INT_MAX_DIGITS:
        raise bad_argument(f"{field} has {len(digits)} digits; no integer of the protocol "
                           f"has more than {TEXT_INT_MAX_DIGITS} (64 bits)")
    return int(text)


def _text_flag(field: str, text: str) -> bool:
    word = text.lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise bad_argument(f"{field} must be true or false, got {text!r:.40}")


def _text_float(field: str, text: str) -> float:
    # float() also takes "1_0" (10) and other scripts' digits; as _text_int, ASCII only.
    try:
        if not text.isascii() or "_" in text:
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise bad_argument(f"{field} must be a number of seconds, got {text!r:.40}") from None
    if math.isinf(value) and "inf" not in text.lower():
        # 1e400 overflows to inf: name what was typed, not an "inf" nobody wrote.
        raise bad_argument(f"{field} must be a finite number of seconds >= 0, "
                           f"got {text:.40} (too large for a number of seconds)")
    return value


TEXT_CONVERTERS: dict[str, Callable[[str, str], Any]] = {
    "id": _text_int,
    "lease": _text_int,
    "max": _text_int,
    "wait": _text_float,
    "visibility": _text_float,
    "delay": _text_float,
    "priority": _text_int,
    "expiry": _text_float,
    "visibility_timeout": _text_float,
    "max_deliveries": _text_int,
    "max_length": _text_int,
    "unseen": _text_flag,
}


class Rejected:
    """A request a codec could not turn into a Command: answer `error`, then go on or close."""

    __slots__ = ("error", "request_id")

    def __init__(self, error: Exception, request_id: Any = None) -> None:
        # A Rejected may be held long after the decode that made it (behind a
        # waiting receive); the error's traceback (or that of one it was raised
        # while handling) would keep the decoder's frames alive, and with them
        # every item of that feed, this one too: a cycle (errors.py's rules).
        self.error = detached(error)
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"Rejected({self.error!r}, request_id={self.request_id!r})"
