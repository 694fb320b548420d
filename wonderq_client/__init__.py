"""wonderq_client: the asyncio client for WonderQ.

    import asyncio
    from wonderq_client import connect

    async def main():
        async with connect("127.0.0.1", 7711) as client:
            await client.put("jobs", b"hello")
            for msg in await client.receive("jobs", max=10, wait=5):
                print(msg.body)
                await msg.ack()

    asyncio.run(main())

With an auth token and TLS (the server's --auth-token and --tls-cert):

    ctx = ssl.create_default_context(cafile="ca.pem")
    async with connect("mq.example", 7711, auth_token="...", ssl=ctx) as client:
        ...

The client depends only on msgpack; it never imports the server.
"""

from .client import DEFAULT_HOST, DEFAULT_PORT, Client, connect
from .errors import (
    AuthFailed,
    AuthRequired,
    BadArgument,
    BatchTooLarge,
    BodyTooLarge,
    ConnectionClosed,
    FrameTooLarge,
    Full,
    HeadersTooLarge,
    InternalError,
    Interrupted,
    InvalidQueueName,
    LeaseLost,
    Malformed,
    NotFound,
    QueueExists,
    QueueNotFound,
    RedriveRunning,
    StorageError,
    StorageUnavailable,
    TooManyQueues,
    UnknownCommand,
    UnsupportedVersion,
    WonderQError,
)
from .message import Message, NotLeasedError
from .worker import Retry, Worker, WorkerCounts

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "AuthFailed",
    "AuthRequired",
    "BadArgument",
    "BatchTooLarge",
    "BodyTooLarge",
    "Client",
    "ConnectionClosed",
    "FrameTooLarge",
    "Full",
    "HeadersTooLarge",
    "InternalError",
    "Interrupted",
    "InvalidQueueName",
    "LeaseLost",
    "Malformed",
    "Message",
    "NotFound",
    "NotLeasedError",
    "QueueExists",
    "QueueNotFound",
    "RedriveRunning",
    "Retry",
    "StorageError",
    "StorageUnavailable",
    "TooManyQueues",
    "UnknownCommand",
    "UnsupportedVersion",
    "WonderQError",
    "Worker",
    "WorkerCounts",
    "connect",
]
