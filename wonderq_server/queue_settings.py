"""A queue's settings, and the rules that tie them together.

Design decision: every setting has a value that means "off" (0 or ""), so a
queue's settings are always a complete record: replies always show every
setting, the journal stores the whole record, and nil on the wire can keep
meaning "not given" (commands.py). Field types and ranges are checked where
every request is checked (commands.py); the rules here are the ones that
involve more than one field or the queue's own name.

    setting             off value   meaning when on
    visibility_timeout  0           lease length when a receive gives none
                                    (0: the server's --visibility-timeout)
    max_deliveries      0           deliveries before a message is dead-lettered
    dead_letter_queue   ""          where such a message is moved
    delay               0           seconds a put message stays invisible
                                    when the put gives no delay
    max_length          0           stored messages (any state) at which puts
                                    are refused with FULL
    expiry              0           seconds after its put (or its move into
                                    this queue) that an unacked message is dropped

Rules:
* max_deliveries and dead_letter_queue are on together or off together: a
  limit without a place to move to would have to drop messages, and WonderQ
  never drops a message that was not asked to expire.
* A queue is not its own dead-letter queue.

Must not know: wire formats, the journal, clocks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import bad_argument

SETTING_NAMES = ("visibility_timeout", "max_deliveries", "dead_letter_queue", "delay",
                 "max_length", "expiry")


@dataclass(frozen=True, slots=True)
class QueueSettings:
    visibility_timeout: float = 0.0
    max_deliveries: int = 0
    dead_letter_queue: str = ""
    delay: float = 0.0
    max_length: int = 0
    expiry: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changed(self, queue_name: str, changes: dict[str, Any]) -> QueueSettings:
        """changed returns these settings with `changes` applied (None values are not
        changes), after checking the rules that span fields; raises CommandError."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(given) - set(SETTING_NAMES))
        if unknown:
            raise bad_argument(f"no queue setting {', '.join(unknown)}; settings are "
                               + ", ".join(SETTING_NAMES))
        settings = replace(self, **given)
        if bool(settings.max_deliveries) != bool(settings.dead_letter_queue):
            raise bad_argument("max_deliveries and dead_letter_queue go together: set both "
                               "(to dead-letter) or neither (0 and \"\")")
        if settings.dead_letter_queue == queue_name:
            raise bad_argument(f"queue {queue_name!r} cannot be its own dead_letter_queue")
        return settings

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> QueueSettings:
        """from_record reads settings stored in the journal; unknown names are ignored so
        that a newer server's extra settings do not stop an older one."""
        return cls(**{k: v for k, v in record.items() if k in SETTING_NAMES})


DEFAULT_SETTINGS = QueueSettings()
