"""A worker: runs a handler on every message of one queue, as a Celery or RQ worker does.

Design decision: a Worker owns its connection and the four chores every consumer otherwise
writes by hand:

* receiving, by long polls sized to the handler slots that are free, so that it never holds a
  message it has not started (another worker could be doing it meanwhile);
* keeping leases alive: one heartbeat loop touches each message in progress after a quarter
  of its lease, so a handler may run far longer than the lease, while a worker that dies
  loses its messages to others within one lease;
* settling: an ack when the handler returns, a nack with a back-off delay when it raises (the
  queue's max_deliveries and dead-letter queue catch poison);
* reconnecting, with capped, jittered exponential back-off, when the connection ends (the
  server restarts, the network drops). Messages in progress live through it: leases belong
  to messages, not connections, so their touches and settles go over whichever connection is
  current.

Rules:
* The handler is `async def handler(msg) -> None`. It must not ack, nack or touch `msg`
  itself: the Worker does, and the connection `msg` came on may be gone by then. Blocking
  work goes through `asyncio.to_thread`.
* stop() ends receiving at once: a waiting receive is cancelled on the server, and a message
  already on its way is given back unseen, as for any cancelled receive. Handlers running get
  `shutdown_grace` seconds to finish; then they are cancelled and their messages nacked, for
  others to take at once. A second stop() skips what is left of the grace (a second Ctrl-C).
  run() returns once every message is settled (or its settle gave up) and the connection is
  closed. run() cancelled from outside does the same with no grace, then raises
  CancelledError.
* A settle or touch that meets ConnectionClosed is sent again on the next connection while
  the lease lasts, and given up SETTLE_SLACK_S after it: the message then goes to another
  consumer anyway. NotFound for an ack sent again means the first one was carried out.
  LeaseLost (or NotFound) means the lease passed to someone else: counted, not raised.
* Errors that retrying cannot mend end run() after the shutdown above: AuthFailed,
  AuthRequired, BadArgument (say a wait over the server's --max-wait), InvalidQueueName,
  UnsupportedVersion. A receive refused with BATCH_TOO_LARGE is sent again at half the size,
  and later ones are kept to what passed. Anything else, including connect's OSError, is
  retried with back-off until stop().
* Per message there is one task (its handler's) and nothing else: one receive loop and one
  heartbeat loop serve every message, and one heartbeat's touches are pipelined together.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .client import DEFAULT_HOST, DEFAULT_PORT, Client, connect
from .errors import (
    AuthFailed,
    AuthRequired,
    BadArgument,
    BatchTooLarge,
    ConnectionClosed,
    InvalidQueueName,
    LeaseLost,
    NotFound,
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
# The back-off doubles per attempt up to here; past it (2**40 x reconnect_min) it is capped
# anyway, and the exponent must stay a float a float can hold.
MAX_BACKOFF_EXPONENT = 40


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


@dataclass
class WorkerCounts:
    """What a Worker did since it was made; read them at any time (worker.counts)."""

    received: int = 0     # messages handed to the handler
    acked: int = 0        # the handler returned, and the ack was carried out
    failed: int = 0       # the handler raised: nacked with the retry delay
    given_back: int = 0   # the handler was cancelled at stop: nacked at once
    lease_lost: int = 0   # the settle found the lease gone (LEASE_LOST, or NOT_FOUND)
    unsettled: int = 0    # no settle got through before the lease (and SETTLE_SLACK_S) ran out
    touched: int = 0      # leases renewed by the heartbeat
    reconnects: int = 0   # connections made after the first


@dataclass
class _Job:
    """_Job is one message in progress and, on this event loop's clock, when its lease runs
    out as far as the worker knows (the server's deadline is a little earlier: it starts
    the lease before its reply travels)."""

    message: Message
    lease_until: float
    lease_gone: bool = False  # a touch was refused: no more touches


class Worker:
    """Runs `handler` on each message of `queue`, `concurrency` at a time (see the module's
    rules). Make one, then `await worker.run()`; `worker.stop()` ends it, from a signal
    handler too.

        worker = Worker("emails", send_email, concurrency=20, visibility=60)
        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        await worker.run()

    visibility: each lease's length, renewed while the handler runs. wait: the long poll.
    retry_delay: seconds before a failed message is tried again, or a function of the
    message (default retry_backoff). The connection options are connect()'s.
    """

    def __init__(self, queue: str, handler: Handler, *, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, concurrency: int = 10, visibility: float = 30.0,
                 wait: float = 20.0, retry_delay: float | RetryDelay = retry_backoff,
                 shutdown_grace: float = 30.0, reconnect_first: float = 0.1,
                 reconnect_most: float = 10.0, connect_timeout: float | None = 10.0,
                 auth_token: str | bytes | None = None, ssl: Any = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if not visibility > 0:
            raise ValueError(f"visibility must be more than 0 seconds, not {visibility}")
        if not wait > 0:
            raise ValueError(f"wait must be more than 0 seconds (a worker long-polls), "
                             f"not {wait}")
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
        self.reconnect_first, self.reconnect_most = reconnect_first, reconnect_most
        self._connect_options: dict[str, Any] = {
            "timeout": connect_timeout, "auth_token": auth_token, "ssl": ssl}
        self.counts = WorkerCounts()
        self._client: Client | None = None
        self._connections = 0
        self._connect_attempt = 0  # failures in a row, for the back-off
        self._connect_lock = asyncio.Lock()
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._slot_free = asyncio.Event()
        self._batch_cap = concurrency  # lowered if the server's --max-batch is smaller
        self._receiving: asyncio.Task[None] | None = None
        self._running = False
        self._stops = 0
        self._hurry = asyncio.Event()  # a second stop(): no more grace

    @property
    def in_progress(self) -> int:
        """in_progress is how many messages handlers are working on now."""
        return len(self._jobs)

    def stop(self) -> None:
        """stop ends run() as the module's rules say; a second call skips the grace."""
        self._stops += 1
        if self._stops > 1:
            self._hurry.set()
        if self._receiving is not None:
            self._receiving.cancel()

    async def run(self) -> None:
        """run receives and handles messages until stop(), or until an error that retrying
        cannot mend (raised here, after the shutdown)."""
        if self._running:
            raise RuntimeError("this Worker is already running")
        self._running = True
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
            await self._drain(0.0 if cancelled_from_outside else self.shutdown_grace)
        finally:
            heartbeat.cancel()
            if self._client is not None:
                await self._client.close()
            self._running = False
        if cancelled_from_outside:
            raise asyncio.CancelledError
        if error is not None:
            raise error

    # ------------------------------------------------------------- connection

    async def _connection(self) -> Client:
        """_connection returns the open connection, first making a new one if the last one
        ended, with back-off between failed tries. Callers share one attempt (the lock):
        the receive loop, a settle and the heartbeat may all find the connection gone."""
        async with self._connect_lock:
            while self._client is None or self._client.closed:
                try:
                    self._client = await connect(self.host, self.port, **self._connect_options)
                except (OSError, ConnectionClosed) as exc:
                    delay = reconnect_delay(self._connect_attempt, self.reconnect_first,
                                            self.reconnect_most)
                    self._connect_attempt += 1
                    log.warning("cannot connect to WonderQ at %s:%d (%s); trying again in "
                                "%.2f s", self.host, self.port, exc or type(exc).__name__,
                                delay)
                    await asyncio.sleep(delay)
                    continue
                self._connections += 1
                if self._connections > 1:
                    self.counts.reconnects += 1
                    log.info("connected to WonderQ at %s:%d again", self.host, self.port)
            return self._client

    # ---------------------------------------------------------------- receive

    async def _receive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            free = self.concurrency - len(self._jobs)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            client = await self._connection()
            size = min(free, self._batch_cap)
            try:
                messages = await client.receive(self.queue, max=size, wait=self.wait,
                                                visibility=self.visibility)
            except ConnectionClosed as exc:
                log.warning("lost the connection to WonderQ (%s); reconnecting", exc)
                continue
            except BatchTooLarge:
                if size == 1:
                    raise
                self._batch_cap = size // 2
                log.warning("the server refused a receive of %d messages (its --max-batch); "
                            "receiving at most %d at a time", size, self._batch_cap)
                continue
            except FATAL_ERRORS:
                raise
            except WonderQError as exc:  # INTERNAL_ERROR, TOO_MANY_QUEUES, ...: it may pass
                delay = reconnect_delay(self._connect_attempt, self.reconnect_first,
                                        self.reconnect_most)
                self._connect_attempt += 1
                log.warning("receive from %r failed (%s); trying again in %.2f s",
                            self.queue, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._connect_attempt = 0  # the server answered: it is up and serving
            lease_until = loop.time() + self.visibility
            for message in messages:
                self._start(_Job(message, lease_until))

    def _start(self, job: _Job) -> None:
        self.counts.received += 1
        task = asyncio.create_task(self._work(job))
        self._jobs[task] = job
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        del self._jobs[task]
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a worker job failed", exc_info=task.exception())

    # --------------------------------------------------------- handle, settle

    async def _work(self, job: _Job) -> None:
        message = job.message
        try:
            await self.handler(message)
        except asyncio.CancelledError:
            # Only stop() cancels a handler (or the handler cancelled itself): the work is
            # unfinished, so another consumer should have it now. It counts as a delivery.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # this task goes on, to settle
            if await self._settle(job, nack_delay=0.0):
                self.counts.given_back += 1
            return
        except Exception:
            log.exception("handler failed on message %d of %r (delivery %d)", message.id,
                          message.queue, message.deliveries)
            delay = self.retry_delay(message) if callable(self.retry_delay) \
                else self.retry_delay
            if await self._settle(job, nack_delay=delay):
                self.counts.failed += 1
            return
        if await self._settle(job, nack_delay=None):
            self.counts.acked += 1

    async def _settle(self, job: _Job, nack_delay: float | None) -> bool:
        """_settle acks (nack_delay None) or nacks the job's message over the current
        connection, sending it again on the next one if the connection ends first; True
        when it was carried out. It gives up SETTLE_SLACK_S after the lease ran out."""
        message = job.message
        lease = message.lease
        assert lease is not None  # received, not peeked
        sent_before = False
        try:
            async with asyncio.timeout_at(job.lease_until + SETTLE_SLACK_S):
                while True:
                    client = await self._connection()
                    try:
                        if nack_delay is None:
                            await client.ack(message.queue, message.id, lease)
                        else:
                            await client.nack(message.queue, message.id, lease,
                                              delay=nack_delay)
                        return True
                    except ConnectionClosed:
                        sent_before = True
                    except NotFound:
                        if sent_before and nack_delay is None:
                            return True  # the ack sent before was carried out
                        self.counts.lease_lost += 1
                        return False
                    except LeaseLost:
                        self.counts.lease_lost += 1
                        return False
        except TimeoutError:
            pass
        except WonderQError as exc:
            log.warning("could not settle message %d of %r: %s", message.id, message.queue,
                        exc)
        self.counts.unsettled += 1
        return False

    async def _drain(self, grace: float) -> None:
        """_drain lets the handlers running finish within `grace` seconds (a second stop()
        ends it sooner), then cancels the rest, and waits until every message is settled."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + grace
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while self._jobs and not self._hurry.is_set():
                left = give_up_at - loop.time()
                if left <= 0:
                    break
                await asyncio.wait({*self._jobs, hurry}, timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        for task in list(self._jobs):
            task.cancel()
        if self._jobs:
            await asyncio.wait(set(self._jobs))  # each settle ends with its lease at most

    # -------------------------------------------------------------- heartbeat

    async def _heartbeat_loop(self) -> None:
        """_heartbeat_loop wakes every quarter lease and touches each message received or
        touched at least that long ago: its lease then has at most three quarters left,
        and a touch lost to a reconnect still leaves a quarter for the next one."""
        period = self.visibility / 4
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            due = [job for job in self._jobs.values()
                   if not job.lease_gone and job.lease_until - loop.time() <= 3 * period]
            if not due:
                continue
            try:
                async with asyncio.timeout(period):
                    client = await self._connection()
            except TimeoutError:
                continue  # still no connection: the next round tries again
            sent_at = loop.time()
            results = await asyncio.gather(
                *(client.touch(job.message.queue, job.message.id, job.message.lease,  # type: ignore[arg-type]
                               visibility=self.visibility) for job in due),
                return_exceptions=True)
            for job, result in zip(due, results, strict=True):
                if isinstance(result, (LeaseLost, NotFound)):
                    job.lease_gone = True
                    log.warning("message %d of %r: its lease was lost (%s); the handler's "
                                "result will not count", job.message.id, job.message.queue,
                                result)
                elif not isinstance(result, BaseException):
                    job.lease_until = sent_at + self.visibility
                    self.counts.touched += 1
