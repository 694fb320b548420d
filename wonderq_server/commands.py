"""The command vocabulary: what a request may say, checked in one place.

Design decision: both codecs (binary and text) turn bytes into a command name
and a dict of raw arguments; `make_command` checks that dict against the
table below and fills in defaults. So the two modes cannot disagree about
what is valid, and every rule about an argument is written once.

Rules:
* A field is checked for type and range before anything is stored or any
  memory is set aside in proportion to it (a batch longer than the limit is
  refused by its length).
* Unknown fields are refused (BAD_ARGUMENT), so a misspelt option is an error
  rather than silently ignored.
* Booleans are not numbers; NaN and infinities are not durations.
* The text codec passes strings; `TEXT_CONVERTERS` turns them into the same
  types the binary codec carries, then the same checks apply.

Must not know: sockets, the broker's state, wire framing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import BATCH_TOO_LARGE, UNKNOWN_COMMAND, CommandError, bad_argument
from .queues import check_queue_name


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits on requests; each has a server flag (see config.py)."""

    max_message_bytes: int = 256 * 1024
    max_batch: int = 1000
    max_wait_s: float = 300.0
    max_visibility_s: float = 43200.0
    max_delay_s: float = 43200.0
    max_frame_bytes: int = 64 * 1024 * 1024

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
    return check_queue_name(value)


def _body(field: str, value: Any, limits: Limits) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # friendly to clients whose msgpack sends str
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise bad_argument(f"{field} must be bytes, got {type(value).__name__}")


def _bodies(field: str, value: Any, limits: Limits) -> list[bytes]:
    if not isinstance(value, list | tuple):
        raise bad_argument(f"{field} must be a list of bytes, got {type(value).__name__}")
    if len(value) > limits.max_batch:
        raise CommandError(BATCH_TOO_LARGE, f"{field} has {len(value)} items, over the limit "
                           f"of {limits.max_batch} (--max-batch)")
    if not value:
        raise bad_argument(f"{field} must not be empty")
    return [_body(f"{field}[{i}]", item, limits) for i, item in enumerate(value)]


def _whole(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_argument(f"{field} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise bad_argument(f"{field} must not be negative, got {value}")
    return value


def _token(field: str, value: Any, limits: Limits) -> int:
    return _whole(field, value)


def _max(field: str, value: Any, limits: Limits) -> int:
    value = _whole(field, value)
    if value < 1:
        raise bad_argument(f"{field} must be at least 1, got {value}")
    if value > limits.max_batch:
        raise CommandError(BATCH_TOO_LARGE, f"{field} is {value}, over the limit of "
                           f"{limits.max_batch} (--max-batch)")
    return value


def _seconds(field: str, value: Any, upper: float, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_argument(f"{field} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise bad_argument(f"{field} must be a finite number of seconds >= 0, got {value}")
    if value > upper:
        raise bad_argument(f"{field} is {value} s, over the limit of {upper:g} s ({flag})")
    return float(value)


def _wait(field: str, value: Any, limits: Limits) -> float:
    return _seconds(field, value, limits.max_wait_s, "--max-wait")


def _visibility(field: str, value: Any, limits: Limits) -> float | None:
    if value is None:
        return None
    return _seconds(field, value, limits.max_visibility_s, "--max-visibility-timeout")


def _delay(field: str, value: Any, limits: Limits) -> float:
    return _seconds(field, value, limits.max_delay_s, "--max-delay")


CHECKS: dict[str, Check] = {
    "queue": _queue,
    "body": _body,
    "bodies": _bodies,
    "id": _token,
    "lease": _token,
    "max": _max,
    "wait": _wait,
    "visibility": _visibility,
    "delay": _delay,
}

# command -> (required fields in text-mode positional order, optional fields with defaults)
COMMANDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "put": (("queue", "body"), {}),
    "put_many": (("queue", "bodies"), {}),
    "receive": (("queue",), {"max": 1, "wait": 0.0, "visibility": None}),
    "ack": (("queue", "id", "lease"), {}),
    "nack": (("queue", "id", "lease"), {"delay": 0.0}),
    "touch": (("queue", "id", "lease"), {"visibility": None}),
    "stats": ((), {}),
    "ping": ((), {}),
    "quit": ((), {}),
}


def make_command(name: Any, args: Any, limits: Limits, request_id: Any = None) -> Command:
    """make_command checks a raw request and returns it as a Command, or raises CommandError."""
    spec = COMMANDS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise CommandError(UNKNOWN_COMMAND, f"unknown command {name!r:.40}; known: "
                           + ", ".join(COMMANDS))
    if not isinstance(args, dict):
        raise bad_argument(f"arguments must be a map, got {type(args).__name__}")
    required, optional = spec
    checked: dict[str, Any] = {}
    for field in required:
        if args.get(field) is None:  # nil counts as absent
            raise bad_argument(f"{name} needs the field {field!r}")
        checked[field] = CHECKS[field](field, args[field], limits)
    for field, default in optional.items():
        value = args.get(field)
        checked[field] = default if value is None else CHECKS[field](field, value, limits)
    # Compare names, not counts: optional fields left out would hide a misspelt one.
    extra = sorted(str(k) for k in args if k not in checked)
    if extra:
        raise bad_argument(f"{name} has no field {', '.join(extra)}")
    return Command(name, checked, request_id)


# ------------------------------------------------------------------ text mode

def _text_int(field: str, text: str) -> int:
    # Plain ASCII digits (and a minus, for a clear range error later): int()
    # would also take "+5", "1_0" and other scripts' digits.
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise bad_argument(f"{field} must be an integer, got {text!r:.40}")
    return int(text)


def _text_float(field: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise bad_argument(f"{field} must be a number of seconds, got {text!r:.40}") from None


TEXT_CONVERTERS: dict[str, Callable[[str, str], Any]] = {
    "id": _text_int,
    "lease": _text_int,
    "max": _text_int,
    "wait": _text_float,
    "visibility": _text_float,
    "delay": _text_float,
}


class Rejected:
    """A request a codec could not turn into a Command: answer `error`, then go on or close."""

    __slots__ = ("error", "request_id")

    def __init__(self, error: Exception, request_id: Any = None) -> None:
        self.error = error
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"Rejected({self.error!r}, request_id={self.request_id!r})"
