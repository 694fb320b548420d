"""A worker: runs a handler on every message of one queue, as a Celery or RQ worker does.

Design decision: a Worker owns its connection and the four chores every consumer otherwise
writes by hand:

* receiving, by long polls sized to the handler slots that are free, so that it never holds a
  message it has not started (another worker could be doing it meanwhile), but for a
  burst's parked messages (below);
* keeping leases alive: one heartbeat loop, on a fixed beat of a quarter lease, touches each
  message in progress whose lease has three quarters or less left, so a handler may run far
  longer than the lease, while a worker that dies loses its messages to others within one
  lease;
* settling: an ack when the handler returns, a nack with a back-off delay when it raises (the
  queue's max_deliveries and dead-letter queue catch poison), or the delay it names when it
  raises Retry (a downstream service said "later": no traceback is logged);
* reconnecting, with capped, jittered exponential back-off, when the connection ends (the
  server restarts, the network drops) or stops answering. Messages in progress live through
  it: leases belong to messages, not connections, so their touches and settles go over
  whichever connection is current.

Rules:
* The handler is `async def handler(msg) -> None`. It must not ack, nack or touch `msg`
  itself: the Worker does, and the connection `msg` came on may be gone by then. Blocking
  work goes through `asyncio.to_thread`. A handler that is not async is refused when the
  Worker is made, or, if that cannot be seen, ends run() with TypeError at its first call.
  One that raises a BaseException (KeyboardInterrupt, SystemExit) stops receiving and has
  its message nacked as failed before the exception goes on; run() ends with it after the
  shutdown, unless it ended the event loop first (KeyboardInterrupt and SystemExit do).
* A job has two phases: its handler runs, then its message is settled. Only the first is
  ever cancelled (by a stop), and the heartbeat touches only jobs in the first, so a touch
  never re-leases a message just nacked.
* stop() ends receiving at once: a waiting receive is cancelled on the server, and a message
  already on its way is given back unseen, as for any cancelled receive. Handlers running get
  `shutdown_grace` seconds to finish; then they are cancelled and their messages nacked, for
  others to take at once. Settles (acks of work done, those give-backs) get until the grace
  is over or `reply_timeout` after the cancel, whichever is later; one not done by then is
  given up, and its message comes back when its lease ends. A second stop() (a second
  Ctrl-C) skips what is left of the grace, and settles get `reply_timeout` from then.
  Closing the connection then takes `reply_timeout` at most (close() waits for the answers
  to give-backs and cancels, so that a message leased to a withdrawn wait is given back).
  So a stop takes at most shutdown_grace + 2 x reply_timeout, or 3 x reply_timeout once
  hurried, server down or not. run() cancelled from outside does what a second stop does,
  then raises CancelledError; a cancel of it during the stop hurries the stop too. A
  handler that ignores its cancellation has as long as the settles (above) to end, and
  what it ends with is sent as usual; after that it is left running, counted as abandoned,
  and belongs to no run: nothing of it is sent (a later run's connection included), and
  its message comes back when its lease ends.
* A request unanswered for `reply_timeout` (a receive: past its wait) means the connection is
  dead: it is dropped and made again. A settle that meets a dead connection is sent again on
  the next one while the lease lasts (plus SETTLE_SLACK_S: a late ack is accepted while
  nobody else has the message; a give-back waits `reply_timeout` at most, as its message
  comes back with its lease anyway), or until a stop gives up on it. NotFound for an ack
  sent again while the lease surely still held (a lower bound of the server's deadline,
  on the worker's clock), or NotFound or LeaseLost for a nack sent again, means the first
  one was carried out. Otherwise LeaseLost (or NotFound) means the lease passed to someone
  else, who may have acked it after the lease ran out: counted as lease_lost, not raised.
  So an ack whose first send did go through, but whose answer was lost and whose resend
  came after that bound, is counted lease_lost too: the counts never claim an ack that
  may have been another consumer's. A nack whose delay the server refuses (over its
  --max-delay) is sent at the server's limit (below); one whose `unseen` it refuses (an
  older server), without it.
* A server whose journal writes fail refuses receives, touches, acks and nacks
  (StorageUnavailable, nothing made) until a write works again (it tries every second).
  The Worker sends each again every STORAGE_RETRY_S (1 s), a burst included, and says so
  once per outage (each refusal after the first at DEBUG), and once when they work again.
  An ack is sent again past its lease too, until the outage ends or a stop gives up on it:
  nobody else can receive the message meanwhile, and the server takes a late ack while
  nobody holds it. A nack stops at its lease's end (its message comes back then anyway).
  The touches of work in hand are refused; the server holds a lease that runs out
  meanwhile and for two seconds after the outage, so the ack sent again finds it.
* Back-off: between failed connects, and before reconnecting after a connection that ended
  before the server answered anything (TOO_MANY_CONNECTIONS, say), so a refusing server is
  not hammered. It starts again from `reconnect_first` once the server answers. A back-off
  is a time to try again at, not a sleep: a caller cancelled during it (a heartbeat round
  or a settle has a time limit) leaves it to the next caller, who waits out what is left
  of it rather than beginning a longer one. Before, every heartbeat round of a stalled
  server began a back-off and cancelled it, so once one outgrew a round no connect was
  tried again while handlers held every slot.
* Errors that retrying cannot mend end run() after the shutdown above: AuthFailed,
  AuthRequired, BadArgument (say a wait over the server's --max-wait), InvalidQueueName,
  UnsupportedVersion (also when the server says it about the whole connection). A receive
  refused with BATCH_TOO_LARGE is sent again at the limit the error names (else half the
  size), and later ones are kept to that. Anything else, including connect's OSError (TLS
  verification too: a certificate can be renewed), is retried with back-off (above: a
  refusal while journal writes fail, every second) until stop();
  but a burst that has had no answer from the server yet (a wrong port, a server that is
  down) ends with that error, the OSError, ConnectionClosed or TimeoutError, at once.
* Retry(delay) from the handler nacks with that delay (None: retry_delay's), counted as
  retried, not failed; Retry(unseen=True) also says the delivery should not count toward
  max_deliveries (the work was not really tried), so a handler that retries that way forever
  is never dead-lettered: its author's choice.
* max_messages ends run() once that many messages have been received in it and handled; burst
  ends it once a receive (burst receives never wait) finds the queue empty, and what was
  received has been handled. Both finish the work in hand rather than cut it short: the
  grace is a stop's, not theirs. A burst handles each message once: one it nacked that comes
  back to it (its delay was short) is parked, kept leased (the heartbeat renews it) without
  taking a slot, so the receives go on to the messages behind it; the parked ones are given
  back unseen when the burst ends, for the next run or another worker (no other worker can
  have them meanwhile), and are not in the counts (they were counted when handled). So a
  message that always fails can neither keep a burst running nor end it before the queue
  behind it.
* A message received again while its handler still runs, or while its ack waits (its lease
  ran out: the touches or the ack did not get through in time), is not started a second
  time: the job takes the new lease, and its touches and ack go on under it (an ack refused
  for the old lease is sent again with the new one). It is not counted again. One received
  while its job nacks is a new delivery, as usual: the nack in flight may be what brought it
  back (a waiting receive can be answered before the nack is). A heartbeat answer about a
  lease the job no longer holds is ignored.
* A nack's delay over the server's --max-delay is sent again at the limit the error names
  (else 0), so a Retry(3600) against a server allowing 300 s waits 300 s, not none; later
  nacks on the same connection are kept to that limit from the start (a new connection
  finds it again, as the server may have restarted with another).
* The counts add up: every message received ends in exactly one of acked, failed, retried,
  given_back, lease_lost and unsettled once its job is over, or abandoned if its handler
  ignored the stop's cancel and still ran when run() returned (whatever it does after is
  not counted). So when run() returns they add up to `received`.
* Per message there is one task, its job (handler, then settle), and nothing else on the
  way of a success: the acks of jobs that end in one loop iteration go out as one ack_many
  with one reply timer (measured: the server's CPU per message fell from 19.0 to 4.5 µs,
  bench/probes/worker_throughput.py). A nack has its own request and timer; one receive
  loop and one heartbeat loop serve every message, and a heartbeat round's touches (a short
  task each) are pipelined together.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import numbers
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .batches import item_results
from .busy_poll import check_busy_poll
from .client import DEFAULT_HOST, DEFAULT_PORT, Client, check_address, check_unseen, connect
from .errors import (
    AuthFailed,
    AuthRequired,
    BadArgument,
    BatchTooLarge,
    ConnectionClosed,
    InvalidQueueName,
    LeaseLost,
    NotFound,
    StorageError,
    StorageUnavailable,
    UnsupportedVersion,
    WonderQError,
)
from .message import Message

log = logging.getLogger("wonderq_client.worker")

Handler = Callable[[Message], Awaitable[None]]
RetryDelay = Callable[[Message], float]

# Errors from the server that no retry can mend: run() ends with them.
FATAL_ERRORS = (AuthFailed, AuthRequired, BadArgument, InvalidQueueName, UnsupportedVersion)
# How long after its lease ran out a settle still tries for a connection: a late ack is
# accepted while nobody else has received the message.
SETTLE_SLACK_S = 5.0
# The back-off doubles per attempt up to here; past it (2**40 x reconnect_first) it is
# capped anyway, and the power must stay a float.
MAX_BACKOFF_EXPONENT = 40
# BATCH_TOO_LARGE names the server's limit: "max is 1000, over the limit of 500 (--max-batch)".
BATCH_LIMIT = re.compile(r"limit of (\d+)")
# BAD_ARGUMENT names it for a delay: "delay is 3600 s, over the limit of 300 s (--max-delay)",
# the limit to 6 significant digits (%g), so it may be printed a little over itself.
DELAY_LIMIT = re.compile(r"over the limit of ([0-9.eE+-]+) s")
DELAY_LIMIT_ROUNDING = 1e-5  # relative: more than %g's rounding of 6 significant digits
# A nack refused this many times for its delay goes with none (a server that names no limit,
# or one it does not keep to).
DELAY_REFUSALS_MOST = 3
# A receive, ack or nack refused with STORAGE_UNAVAILABLE (or a settle whose write failed,
# STORAGE_ERROR) is sent again this much later: a server whose journal writes fail refuses
# them, not made, and tries its journal again every second (its RETRY_WRITE_S). Given up
# at once, an ack refused so left the message to come back and be done again (a reviewer).
STORAGE_RETRY_S = 1.0


def _settle_name(nack_delay: float | None) -> str:
    """_settle_name: what _send_settle sends, for its log lines (no delay: an ack)."""
    return "ack" if nack_delay is None else "nack"


class Retry(Exception):
    """Retry, raised by a handler, nacks its message to be tried again `delay` seconds from
    now (None: the Worker's retry_delay), without the traceback a failure logs: for a
    handler that knows it should try later (a rate limit, a resource not ready yet).
    `unseen=True` asks that this delivery not count toward the queue's max_deliveries."""

    def __init__(self, delay: float | None = None, *, reason: str = "",
                 unseen: bool = False) -> None:
        if delay is not None and not (delay >= 0 and math.isfinite(delay)):
            raise ValueError(f"Retry's delay must be finite seconds, 0 or more, not {delay}")
        unseen = check_unseen(unseen, "Retry")
        super().__init__(reason)
        self.delay = None if delay is None else float(delay)
        self.reason = reason
        self.unseen = unseen


def retry_backoff(msg: Message, *, first: float = 1.0, most: float = 300.0) -> float:
    """retry_backoff is the default delay before a message whose handler raised is tried
    again: `first` seconds after its first delivery, doubling with each delivery after
    that, and never more than `most` (5 minutes)."""
    exponent = min(max(msg.deliveries - 1, 0), MAX_BACKOFF_EXPONENT)
    return float(min(first * 2.0 ** exponent, most))


def reconnect_delay(attempt: int, first: float, most: float,
                    random_fraction: Callable[[], float] = random.random) -> float:
    """reconnect_delay is the pause before connect attempt `attempt` (0 is the first retry):
    `first` doubling per attempt up to `most`, of which the upper half is random ("equal
    jitter"), so that workers that lost the same server do not all come back at one instant,
    yet none waits less than half its step."""
    step = min(first * 2.0 ** min(attempt, MAX_BACKOFF_EXPONENT), most)
    return step / 2 + step / 2 * random_fraction()


def batch_limit(error: BatchTooLarge, size: int) -> int:
    """batch_limit is the receive size to use after `error` refused `size`: the limit the
    error names, or half the size if it names none; at least 1."""
    match = BATCH_LIMIT.search(error.message)
    limit = int(match.group(1)) if match else size // 2
    return max(1, min(limit, size - 1))


def delay_limit(error: BadArgument, delay: float) -> float:
    """delay_limit is the nack delay to use after `error` refused `delay`: the server's limit
    if the error names one below `delay`; if the limit it names is not below (rounded up in
    print), a little under `delay`, which is then within the rounding of the limit; 0 if it
    names none."""
    match = DELAY_LIMIT.search(error.message)
    try:
        limit = float(match.group(1)) if match else -1.0
    except ValueError:
        limit = -1.0
    if not (limit >= 0 and math.isfinite(limit)):
        return 0.0
    return limit if limit < delay else delay * (1 - DELAY_LIMIT_ROUNDING)


def _whole(value: Any) -> bool:
    """_whole: an int, and not a bool (True would be 1 slot)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seconds(name: str, value: Any, *, zero_ok: bool, inf_ok: bool = False) -> None:
    """_check_seconds refuses a setting in seconds that is not a finite number over 0 (or
    0 or more; or inf, for a setting that means "never" by it): TypeError naming the
    setting for one that is no number at all (None, a string, a bool), instead of the
    comparison's own TypeError from deep inside, and ValueError for one out of range.
    A Worker's `visibility` cannot be None as a receive's can (the queue's own): the
    Worker renews each lease before it ends, so it must know the lease's length."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        why = (" (the Worker renews each lease before it ends, so it must know its length: "
               "pass the queue's visibility_timeout)") if name == "visibility" else ""
        raise TypeError(f"{name} must be a number of seconds, not {value!r}{why}")
    seconds = float(value)
    if not ((inf_ok or math.isfinite(seconds)) and (seconds >= 0 if zero_ok else seconds > 0)):
        more = "0 or more" if zero_ok else "over 0"
        raise ValueError(f"{name} must be {'' if inf_ok else 'finite '}seconds, {more}, "
                         f"not {value}")


def raise_if_fatal(error: BaseException) -> None:
    """raise_if_fatal raises UnsupportedVersion for a connection the server closed saying it
    speaks another protocol version: no reconnect can mend that."""
    if isinstance(error, ConnectionClosed) and error.server_code == UnsupportedVersion.code:
        raise UnsupportedVersion(error.message) from error


def is_plain_function(handler: Any) -> bool:
    """is_plain_function: `handler` is surely not async, a `def` function or method (a
    lambda or a callable object may still return an awaitable, so they pass)."""
    # A decorator's wrapper (functools.wraps) of an async function is a plain `def` that
    # returns the coroutine: what it wraps decides.
    return ((inspect.isfunction(handler) or inspect.ismethod(handler))
            and not inspect.iscoroutinefunction(handler)
            and not inspect.iscoroutinefunction(inspect.unwrap(handler))
            and handler.__name__ != "<lambda>")


@dataclass
class WorkerCounts:
    """What a Worker did since it was made; read them at any time (worker.counts). Once a
    job is over (or run() has returned), its message is in exactly one of the seven after
    `received`."""

    received: int = 0     # messages handed to the worker by the server
    acked: int = 0        # the handler returned, and the ack was carried out
    failed: int = 0       # the handler raised: nacked with the retry delay
    retried: int = 0      # the handler raised Retry: nacked with the delay it named
    given_back: int = 0   # stopped before it finished (or started): nacked at once
    lease_lost: int = 0   # the settle found the lease gone (LEASE_LOST, or NOT_FOUND)
    unsettled: int = 0    # no settle answered in time: the message comes back when its lease
    #                       ends, unless the settle was carried out and only its answer lost
    abandoned: int = 0    # its handler ignored the stop's cancel, still running at run()'s end
    touched: int = 0      # leases renewed by the heartbeat
    reconnects: int = 0   # connections made after the first


@dataclass
class _Job:
    """_Job is one message in progress and, on this event loop's clock, when its lease runs
    out as far as the worker knows (lease_until: the latest it can be; the server started
    the lease before its reply travelled) and when it surely still held (held_until)."""

    message: Message
    lease_until: float
    # A lower bound of the server's deadline, on the same clock: the lease surely held until
    # then (unless the server's own clock jumped). Only this may vouch for an ack sent again.
    held_until: float
    started: bool = False      # its handler's task has begun (only a begun one is cancelled)
    parked: bool = False       # a burst had it already: held, given back when the burst ends
    settling: bool = False     # the handler is over: no touches, no cancelling
    acking: bool = False       # its settle is an ack (a new delivery is its, not a retry)
    lease_gone: bool = False   # a touch was refused: no more touches
    counted: bool = False      # its outcome is in the counts
    abandoned: bool = False    # left running at its run's end: in no run, sends nothing


class Worker:
    """Runs `handler` on each message of `queue`, `concurrency` at a time (see the module's
    rules). Make one, then `await worker.run()`; `worker.stop()` ends it, from a signal
    handler too.

        worker = Worker("emails", send_email, concurrency=20, visibility=60)
        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        await worker.run()

    visibility: each lease's length, renewed while the handler runs. wait: the long poll.
    retry_delay: seconds before a failed message is tried again, or a function of the
    message (default retry_backoff). reply_timeout: how long a request may go unanswered
    before the connection is taken for dead. max_messages: end run() after handling that
    many. burst: end run() once the queue is found empty and the work in hand is done, each
    message handled once. connect_timeout, auth_token, ssl and busy_poll are connect()'s
    timeout, auth_token, ssl and busy_poll; its other options keep their defaults. busy_poll
    (off by default) speeds up a busy Worker where being woken is dear, with the server's
    --busy-poll: draining 50,000 no-op jobs at concurrency 10, 24,014 -> 43,840 jobs/s
    with both at 300 us; at concurrency 100, whose batches already share the wake-ups,
    82,337 -> 85,248 (bench/probes/worker_throughput.py, medians of 3, on the VM of
    README's Benchmarks). An idle Worker's waiting receives cost a window each at most,
    and make it back off (busy_poll.py).
    """

    def __init__(self, queue: str, handler: Handler, *, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, concurrency: int = 10, visibility: float = 30.0,
                 wait: float = 20.0, retry_delay: float | RetryDelay = retry_backoff,
                 shutdown_grace: float = 30.0, reply_timeout: float = 10.0,
                 reconnect_first: float = 0.1, reconnect_most: float = 10.0,
                 connect_timeout: float | None = 10.0, auth_token: str | bytes | None = None,
                 ssl: Any = None, max_messages: int | None = None,
                 burst: bool = False, busy_poll: float = 0.0) -> None:
        if is_plain_function(handler):
            raise TypeError(f"handler {handler.__name__} must be an async function (async "
                            f"def); run blocking work in it with asyncio.to_thread")
        if not _whole(concurrency) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number, at least 1, not "
                             f"{concurrency!r}")
        if max_messages is not None and (not _whole(max_messages) or max_messages < 1):
            raise ValueError(f"max_messages must be a whole number, at least 1 (or None), "
                             f"not {max_messages!r}")
        for name, value in (("visibility", visibility), ("wait", wait),
                            ("reply_timeout", reply_timeout)):
            _check_seconds(name, value, zero_ok=False)
        for name, value in (("reconnect_first", reconnect_first),
                            ("reconnect_most", reconnect_most)):
            _check_seconds(name, value, zero_ok=False, inf_ok=True)
        if not callable(retry_delay):
            _check_seconds("retry_delay", retry_delay, zero_ok=True)
        _check_seconds("shutdown_grace", shutdown_grace, zero_ok=True, inf_ok=True)
        # As connect() would, at every connect; kept as the plain int it returns (a port
        # of digits in a str is one), which the log lines format with %d.
        port = check_address(host, port, connect_timeout)
        if not (shutdown_grace >= 0 and 0 < reconnect_first <= reconnect_most):
            raise ValueError("shutdown_grace must be 0 or more, and reconnect_first more "
                             "than 0 and at most reconnect_most")
        self.queue = queue
        self.handler = handler
        self.host, self.port = host, port
        self.concurrency = concurrency
        self.visibility = visibility
        self.wait = wait
        self.retry_delay = retry_delay
        self.shutdown_grace = shutdown_grace
        self.reply_timeout = reply_timeout
        self.reconnect_first, self.reconnect_most = reconnect_first, reconnect_most
        self.max_messages = max_messages
        self.burst = burst
        self._connect_options: dict[str, Any] = {
            "timeout": connect_timeout, "auth_token": auth_token, "ssl": ssl,
            "busy_poll": check_busy_poll(busy_poll)}
        self.counts = WorkerCounts()
        self._client: Client | None = None
        self._connections = 0
        self._answered = False  # the server answered something on the current connection
        self._reached_in_run = False  # ... or on any connection of this run
        self._connect_attempt = 0  # failures in a row, for the back-off
        self._retry_at: float | None = None  # a back-off's end, until a caller waits it out
        self._connect_lock = asyncio.Lock()
        self._attempt_over = asyncio.Event()  # set when the connect attempt under way ends
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        # The job in hand for each message id, until its settle is over: a delivery of it
        # received while its handler runs is that job's (_adopt).
        self._job_by_id: dict[int, _Job] = {}
        self._received_in_run = 0  # for max_messages
        # Ids a burst has in hand, or nacked or lost: not handled again in it (acked ones
        # never come back, so they leave it).
        self._burst_handled: set[int] = set()
        self._parked = 0  # jobs that hold such a message until the burst ends (no slot)
        self._burst_over = asyncio.Event()  # the parked give their messages back
        self._slot_free = asyncio.Event()
        self._batch_cap = concurrency  # lowered if the server's --max-batch is smaller
        self._storage_refused = False  # refusals seen: the server's journal writes fail
        # The server's --max-delay, once a nack met it, and the connection it was met on.
        self._delay_cap: float | None = None
        self._delay_cap_on: Client | None = None
        self._last_batch_refusal: BatchTooLarge | None = None  # of an ack_many
        self._receiving: asyncio.Task[None] | None = None
        self._running = False
        self._closed = False  # run() is over: no more connections
        self._stops = 0
        self._hurry = asyncio.Event()  # a second stop(): no more grace
        self._handlers_cancelled = False  # past the grace: jobs not begun give back at once
        self._fatal: BaseException | None = None  # what ends run(), found by a job
        # Acks made during this loop iteration, sent together (_send_acks) as ack_many.
        self._acks_out: list[tuple[Client, Message, asyncio.Future[None]]] = []
        self._acks_scheduled = False

    @property
    def stopping(self) -> bool:
        """stopping: stop() has been called since run() began (or before it)."""
        return self._stops > 0

    @property
    def in_progress(self) -> int:
        """in_progress is how many messages the worker holds now (handlers and settles)."""
        return len(self._jobs)

    def stop(self) -> None:
        """stop ends run() as the module's rules say; a second call skips the grace. Called
        before run(), it makes run() return at once."""
        self._stops += 1
        if self._stops > 1:
            self._hurry.set()
        if self._receiving is not None:
            self._receiving.cancel()

    async def run(self) -> None:
        """run receives and handles messages until stop(), or until an error that retrying
        cannot mend (raised here, after the shutdown). A Worker can run again after."""
        if self._running:
            raise RuntimeError("this Worker is already running")
        self._running, self._closed = True, False
        self._received_in_run = 0
        self._fatal = None
        self._burst_handled.clear()
        # asyncio's Events and Locks belong to the first event loop that waits on them:
        # each run gets its own, so a Worker runs again under another loop (a second
        # asyncio.run). A second stop() before run() is kept.
        hurried = self._hurry.is_set()
        self._connect_lock, self._attempt_over = asyncio.Lock(), asyncio.Event()
        self._burst_over, self._slot_free = asyncio.Event(), asyncio.Event()
        self._hurry = asyncio.Event()
        if hurried:
            self._hurry.set()
        self._connections = 0  # reconnects are counted within a run
        self._reached_in_run = False  # the server has answered a request in this run
        self._storage_refused = False
        self._retry_at = None  # a back-off a stop cut short is not this run's
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        self._receiving = asyncio.create_task(self._receive_loop())
        if self._stops:
            self._receiving.cancel()  # stop() came before run()
        error: BaseException | None = None
        cancelled_from_outside = False
        try:
            await self._receiving
        except asyncio.CancelledError:
            # stop() cancels the receive loop; only a cancel of run() itself counts here.
            current = asyncio.current_task()
            cancelled_from_outside = current is not None and current.cancelling() > 0
        except Exception as exc:
            error = exc
        try:
            if cancelled_from_outside:
                self._hurry.set()
            self._burst_over.set()
            await self._drain()
        finally:
            heartbeat.cancel()
            self._closed = True
            client, self._client = self._client, None
            self._running = False
            self._receiving = None
            self._handlers_cancelled = False
            error = error or self._fatal
            self._fatal = None
            try:
                if client is not None:
                    await self._close(client)
            finally:
                # Only now: a stop() made while the connection closes (a second Ctrl-C)
                # is this run's, and `stopping` says so until the run is over. Reset
                # before the close, it was kept and ended the next run at once (a
                # reviewer).
                self._stops = 0
                self._hurry.clear()
        if cancelled_from_outside:
            raise asyncio.CancelledError
        if error is not None:
            raise error

    # ------------------------------------------------------------- connection

    async def _connection(self) -> Client:
        """_connection returns the open connection, first making a new one if the last one
        ended, with back-off between failed tries. Callers share one attempt: the receive
        loop, the heartbeat and every settle may find the connection gone. One makes the
        attempt (the lock); the others wait for it to end (an Event, which wakes them all
        in one loop turn, where a lock would wake one a turn: the acks held up by an
        outage then go out as one ack_many, not in pairs) and look again. Raises
        ConnectionClosed once run() is over."""
        while True:
            client = self._client
            if client is not None and not client.closed:
                return client
            if self._connect_lock.locked():
                await self._attempt_over.wait()
                continue
            async with self._connect_lock:
                attempt_over = self._attempt_over = asyncio.Event()
                try:
                    return await self._connect_again()
                finally:
                    attempt_over.set()

    async def _connect_again(self) -> Client:
        """_connect_again is _connection's attempt: until a connection is made."""
        ended_unanswered = self._connections > 0 and not self._answered
        while self._client is None or self._client.closed:
            if self._closed:
                raise ConnectionClosed("the worker has stopped")
            if ended_unanswered:
                ended_unanswered = False
                await self._back_off("the connection ended before the server answered")
            try:
                client = await connect(self.host, self.port, **self._connect_options)
            except (OSError, ConnectionClosed) as exc:
                raise_if_fatal(exc)  # AUTH, the first request, can meet it first
                self._raise_if_burst_never_reached(exc)
                await self._back_off(f"cannot connect ({exc or type(exc).__name__})")
                continue
            self._client, self._answered = client, False
            self._connections += 1
            if self._connections > 1:
                self.counts.reconnects += 1
                log.info("connected to WonderQ at %s:%d again", self.host, self.port)
        return self._client

    async def _close(self, client: Client) -> None:
        """_close closes the connection within reply_timeout (the give-backs and cancels
        close() waits for included), else drops it; so does a cancel meanwhile."""
        try:
            async with asyncio.timeout(self.reply_timeout):
                await client.close()
        except TimeoutError:
            client.abort()
        except asyncio.CancelledError:
            client.abort()
            raise

    async def _back_off(self, reason: str) -> None:
        """_back_off waits before the next connect: a new back-off, or what is left of one
        whose waiter was cancelled (the rules)."""
        loop = asyncio.get_running_loop()
        if self._retry_at is None:
            delay = reconnect_delay(self._connect_attempt, self.reconnect_first,
                                    self.reconnect_most)
            self._connect_attempt += 1
            log.warning("WonderQ at %s:%d: %s; trying again in %.2f s", self.host, self.port,
                        reason, delay)
            self._retry_at = loop.time() + delay
        left = self._retry_at - loop.time()
        if left > 0:
            await asyncio.sleep(left)  # a cancel here keeps _retry_at for the next caller
        self._retry_at = None

    def _server_answered(self) -> None:
        self._answered = self._reached_in_run = True
        self._connect_attempt = 0
        self._retry_at = None

    def _storage_refusal(self, exc: StorageUnavailable, what: str) -> None:
        """_storage_refusal: the server refused a receive, touch, ack or nack because its
        journal writes fail. Said once per outage, at WARNING (a stuck disk is the
        operator's to hear about); each later refusal at DEBUG, or a long outage would
        write a line per held message every second."""
        if not self._storage_refused:
            self._storage_refused = True
            log.warning("WonderQ at %s:%d refuses receives, touches, acks and nacks while "
                        "its journal writes fail (%s); trying again every %g s", self.host,
                        self.port, exc.message, STORAGE_RETRY_S)
        else:
            log.debug("%s refused again: the server's journal writes fail", what)

    def _storage_works(self) -> None:
        """_storage_works: a receive or settle went through after refusals (see above)."""
        if self._storage_refused:
            self._storage_refused = False
            log.warning("WonderQ at %s:%d takes receives, acks and nacks again", self.host,
                        self.port)

    def _raise_if_burst_never_reached(self, error: BaseException) -> None:
        """_raise_if_burst_never_reached ends a burst that has not had one answer from the
        server: a wrong port, or a server that is down, is the caller's to hear about (a
        cron job's `--burst` that waited for ever would never say), as `rq worker
        --burst` does. Once the server has answered, a burst rides out a restart."""
        if self.burst and not self._reached_in_run:
            raise error

    def _drop(self, client: Client, why: str) -> None:
        """_drop aborts a connection that stopped answering; the next caller makes a new one.
        Said once per connection: several requests may find the same one dead."""
        if self._client is client:
            log.warning("WonderQ at %s:%d: %s; reconnecting", self.host, self.port, why)
            self._client = None
        client.abort()

    # ---------------------------------------------------------------- receive

    async def _receive_loop(self) -> None:
        """_receive_loop receives while there are free slots; it returns (run() then shuts
        down) once max_messages were received, or a burst found the queue empty, and the
        jobs in hand are over."""
        loop = asyncio.get_running_loop()
        wait = 0.0 if self.burst else self.wait
        while True:
            left = (self.concurrency if self.max_messages is None
                    else self.max_messages - self._received_in_run)
            if left <= 0:
                await self._finish_jobs()
                return
            free = self.concurrency - (len(self._jobs) - self._parked)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            client = await self._connection()
            size = min(free, self._batch_cap, left)
            sent_at = loop.time()
            try:
                async with asyncio.timeout(wait + self.reply_timeout):
                    messages = await client.receive(self.queue, max=size, wait=wait,
                                                    visibility=self.visibility)
            except TimeoutError:
                why = f"no answer to a receive within its wait and {self.reply_timeout:g} s"
                self._raise_if_burst_never_reached(TimeoutError(why))
                self._drop(client, why)
                continue
            except ConnectionClosed as exc:
                raise_if_fatal(exc)
                self._raise_if_burst_never_reached(exc)
                log.warning("lost the connection to WonderQ (%s); reconnecting", exc)
                continue
            except BatchTooLarge as exc:
                if size == 1:
                    raise
                self._batch_cap = batch_limit(exc, size)
                log.warning("the server refused a receive of %d messages (its --max-batch); "
                            "receiving at most %d at a time", size, self._batch_cap)
                continue
            except FATAL_ERRORS:
                raise
            except StorageUnavailable as exc:
                # The server's journal writes fail: it tries them again every second, and
                # so does this (a burst too: the outage is not the end of the queue).
                self._server_answered()
                self._storage_refusal(exc, "receive")
                await asyncio.sleep(STORAGE_RETRY_S)
                continue
            except WonderQError as exc:  # INTERNAL_ERROR, TOO_MANY_QUEUES, ...: it may pass
                await self._back_off(f"receive from {self.queue!r} failed ({exc})")
                continue
            self._storage_works()
            self._server_answered()
            if self.burst and not messages:
                await self._finish_jobs()
                return
            # The server leased them somewhere between the send and now: the lease runs to
            # at most now + visibility, and surely to sent_at + visibility (for a long poll
            # that is early; the first heartbeat's touch makes it tight).
            lease_until = loop.time() + self.visibility
            held_until = sent_at + self.visibility
            for message in messages:
                in_hand = self._job_by_id.get(message.id)
                if in_hand is not None and (not in_hand.settling or in_hand.acking):
                    self._adopt(in_hand, message, lease_until, held_until)
                elif message.id in self._burst_handled:
                    self._park(_Job(message, lease_until, held_until))
                else:
                    self._start(_Job(message, lease_until, held_until))

    async def _finish_jobs(self) -> None:
        """_finish_jobs ends the burst (the parked give their messages back) and waits until
        every job in hand is over (a stop() cancels the wait)."""
        self._burst_over.set()
        while self._jobs:
            self._slot_free.clear()
            await self._slot_free.wait()

    def _start(self, job: _Job) -> None:
        self.counts.received += 1
        self._received_in_run += 1
        if self.burst:
            self._burst_handled.add(job.message.id)
        task = asyncio.create_task(self._work(job))
        self._jobs[task] = job
        self._job_by_id[job.message.id] = job
        task.add_done_callback(self._job_done)

    def _adopt(self, job: _Job, message: Message, lease_until: float,
               held_until: float) -> None:
        """_adopt gives a job in hand the lease of its message's new delivery (received again
        because its old lease ran out), rather than start the message twice."""
        log.warning("message %d of %r came back while in hand (its lease ran out); it goes "
                    "on under the new lease", message.id, message.queue)
        job.message.lease, job.message.deliveries = message.lease, message.deliveries
        job.lease_until, job.held_until = lease_until, held_until
        job.lease_gone = False

    def _park(self, job: _Job) -> None:
        """_park holds a message this burst has handled already until the burst ends, then
        gives it back unseen. It takes no slot and is not in the counts (nor toward
        max_messages): its handling was counted."""
        job.parked = job.counted = True
        self._parked += 1
        task = asyncio.create_task(self._hold_parked(job))
        self._jobs[task] = job
        self._job_by_id[job.message.id] = job
        task.add_done_callback(self._job_done)

    async def _hold_parked(self, job: _Job) -> None:
        await self._burst_over.wait()
        job.settling = True  # no more touches, and a delivery meanwhile is a new one
        await self._send_settle(job, "given_back", 0.0, unseen=True)

    def _let_go(self, job: _Job) -> None:
        """_let_go: the job's settle is over, so a delivery of its message received from now
        on is a new one, not this job's."""
        if self._job_by_id.get(job.message.id) is job:
            del self._job_by_id[job.message.id]

    def _job_done(self, task: asyncio.Task[None]) -> None:
        job = self._jobs.pop(task, None)
        if job is not None:  # else abandoned at its run's end (_drain): no slot, no count
            self._let_go(job)
            if job.parked:
                self._parked -= 1
            self._slot_free.set()
            if not job.counted:  # ended before a settle counted it (cancelled unbegun, a bug)
                self._count(job, "unsettled")
        if not task.cancelled() and task.exception() is not None:
            log.error("a worker job failed" if job is not None else
                      "a worker job left running after its run failed",
                      exc_info=task.exception())

    def _count(self, job: _Job, outcome: str) -> None:
        if job.counted:  # abandoned at its run's end: what it does after is not counted
            return
        job.counted = True
        setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)

    # --------------------------------------------------------- handle, settle

    async def _work(self, job: _Job) -> None:
        job.started = True
        message = job.message
        if self._handlers_cancelled:  # received just before the grace ran out: not begun
            await self._settle(job, "given_back", 0.0, unseen=True)
            return
        awaitable = None
        try:
            awaitable = self.handler(message)
            if inspect.isawaitable(awaitable):
                await awaitable
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # stop() cancelled it: the work is unfinished, so another consumer should
                # have it now. It counts as a delivery (the handler saw the message).
                current.uncancel()
                await self._settle(job, "given_back", 0.0)
                return
            # The handler raised CancelledError by itself: a failure like any other.
            log.warning("handler raised CancelledError on message %d of %r", message.id,
                        message.queue)
            await self._settle(job, "failed", self._retry_delay(message))
        except Retry as retry:
            delay = self._retry_delay(message) if retry.delay is None else retry.delay
            log.info("message %d of %r: retrying in %g s%s", message.id, message.queue,
                     delay, f" ({retry.reason})" if retry.reason else "")
            await self._settle(job, "retried", delay, unseen=retry.unseen)
        except Exception:
            log.exception("handler failed on message %d of %r (delivery %d)", message.id,
                          message.queue, message.deliveries)
            await self._settle(job, "failed", self._retry_delay(message))
        except BaseException as exc:
            # KeyboardInterrupt, SystemExit and the like end the program: give the message
            # back first, as a failure, rather than leave it leased. Receiving stops
            # first (and run() ends with it, if the exception does not end the event
            # loop first): a message received while the nack's answer is awaited (this
            # one, with a short retry delay) would get a job the program's end cancels
            # before it begins, and stay leased to nobody for its whole visibility.
            self._end_with(exc, job)
            await self._settle(job, "failed", self._retry_delay(message))
            raise
        else:
            if not inspect.isawaitable(awaitable):
                # Whatever it did, it did in the event loop, blocking it: stop, and say why.
                self._end_with(TypeError(
                    f"the handler returned {type(awaitable).__name__}, not an awaitable: it "
                    f"must be an async function (async def)"))
                await self._settle(job, "given_back", 0.0)
                return
            await self._settle(job, "acked", None)

    def _end_with(self, error: BaseException, job: _Job | None = None) -> None:
        """_end_with stops receiving, and makes run() raise `error` after its shutdown. A
        job that outlived its run (its handler ignored the stop's cancel) has no run to
        end, whether or not another has begun since: it is only logged."""
        if not self._running or self._closed or (job is not None and job.abandoned):
            log.error("after the worker's run ended: %s", error)
            return
        if self._fatal is None:
            self._fatal = error
            log.error("stopping: %s", error)
        if self._receiving is not None:
            self._receiving.cancel()

    def _retry_delay(self, message: Message) -> float:
        """_retry_delay is retry_delay for this message; if that raises or is not seconds,
        the default (retry_backoff), so the message is never held for its whole lease."""
        if not callable(self.retry_delay):
            return float(self.retry_delay)
        try:
            delay = float(self.retry_delay(message))
            if not (delay >= 0 and math.isfinite(delay)):
                raise ValueError(f"{delay!r} is not a delay in seconds")
        except Exception:
            log.exception("retry_delay failed for message %d of %r; using retry_backoff",
                          message.id, message.queue)
            delay = retry_backoff(message)
        return delay

    async def _settle(self, job: _Job, outcome: str, nack_delay: float | None, *,
                      unseen: bool = False) -> None:
        """_settle acks (nack_delay None) or nacks the job's message, and counts the
        outcome: `outcome` if it was carried out, lease_lost or unsettled if not (also when
        cancelled: a second stop gives up on it)."""
        job.settling = True
        result = "unsettled"
        try:
            result = await self._send_settle(job, outcome, nack_delay, unseen)
        finally:
            self._let_go(job)
            self._count(job, result)
            if self.burst and result == "acked":
                self._burst_handled.discard(job.message.id)

    async def _send_settle(self, job: _Job, outcome: str, nack_delay: float | None,
                           unseen: bool) -> str:
        message = job.message
        lease = message.lease
        assert lease is not None  # received, not peeked
        patience_until = self._settle_patience(job, outcome)
        sent_before = False
        delay_refusals = 0
        job.acking = nack_delay is None
        asked = nack_delay  # a nack's delay as asked; each attempt keeps to its server's limit
        while True:
            if job.abandoned:  # its run is over: nothing more is sent for it
                return "unsettled"
            client = self._client
            if client is None or client.closed:
                if job.acking:  # _adopt may have given it a later lease meanwhile
                    patience_until = max(patience_until, self._settle_patience(job, outcome))
                try:
                    async with asyncio.timeout_at(patience_until):
                        client = await self._connection()
                except (TimeoutError, WonderQError) as exc:  # none in time, or stopped
                    log.warning("gave up settling message %d of %r: %s", message.id,
                                message.queue,
                                str(exc) or "no connection before its lease ended")
                    return "unsettled"
            nack_delay = asked
            if asked and self._delay_cap is not None and self._delay_cap_on is client:
                # Learnt on this connection (a new one may be to a server restarted with
                # another limit: it is learnt again there, from the delay asked).
                nack_delay = min(asked, self._delay_cap)
            try:
                if nack_delay is None:
                    await self._ack_soon(client, message)  # the batch has the reply timer
                else:
                    async with asyncio.timeout(self.reply_timeout):
                        await client.nack(message.queue, message.id, lease, delay=nack_delay,
                                          unseen=unseen)
            except TimeoutError:
                self._drop(client, f"no answer to a nack within {self.reply_timeout:g} s")
                sent_before = True
                continue
            except ConnectionClosed:
                sent_before = True
                continue
            except (NotFound, LeaseLost) as exc:
                if message.lease != lease:
                    # An ack waiting (for a connection, or its answer) when the message came
                    # back to this worker: _adopt gave it the new lease; ack under that.
                    lease = message.lease
                    assert lease is not None
                    continue
                if sent_before and nack_delay is not None:
                    # A nack sent before, on a connection that ended, that finds the message
                    # gone or taken by someone else: it is back in other hands either way.
                    self._server_answered()
                    return outcome
                self._server_answered()
                # Gone while the lease surely held: nobody else could have had it.
                gone_while_held = isinstance(exc, NotFound) and not job.lease_gone \
                    and asyncio.get_running_loop().time() < job.held_until
                if gone_while_held and sent_before:
                    # An ack sent before: so the first one went through. After the lease,
                    # another consumer may have acked it: not counted as ours.
                    return outcome
                settle = _settle_name(nack_delay)
                if gone_while_held:
                    # First sent: it was deleted (a purge, its queue deleted), not
                    # redelivered (an SQS user read "may be done again" as a duplicate).
                    log.warning("message %d of %r was deleted by someone else (purged, or "
                                "its queue deleted) while this worker held it; its %s found "
                                "it gone (NOT_FOUND); counted lease_lost", message.id,
                                message.queue, settle)
                    return "lease_lost"
                log.warning("message %d of %r: its lease passed to someone else before its %s "
                            "went through (%s); counted lease_lost: its work may be done "
                            "again", message.id, message.queue, settle, exc.code)
                return "lease_lost"
            except WonderQError as exc:
                if isinstance(exc, BatchTooLarge) and nack_delay is None \
                        and self._batch_cap > 1:
                    # More acks ended together than the server's --max-batch (a restart
                    # may have lowered it, unseen by the receives): smaller batches. Every
                    # item of the refused batch gets this one error; it lowers the cap once.
                    if exc is not self._last_batch_refusal:
                        self._last_batch_refusal = exc
                        self._batch_cap = batch_limit(exc, self._batch_cap)
                    continue
                if isinstance(exc, BadArgument) and unseen and "unseen" in exc.message:
                    unseen = False  # a server older than nack's `unseen`
                    continue
                if isinstance(exc, BadArgument) and nack_delay:
                    delay_refusals += 1
                    refused = nack_delay
                    nack_delay = (delay_limit(exc, nack_delay)
                                  if delay_refusals < DELAY_REFUSALS_MOST else 0.0)
                    if nack_delay > 0:  # this nack, and later ones on this connection
                        self._delay_cap, self._delay_cap_on = nack_delay, client
                    else:
                        asked = 0.0  # no limit to keep to: none
                    log.warning("the server refused a retry delay of %g s (%s); nacking "
                                "message %d with %g s", refused, exc.message, message.id,
                                nack_delay)
                    continue
                if isinstance(exc, StorageError):
                    in_time = asyncio.get_running_loop().time() + STORAGE_RETRY_S \
                        < patience_until
                    if isinstance(exc, StorageUnavailable):
                        if job.acking or in_time:
                            # Refused, not made, while the server's journal writes fail. An
                            # ack is sent again past its lease too: receives are refused as
                            # well, so nobody else can take the message meanwhile, and the
                            # server takes a late ack while nobody holds it (given up at the
                            # lease's end, the work was done again after the outage: a
                            # reviewer). A nack stops there: the message comes back when its
                            # lease ends anyway.
                            self._storage_refusal(exc, _settle_name(nack_delay))
                            await asyncio.sleep(STORAGE_RETRY_S)
                            continue
                    elif in_time:
                        # The write that carried it failed: "may or may not take effect",
                        # then made, and a second one finds it settled, as after a lost reply.
                        sent_before = True
                        log.info("message %d of %r: the server could not store its %s (%s); "
                                 "sending it again in %g s", message.id, message.queue,
                                 _settle_name(nack_delay), exc.message, STORAGE_RETRY_S)
                        await asyncio.sleep(STORAGE_RETRY_S)
                        continue
                log.warning("could not settle message %d of %r: %s", message.id,
                            message.queue, exc)
                return "unsettled"
            self._storage_works()
            self._server_answered()
            return outcome

    def _settle_patience(self, job: _Job, outcome: str) -> float:
        """_settle_patience is when a settle stops waiting for a connection: when the lease
        ends (plus SETTLE_SLACK_S), or, for a give-back, reply_timeout from its start, as its
        message comes back with its lease anyway. A settle that finds the connection open
        never arms this timer."""
        patience_until = job.lease_until + SETTLE_SLACK_S
        if outcome == "given_back":
            patience_until = min(patience_until,
                                 asyncio.get_running_loop().time() + self.reply_timeout)
        return patience_until

    def _ack_soon(self, client: Client, message: Message) -> asyncio.Future[None]:
        """_ack_soon queues an ack; every ack queued during this loop iteration goes out in
        one ack_many (per connection, in batches the server takes) at its end, so many
        jobs ending together cost the server one request, not one each. The returned
        future gets that item's own result: None, or its error."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks_out.append((client, message, future))
        if not self._acks_scheduled:
            self._acks_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_acks)
        return future

    def _send_acks(self) -> None:
        """_send_acks sends the acks queued (_ack_soon), one ack_many per connection and
        batch, and arms one reply timer per batch: a batch unanswered for reply_timeout
        drops its connection, so its acks fail with ConnectionClosed and are sent again."""
        self._acks_scheduled = False
        queued, self._acks_out = self._acks_out, []
        by_client: dict[Client, list[tuple[Message, asyncio.Future[None]]]] = {}
        for client, message, future in queued:
            if not future.done():  # its settle was cancelled meanwhile
                by_client.setdefault(client, []).append((message, future))
        loop = asyncio.get_running_loop()
        for client, items in by_client.items():
            for start in range(0, len(items), self._batch_cap):
                batch = items[start:start + self._batch_cap]
                try:
                    # The client's own request path, without a coroutine: its reply is a
                    # future whose callback hands each item its result.
                    reply = client._protocol.send("ack_many", {
                        "queue": self.queue,
                        "items": [(message.id, message.lease) for message, _ in batch]})
                except ConnectionClosed as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                timer = loop.call_later(self.reply_timeout, self._acks_overdue, client, reply)
                reply.add_done_callback(
                    functools.partial(self._acks_answered, batch=batch, timer=timer))

    def _acks_overdue(self, client: Client, reply: asyncio.Future[Any]) -> None:
        if not reply.done():
            self._drop(client, f"no answer to acks within {self.reply_timeout:g} s")

    @staticmethod
    def _acks_answered(reply: asyncio.Future[Any],
                       batch: list[tuple[Message, asyncio.Future[None]]],
                       timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        error = reply.exception() if not reply.cancelled() else ConnectionClosed("cancelled")
        results = [error] * len(batch) if error is not None else item_results(reply.result())
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if result is None:
                future.set_result(None)
            else:
                future.set_exception(result)

    async def _drain(self) -> None:
        """_drain lets the handlers running finish within the grace, then cancels them, and
        gives the settles (acks of work done, give-backs) until the grace is over or
        `reply_timeout` after the cancel, whichever is later. Hurried (a second stop(), or a
        cancel of run(), raised again at the end), it skips what is left of the grace, and
        the settles get `reply_timeout` from then. What is still unsettled is then
        cancelled, left to its lease. A handler that ignores its cancel is left running.
        Every wait here takes a cancel of run() as a hurry, so the clean-up always runs."""
        loop = asyncio.get_running_loop()
        cancelled: asyncio.CancelledError | None = None

        async def wait(tasks: set[asyncio.Task[None]], timeout: float,
                       hurry_ends_it: bool = True) -> None:
            """wait: until all `tasks` end or `timeout` passes; with hurry_ends_it, until
            one ends or stop() hurries."""
            nonlocal cancelled
            hurry = asyncio.ensure_future(self._hurry.wait()) if hurry_ends_it else None
            try:
                if hurry is None:
                    await asyncio.wait(tasks, timeout=timeout)
                else:
                    await asyncio.wait({*tasks, hurry}, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError as exc:
                cancelled = exc
                self._hurry.set()
            finally:
                if hurry is not None:
                    hurry.cancel()

        async def wait_for(which: Callable[[_Job], bool], until: float) -> None:
            while not self._hurry.is_set():
                tasks = {task for task, job in self._jobs.items() if which(job)}
                left = until - loop.time()
                if not tasks or left <= 0:
                    return
                await wait(tasks, left)

        grace_over_at = loop.time() + self.shutdown_grace
        await wait_for(lambda job: not job.settling, grace_over_at)
        self._handlers_cancelled = True
        for task, job in self._jobs.items():
            if job.started and not job.settling:
                task.cancel()
        await wait_for(lambda job: True, max(grace_over_at, loop.time()) + self.reply_timeout)
        if self._hurry.is_set():  # hurried: reply_timeout from now, and no longer
            hurried_until = loop.time() + self.reply_timeout
            while self._jobs and loop.time() < hurried_until:
                await wait(set(self._jobs), hurried_until - loop.time(), hurry_ends_it=False)
        # A handler still running ignored its cancel and has had the settles' time: it
        # is abandoned now, before the wait below, or one that ended during that wait
        # had its ack sent after its time was up, and counted abandoned (a reviewer).
        self._abandon(lambda job: job.started and not job.settling)
        left_to_lease = {task for task, job in self._jobs.items() if job.settling}
        for task in left_to_lease:
            task.cancel()  # each counts itself unsettled as it ends
        if left_to_lease:
            await wait(left_to_lease, self.reply_timeout, hurry_ends_it=False)
        self._abandon(lambda job: True)  # a settle that outlived its cancel (not expected)
        if cancelled is not None:
            raise cancelled

    def _abandon(self, which: Callable[[_Job], bool]) -> None:
        """_abandon: the jobs `which` picks that are not counted yet belong to no run from
        now: a later run neither waits for them, nor touches them, nor takes a new
        delivery of their message for them, and what they end with is not sent (their
        message comes back with its lease)."""
        for task, job in list(self._jobs.items()):
            if which(job) and not job.counted:
                self._count(job, "abandoned")
                job.abandoned = True
                self._let_go(job)
                del self._jobs[task]

    # -------------------------------------------------------------- heartbeat

    async def _heartbeat_loop(self) -> None:
        """_heartbeat_loop beats every quarter lease, on a fixed schedule: a slow round does
        not push the next one back. Each round touches the jobs whose lease has three
        quarters or less left, so a lease is renewed when a quarter to a half of it has
        passed, and a round that fails still leaves the next one a quarter lease."""
        period = self.visibility / 4
        loop = asyncio.get_running_loop()
        beat_at = loop.time()
        while True:
            beat_at = max(beat_at + period, loop.time())
            await asyncio.sleep(beat_at - loop.time())
            try:
                await self._touch_due(period)
            except Exception as exc:  # the beat must go on
                log.warning("heartbeat round failed: %s", exc)

    async def _touch_due(self, period: float) -> None:
        loop = asyncio.get_running_loop()
        due = [job for job in self._jobs.values()
               if not job.settling and not job.lease_gone
               and job.lease_until - loop.time() <= 3 * period]
        if not due:
            return
        # A round ends by the next beat: a lease touched after a quarter of it may wait one
        # more quarter, not longer, whatever reply_timeout is.
        round_over_at = loop.time() + min(period, self.reply_timeout)
        try:
            async with asyncio.timeout_at(round_over_at):
                client = await self._connection()
        except TimeoutError:
            return  # still no connection: the next round tries again
        sent_at = loop.time()
        leases = [job.message.lease for job in due]  # what each touch is about to renew
        try:
            async with asyncio.timeout_at(round_over_at):
                results = await asyncio.gather(*(self._touch(client, job) for job in due),
                                               return_exceptions=True)
        except TimeoutError:
            self._drop(client, "no answer to touches before the next heartbeat")
            return
        refused: list[tuple[_Job, WonderQError]] = []
        for job, lease, result in zip(due, leases, results, strict=True):
            if job.message.lease != lease:
                continue  # the job took a newer delivery's lease meanwhile (_adopt)
            if isinstance(result, FATAL_ERRORS):
                # A setting the server refuses (visibility over a restarted server's
                # --max-visibility-timeout): no lease can be kept, so the run ends, as a
                # receive refused so ends it. Dropped without a word, the leases ran out
                # under working handlers and others ran their messages (a reviewer).
                self._end_with(result)
            elif isinstance(result, StorageUnavailable):
                # Not renewed while the server's journal writes fail; the server holds a
                # lease that runs out meanwhile, and the ack is sent again until the
                # outage ends (_send_settle).
                self._storage_refusal(result, "touch")
            elif isinstance(result, (LeaseLost, NotFound)):
                job.lease_gone = True
                log.warning("message %d of %r: its lease was lost (%s); the handler's "
                            "result will not count", job.message.id, job.message.queue,
                            result)
            elif isinstance(result, float):
                # The server renewed it after sent_at: so this is when it surely holds to.
                job.lease_until = job.held_until = sent_at + self.visibility
                self.counts.touched += 1
                self._server_answered()
            elif isinstance(result, WonderQError) and not isinstance(result, ConnectionClosed):
                refused.append((job, result))  # INTERNAL, STORAGE_ERROR, ...: it may pass
        if refused:
            # One line a round, not one per message: the next round tries them again.
            job, error = refused[0]
            log.warning("%d touch(es) refused, their leases not renewed (message %d of %r: "
                        "%s); the next heartbeat tries again", len(refused), job.message.id,
                        job.message.queue, error)

    async def _touch(self, client: Client, job: _Job) -> float | None:
        """_touch renews one job's lease, unless its handler is over by the time this runs
        (the server refuses a touch after a nack: LEASE_LOST, which would be logged)."""
        if job.settling:
            return None
        message = job.message
        return await client.touch(message.queue, message.id, message.lease,  # type: ignore[arg-type]
                                  visibility=self.visibility)
