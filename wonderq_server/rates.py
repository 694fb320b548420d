"""Per-second rates of a queue's totals, without any cost on the message path.

Design decision: a put or an ack only bumps a total (queues.py). Once a
second the server calls `Broker.sample_rates(now)`, which records each
queue's totals here; a rate is the growth of a total between the oldest
sample in the window and now. So rates cost one small record per queue per
second, nothing per message, and stay pure (the time is passed in).

Rules:
* At most `SAMPLES` samples are kept, so a rate covers about the last
  `SAMPLES - 1` seconds (WINDOW_S) once the server has run that long.
* A queue's first sample is preceded by a zero sample one interval back:
  a queue is made at most one interval before it is first sampled, so what
  it did until then counts as done in that interval rather than never.
* Before the first sample, and when no time has passed, a rate is 0.
* Totals never go down while a queue exists; a queue that is deleted and
  made again starts a new window.

Must not know: clocks, timers, wire formats. (Which clock the times are on
is the caller's: the server's is steady, so a step of the wall clock does
not bend a rate.)
"""

from __future__ import annotations

from collections import deque

SAMPLES = 6
WINDOW_S = SAMPLES - 1


class RateWindow:
    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque(maxlen=SAMPLES)

    def sample(self, now: float, totals: tuple[int, ...], interval_s: float = 1.0) -> None:
        if not self._samples:
            self._samples.append((now - interval_s, tuple(0 for _ in totals)))
        self._samples.append((now, totals))

    def rates(self, now: float, totals: tuple[int, ...]) -> tuple[float, ...]:
        """rates is, for each total, its growth per second since the oldest sample."""
        if not self._samples:
            return tuple(0.0 for _ in totals)
        at, then = self._samples[0]
        elapsed = now - at
        if elapsed <= 0 or totals == then:  # (most queues, most of the time: STATS asks all)
            return tuple(0.0 for _ in totals)
        return tuple([round(max(0, now_total - old) / elapsed, 3)
                      for now_total, old in zip(totals, then, strict=True)])
