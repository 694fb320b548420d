"""The demo's ledger: what its workers saw happen, keyed by message content.

Design decision: every body the demo puts carries a sequence number, and
every fact a worker learns (a put answered, a body received, an ack answered
OK or refused) is written here under that number, never under the server's
id. The accounting at the end compares these sets with what is read back
from the queues, so it checks the server's promises (nothing lost, nothing
acked twice) from the client's side instead of trusting the server's counters.

Rules:
* Only answered requests are facts. A put or an ack sent but never answered
  (the demo stopped it, or the connection ended) stays "in doubt": a body
  whose put is in doubt counts as produced once it is seen anywhere; a body
  whose ack is in doubt and that is found nowhere is reported apart, never
  as lost and never as acked.
* lost = produced and neither acked, nor dead-lettered, nor still queued,
  nor with an ack in doubt. An ack answered OK for a body already acked is
  "acked twice"; a body acked and also found stored is "acked but stored".
  Any of the three makes the run fail (Accounting.ok).
* The event log keeps only notable events (redeliveries, crashes, refused
  acks, dead letters), and only the last few: narration must not flood.
* No I/O and no clock: callers pass `at`, seconds since the demo started.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

EVENTS_KEPT = 8

# How a body's last delivery stands, to say why it was delivered again. A delivery ended by a
# nack is given back at once; one still held, or held by a crashed worker, ends when its lease
# runs out.
HOLDING = "was still working on it"
CRASHED = "crashed holding it"
NACKED = "nacked it"
FAILED = "failed on it"  # a poison message: every consumer nacks it
GAVE_BACK = "gave it back"
NACKS = (NACKED, FAILED, GAVE_BACK)


@dataclass
class WorkerTally:
    """One worker's counts for the live table."""

    name: str
    behaviour: str
    received: int = 0
    acked: int = 0
    nacked: int = 0
    refused: int = 0  # acks answered LEASE_LOST or NOT_FOUND
    crashes: int = 0
    put: int = 0
    now: str = "starting"


@dataclass(frozen=True)
class Event:
    at: float
    text: str
    alarm: bool = False  # something went wrong (a broken promise, a lost connection)


@dataclass
class Ledger:
    messages: int  # how many the producers were asked to put
    produced: set[int] = field(default_factory=set)
    ids: dict[int, int] = field(default_factory=dict)  # sequence number -> the server's id
    put_in_doubt: set[int] = field(default_factory=set)
    put_refused: int = 0
    receipts: Counter[int] = field(default_factory=Counter)
    redeliveries: int = 0  # receptions with deliveries > 1
    acked: set[int] = field(default_factory=set)
    acked_twice: list[int] = field(default_factory=list)
    ack_in_doubt: set[int] = field(default_factory=set)
    dead_seen: set[int] = field(default_factory=set)  # narrated while running
    workers: dict[str, WorkerTally] = field(default_factory=dict)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    event_count: int = 0
    _last_delivery: dict[int, tuple[str, str]] = field(default_factory=dict)  # (worker, how)

    def worker(self, name: str, behaviour: str) -> WorkerTally:
        tally = self.workers[name] = WorkerTally(name, behaviour)
        return tally

    def note(self, at: float, text: str, alarm: bool = False) -> None:
        self.events.append(Event(at, text, alarm))
        self.event_count += 1

    # ------------------------------------------------------------ producers

    def putting(self, seqs: list[int]) -> None:
        self.put_in_doubt.update(seqs)

    def put_withdrawn(self, seqs: list[int]) -> None:
        """put_withdrawn: the put was refused as a whole (BATCH_TOO_LARGE), so nothing of it
        was stored; the bodies are no longer in doubt (the producer puts them again)."""
        self.put_in_doubt.difference_update(seqs)

    def put_answered(self, worker: str, seq: int, id: int | None) -> None:
        """put_answered: the put was answered with an id, or refused (None)."""
        self.put_in_doubt.discard(seq)
        if id is not None:
            self.produced.add(seq)
            self.ids[seq] = id
            self.workers[worker].put += 1
        else:
            self.put_refused += 1

    # ------------------------------------------------------------ consumers

    def received(self, at: float, worker: str, seq: int, deliveries: int) -> None:
        """received records one delivery and narrates it if it was a redelivery."""
        self.receipts[seq] += 1
        self.workers[worker].received += 1
        previous, how = self._last_delivery.get(seq, ("", ""))
        self._last_delivery[seq] = (worker, HOLDING)
        if deliveries <= 1:
            return
        self.redeliveries += 1
        if how in NACKS:
            self.note(at, f"#{seq} redelivered to {worker} (delivery {deliveries}) "
                          f"after {previous} {how}")
        else:
            why = f" ({previous} {how})" if previous else ""
            self.note(at, f"lease ran out{why}: #{seq} redelivered to {worker} "
                          f"(delivery {deliveries})")

    def letting_go(self, worker: str, seqs: list[int], how: str) -> None:
        """letting_go records, before a nack is sent, why this delivery is ending.

        Before, not after: the server may hand the message to another
        consumer, and that consumer may hear of it, before the nack's own
        answer comes back.
        """
        for seq in seqs:
            if self._last_delivery.get(seq) == (worker, HOLDING):
                self._last_delivery[seq] = (worker, how)

    def let_go_answered(self, worker: str, seqs: list[int], how: str, done: bool) -> None:
        """let_go_answered: the nack was answered OK (done), or refused (the lease had ended)."""
        if done:
            self.workers[worker].nacked += len(seqs)
            return
        for seq in seqs:
            if self._last_delivery.get(seq) == (worker, how):
                self._last_delivery[seq] = (worker, HOLDING)

    def crashed(self, at: float, worker: str, seqs: list[int]) -> None:
        self.workers[worker].crashes += 1
        self.letting_go(worker, seqs, CRASHED)
        held = ", ".join(f"#{seq}" for seq in seqs)
        self.note(at, f"{worker} crashed holding {held} (never acked)")

    def acking(self, seq: int) -> None:
        self.ack_in_doubt.add(seq)

    def ack_answered(self, at: float, worker: str, seq: int, refused: str | None,
                     late: bool) -> None:
        """ack_answered records an ack's answer: refused is None (OK) or the error code."""
        self.ack_in_doubt.discard(seq)
        tally = self.workers[worker]
        if refused is not None:
            tally.refused += 1
            self.note(at, f"{worker} was too slow: its ack of #{seq} was refused ({refused}); "
                          f"the message had moved on")
            return
        tally.acked += 1
        self._last_delivery.pop(seq, None)
        if seq in self.acked:
            self.acked_twice.append(seq)
            self.note(at, f"BROKEN PROMISE: #{seq} acked twice", alarm=True)
            return
        self.acked.add(seq)
        if late:
            self.note(at, f"{worker}'s late ack of #{seq} was accepted: its lease had run out "
                          f"but nobody had taken the message since")

    def dead_lettered(self, at: float, seq: int, deliveries: int, poison: bool) -> None:
        """dead_lettered narrates a body first seen in the dead-letter queue."""
        if seq in self.dead_seen:
            return
        self.dead_seen.add(seq)
        what = " (poison)" if poison else ""
        self.note(at, f"#{seq}{what} dead-lettered after {deliveries} deliveries")

    @property
    def duplicates(self) -> int:
        """duplicates: bodies received more than once."""
        return sum(1 for count in self.receipts.values() if count > 1)


@dataclass(frozen=True)
class Accounting:
    produced: int
    acked: int
    redelivered: int
    dead_lettered: int
    still_queued: int
    duplicates: int
    lost: tuple[int, ...]
    acked_twice: tuple[int, ...]
    acked_but_stored: tuple[int, ...]
    ack_in_doubt: int  # acks never answered, for bodies found nowhere else
    put_unanswered: int  # puts never answered, for bodies never seen
    put_refused: int  # puts the server refused (FULL, say): never produced

    @property
    def ok(self) -> bool:
        return not (self.lost or self.acked_twice or self.acked_but_stored)


def account(ledger: Ledger, dead: set[int], queued: set[int]) -> Accounting:
    """account settles the books: `dead` and `queued` are the bodies read back at the end."""
    seen = set(ledger.receipts) | dead | queued
    produced = ledger.produced | (ledger.put_in_doubt & seen)
    settled = ledger.acked | dead | queued
    doubtful_acks = (ledger.ack_in_doubt & produced) - settled
    lost = produced - settled - doubtful_acks
    return Accounting(
        produced=len(produced), acked=len(ledger.acked), redelivered=ledger.redeliveries,
        dead_lettered=len(dead), still_queued=len(queued), duplicates=ledger.duplicates,
        lost=tuple(sorted(lost)), acked_twice=tuple(ledger.acked_twice),
        acked_but_stored=tuple(sorted(ledger.acked & (dead | queued))),
        ack_in_doubt=len(doubtful_acks),
        put_unanswered=len(ledger.put_in_doubt - seen), put_refused=ledger.put_refused)
