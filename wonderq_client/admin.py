"""Queue administration: settings, listing, peeking, purging, deleting, redriving.

Design decision: these commands live apart from the message commands (put,
receive, ack, ...) in a mixin that Client inherits, so client.py stays about
the connection and the hot path. They send through the same pipelined
`_call` as everything else.

Rules:
* Queue settings are keyword arguments named as in PROTOCOL.md
  (visibility_timeout, max_deliveries, dead_letter_queue, delay, max_length,
  expiry); a misspelt one is Python's TypeError before anything is sent. A
  setting left None is not sent: create_queue gives it its default,
  configure_queue leaves it as it is.
* None of these commands creates a queue except create_queue; on a queue that
  does not exist they raise QueueNotFound.
* Replies are passed on as the server sends them (maps as dicts, arrays as
  lists), except peek's deliveries, which become Messages without a lease.
"""

from __future__ import annotations

from typing import Any

from .message import Message, from_deliveries


def settings_args(queue: str, visibility_timeout: float | None, max_deliveries: int | None,
                  dead_letter_queue: str | None, delay: float | None, max_length: int | None,
                  expiry: float | None) -> dict[str, Any]:
    """settings_args is a create_queue or configure_queue request: the settings not None."""
    args: dict[str, Any] = {"queue": queue}
    for name, value in (("visibility_timeout", visibility_timeout),
                        ("max_deliveries", max_deliveries),
                        ("dead_letter_queue", dead_letter_queue), ("delay", delay),
                        ("max_length", max_length), ("expiry", expiry)):
        if value is not None:
            args[name] = value
    return args


class QueueAdmin:
    """The queue administration commands; Client provides `_call`."""

    async def _call(self, command: str, args: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def create_queue(self, queue: str, *, visibility_timeout: float | None = None,
                           max_deliveries: int | None = None,
                           dead_letter_queue: str | None = None, delay: float | None = None,
                           max_length: int | None = None,
                           expiry: float | None = None) -> dict[str, Any]:
        """create_queue creates a queue with these settings; returns all its settings.

        Creating it again with the same settings succeeds; with different
        ones it raises QueueExists. A queue that exists only because a
        command named it is made explicit and given these settings.
        """
        return await self._call("create_queue", settings_args(  # type: ignore[no-any-return]
            queue, visibility_timeout, max_deliveries, dead_letter_queue, delay, max_length,
            expiry))

    async def configure_queue(self, queue: str, *, visibility_timeout: float | None = None,
                              max_deliveries: int | None = None,
                              dead_letter_queue: str | None = None, delay: float | None = None,
                              max_length: int | None = None,
                              expiry: float | None = None) -> dict[str, Any]:
        """configure_queue changes the settings given; returns all the queue's settings.

        Turn max_deliveries and dead_letter_queue on or off together
        (max_deliveries=0, dead_letter_queue="" is off).
        """
        return await self._call("configure_queue", settings_args(  # type: ignore[no-any-return]
            queue, visibility_timeout, max_deliveries, dead_letter_queue, delay, max_length,
            expiry))

    async def queue_info(self, queue: str) -> dict[str, Any]:
        """queue_info: the queue's settings, whether it was created explicitly, its figures."""
        return await self._call("queue_info", {"queue": queue})  # type: ignore[no-any-return]

    async def queues(self) -> list[dict[str, Any]]:
        """queues lists every queue by name: {"queue", "explicit", "messages", "ready", ...}."""
        return await self._call("queues", {})  # type: ignore[no-any-return]

    async def peek(self, queue: str, max: int = 1) -> list[Message]:
        """peek shows up to `max` ready messages in the order receive would hand them out.

        Nothing is leased: the messages' `lease` is None, and ack, nack or
        touch on them raise NotLeasedError.
        """
        rows = await self._call("peek", {"queue": queue, "max": max})
        return from_deliveries(self, queue, rows)  # type: ignore[arg-type]

    async def purge(self, queue: str) -> int:
        """purge removes every message of the queue, in any state; returns how many."""
        return await self._call("purge", {"queue": queue})  # type: ignore[no-any-return]

    async def delete_queue(self, queue: str) -> int:
        """delete_queue removes the queue, its settings and messages; returns how many messages.

        Receives waiting on it are answered empty.
        """
        return await self._call("delete_queue", {"queue": queue})  # type: ignore[no-any-return]

    async def redrive(self, dead_letter_queue: str, max: int | None = None) -> int:
        """redrive moves up to `max` (None: all) dead letters back to their origin queues.

        Oldest first, delivery counts reset; a message whose origin queue is
        full stays. Returns how many moved.
        """
        args: dict[str, Any] = {"queue": dead_letter_queue}
        if max is not None:
            args["max"] = max
        return await self._call("redrive", args)  # type: ignore[no-any-return]

    async def message_info(self, queue: str, id: int) -> dict[str, Any]:
        """message_info: one message's state, deliveries, deadlines, headers and origin."""
        return await self._call(  # type: ignore[no-any-return]
            "message_info", {"queue": queue, "id": id})
