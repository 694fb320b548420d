"""Warnings about refused clients (wrong tokens, connections over the limit), rate-limited.

Design decision: an operator must see in the log that clients are being
turned away, and from where: a wrong token is a misconfigured client or
someone guessing, a refused connection a limit set too low or a flood.
Until now both were only counters in STATS (an operator's review: 95
refusals and the wrong tokens left no line, not even at debug). But whoever
is refused chooses how often, so each kind of refusal logs at most
PER_WINDOW lines per WINDOW_S, and the window after it starts with one line
saying how many more there were. PostgreSQL logs every failed
authentication; a broker that answers thousands of connections a second
cannot.

Rules:
* One budget per kind (its `kind` text), so a flood of one does not hide
  the other.
* Time is passed in (`now`, the server's clock); nothing here sleeps or
  sets a timer: the count of what was left out is said when the next one
  of that kind comes, or at the stop (`flush`).
"""

from __future__ import annotations

import logging
from typing import Any

PER_WINDOW = 10
WINDOW_S = 60.0


class RefusalLog:
    """Warnings about refused clients, at most PER_WINDOW per kind per WINDOW_S."""

    def __init__(self, logger: logging.Logger, per_window: int = PER_WINDOW,
                 window_s: float = WINDOW_S) -> None:
        self._logger = logger
        self._per_window, self._window_s = per_window, window_s
        self._windows: dict[str, list[Any]] = {}  # kind -> [started_at, logged, left out]

    def warn(self, kind: str, now: float, message: str, *args: Any) -> None:
        """warn logs `message % args` as a warning, unless this window's lines for `kind`
        are spent; then it only counts it."""
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self._window_s:
            if window is not None:
                self._say_left_out(kind, window, now)
            window = self._windows[kind] = [now, 0, 0]
        if window[1] < self._per_window:
            window[1] += 1
            self._logger.warning(message, *args)
        else:
            window[2] += 1

    def flush(self, now: float) -> None:
        """flush says what each kind left out in its window so far (at the stop)."""
        for kind, window in self._windows.items():
            self._say_left_out(kind, window, now)
            window[2] = 0

    def _say_left_out(self, kind: str, window: list[Any], now: float) -> None:
        if window[2]:
            self._logger.warning("%d more %s in %.0f s were not logged one by one",
                                 window[2], kind, now - window[0])
