"""Errors WonderQ reports to its clients, each with a stable wire code.

Design decision: one base class, `WonderQError`, split in two by what the
connection must do afterwards (the h11 split between "you misused the API" and
"the peer sent garbage"):

* `CommandError`: the request was understood as a request but cannot be
  carried out (unknown message, stale lease, bad argument...). The server
  replies with the code and keeps the connection.
* `ProtocolError`: the byte stream itself is broken or cannot be trusted
  (an oversized frame, an unsupported protocol version). The server replies
  with the code and then closes the connection, because it can no longer tell
  where the next request starts.

Rules:
* Every code here is part of the wire protocol and listed in PROTOCOL.md.
  Codes are never renamed or reused for another meaning.
* A message is for people; a code is for programs. Clients branch on codes.
* Anything that is not a `WonderQError` escaping a command is a bug in the
  server: it is logged with its traceback and answered with `INTERNAL`.
* An error kept past the `except` that caught it (a batch item's result, a
  Rejected request) is kept `detached`: its traceback holds the frames that
  raised it, and they the list it is kept in, a reference cycle that only the
  cyclic collector frees, and never once frozen (gc_policy.py).
"""

from __future__ import annotations

from typing import TypeVar

# Command errors: reply, keep the connection.
UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
BAD_ARGUMENT = "BAD_ARGUMENT"
INVALID_QUEUE_NAME = "INVALID_QUEUE_NAME"
BODY_TOO_LARGE = "BODY_TOO_LARGE"
BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
NOT_FOUND = "NOT_FOUND"
LEASE_LOST = "LEASE_LOST"
MALFORMED = "MALFORMED"
LINE_TOO_LONG = "LINE_TOO_LONG"
INTERNAL = "INTERNAL"
STORAGE_ERROR = "STORAGE_ERROR"  # the write failed: the change may or may not take effect
# Journal writes are failing: the change was refused, not made (Redis' MISCONF).
STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
FULL = "FULL"
QUEUE_NOT_FOUND = "QUEUE_NOT_FOUND"
QUEUE_EXISTS = "QUEUE_EXISTS"
HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
TOO_MANY_QUEUES = "TOO_MANY_QUEUES"
AUTH_REQUIRED = "AUTH_REQUIRED"  # a command before AUTH, on a server with a token
# A command done in steps (REDRIVE) ended part-way by a stop; the message says how far it
# got. Not SHUTTING_DOWN, whose meaning is "not run" (and whose text line is the goodbye's).
INTERRUPTED = "INTERRUPTED"
# A REDRIVE of a queue whose redrive is under way (one at a time, as SQS has one move task).
REDRIVE_RUNNING = "REDRIVE_RUNNING"

# Protocol errors: reply, then close the connection.
FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"  # over --max-connections, sent before closing
IDLE_TIMEOUT = "IDLE_TIMEOUT"  # nothing sent for --idle-timeout, sent before closing
AUTH_TIMEOUT = "AUTH_TIMEOUT"  # no successful AUTH within --auth-timeout, sent before closing
AUTH_FAILED = "AUTH_FAILED"  # a wrong token; closed after a delay (auth.py)
SHUTTING_DOWN = "SHUTTING_DOWN"  # the server is stopping, sent before closing (server.py)
# An HTTP request at the message port (text_codec.py): answered, then closed, reading
# nothing more, so a web page cannot make a browser run its POST body as commands.
HTTP_REQUEST = "HTTP_REQUEST"


E = TypeVar("E", bound=BaseException)


class WonderQError(Exception):
    """Base of every error that is reported to a client with a wire code."""

    code: str = INTERNAL
    closes_connection: bool = False
    close_delay_s: float = 0.0  # how long a closing connection waits, reading nothing, to close

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CommandError(WonderQError):
    """A well-formed request that cannot be carried out; the connection stays open."""


class ProtocolError(WonderQError):
    """The stream is broken; the server replies with the code, then closes."""

    closes_connection = True


def detached(error: E) -> E:
    """detached is `error` without its traceback and the errors it was raised while
    handling: what a reply needs of it (code and message), and no frames."""
    error.__traceback__ = None
    error.__context__ = None
    error.__cause__ = None
    return error


def bad_argument(message: str) -> CommandError:
    return CommandError(BAD_ARGUMENT, message)
