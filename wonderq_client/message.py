"""A received message, with shortcuts to settle it.

Design decision: a Message remembers the client and queue it came from, so
`await msg.ack()` needs nothing else. Its fields are the delivery's fields in
PROTOCOL.md, named as there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client


class Message:
    __slots__ = ("_client", "body", "deliveries", "enqueued_at", "id", "lease", "queue")

    def __init__(self, client: Client, queue: str, id: int, body: bytes, lease: int,
                 deliveries: int, enqueued_at: float) -> None:
        self._client = client
        self.queue = queue
        self.id = id
        self.body = body
        self.lease = lease
        self.deliveries = deliveries
        self.enqueued_at = enqueued_at

    async def ack(self) -> None:
        """ack deletes this message; raises LeaseLost if it was delivered again since."""
        await self._client.ack(self.queue, self.id, self.lease)

    async def nack(self, *, delay: float = 0.0) -> None:
        """nack gives this message back, ready at once or after `delay` seconds."""
        await self._client.nack(self.queue, self.id, self.lease, delay=delay)

    async def touch(self, *, visibility: float | None = None) -> float:
        """touch extends this message's lease; returns the new deadline."""
        return await self._client.touch(self.queue, self.id, self.lease, visibility=visibility)

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 40 else self.body[:40] + b"..."
        return (f"Message(queue={self.queue!r}, id={self.id}, lease={self.lease}, "
                f"deliveries={self.deliveries}, body={body!r})")
