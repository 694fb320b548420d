"""The soak's ledger: what the server answered, per put, and the verdict drawn from it.

Design decision: every body the soak puts starts with its sequence number
(`make_body`), and every fact a worker learns (a put answered, a delivery,
an ack answered OK or refused, a request whose connection died before its
reply) is recorded under that number, never under the server's id. The
verdict compares these facts with each other, so it checks the server's
promises from the clients' side instead of trusting its counters. A 10-minute
run puts a few million messages, so the facts are kept in flat arrays indexed
by sequence number (about 16 bytes a put), not in dicts of objects.

Rules:
* Only answered requests are facts. A put whose connection died before the
  reply is "unanswered": it may be stored or not, and is reported apart. An
  ack whose connection died before the reply is "uncertain": it may have been
  applied or not.
* Every answered put must end confirmed-acked exactly once (the final drain's
  acks count), or, failing a confirmed ack, have an uncertain ack that took
  effect (the message was never seen again). Answered and neither is "missing".
* A delivery observed after that message's confirmed ack is a lost ack; a
  second confirmed ack is an ack applied twice. Both are errors for any
  message, answered put or not. Observed order is sound here: an ack is
  refused (LEASE_LOST) once another lease was handed out, so a confirmed ack
  means no later delivery was handed out before it was applied, and a
  delivery from a server incarnation killed before the ack's incarnation
  started is read by its client before that server is even restarted.
* A body that is not one the soak put, or a put that shows up under two ids,
  is an error. Redeliveries (after a consumer died, a lease ran out, or a
  kill lost a lease) are expected and counted.
* No I/O and no clock: pure bookkeeping, testable alone.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

# Put states, one byte per sequence number.
SENT = 0  # sent, no reply yet (or the soak stopped waiting)
ANSWERED = 1  # the server replied with an id
UNANSWERED = 2  # the connection died before the reply
REFUSED = 3  # the server answered with an error: not stored

EXAMPLES_KEPT = 5  # example sequence numbers kept per kind of error
SATURATED = 255  # per-message counters in bytes stop here

FILLER = bytes(range(256))  # every byte value, NUL and newline too


def make_body(seq: int, size: int) -> bytes:
    """make_body is the body of put number `seq`: "seq:" then filler, `size` bytes at least."""
    head = b"%d:" % seq
    filler = FILLER * (size // len(FILLER) + 1)
    return head + filler[:max(0, size - len(head))]


@dataclass
class Verdict:
    """What the ledger concludes; `errors` maps a kind of error to (count, example seqs)."""

    answered_puts: int = 0
    acked_once: int = 0  # answered puts with exactly one confirmed ack
    uncertain_applied: int = 0  # answered puts without one, whose uncertain ack took effect
    unanswered_puts: int = 0
    unanswered_appeared: int = 0  # ... delivered at least once: they were stored
    unanswered_vanished: int = 0  # ... delivered, then neither acked nor drained
    refused_puts: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    redelivered_messages: int = 0  # messages delivered more than once
    redeliveries: int = 0  # deliveries after each message's first
    confirmed_acks: int = 0
    uncertain_acks: int = 0
    uncertain_not_applied: int = 0  # a confirmed ack of the same message came later
    refused_acks: Counter[str] = field(default_factory=Counter)
    errors: dict[str, tuple[int, list[int]]] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        return not self.errors


class Ledger:
    """Ledger records facts by sequence number; `verdict()` judges them."""

    def __init__(self, body_size: int) -> None:
        self.body_size = body_size
        self.state = bytearray()  # put state: SENT, ANSWERED, UNANSWERED, REFUSED
        self.ids = array("q")  # the message id, from the put's reply or its first delivery
        self.delivered_count = array("I")
        self.confirmed = bytearray()  # confirmed acks, saturating
        self.uncertain = bytearray()  # uncertain acks, saturating
        self.refused_puts: Counter[str] = Counter()
        self.refused_acks: Counter[str] = Counter()
        self._errors: dict[str, list[int]] = {}
        self._error_counts: Counter[str] = Counter()
        # Running totals the load reads (throughput, backpressure) without a pass.
        self.answered = 0
        self.acks_confirmed = 0
        self.settled = 0  # messages with a first confirmed or uncertain ack

    # -------------------------------------------------------------- puts

    def new_put(self) -> int:
        """new_put allocates the next sequence number; its body is make_body(seq, size)."""
        self.state.append(SENT)
        self.ids.append(0)
        self.delivered_count.append(0)
        self.confirmed.append(0)
        self.uncertain.append(0)
        return len(self.state) - 1

    def put_answered(self, seq: int, message_id: int) -> None:
        self.state[seq] = ANSWERED
        self.answered += 1
        self._same_id(seq, message_id)

    def put_unanswered(self, seq: int) -> None:
        self.state[seq] = UNANSWERED

    def put_refused(self, seq: int, code: str) -> None:
        self.state[seq] = REFUSED
        self.refused_puts[code] += 1
        if self.delivered_count[seq]:
            self._error("a refused put was delivered", seq)

    # ---------------------------------------------------- deliveries, acks

    def delivered(self, body: bytes, message_id: int) -> int | None:
        """delivered records one delivery; returns its seq, or None for a body never put."""
        seq = self._seq_of(body)
        if seq is None:
            self._error("a body the soak never put was delivered", -1)
            return None
        if self.state[seq] == REFUSED:
            self._error("a refused put was delivered", seq)
        if self.confirmed[seq]:
            self._error("delivered after its ack was confirmed (a lost ack)", seq)
        self._same_id(seq, message_id)
        if self.delivered_count[seq] < 0xFFFFFFFF:
            self.delivered_count[seq] += 1
        return seq

    def ack_confirmed(self, seq: int) -> None:
        if self.confirmed[seq]:
            self._error("acked twice (a second ack answered OK)", seq)
        elif not self.uncertain[seq]:
            self.settled += 1
        self.confirmed[seq] = min(SATURATED, self.confirmed[seq] + 1)
        self.acks_confirmed += 1

    def ack_uncertain(self, seq: int) -> None:
        if not self.confirmed[seq] and not self.uncertain[seq]:
            self.settled += 1
        self.uncertain[seq] = min(SATURATED, self.uncertain[seq] + 1)

    def ack_refused(self, code: str) -> None:
        """ack_refused counts an ack the server refused (LEASE_LOST, NOT_FOUND: expected)."""
        self.refused_acks[code] += 1

    @property
    def backlog(self) -> int:
        """backlog is about how many answered puts wait for an ack (for backpressure only)."""
        return self.answered - self.settled

    # ------------------------------------------------------------ verdict

    def verdict(self) -> Verdict:
        """verdict judges every sequence number; call it once the queue is drained."""
        v = Verdict(refused_puts=Counter(self.refused_puts),
                    refused_acks=Counter(self.refused_acks))
        missing, twice = [], []
        for seq, state in enumerate(self.state):
            times = self.delivered_count[seq]
            acks, maybe = self.confirmed[seq], self.uncertain[seq]
            v.deliveries += times
            if times > 1:
                v.redelivered_messages += 1
                v.redeliveries += times - 1
            v.confirmed_acks += acks
            v.uncertain_acks += maybe
            if maybe and acks:
                v.uncertain_not_applied += 1
            if acks > 1:
                twice.append(seq)
            if state == ANSWERED:
                v.answered_puts += 1
                if acks == 1:
                    v.acked_once += 1
                elif acks == 0 and maybe:
                    v.uncertain_applied += 1
                elif acks == 0:
                    missing.append(seq)
            elif state in (UNANSWERED, SENT):
                v.unanswered_puts += 1
                if times:
                    v.unanswered_appeared += 1
                    if not acks and not maybe:
                        v.unanswered_vanished += 1
        errors = {kind: (self._error_counts[kind], examples)
                  for kind, examples in self._errors.items()}
        if missing:
            errors["an answered put was never acked and is not queued (lost)"] = (
                len(missing), missing[:EXAMPLES_KEPT])
        if twice and "acked twice (a second ack answered OK)" not in errors:
            errors["acked twice (a second ack answered OK)"] = (len(twice), twice[:EXAMPLES_KEPT])
        v.errors = errors
        return v

    # ------------------------------------------------------------ helpers

    def _seq_of(self, body: bytes) -> int | None:
        head, sep, _ = body[:24].partition(b":")
        if not sep or not head.isdigit():
            return None
        seq = int(head)
        if seq >= len(self.state) or body != make_body(seq, self.body_size):
            return None
        return seq

    def _same_id(self, seq: int, message_id: int) -> None:
        known = self.ids[seq]
        if known == 0:
            self.ids[seq] = message_id
        elif known != message_id:
            self._error("one put stored under two ids", seq)

    def _error(self, kind: str, seq: int) -> None:
        self._error_counts[kind] += 1
        examples = self._errors.setdefault(kind, [])
        if len(examples) < EXAMPLES_KEPT:
            examples.append(seq)
