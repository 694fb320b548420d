"""Waiting for a state the server shows only on request (stats, queue_info).

Most end-to-end tests wait for the event itself (a long-polling receive, a
reply). Some states have no event to wait for: a rate sampled once a second,
a message expiring, a compaction finishing. `until` re-reads such a state
until it holds, bounded in time, so a broken server fails the test rather
than hanging the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

# Upper bound for any single wait; tests wait for states, and this only stops
# a broken server from hanging the suite.
EVENT_TIMEOUT_S = 10.0


async def until(read: Callable[[], Awaitable[Any]], check: Callable[[Any], bool],
                timeout_s: float = EVENT_TIMEOUT_S) -> Any:
    """until re-reads `await read()` until `check(value)` holds; returns that value."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while True:
        value = await read()
        if check(value):
            return value
        assert loop.time() < give_up, f"condition never held; last value: {value}"
        await asyncio.sleep(0.005)


async def until_stats(client: Any, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """until_stats re-reads the server's stats until `check(stats)` holds."""
    return await until(client.stats, check)  # type: ignore[no-any-return]


async def until_true(check: Callable[[], bool], timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """until_true waits for a state of this process that nothing announces (a handler
    reached, a count, a buffer filled): `check()` is read again each time round."""

    async def read() -> bool:
        return check()

    await until(read, bool, timeout_s)
