"""Argument types for the command line: a bad value is a usage error, before connecting.

Design decision: every number a subcommand sends is checked by argparse, so a
value the server would refuse, or the client could not even encode (an
integer over 64 bits, a NaN), ends as argparse's one-line usage error with
exit status 2, not as a traceback or a round trip to the server.

Rules:
* Durations are finite seconds, never negative; --timeout is over zero.
* Ids, leases and counts fit in 64 bits unsigned (msgpack's integers);
  priorities are in the protocol's range, 32 bits signed (PROTOCOL.md, put);
  the server still checks its own limits (--max-batch).
* A header is KEY=VALUE with a non-empty key; a key given twice is refused (as
  the server refuses it in text mode), not quietly given its last value.
* A count the server takes from 1 up (receive's and peek's --max, redrive's)
  is refused at 0 here too, so every bad --max is the same exit status 2.
"""

from __future__ import annotations

import argparse
import math

UINT64_MAX = (1 << 64) - 1
PRIORITY_MIN, PRIORITY_MAX = -(1 << 31), (1 << 31) - 1  # PROTOCOL.md, put


def _number(text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None


def _seconds(text: str, zero_allowed: bool) -> float:
    value = float(_number(text, float))
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        bound = "zero or more" if zero_allowed else "over 0"
        raise argparse.ArgumentTypeError(f"must be finite seconds, {bound}, got {text!r}")
    return value


def seconds(text: str) -> float:
    """seconds: a finite duration, zero or more."""
    return _seconds(text, zero_allowed=True)


def positive_seconds(text: str) -> float:
    """positive_seconds: a finite duration over zero (--timeout, --interval)."""
    return _seconds(text, zero_allowed=False)


def unsigned(text: str) -> int:
    """unsigned: an id, a lease or a count, 0 to 2**64 - 1."""
    value = int(_number(text, int))
    if not 0 <= value <= UINT64_MAX:
        raise argparse.ArgumentTypeError(f"must be 0 to {UINT64_MAX}, got {text!r}")
    return value


def positive(text: str) -> int:
    """positive: a count of at least 1 (a --max: the server refuses 0)."""
    value = unsigned(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1, got 0")
    return value


def priority(text: str) -> int:
    """priority: a message's priority, -2**31 to 2**31 - 1 (lower goes first)."""
    value = int(_number(text, int))
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise argparse.ArgumentTypeError(
            f"must be {PRIORITY_MIN} to {PRIORITY_MAX}, got {text!r}")
    return value


def text(value: str) -> str:
    """text: an argument that goes to the server as a string (a queue name, a header),
    so UTF-8. Bytes that are not arrive from the shell as lone surrogates
    (surrogateescape), which msgpack cannot send: a usage error, not a traceback."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"is not UTF-8: {value!r}") from None
    return value


def header(value: str) -> tuple[str, str]:
    """header: KEY=VALUE, split at the first '=', in UTF-8."""
    key, eq, rest = text(value).partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"wants KEY=VALUE, got {value!r}")
    return key, rest


class Headers(argparse.Action):
    """Headers collects repeated `--header KEY=VALUE` (each checked by `header`) into
    a dict, and refuses a key given twice as a usage error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        key, value = values  # type: ignore[misc]
        headers = getattr(namespace, self.dest) or {}
        if key in headers:
            raise argparse.ArgumentError(self, f"header {key!r} given twice")
        headers[key] = value
        setattr(namespace, self.dest, headers)
