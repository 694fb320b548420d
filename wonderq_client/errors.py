"""Errors the client raises: one class per server error code, plus ConnectionClosed.

Design decision: every server error arrives as `[code, message]`; the client
raises the subclass registered for that code, so callers can write
`except LeaseLost:` rather than compare strings. A code this client does not
know (from a newer server) still raises `WonderQError` with that code.
Batch commands (put_many, ack_many, nack_many) do not raise for one failed
item: they return that item's error, an instance of the same class, in its
place in the result list.
"""

from __future__ import annotations


class WonderQError(Exception):
    """An error reported by the server (or, for ConnectionClosed, by the client)."""

    code: str = "ERROR"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class UnknownCommand(WonderQError):
    code = "UNKNOWN_COMMAND"


class BadArgument(WonderQError):
    code = "BAD_ARGUMENT"


class InvalidQueueName(WonderQError):
    code = "INVALID_QUEUE_NAME"


class BodyTooLarge(WonderQError):
    code = "BODY_TOO_LARGE"


class BatchTooLarge(WonderQError):
    code = "BATCH_TOO_LARGE"


class NotFound(WonderQError):
    """The message is gone: acked already, or never put."""

    code = "NOT_FOUND"


class LeaseLost(WonderQError):
    """This lease no longer holds the message (it was delivered again since, given back
    unseen, or the lease was never this message's); the ack changed nothing."""

    code = "LEASE_LOST"


class Malformed(WonderQError):
    code = "MALFORMED"


class FrameTooLarge(WonderQError):
    code = "FRAME_TOO_LARGE"


class UnsupportedVersion(WonderQError):
    code = "UNSUPPORTED_VERSION"


class InternalError(WonderQError):
    code = "INTERNAL"


class StorageError(WonderQError):
    """The journal could not store the change (disk full, I/O error).

    The change may or may not take effect: a put may still be delivered, an
    ack may be undone by a restart. Retrying is safe for consumers that
    tolerate a second delivery.
    """

    code = "STORAGE_ERROR"


class StorageUnavailable(StorageError):
    """The server refused the request without running it: its journal writes are failing.

    Changes (put, ack, nack, queue commands) and receives and touches (a lease is
    a change the journal keeps) are refused; reads go on. Nothing changed: retry
    later (the server tries its journal again every second and takes them once a
    write works). A StorageError subclass, so `except StorageError` catches both,
    but unlike its parent this one is always safe to retry.
    """

    code = "STORAGE_UNAVAILABLE"


class Full(WonderQError):
    """The put was refused: the queue is at its max_length, or the server at --max-memory.

    Nothing was stored; retry later, once consumers have made room.
    """

    code = "FULL"


class QueueNotFound(WonderQError):
    """No such queue (admin commands never create one)."""

    code = "QUEUE_NOT_FOUND"


class QueueExists(WonderQError):
    """create_queue named an explicitly created queue whose settings differ."""

    code = "QUEUE_EXISTS"


class HeadersTooLarge(WonderQError):
    """Too many headers, or their keys and values together are too many bytes."""

    code = "HEADERS_TOO_LARGE"


class TooManyQueues(WonderQError):
    """The server already holds --max-queues queues."""

    code = "TOO_MANY_QUEUES"


class AuthRequired(WonderQError):
    """The server has an auth token and this connection has not sent it: connect with
    `auth_token=`. The connection stays open."""

    code = "AUTH_REQUIRED"


class AuthFailed(WonderQError):
    """The server refused the auth token; it closes the connection about a second later."""

    code = "AUTH_FAILED"


class Interrupted(WonderQError):
    """The server stopped a command done in steps (a big redrive) part-way, as it stopped
    itself; the message says how far it got. What it did stays done."""

    code = "INTERRUPTED"


class RedriveRunning(WonderQError):
    """A redrive of that queue is under way (one at a time); nothing was moved by this one."""

    code = "REDRIVE_RUNNING"


class ConnectionClosed(WonderQError):
    """The connection ended before the reply came; the request may or may not have run.

    server_code is the code of the error the server sent about the whole connection just
    before it closed it (SHUTTING_DOWN, IDLE_TIMEOUT, TOO_MANY_CONNECTIONS,
    UNSUPPORTED_VERSION, ...; see PROTOCOL.md, Errors), or None when it sent none. With
    SHUTTING_DOWN (a clean stop) the request did not run. peer_spoke says whether the
    peer sent anything at all on the connection (a TLS port or a server refusing a
    client certificate closes one without a word; another program's port may answer in
    its own protocol).
    """

    code = "CONNECTION_CLOSED"
    server_code: str | None = None
    peer_spoke: bool = False


ERRORS_BY_CODE: dict[str, type[WonderQError]] = {
    cls.code: cls
    for cls in (UnknownCommand, BadArgument, InvalidQueueName, BodyTooLarge, BatchTooLarge,
                NotFound, LeaseLost, Malformed, FrameTooLarge, UnsupportedVersion,
                InternalError, StorageError, StorageUnavailable, Full, QueueNotFound, QueueExists,
                HeadersTooLarge, TooManyQueues, AuthRequired, AuthFailed, Interrupted,
                RedriveRunning, ConnectionClosed)
}


def error_from_wire(code: str, message: str) -> WonderQError:
    """error_from_wire builds the exception for a server error reply."""
    cls = ERRORS_BY_CODE.get(code, WonderQError)
    return cls(message, code)
