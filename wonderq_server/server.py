"""The server: listener, the one deadline timer, the per-iteration flush.

Design decision: the server is the thin asyncio layer that owns everything
with time or I/O in it, and nothing else:

* the listening socket, which makes one Connection per client, and the
  admission of each (--max-connections, --max-connections-per-address;
  connection_limits.py); on a TLS port the listener is its own
  (tls_listener.py), so an address is counted before its handshake;
* the pace of STATS and QUEUES (admin_pace.py): its one timer, and the
  monotonic clock that times it;
* the clock (`now`), read once per batch of input and passed down;
* one timer, armed at the broker's next deadline; when it fires, the broker
  handles the deadlines that have passed (`advance`), a step of them
  (ADVANCE_STEP_DEADLINES) per loop turn, and what that changed is written
  with a flush; while journal writes fail (and HOLD_GRACE_S
  after) leases that run out are held rather than ended (HOLD_LEASE_ENDS_S);
* REDRIVEs whose connection went before they ended (`finish_detached`): run
  on, a step a turn, until done or the stop begins;
* the flush: connections buffer replies and ask for a flush; the server runs
  one flush per event-loop iteration (`call_soon`): it writes the journal's
  buffered records in one write, hands the replies to group commit (which
  sends them now, or after the fsync that makes them durable), takes one
  step of a running compaction, and re-arms the timer;
* start-up recovery and shutdown: stop accepting, answer what is in flight,
  write and fsync the journal, then tell every client SHUTTING_DOWN and wait
  (GOODBYE_WAIT_S, more while it reads its replies) for it to close;
* with --metrics-port, the metrics endpoint (metrics.py), started after the
  listener and closed first; it reads the same stats map as `stats`;
* the server-wide auth token check (auth.py) and TLS context (tls.py), both
  built once; the metrics endpoint uses them too (Bearer token, TLS).

Rules:
* There is never more than one timer, and never a polling loop: the timer is
  moved whenever the earliest deadline changes, and runs only when something
  is due.
* The loop's clock is monotonic, the broker's is wall time; the timer is set
  as a delay (`deadline - now`) plus one tick of the loop's millisecond clock.
  A lease must never run out before its deadline by the wall clock, yet
  uvloop's timers fire up to about a millisecond early (they count from the
  loop's cached time, in whole milliseconds). So a timer that still fires
  before its deadline re-arms for the remainder instead of advancing: at most
  one extra wake-up, never a spin and never an early release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import __version__, tls
from . import compaction as compaction_policy
from .admin_pace import AdminPace
from .auth import TokenCheck
from .broker import Broker
from .busy_poll import BusyPoll
from .commands import Command
from .commit_wait import CommitWait
from .compaction import Compaction
from .compiled import build_description
from .config import Config
from .connection import Connection, Output
from .connection_limits import (
    REFUSALS_WAITING,
    REFUSALS_WAITING_PER_ADDRESS,
    RESERVED_FILE_DESCRIPTORS,
    Counters,
    address_key,
    fit_open_files,
    metrics_file_descriptors,
)
from .errors import TOO_MANY_CONNECTIONS, CommandError, ProtocolError
from .gc_policy import CollectorFreezer
from .group_commit import GroupCommit
from .journal import CompactionFailed, Journal, JournalBroken, JournalError
from .journal_format import FILE_HEADER
from .peer_state import unsent_bytes
from .refusal_log import RefusalLog
from .service import REDRIVE_PROGRESS, UNFINISHED, BrokerService
from .tls_listener import ACCEPT_RETRY_S, TlsListener

if TYPE_CHECKING:
    from .metrics import MetricsEndpoint  # imported at run time only with --metrics-port

logger = logging.getLogger("wonderq.server")
# The ready line's logger (main.py), logged whatever --log-level says: the metrics line
# goes to it too, since it is how a script learns the port --metrics-port 0 picked.
ready_logger = logging.getLogger("wonderq.server.ready")
ready_logger.setLevel(logging.INFO)

RATE_SAMPLE_INTERVAL_S = 1.0
# A queue setting and the limit a request's value of it must not pass (commands.py),
# checked at start against settings stored under other limits (_warn_settings_over_limits).
SETTING_LIMITS = (("visibility_timeout", "max_visibility_s", "--max-visibility-timeout"),
                  ("delay", "max_delay_s", "--max-delay"),
                  ("expiry", "max_expiry_s", "--max-expiry"))
SETTINGS_WARNED_MOST = 20  # lines; then one line counts the rest
# A journal write that fails (a full disk) is logged at most once per this many
# seconds, with the count of those not logged (Redis' AOF_WRITE_LOG_ERROR_RATE): one
# line per failed write flooded the log at hundreds of lines a second.
WRITE_ERROR_LOG_INTERVAL_S = 30.0
# A failed journal write's records stay pending (journal.py) and are tried again once
# this often; meanwhile changes are refused, not run (connection.py). Each try writes
# everything kept: at every turn, that cost grew with the failure's length (a reviewer:
# puts fell from 9,000/s to 80/s).
RETRY_WRITE_S = 1.0
# While they fail, leases that run out are held this long at a time (_on_timer): about the
# retry's period, so that once the hold is over (below) they end within about as long.
HOLD_LEASE_ENDS_S = 1.0
# ... and for this long after a write works again: a Worker sends its refused ack again
# every second (its STORAGE_RETRY_S), and receives work at once, so a held lease that ended
# at once could go to another consumer before that ack came (a reviewer, 1 in 4 tries).
HOLD_GRACE_S = 2.0
# The timer handles at most this many deadlines (a lease batch counts its members), or
# dead-letter moves of this many bytes, per loop turn; the rest are due at once, and handled
# a turn later (_arm_timer), other clients' requests in between. In one go, 100,000 leases
# that ended together into a dead-letter queue held the loop for 0.47 s, and their moves'
# records (each with its whole message) went out in one write.
ADVANCE_STEP_DEADLINES = 1024
ADVANCE_STEP_MOVED_BYTES = 1 << 20
# One tick of the loop's clock (libuv counts timers in whole milliseconds).
TIMER_TICK_S = 0.001
# At a stop, how long the server waits for its clients to close after their
# SHUTTING_DOWN (Connection.say_goodbye), before it aborts those left. A client
# that reads closes within a round trip; one that does not read gets the reset
# it would have got without a goodbye. Short, so a stop stays quick for init
# systems (systemd waits 90 s before its SIGKILL). A client still reading a
# backlog of replies (their requests ran: cut off, it would put them again) is
# given another GOODBYE_WAIT_S while the replies left unsent shrink, up to
# GOODBYE_MOST_S in all (Kubernetes' default grace is 30 s).
GOODBYE_WAIT_S = 1.0
GOODBYE_MOST_S = 10.0


def _log_detached_end(command: Command, why: str) -> None:
    """_log_detached_end: a REDRIVE whose client has gone ends before its end (nobody
    else hears of it)."""
    logger.warning("a redrive of %r whose client has gone %s, after %d messages; the rest "
                   "stay in it", command.args.get("queue"), why,
                   command.args[REDRIVE_PROGRESS].moved)


def _no_reply(command: Command, result: Any) -> None:
    """_no_reply: where a detached command's result goes (finish_detached): nobody."""


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        # The hub's clock, read once per read of every connection: the C function
        # itself, with no method of ours around it.
        self.now: Callable[[], float] = time.time
        self.limits = config.limits
        self.connection_limits = config.connection_limits
        self.max_connections = config.connection_limits.max_connections  # start() may lower it
        self.counters = Counters()
        self.refusal_log = RefusalLog(logger)  # wrong tokens, connections over the limit
        self.admin_pace = AdminPace(self.call_later)  # STATS and QUEUES share the loop
        self.monotonic: Callable[[], float] = time.monotonic  # for the pace's spacing
        # Over a limit, waiting for their answer: each under its address (address_key).
        self._refused: dict[Connection, str | None] = {}
        self._refused_from: dict[str | None, int] = {}
        # Admitted connections by client address (--max-connections-per-address).
        self._connections_from: dict[str, int] = {}
        self.broker = Broker(visibility_timeout_s=config.visibility_timeout_s,
                             max_message_bytes=config.limits.max_message_bytes,
                             max_queues=config.max_queues,
                             max_memory_bytes=config.max_memory_bytes)
        self.auth = TokenCheck(config.auth_token)
        self.service = BrokerService(self.broker, self._server_info, self.auth,
                                     steady_clock=time.monotonic)
        # Built before recovery, so a bad TLS file stops start-up at once (TLSSetupError).
        self.ssl_context = (tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)
                            if config.tls_cert is not None and config.tls_key is not None
                            else None)
        self.tls_handshake_failures = 0
        # The metrics endpoint has a context of its own (the same files), so a failed
        # handshake's log line can say which port it was on.
        self.metrics_ssl_context = (
            tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)
            if self.ssl_context is not None and config.metrics_port is not None else None)
        # Handshakes in progress count toward --max-connections (tls.py's rules).
        self.handshake_limit = tls.HandshakeLimit(
            lambda: self.max_connections - (len(self.connections) - len(self._refused)))
        if self.ssl_context is not None:
            tls.report_failed_handshakes(
                self.ssl_context,
                lambda reason, why: self._tls_handshake_failed("", reason, why),
                self.handshake_limit)
        # And on the metrics port toward --metrics-max-connections (metrics_http.py's rules).
        self.metrics_handshake_limit = tls.HandshakeLimit(
            lambda: self.metrics.http.handshake_room() if self.metrics is not None else 0,
            "--metrics-max-connections")
        if self.metrics_ssl_context is not None:
            tls.report_failed_handshakes(
                self.metrics_ssl_context,
                lambda reason, why: self._tls_handshake_failed("on the metrics port ",
                                                               reason, why),
                self.metrics_handshake_limit)
        self.connections: set[Connection] = set()
        self.connections_total = 0
        self.started_at = time.time()
        # Uptime by the monotonic clock: by the wall clock it went negative after a step
        # back (an NTP step, `date -s`: a reviewer's).
        self._started_monotonic = time.monotonic()
        self.build = build_description()  # `compiled` or `pure Python`: STATS' server.build
        # Installed by main.serve with --gc-freeze on; here for STATS' count of freezes.
        self.gc_freezer = CollectorFreezer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.busy_poll: BusyPoll | None = None  # --busy-poll, once the loop runs (start)
        self._listener: asyncio.base_events.Server | None = None
        self._tls_listener: TlsListener | None = None  # instead, on a TLS port
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        # REDRIVEs whose connection went before they ended (finish_detached): run on, a
        # step a turn, first come first.
        self._detached: deque[Command] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._rates_timer: asyncio.TimerHandle | None = None
        self._data_dir_warning = ""  # what _check_data_dir last said (said once)
        self.address: tuple[str, int] | None = None
        self.journal = (Journal(config.data_dir, config.fsync, repair=config.repair,
                                reserve_bytes=config.journal_reserve_bytes)
                        if config.data_dir is not None else None)
        self.group_commit: GroupCommit | None = None
        self.compaction: Compaction | None = None
        self._presync_future: asyncio.Future[None] | None = None  # the pre-sync, once started
        # A dropped compaction's pre-sync still running: its thread closes and removes the
        # old .tmp file when done (Compaction.presync), so no next compaction, whose .tmp
        # has the same name, starts before then.
        self._abandoned_presync: asyncio.Future[None] | None = None
        self._stopping = False
        self._accepting = True  # False once stop() has begun
        self._all_closed: asyncio.Future[None] | None = None  # at a stop: no connection left
        self.stopped = asyncio.Event()
        self.fatal_error: BaseException | None = None
        self._journal_errors = 0
        self._failing_writes = 0  # journal writes failed in a row, until one succeeds
        self._write_errors_unlogged = 0  # of those, not in the log yet
        self._write_error_logged_at = -WRITE_ERROR_LOG_INTERVAL_S  # time.monotonic()
        self._error_logged_since_recovery = False  # so "writes work again" is owed
        # Journal writes fail: changes are refused, not run (connection.py), until the
        # write of the records kept from the failure works (_write_journal). It mirrors
        # journal.kept_from_failure, kept here so each request reads one attribute
        # rather than a journal that may be None (--in-memory).
        self.refusing_changes = False
        self._writes_worked_at = -math.inf  # when refusing_changes last ended (time.time())
        self._write_retry_armed = False  # _retry_write is on the loop's timers
        self._write_retry_due = False  # it ran: the next flush tries the kept records
        self._compactions_failed = 0  # since start (stats)
        self._compaction_failures_in_a_row = 0
        self._compaction_retry_at = 0.0  # time.monotonic(): no compaction starts before
        # The running compaction was asked for (journal.compact_requested: after a
        # repair, or a SYNCED file opened under `never`) rather than due by size: if it
        # fails, the request stands, and the retry (or the stop) takes it up again.
        self._compaction_was_requested = False
        self.metrics: MetricsEndpoint | None = None  # with --metrics-port only

    # ------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """recover replays the journal into the broker (before listening) and logs what it did."""
        if self.journal is None:
            if self.config.ignored_data_dir is not None:
                logger.warning("running in memory (--in-memory): nothing survives a restart, "
                               "and the data directory %s is not used",
                               self.config.ignored_data_dir)
            else:
                logger.info("running in memory (--in-memory): nothing survives a restart")
            return
        report = self.journal.open(self.broker, time.time())
        if report.records == 0 and report.file_bytes <= len(FILE_HEADER):
            logger.info("started a new journal at %s; fsync policy %s", report.path,
                        self.journal.fsync_policy)
            return
        # The records' bytes, not the file's: reserved zeros past them are not read (an
        # operator's review saw 4.2 MB for 1.1 MB of records).
        logger.info("recovered %d records from %s (%.1f MB): %d messages in %d queues, "
                    "in %.2f s; fsync policy %s", report.records, report.path,
                    self.journal.size / 1e6, report.messages, report.queues, report.seconds,
                    self.journal.fsync_policy)
        broker = self.broker
        if broker.max_memory_bytes and broker.stored_bytes >= broker.max_memory_bytes:
            # Nothing is dropped to fit; puts are refused until consumers drain it.
            logger.warning("the recovered messages count %d bytes, at or over --max-memory "
                           "(%d): every put is refused with FULL until consumers drain them",
                           broker.stored_bytes, broker.max_memory_bytes)
        if len(broker.queues) >= broker.max_queues:
            # Kept, as the messages are; only new queues are refused (an operator's review
            # found the start silent on this, as on no other limit).
            logger.warning("the recovered queues number %d, at or over --max-queues (%d): "
                           "a new queue is refused with TOO_MANY_QUEUES until queues are "
                           "deleted", len(broker.queues), broker.max_queues)
        self._warn_settings_over_limits()

    def _warn_settings_over_limits(self) -> None:
        """_warn_settings_over_limits names the recovered queue settings over this start's
        limits (set under higher ones). They are kept, as stored data is: a setting is
        the queue's, and changing it behind the operator's back would change what the
        queue does. configure_queue lowers one."""
        over = []
        for q in self.broker.queues.values():
            for setting, limit_name, flag in SETTING_LIMITS:
                value, limit = getattr(q.settings, setting), getattr(self.limits, limit_name)
                if value > limit:
                    over.append((q.name, setting, value, flag, limit))
        for name, setting, value, flag, limit in over[:SETTINGS_WARNED_MOST]:
            # In digits, exactly, as the commands' range errors: %g wrote 365 days as
            # 3.1536e+07 (a reviewer).
            logger.warning("queue %r keeps its %s of %.15g s, over this start's %s (%.15g s): it "
                           "was set under a higher limit, and applies until configure_queue "
                           "changes it", name, setting, value, flag, limit)
        if len(over) > SETTINGS_WARNED_MOST:
            logger.warning("... and %d more queue settings over this start's limits",
                           len(over) - SETTINGS_WARNED_MOST)

    async def start(self) -> tuple[str, int]:
        """start listens; returns the (host, port) actually bound. Call recover() first."""
        self._loop = asyncio.get_running_loop()
        if self.config.busy_poll_us:
            self.busy_poll = BusyPoll(self._loop, self.config.busy_poll_us / 1e6)
            logger.info("busy polling (--busy-poll): after input the loop polls for %d us "
                        "before sleeping; a client that sends more often than that keeps "
                        "this server at a full core", self.config.busy_poll_us)
        self._fit_open_files()
        inline = self.config.fsync == "always"  # the only policy whose fsync it waits for
        self.group_commit = GroupCommit(
            self._loop, self.journal, self._fatal, on_synced=self._compaction_kick,
            inline=inline,
            commit_wait=CommitWait(self.config.group_commit_wait_us / 1e6,
                                   self.config.group_commit_gap_us / 1e6) if inline else None,
            wake=self._schedule_flush)
        if self.config.metrics_port is not None:
            from .metrics import MetricsEndpoint  # imports prometheus_client and h11

            self.metrics = MetricsEndpoint(
                lambda: self.service.stats(time.time()), self.journal,
                authorized=self.auth.bearer_ok if self.auth.required else None,
                limits={"max_connections": self.config.metrics_max_connections,
                        "timeout_s": self.config.metrics_timeout_s,
                        "max_head_bytes": self.config.metrics_max_head_bytes})
        if self.ssl_context is not None:
            # Accepted in Python, so a client's address counts before its handshake.
            self._tls_listener = TlsListener(
                self._loop, self.ssl_context, self.config.tls_handshake_timeout_s,
                self._admit_tls, self._tls_handshake_over, self._accept_failed)
            self._tls_listener.listen(self.config.host, self.config.port)
            sockname = self._tls_listener.sockets[0].getsockname()
        else:
            self._listener = await self._loop.create_server(
                lambda: Connection(self), self.config.host, self.config.port,
                reuse_address=True)
            sockname = self._listener.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        if self.metrics is not None:
            host, port = await self.metrics.start(
                self._loop, self.config.metrics_host or self.config.host,
                self.config.metrics_port, self.metrics_ssl_context,
                self.config.tls_handshake_timeout_s)
            ready_logger.info("metrics on %s://%s:%d/metrics",
                              "https" if self.ssl_context else "http",
                              f"[{host}]" if ":" in host else host, port)
        if self.journal is not None and (self.journal.compact_requested
                                         or self.journal.has_pending):
            # After --repair: rewrite without waiting for traffic. Pending records
            # are what recovery changed (deadlines that passed while down).
            self._schedule_flush()
        self._arm_timer()  # restored leases and delays run out without waiting for a request
        self._sample_rates()
        return self.address

    def _fit_open_files(self) -> None:
        """_fit_open_files raises the open-file limit to fit --max-connections, or lowers
        the connection limit to what fits (and says so): see connection_limits.py."""
        wanted = self.connection_limits.max_connections
        reserved = RESERVED_FILE_DESCRIPTORS + metrics_file_descriptors(
            self.config.metrics_max_connections if self.config.metrics_port is not None
            else None)
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            new_soft, self.max_connections = fit_open_files(wanted, soft, hard, reserved)
            if new_soft != soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (OSError, ValueError) as exc:
            logger.warning("could not raise the open-file limit for --max-connections %d: %s",
                           wanted, exc)
            return
        if self.max_connections < wanted:
            logger.warning("the open-file limit (%d, hard %d) allows only %d connections; "
                           "serving at most that many instead of --max-connections %d (raise "
                           "the limit, e.g. `ulimit -n %d`)", new_soft, hard,
                           self.max_connections, wanted, wanted + reserved)

    async def stop(self) -> None:
        """stop: stop accepting, answer what is in flight, write and fsync the journal, close."""
        self._accepting = False  # from here on nothing newly connected is served
        for command in self._detached:  # (and finish_detached takes no more)
            _log_detached_end(command, "stops at the stop")
        self._detached.clear()
        if self.busy_poll is not None:
            self.busy_poll.stop()
        if self._listener is not None:
            self._listener.close()
        if self._tls_listener is not None:
            self._tls_listener.close()
        if self.metrics is not None:
            self.metrics.close()
        for conn in list(self.connections):  # answer what is in flight, take nothing new
            if conn.transport is not None and not conn.transport.is_closing():
                conn.stop_reading()
        self._flush()
        self.refusal_log.flush(self.now())
        self._stopping = True  # from here on, only _finish_compaction_now moves a compaction
        if self.group_commit is not None:
            await self.group_commit.drain()
            self.group_commit.stop()
        if self.journal is not None and self.fatal_error is None:
            await self._finish_compaction_now()
            try:
                self.journal.close()
            except JournalBroken as exc:  # over the cap at the last write: exit 1
                self._fatal(exc)
            if self._journal_errors:
                logger.warning("%d journal writes failed since the start: what they carried "
                               "(answered STORAGE_ERROR) %s", self._journal_errors,
                               "was written with a later write" if not self.journal.lost_at_close
                               else "is lost where a later write did not take it (above)")
        else:
            self._drop_compaction("the server is stopping", failed=False)
        if self._timer is not None:
            self._timer.cancel()
        if self._rates_timer is not None:
            self._rates_timer.cancel()
        await self._say_goodbye()

    async def _say_goodbye(self) -> None:
        """_say_goodbye: every client is told SHUTTING_DOWN after its last reply (refused
        ones are closed), and given GOODBYE_WAIT_S to close, more while it is still
        reading its replies (see GOODBYE_MOST_S); whoever is left is aborted."""
        for conn in list(self.connections):
            if conn in self._refused:
                if conn.transport is not None:
                    conn.transport.close()
            elif not conn.say_goodbye():
                self.connections.discard(conn)
        if self.connections and self._loop is not None:
            self._all_closed = self._loop.create_future()
            started = self._loop.time()
            unsent = self._unsent_replies()
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(self._all_closed), GOODBYE_WAIT_S)
                    break
                except TimeoutError:
                    if not self.connections:
                        # The last one closed as the wait ran out (a CI run logged "cut
                        # off 0 connections"): all closed, nobody to cut off.
                        break
                    unsent, before = self._unsent_replies(), unsent
                    reading = any(size < before.get(conn, 0) for conn, size in unsent.items())
                    if not reading or self._loop.time() - started >= GOODBYE_MOST_S:
                        count = len(self.connections)
                        logger.info("cut off %d connection%s that did not close within %.1f s "
                                    "of the stop", count, "" if count == 1 else "s",
                                    self._loop.time() - started)
                        break
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()

    async def _finish_compaction_now(self) -> None:
        """_finish_compaction_now completes a running (or requested) compaction at shutdown.

        Blocking is fine here: nothing is served any more. Finishing rather
        than abandoning means a journal repaired with --repair is rewritten
        even if the server got no traffic, so the next start needs no --repair.
        """
        journal = self.journal
        assert journal is not None
        c = self.compaction
        if c is None and not journal.compact_requested:
            return
        if c is None and self._abandoned_presync is not None:
            with contextlib.suppress(Exception):  # its own failure was dealt with
                await asyncio.shield(self._abandoned_presync)
        try:
            if c is None:
                c = self.compaction = Compaction(journal, self.broker)
                c.start()
            journal.write_pending()
            if self._presync_future is not None:
                await asyncio.shield(self._presync_future)
                if self.compaction is not c:
                    return  # finished while we waited
            else:
                while not c.step():
                    pass
            if journal.compaction_error:
                raise CompactionFailed(journal.compaction_error)
            if not c.presynced:
                c.presync()
            c.switch(time.time())
        except JournalBroken as exc:  # its write of kept records passed the cap: exit 1
            self._drop_compaction(str(exc))
            self._fatal(exc)
            return
        except (OSError, JournalError) as exc:
            self._drop_compaction(str(exc))
            return
        self.compaction = None  # switched: nothing to abandon
        self._presync_future = None

    def _fatal(self, exc: BaseException) -> None:
        """_fatal stops the server: the journal can no longer keep the promises made."""
        if self.fatal_error is None:
            self.fatal_error = exc
            logger.critical("stopping: %s", exc)
        self.stopped.set()

    # ---------------------------------------------------------- hub for conns

    def defer(self, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_soon(callback)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(delay_s, callback)

    def connection_opened(self, connection: Connection) -> None:
        """connection_opened admits the connection, or refuses it (over --max-connections,
        or --max-connections-per-address from its address).

        Refused connections wait at most REFUSAL_WAIT_S for their answer, and
        only REFUSALS_WAITING of them at a time (half the reserved descriptors),
        at most REFUSALS_WAITING_PER_ADDRESS from one address: past that, a
        flood of them is cut off without one. When every place is taken, a
        newcomer takes the oldest place of the address holding the most, if
        that holds more than the newcomer's address would: floods from a few
        addresses leave room for the others' refusals to be answered.

        Once stop() has begun, a connection is closed as it opens: uvloop
        calls connection_made a loop turn after the accept, and a TLS one only
        after its handshake, so one can open after the listener is closed,
        even after the journal is; served, it would run commands against a
        closed journal. It has sent nothing that was read, so it gets no
        goodbye (PROTOCOL.md, "A server that stops says so").
        """
        if not self._accepting:
            assert connection.transport is not None
            connection.transport.close()
            return
        self.connections.add(connection)
        if len(self.connections) - len(self._refused) > self.max_connections:
            self.refusal_log.warn("connections refused", self.now(), "refused a connection "
                                  "from %s: the server already serves %d (--max-connections)",
                                  connection.peer, self.max_connections)
            self._refuse(connection, f"the server already serves its maximum of "
                         f"{self.max_connections} connections (--max-connections)")
            return
        if connection.address is None:  # a TLS one was counted when accepted
            full = self._address_full(connection.peer)
            if full:
                self._refuse(connection, full)
                return
            self._count_address(connection)
        self.connections_total += 1

    def _address_full(self, peer: Any) -> str:
        """_address_full: why a client at `peer` is refused, when its address already holds
        --max-connections-per-address (counted and logged); "" when it may connect."""
        address = address_key(peer)
        per_address = self.connection_limits.max_connections_per_address
        if address is None or not per_address or \
                self._connections_from.get(address, 0) < per_address:
            return ""
        self.counters.refused_per_address += 1
        self.refusal_log.warn("connections refused per address", self.now(),
                              "refused a connection from %s: the server already serves "
                              "%d from %s (--max-connections-per-address)",
                              peer, per_address, address)
        return (f"the server already serves {per_address} connections from {address} "
                "(--max-connections-per-address)")

    def _count_address(self, connection: Connection) -> None:
        """_count_address: the connection counts under its address until it ends."""
        address = address_key(connection.peer)
        if address is not None:
            connection.address = address
            self._connections_from[address] = self._connections_from.get(address, 0) + 1

    def _release_address(self, connection: Connection) -> None:
        """_release_address: the connection no longer counts under its address (once)."""
        if connection.address is not None:
            left = self._connections_from[connection.address] - 1
            if left:
                self._connections_from[connection.address] = left
            else:
                del self._connections_from[connection.address]
            connection.address = None

    def _admit_tls(self, peer: Any) -> Connection | None:
        """_admit_tls: a client accepted on the TLS port, before its handshake. Over
        --max-connections-per-address it is closed (nothing can be said before a
        handshake); else its Connection counts under its address from now on."""
        if not self._accepting:
            return None
        if self._address_full(peer):
            self.counters.refused += 1
            return None
        connection = Connection(self)
        connection.peer = peer
        self._count_address(connection)
        return connection

    def _tls_handshake_over(self, connection: asyncio.Protocol) -> None:
        """_tls_handshake_over: a handshake ended; one that made no connection (failed, timed
        out) no longer counts under its address."""
        assert isinstance(connection, Connection)
        if connection.transport is None:
            self._release_address(connection)

    def _accept_failed(self, exc: OSError) -> None:
        self.refusal_log.warn("failed accepts", self.now(), "cannot accept a TLS connection: "
                              "%s; trying again in %g s", exc, ACCEPT_RETRY_S)

    def _refuse(self, connection: Connection, why: str) -> None:
        """_refuse: answer TOO_MANY_CONNECTIONS once the client's mode shows, then close;
        past REFUSALS_WAITING_PER_ADDRESS waiting from its address, or REFUSALS_WAITING
        in all with no address holding more than its would (_make_room), cut off without
        an answer."""
        self.counters.refused += 1
        address = address_key(connection.peer)
        waiting_from = self._refused_from.get(address, 0)
        if waiting_from >= REFUSALS_WAITING_PER_ADDRESS or (
                len(self._refused) >= REFUSALS_WAITING and not self._make_room(waiting_from)):
            self._cut_off(connection)
            return
        self._refused[connection] = address
        self._refused_from[address] = waiting_from + 1
        connection.refuse(ProtocolError(TOO_MANY_CONNECTIONS, f"{why}; try again later"))

    def _make_room(self, waiting_from: int) -> bool:
        """_make_room: every refusal place is taken; the address holding the most gives
        up its oldest, if it holds more than a newcomer whose address holds
        `waiting_from` would (so floods from many addresses share the places)."""
        busiest = max(self._refused_from, key=self._refused_from.__getitem__)
        if self._refused_from[busiest] <= waiting_from + 1:
            return False
        oldest = next(conn for conn, address in self._refused.items() if address == busiest)
        self._forget_refused(oldest)
        self._cut_off(oldest)
        return True

    def _cut_off(self, connection: Connection) -> None:
        """_cut_off closes a refused connection without an answer. It stops counting at
        once: its connection_lost comes a loop turn later, and until then it must not
        count as served (--max-connections)."""
        self.connections.discard(connection)
        assert connection.transport is not None
        connection.transport.abort()

    def _forget_refused(self, connection: Connection) -> None:
        """_forget_refused: a refused connection no longer waits for its answer."""
        address = self._refused.pop(connection)
        left = self._refused_from[address] - 1
        if left:
            self._refused_from[address] = left
        else:
            del self._refused_from[address]

    def _unsent_replies(self) -> dict[Connection, int]:
        """_unsent_replies: the bytes each connection still has to send (at a stop)."""
        return {conn: unsent_bytes(conn.transport)
                for conn in self.connections if conn.transport is not None}

    def _tls_handshake_failed(self, where: str, reason: str, why: str) -> None:
        """_tls_handshake_failed: counted, and logged as refusals are (rate-limited), with a
        budget per port and reason, so a flood of plain clients on the port does not hide
        the clients without a certificate."""
        self.tls_handshake_failures += 1
        self.refusal_log.warn(f"failed TLS handshakes {where}({reason})", self.now(),
                              "a TLS handshake %sfailed: %s", where, why)

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if self.group_commit is not None:
            self.group_commit.forget(connection)
        if connection in self._refused:
            self._forget_refused(connection)
        self._release_address(connection)
        if self._all_closed is not None:
            if not self.connections and not self._all_closed.done():
                self._all_closed.set_result(None)
            return  # stopping: the timer is cancelled for good
        self._arm_timer()  # withdrawn waits may have moved the next deadline

    def finish_detached(self, command: Command) -> None:
        """finish_detached runs the rest of a stepped command (a REDRIVE: service.py) whose
        connection has gone, a step a turn, as it would have run for the client: a
        REDRIVE the server has read runs to its end, as one done at once did (a client
        whose own timeout ran out, like the CLI's --timeout, still gets the whole move).
        A stop ends them where they are (stop)."""
        if not self._accepting:  # stopping: it ends here, as one still detached does
            _log_detached_end(command, "stops at the stop")
            return
        self._detached.append(command)
        if len(self._detached) == 1 and self._loop is not None:
            self._loop.call_soon(self._step_detached)

    def _step_detached(self) -> None:
        if not self._detached or not self._accepting:
            return  # a stop dropped them
        command = self._detached[0]
        unfinished = False
        if self.refusing_changes:  # as a connection's step: stop, the rest not moved
            _log_detached_end(command, "stops: journal writes are failing")
        else:
            try:
                unfinished = self.service.execute(command, self.now(), _no_reply) \
                    is UNFINISHED
            except CommandError:
                pass  # ended as it would have for its client (nobody to tell)
            except Exception:
                logger.exception("internal error running the rest of %r", command.name)
        if not unfinished:
            self._detached.popleft()
        self._schedule_flush()  # the step's records
        if self._detached and self._loop is not None:
            self._loop.call_soon(self._step_detached)

    def input_done(self, connection: Connection) -> None:
        """input_done: a connection has run what one read brought. Without a journal its
        replies go out now, in one write, saving the flush's extra loop step (there is no
        record to write first and no fsync to wait for); with one, they join the flush."""
        if self.busy_poll is not None:
            self.busy_poll.poke()
        if self.journal is None and self._loop is not None:
            connection.flush()
            self._arm_timer()
        else:
            self.want_flush(connection)

    def want_flush(self, connection: Connection) -> None:
        """want_flush: called per reply; each connection joins the next flush once."""
        if not connection.flush_wanted:
            connection.flush_wanted = True
            self._dirty.append(connection)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # ----------------------------------------------------------- flush, timer

    def _flush(self) -> None:
        """_flush: journal write, then replies (via group commit), compaction, timer."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        outputs: list[tuple[Connection, Output]] = []
        for conn in dirty:
            conn.flush_wanted = False
            output = conn.take_output()
            if output is not None:
                outputs.append((conn, output))
        durable = failed = False
        journal = self.journal
        if journal is not None and journal.has_pending:
            if journal.kept_from_failure and not self._write_retry_due:
                failed = True  # writes are failing: kept until the retry (RETRY_WRITE_S)
                self._arm_write_retry()
            else:
                durable, failed = self._write_journal(journal)
        if (outputs or durable) and self.group_commit is not None:
            # Durable records written with no reply (a retry's) are synced too: a receive
            # must not show a message whose put is not on disk (group_commit.py).
            self.group_commit.submit(outputs, durable, failed)
        elif outputs:  # before start(): only in tests that drive the server by hand
            for conn, output in outputs:
                conn.send_output(output, failed)
        elif self.group_commit is not None:
            self.group_commit.resume()  # an fsync put off for the reads of this turn
        if journal is not None and self.fatal_error is None:
            self._compaction_continue()
        self._arm_timer()

    def _write_journal(self, journal: Journal) -> tuple[bool, bool]:
        """_write_journal: the flush's one journal write; (durable, failed)."""
        self._write_retry_due = False
        try:
            durable = journal.write_pending()
        except JournalBroken as exc:
            self.refusing_changes = True
            self._fatal(exc)
            return False, True
        except JournalError as exc:
            self.refusing_changes = True
            self._journal_errors += 1
            self._log_write_error(exc)
            self._arm_write_retry()
            return False, True
        if self.refusing_changes:
            self.refusing_changes = False
            self._writes_worked_at = time.time()  # lease ends held a little longer (_on_timer)
        if self._failing_writes:
            self._writes_work_again()
        return durable, False

    def _arm_write_retry(self) -> None:
        if not self._write_retry_armed and self._loop is not None:
            self._write_retry_armed = True
            self._loop.call_later(RETRY_WRITE_S, self._retry_write)

    def _retry_write(self) -> None:
        self._write_retry_armed = False
        if self.journal is not None and self.journal.has_pending and not self._stopping:
            self._write_retry_due = True
            self._schedule_flush()

    def _log_write_error(self, exc: JournalError) -> None:
        """_log_write_error logs a failed journal write, at most one line per
        WRITE_ERROR_LOG_INTERVAL_S."""
        self._failing_writes += 1
        now = time.monotonic()
        if now - self._write_error_logged_at < WRITE_ERROR_LOG_INTERVAL_S:
            self._write_errors_unlogged += 1
            return
        unlogged = (f" ({self._write_errors_unlogged} more failed writes since the last "
                    f"such line)" if self._write_errors_unlogged else "")
        logger.error("%s; the requests that needed it were answered with STORAGE_ERROR%s",
                     exc, unlogged)
        self._write_error_logged_at = now
        self._write_errors_unlogged = 0
        self._error_logged_since_recovery = True

    def _writes_work_again(self) -> None:
        """_writes_work_again says that writes work when an error line was logged since it
        last said so, and keeps the error line's own interval: a disk at its edge, failing
        and working by turns, logged an ERROR and a WARNING at each turn (an operator's
        review), and the log must never end on an ERROR while writes work."""
        if self._error_logged_since_recovery:
            logger.warning("journal writes work again, after %d failed in a row",
                           self._failing_writes)
            self._error_logged_since_recovery = False
        self._failing_writes = 0

    def _drop_compaction(self, reason: str, failed: bool = True) -> None:
        """_drop_compaction abandons the running compaction; the live journal is untouched.
        A failure puts off the next one (compaction.retry_delay_s)."""
        renamed = self.compaction is not None and self.compaction.renamed
        if self.compaction is not None:
            self.compaction.abandon(reason)
            if self._compaction_was_requested and self.journal is not None:
                self.journal.compact_requested = True  # still wanted: see __init__
            if failed:
                self._compactions_failed += 1
                self._compaction_failures_in_a_row += 1
                if self._stopping:
                    # No wait to announce: there is no next one in this run. The live
                    # journal is as it was (a repaired one needs --repair again to start).
                    if not renamed:
                        logger.warning("the journal was not rewritten at the stop; it stays "
                                       "as it was")
                else:
                    delay_s = compaction_policy.retry_delay_s(
                        self._compaction_failures_in_a_row)
                    self._compaction_retry_at = time.monotonic() + delay_s
                    logger.warning("the next compaction waits %.0f s (%d failed in a row)",
                                   delay_s, self._compaction_failures_in_a_row)
        if self._presync_future is not None and not self._presync_future.done():
            self._abandoned_presync = self._presync_future
        self.compaction = None
        self._presync_future = None

    def _compaction_presync_done(self, future: asyncio.Future[None]) -> None:
        exc = future.exception()
        if exc is not None and self.compaction is not None and not self._stopping:
            self._drop_compaction(f"fsync of the new journal failed: {exc}")
            return
        self._compaction_kick()

    def _compaction_kick(self) -> None:
        """_compaction_kick: an fsync or the pre-sync finished; a waiting compaction goes on."""
        if self.compaction is not None and self.compaction.presynced and not self._stopping:
            self._compaction_continue()  # only the switch: slices are written in _flush

    def _compaction_continue(self) -> None:
        """_compaction_continue starts a compaction when due, or takes its next step.

        Runs after the journal write in _flush, and when an fsync finishes.
        Records still pending at the switch are simply written to the new file
        by the next flush, with their durability wait intact.
        """
        journal, c = self.journal, self.compaction
        if journal is None or self._loop is None or self.fatal_error is not None \
                or self._stopping:
            return
        if c is None:
            if not (journal.compact_requested
                    or compaction_policy.due(journal, self.config.compact_min_bytes)):
                return
            if time.monotonic() < self._compaction_retry_at:
                return  # the last one failed: wait (_drop_compaction)
            if self._abandoned_presync is not None:
                if not self._abandoned_presync.done():
                    return  # see __init__
                self._abandoned_presync = None
            self._compaction_was_requested = journal.compact_requested
            journal.compact_requested = False
            c = self.compaction = Compaction(journal, self.broker)
            try:
                c.start()
            except (OSError, CompactionFailed) as exc:
                self._drop_compaction(str(exc))
                return
        if journal.compaction_error:
            self._drop_compaction(journal.compaction_error)
            journal.compaction_error = ""
            return
        try:
            if not c.presynced and self._presync_future is None:
                if journal.has_pending:
                    # A step waits for them (Compaction.step): the flush that writes them
                    # steps again. Asked for now, it would spin while kept records wait
                    # for their retry (a failed write, RETRY_WRITE_S).
                    return
                if not c.step():
                    self._schedule_flush()  # next slice on the next loop iteration
                    return
                future = self._presync_future = self._loop.run_in_executor(None, c.presync)
                future.add_done_callback(self._compaction_presync_done)
                return
            if not c.presynced or (self.group_commit is not None and self.group_commit.syncing):
                return  # the pre-sync's or group commit's completion kicks us again
            size = c.switch(time.time())
        except CompactionFailed as exc:
            self._drop_compaction(str(exc))
            return
        except (OSError, JournalError) as exc:
            self._fatal(exc)
            return
        self.compaction = None  # switched: nothing to abandon
        self._presync_future = None
        self._compaction_was_requested = False
        self._compaction_failures_in_a_row = 0
        if self.group_commit is not None:
            self.group_commit.after_switch(size)

    def _arm_timer(self) -> None:
        """_arm_timer makes sure the timer fires no later than the next deadline.

        A timer already armed for that time or earlier is left alone, even when
        the deadline it was armed for has gone (acked) or moved later: it fires,
        finds nothing due, and re-arms. So a lease given and acked at once costs
        no timer call at all, where re-arming exactly would cost two per message.
        """
        at = self.service.next_deadline()
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._schedule_timer(at)

    def _schedule_timer(self, at: float) -> None:
        if self._loop is not None:
            delay = max(0.0, at - time.time()) + TIMER_TICK_S
            self._timer = self._loop.call_later(delay, self._on_timer)
        else:
            self._timer = None

    def _on_timer(self) -> None:
        at = self._timer_at
        now = time.time()
        if at is not None and now < at:
            self._schedule_timer(at)  # fired early by the loop's clock: wait out the rest
            return
        self._timer = None
        self._timer_at = None
        # While journal writes fail, and HOLD_GRACE_S after, leases that run out are held
        # (broker.hold_lease_ends_until): a lease end is a record the journal must keep,
        # and a dead-letter move's carries the whole body (a reviewer ran 20 leased
        # messages of 64 KiB past a 1 MiB cap that way).
        holding = self.refusing_changes or now < self._writes_worked_at + HOLD_GRACE_S
        self.broker.hold_lease_ends_until = now + HOLD_LEASE_ENDS_S if holding else None
        try:
            self.service.advance(now, ADVANCE_STEP_DEADLINES, ADVANCE_STEP_MOVED_BYTES)
        except Exception:
            logger.exception("internal error while handling deadlines")
        journal = self.journal
        if journal is not None and journal.has_pending and not self.refusing_changes:
            # What the deadlines changed (lease ends, moves, expiries) is written now, not
            # with whichever request comes next: held lease ends come in a burst after an
            # outage, dead-letter moves with their bodies.
            self._schedule_flush()
        self._arm_timer()

    # ------------------------------------------------------------------ stats

    def _sample_rates(self) -> None:
        """_sample_rates records the queues' totals once a second, for the rates in stats
        (rates.py): one small timer for the server, nothing per message. The other
        once-a-second chores ride on it: settled held lease ends forgotten
        (Broker.forget_settled_holds), the data directory and client memory checked."""
        self.broker.sample_rates(time.monotonic())  # (the service reads them by it too)
        self.broker.forget_settled_holds()
        assert self._loop is not None
        self._rates_timer = self._loop.call_later(RATE_SAMPLE_INTERVAL_S, self._sample_rates)
        self._check_data_dir()
        self._check_client_memory()

    def _check_client_memory(self) -> None:
        """_check_client_memory: once a second (with the rates), what all connections hold
        together (connection_limits.py); over --max-client-memory, the ones that hold the
        most are disconnected until the rest fit. One pass over the connections."""
        limit = self.connection_limits.max_client_memory_bytes
        held = [(connection.memory_bytes(), connection) for connection in self.connections]
        total = sum(size for size, _ in held)
        self.counters.client_memory_bytes = total
        if not limit or total <= limit:
            return
        held.sort(key=lambda pair: pair[0], reverse=True)
        for size, connection in held:
            if total <= limit or size == 0:
                break
            connection.cut_off_for_client_memory(size, limit)
            total -= size
        self.counters.client_memory_bytes = total

    def _check_data_dir(self) -> None:
        """_check_data_dir: once a second (with the rates), that the live journal still
        has a name a restart would find (journal.check_still_in_place): a data directory
        deleted under the server stops it, one moved away is said once."""
        if self.journal is None or self.fatal_error is not None:
            return
        try:
            warning = self.journal.check_still_in_place()
        except JournalBroken as exc:
            self._fatal(exc)
            return
        except OSError as exc:
            warning = f"cannot check the data directory: {exc}"
        if warning != self._data_dir_warning:
            self._data_dir_warning = warning
            if warning:
                logger.warning("%s", warning)

    def _server_info(self, now: float) -> dict[str, Any]:
        info: dict[str, Any] = {
            "version": __version__,
            "build": self.build,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "connections": len(self.connections) - len(self._refused),
            "connections_total": self.connections_total,
            "max_connections": self.max_connections,
            "connections_paused": sum(1 for c in self.connections if c.paused),
            "connections_refused_total": self.counters.refused,
            "max_connections_per_address": self.connection_limits.max_connections_per_address,
            "connections_refused_per_address_total": self.counters.refused_per_address,
            "connections_most_from_one_address": max(self._connections_from.values(),
                                                     default=0),
            "idle_disconnects_total": self.counters.idle_disconnects,
            "auth_timeouts_total": self.counters.auth_timeouts,
            "slow_reader_disconnects_total": self.counters.slow_reader_disconnects,
            "client_memory_bytes": self.counters.client_memory_bytes,
            "max_client_memory": self.connection_limits.max_client_memory_bytes,
            "client_memory_disconnects_total": self.counters.client_memory_disconnects,
            "rss_bytes": resident_memory_bytes(),
            "tls": self.ssl_context is not None,
            "tls_handshake_failures_total": self.tls_handshake_failures,
            "tls_handshakes_in_progress": self.handshake_limit.in_progress,
            "auth_failures_total": self.auth.failures,
            "paced_commands_total": self.admin_pace.paced,
            "paced_commands_waiting": self.admin_pace.waiting,
            "busy_poll_us": self.config.busy_poll_us,
            "gc_freeze": self.gc_freezer.installed,
            "gc_freezes_total": self.gc_freezer.freezes,
            "metrics_connections_refused_total":
                self.metrics.http.refused if self.metrics is not None else 0,
        }
        if self.journal is None:
            info["data_dir"] = ""
            info["fsync_policy"] = "none (in memory)"
        else:
            info["data_dir"] = str(self.journal.directory)
            info.update(self.journal.stats(self.broker))
            info["journal_write_errors"] = self._journal_errors
            info["compacting"] = self.compaction is not None
            info["compactions_failed_total"] = self._compactions_failed
            commit_wait = self.group_commit.commit_wait if self.group_commit else None
            info["commit_waits_total"] = commit_wait.holds if commit_wait is not None else 0
        return info


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0


def resident_memory_bytes() -> int:
    """resident_memory_bytes is the process' resident memory now, from /proc/self/statm;
    0 where that is not available (not Linux)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0
