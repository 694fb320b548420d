"""One client connection: an asyncio.Protocol between the socket and the service.

Design decision (uvicorn's protocol-per-connection): the connection owns one
codec pair, picked from the first bytes it receives, and nothing else. It
feeds bytes to the decoder, hands each command to the service, and buffers
the encoded replies; the server writes every connection's buffer once per
event-loop iteration (`flush`), after the journal, so many replies share one
write.

Rules:
* Mode: a stream that starts with the binary preamble `WQ\\x00<version>` is
  binary; any other first byte means text. Until three bytes have arrived
  that could still be the preamble, nothing is decided.
* Binary replies carry request ids and go out as soon as they are ready, so a
  long-polling receive never holds up an ack on the same connection. Text
  replies carry no ids, so a text connection answers strictly in order: while
  a receive waits, later lines are held and run after it.
* A CommandError is answered and the connection goes on; a ProtocolError is
  answered and then the connection closes; any other exception is a bug: it
  is logged with its traceback and answered with INTERNAL.
* When the connection goes away, or starts to close (QUIT, a ProtocolError),
  its waiting receives are withdrawn at once, so a consumer that disconnects
  never swallows a message. CANCEL withdraws one by its request id while
  the connection goes on (a caller stopped waiting for it): this connection's
  own state, so the connection runs it, not the service. asyncio learns of
  a close late (a reset's connection_lost a loop turn after it is read; a
  FIN not yet read; TLS), so before the broker leases to one of its waiting
  receives it asks `_peer_gone`, which asks the socket (peer_state.py);
  once the client is known to have sent its FIN, its receives are treated
  as at EOF: those that wait, now or when read later, are answered with
  nothing.
* Replies to commands whose records must be durable (DURABLE_COMMANDS:
  every command that changes what is stored) are remembered by position:
  if the journal write behind them fails, `send_output` turns exactly those
  replies into STORAGE_ERROR. An Output also names the newest message id
  its receives and peeks show (`newest_shown`; None once any other reply
  is among them), so group commit can send one that shows only messages
  already on disk before an fsync (group_commit.py).
* Limits (connection_limits.py says why each exists): when the socket's
  write buffer is full, reading pauses until it drains, so a client that
  does not read its replies cannot make the server buffer without bound; a
  connection with more than --max-reply-buffer-bytes still unsent when more
  is to be written is cut off; a text connection holds what arrives behind
  a waiting receive as raw bytes and stops reading past
  --max-request-buffer-bytes, and so does a binary connection with more
  waiting receives than that limit allows; with --idle-timeout, a
  connection that sends no complete request for that long (a waiting
  receive counts as activity) is answered IDLE_TIMEOUT and closed; a
  connection the server refused (over --max-connections) is answered in
  the mode its first bytes pick and closed.
* Commands whose cost grows with the number of queues (PACED_COMMANDS:
  STATS, QUEUES) run in their turn (admin_pace.py). One that must wait
  holds what its text connection sent after it (replies in order); a
  binary one waits aside, as a waiting receive does, and only a second
  paced command or a QUIT waits behind it. The pace's timer runs it (and
  what it held) when its turn comes.
* A command done in steps (REDRIVE: the service returns UNFINISHED) runs a
  step a turn, each step's flush asked for before the next is deferred, and
  holds what its connection sent after it (both modes: replies in order).
  Its steps go on while the client does not read (they write nothing); a
  stop answers it INTERRUPTED with its count; a connection that goes or
  begins to close hands it to the server to finish (`finish_detached`).
* Authentication (auth.py): on a server with a token, a connection starts
  unauthenticated and only AUTH and QUIT run; any other command is answered
  AUTH_REQUIRED and the connection goes on. The gate is one boolean,
  `authenticated`, checked per command; it starts True when no token is
  configured. A wrong token (AUTH_FAILED) closes the connection after a
  delay (the error's close_delay_s), reading nothing in between. Until it
  has authenticated, a connection's frames and lines are held to
  PRE_AUTH_REQUEST_BYTES, and one that has not authenticated within
  --auth-timeout is answered AUTH_TIMEOUT and closed; one still closing
  (not reading its replies) an --auth-timeout later is aborted. Under TLS
  none of this changes: the connection sees the decrypted bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Protocol

from .admin_pace import PACED_COMMANDS, AdminPace
from .binary_codec import MAGIC, BinaryDecoder, BinaryEncoder
from .commands import Command, Limits, Rejected
from .connection_limits import (
    CLOSE_LINGER_S,
    COSTLY_ID_WAIT_BYTES,
    DECODE_SLICE_BYTES,
    HELD_REQUEST_BYTES,
    REFUSAL_WAIT_S,
    REPLY_HOLD_BYTES,
    TURN_CHECK_REQUESTS,
    TURN_SECONDS,
    WAITING_RECEIVE_BYTES,
    ConnectionLimits,
    Counters,
    costly_request_id,
    limits_before_auth,
    turn_cost,
)
from .errors import (
    AUTH_FAILED,
    AUTH_REQUIRED,
    AUTH_TIMEOUT,
    HTTP_REQUEST,
    IDLE_TIMEOUT,
    INTERNAL,
    INTERRUPTED,
    SHUTTING_DOWN,
    STORAGE_ERROR,
    STORAGE_UNAVAILABLE,
    CommandError,
    ProtocolError,
    WonderQError,
)
from .peer_state import enable_keepalive, peer_has_closed
from .queues import Waiter
from .refusal_log import RefusalLog
from .service import REDRIVE_PROGRESS, UNFINISHED, BrokerService
from .text_codec import TextDecoder, TextEncoder

logger = logging.getLogger("wonderq.connection")

# Commands that keep their place behind a paced command waiting its turn (admin_pace.py):
# those, and QUIT (a binary one waits for it: the close comes after its reply).
PACE_ORDERED = PACED_COMMANDS | {"quit"}

# Commands whose success means "your change is in the journal".
DURABLE_COMMANDS = frozenset({"put", "put_many", "ack", "ack_many", "nack", "nack_many",
                              "create_queue", "configure_queue", "purge", "delete_queue",
                              "redrive"})
# While journal writes fail (the server's refusing_changes) such commands are not run, as
# Redis refuses writes after an AOF write error: run, and answered STORAGE_ERROR at once,
# a producer retrying until OK made 20,035 copies of one message in 1.5 s (a reviewer).
# The refusal has its own code, STORAGE_UNAVAILABLE (Redis answers MISCONF, not its write
# error), so that a client can tell "not made" from the failed write's "may or may not
# take effect" without reading the message.
# Receives and touches are refused too, as Redis refuses XREADGROUP and XCLAIM under
# MISCONF: a lease is a change the journal keeps. Let run, consumers leased a backlog
# over and over (each lease's record, and its end's, kept for the first write that
# works) and ran the kept records to journal.MAX_RETAINED_BYTES, stopping the server:
# 20 MB in 3 s with 20,000 messages and 0.2 s leases. Reads (peek, queue_info, stats)
# go on.
_WRITES_FAIL = "journal writes are failing (disk full or I/O error)"
_RETRY = "retry later (the server tries the journal again every second)"
REFUSED_WHILE_WRITES_FAIL = {
    **{name: f"{_WRITES_FAIL}: this change was not made; {_RETRY}"
       for name in DURABLE_COMMANDS},
    "receive": f"{_WRITES_FAIL}: nothing was received (a lease is a change the journal "
               f"keeps); {_RETRY}",
    "touch": f"{_WRITES_FAIL}: the lease was not renewed; {_RETRY}",
}


def _redrive_failed(moved: int, stopping: bool = False) -> str:
    if stopping:  # its INTERRUPTED reply's write failed: no "retry later" from a server going
        return (f"journal writes failed during this redrive, after it had moved {moved} "
                "messages: those moves may or may not take effect; the server is stopping, "
                "and this redrive moved no more")
    return (f"journal writes failed during this redrive, after it had moved {moved} "
            "messages: those moves may or may not take effect, and it moved no more; "
            f"{_RETRY}")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Hub(Protocol):
    """What a connection needs from the server that owns it."""

    service: BrokerService
    limits: Limits
    connection_limits: ConnectionLimits
    counters: Counters
    refusal_log: RefusalLog
    admin_pace: AdminPace
    refusing_changes: bool

    def now(self) -> float: ...
    def monotonic(self) -> float: ...
    def defer(self, callback: Callable[[], None]) -> None: ...
    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...
    def want_flush(self, connection: Connection) -> None: ...
    def finish_detached(self, command: Command) -> None: ...
    def input_done(self, connection: Connection) -> None: ...
    def connection_opened(self, connection: Connection) -> None: ...
    def connection_closed(self, connection: Connection) -> None: ...


# Commands whose replies show messages: an Output of nothing else may leave before
# an fsync once every message it shows has its PUT on disk (group_commit.py).
SHOWING_COMMANDS = frozenset({"receive", "peek"})
_message_id = attrgetter("id")


class Output:
    """One connection's replies from one loop iteration, on their way out."""

    __slots__ = ("close", "durable", "newest_shown", "parts")

    def __init__(self, parts: list[bytes], durable: list[tuple[int, Command]],
                 close: bool, newest_shown: int | None = None) -> None:
        self.parts = parts
        self.durable = durable  # (index in parts, command) of replies that need the journal
        self.close = close  # close the connection once these are written
        # The largest message id these replies show (0: none), when they are all
        # receives and peeks; None when any other reply is among them.
        self.newest_shown = newest_shown


class Connection(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.mode: str | None = None  # "binary" or "text" once the first bytes decide
        self._decoder: BinaryDecoder | TextDecoder | None = None
        self._encoder: BinaryEncoder | TextEncoder | None = None
        self._pending = bytearray()  # first bytes, before the mode is known
        self._out: list[bytes] = []
        self._out_bytes = 0  # bytes in _out
        self._output_blocked = False  # requests wait until the replies before them are written
        # Requests run in this turn of the event loop and when it began (TURN_SECONDS),
        # and whether the rest waits for the next turn.
        self._turn_requests = 0
        self._turn_started = 0.0
        self._yielded = False
        self._durable: list[tuple[int, Command]] = []
        self._newest_shown: int | None = 0  # for the next Output (see Output)
        self._close_after_flush = False  # closing: read nothing more
        self._close_requested = False  # the next Output closes the connection
        self._closed = False
        self._waiters: dict[Command, Waiter] = {}
        self._costly_waits = 0  # of them, those whose request id costs more (_waits_bytes)
        # Requests read but not yet run, behind a text receive that waits or
        # replies not yet written (_output_blocked): commands from the same
        # read, then raw bytes read since.
        self._held: deque[Command | Rejected] = deque()
        self._held_input = bytearray()
        self._text_waiting = False
        self._eof = False  # the client half-closed: close once everything is answered
        self._peer_closed = False  # seen by the socket's state while reading was paused
        self._goodbye_said = False  # the server stopped: SHUTTING_DOWN sent, reads discarded
        self.flush_wanted = False  # the server's: already in the next flush
        self._running_input = False  # in data_received: input_done will hand replies over
        # An AUTH in this read left input unread (_read_on_after_auth): data_received runs
        # it before it returns.
        self._read_on_now = False
        self._paused_by: set[str] = set()
        self.peer: Any = None
        self.address: str | None = None  # the server's: counted under it once admitted
        self.last_request_at = 0.0  # for --idle-timeout: when a request last arrived
        self._timer: Timer | None = None  # the idle timer, or the refusal's deadline
        self._refusal: WonderQError | None = None  # over --max-connections: the answer
        self.authenticated = not hub.service.auth.required  # see the module's rules
        self._auth_timer: Timer | None = None  # --auth-timeout, until authenticated
        # A paced command waiting its turn (admin_pace.py): a binary one set aside, or
        # (text, or a binary one's second) held with what follows it.
        self._parked: Command | None = None
        self._pace_holding = False
        # The socket's number, for the server to wait on for this client's next request
        # (commit_wait.py); -1: none known.
        self.wait_fd = -1

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        fileno = getattr(transport.get_extra_info("socket"), "fileno", None)
        if fileno is not None:  # a transport without a socket (a test's) gives none
            self.wait_fd = fileno()
        self.last_request_at = self.hub.now()
        if self.hub.connection_limits.tcp_keepalive_s:
            enable_keepalive(transport, self.hub.connection_limits.tcp_keepalive_s)
        self.hub.connection_opened(self)  # may refuse us
        idle_timeout_s = self.hub.connection_limits.idle_timeout_s
        if self._refusal is None and idle_timeout_s > 0:
            self._timer = self.hub.call_later(idle_timeout_s, self._check_idle)
        if self._refusal is None and not self.authenticated:
            self._auth_timer = self.hub.call_later(
                self.hub.connection_limits.auth_timeout_s, self._check_authenticated)

    def _check_authenticated(self) -> None:
        """_check_authenticated: --auth-timeout has passed; a stranger loses its slot.

        As with _check_idle, a close finishes only once the client has read
        every reply, so the timer stays armed while a stranger closes (after
        AUTH_TIMEOUT, a wrong token, QUIT): one still closing when it fires
        is not reading and is aborted. Without this, a stranger that never
        reads would keep its --max-connections slot for ever whenever
        --idle-timeout is off (the default).
        """
        self._auth_timer = None
        if self.authenticated or self._closed:
            return
        auth_timeout_s = self.hub.connection_limits.auth_timeout_s
        if self._close_after_flush:
            if not self._abort_if_close_is_stuck():
                self._auth_timer = self.hub.call_later(auth_timeout_s,
                                                       self._check_authenticated)
            return
        self.hub.counters.auth_timeouts += 1
        self._reply_error(None, ProtocolError(
            AUTH_TIMEOUT, f"no AUTH within {auth_timeout_s:g} s "
            "(the server's --auth-timeout)"))
        self._auth_timer = self.hub.call_later(auth_timeout_s, self._check_authenticated)

    def refuse(self, error: WonderQError) -> None:
        """refuse: the server will not serve this connection (over --max-connections).

        The answer waits for the client's first bytes, which tell whether it
        reads frames or lines; a client that sends nothing within
        REFUSAL_WAIT_S is closed without one.
        """
        self._refusal = error
        self._timer = self.hub.call_later(REFUSAL_WAIT_S, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def _check_idle(self) -> None:
        """_check_idle: the idle timer fired; close the connection if it really is idle.

        Requests only store their time, so the timer usually fires early and
        re-arms for what is left. A waiting receive is activity: its wait
        ending counts as a request (see _respond). A connection that is
        closing (IDLE_TIMEOUT itself, QUIT, a wrong token...) keeps the
        timer: a close finishes only once the client has read every reply,
        never if it does not read, so one still closing an idle timeout
        after its last request is dropped.
        """
        self._timer = None
        if self._closed:
            return
        idle_timeout_s = self.hub.connection_limits.idle_timeout_s
        if self._waiters or self._parked is not None or self._pace_holding:
            # Waiting receives, and paced commands waiting their turn, are activity (a
            # closing connection has neither: _begin_close withdrew them).
            self._timer = self.hub.call_later(idle_timeout_s, self._check_idle)
            return
        left_s = self.last_request_at + idle_timeout_s - self.hub.now()
        if left_s > 0:
            self._timer = self.hub.call_later(left_s, self._check_idle)
            return
        if self._close_after_flush:
            if not self._abort_if_close_is_stuck():
                self._timer = self.hub.call_later(idle_timeout_s, self._check_idle)
            return
        self.hub.counters.idle_disconnects += 1
        self._reply_error(None, ProtocolError(
            IDLE_TIMEOUT, f"closed after {idle_timeout_s:g} s without a request "
            "(the server's --idle-timeout)"))
        self._timer = self.hub.call_later(idle_timeout_s, self._check_idle)  # see above

    def _abort_if_close_is_stuck(self) -> bool:
        """_abort_if_close_is_stuck: a closing connection whose transport is still closing
        when a timer looks is waiting for a client that does not read: abort it (True).
        False: the close has not begun yet (the delay after a wrong token); look later."""
        if self.transport is not None and self.transport.is_closing():
            self.transport.abort()
            return True
        return False

    def eof_received(self) -> bool:
        """eof_received: the client has sent everything (nc -N, a script's half-close,
        or a client that closed).

        Treated like QUIT: answer everything in flight (replies held for an
        fsync included), then close. A receive that waits is answered at once
        with nothing rather than kept: a peer that closed outright cannot
        read, and a message handed to it would be lost until its lease ran
        out. Returning True keeps our half of the socket open for the replies.
        Under TLS a close_notify ends both directions, and asyncio's TLS layer
        closes the transport whatever we return (returning True only logs a
        warning there), so a TLS connection returns False.
        """
        if self._goodbye_said:
            return False  # it has read our goodbye and closed: close too (say_goodbye)
        if self._decoder is None and self._pending and not self._close_after_flush:
            # `W` or `WQ`, then the end: text. An unfinished line, so nothing runs here;
            # _close_if_done_after_eof answers it (ERR MALFORMED), as any last line.
            first = self._first_input(at_eof=True)
            if first is not None:
                self._decode_and_run(first)
        self._eof = True
        self._answer_waits_empty()
        self._close_if_done_after_eof()
        return self.transport is None or self.transport.get_extra_info("ssl_object") is None

    def _peer_gone(self) -> bool:
        """_peer_gone: the broker asks before it leases messages to one of our waiting
        receives; True means nobody will read them, so the receive gets nothing.

        asyncio learns of a close late: a reset read in this loop turn marks
        the transport closing but calls connection_lost a turn later; a FIN
        or reset that is in the kernel but not yet read (it came in the same
        batch as the put, after it; or reading is paused) is not known at
        all; and over TLS neither is seen until the TLS layer gives up. So
        the socket is asked (peer_state.py: TCP_INFO, one getsockopt) before
        every lease to a waiting receive: one system call per waiting receive
        served, not per message. Once the client has sent its FIN, its
        receives are treated as eof_received treats them: every one that
        waits, now or when read later (see `_execute_now`), is answered with
        nothing; a receive that finds messages at once still gets them, for
        a client that only shut down its sending side (`nc -N`) still reads.
        """
        if self._peer_closed or self._closed:
            return True
        transport = self.transport
        if transport is None:
            return False
        if not transport.is_closing() and not peer_has_closed(transport):
            return False
        self._peer_closed = True
        if self._paused_by:
            logger.info("%s closed while the server was not reading from it; its waiting "
                        "receives are answered with nothing", self.peer)
        # Its waits on other queues too; not from inside this broker call.
        self.hub.defer(self._answer_waits_empty)
        return True

    def _cancel_waits(self, command: Command) -> None:
        """_cancel_waits runs CANCEL: each waiting receive of this connection whose request
        id is the one named (an int or a str, commands.py; same type and value) is
        withdrawn and answered with nothing, before CANCEL's own reply, the number
        withdrawn. 0 means none was waiting: its reply had gone out already (the client
        gives those messages back, as unseen)."""
        wanted = command.args["request"]
        withdrawn = [waiting for waiting in self._waiters
                     if type(waiting.request_id) is type(wanted) and waiting.request_id == wanted]
        for waiting in withdrawn:
            self.hub.service.cancel(self._waiters[waiting])
            self._respond(waiting, [])
        self._respond(command, len(withdrawn))

    def _answer_waits_empty(self) -> None:
        for command, waiter in list(self._waiters.items()):
            self.hub.service.cancel(waiter)
            self._respond(command, [])

    def _close_if_done_after_eof(self) -> None:
        if self._eof and not self._waiters and not self._held and not self._held_input \
                and self._parked is None and not self._close_after_flush:
            if self._decoder is not None:
                # An unfinished last line or frame is answered, not dropped unseen.
                self._run(self._decoder.end_of_input(), self.hub.now())
            self._begin_close()
            self.hub.want_flush(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self._leave_pace()
        self._withdraw_waits()
        self._detach_stepped()
        self._held.clear()
        self._held_input.clear()
        self._out.clear()
        self._durable.clear()
        self.hub.connection_closed(self)
        # After the hub has forgotten it by that number: the socket closes now, and its
        # number may soon be another connection's (a reply of ours still waiting for an
        # fsync must not make the server wait on it, commit_wait.py).
        self.wait_fd = -1

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")
        self._unblock_output()

    def _unblock_output(self) -> None:
        """_unblock_output: the replies that held up later requests are written."""
        if self._output_blocked:
            self._output_blocked = False
            self.hub.defer(self._release_held)

    def _pause(self, reason: str) -> None:
        if not self._paused_by and self.transport is not None:
            self.transport.pause_reading()
        self._paused_by.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused_by.discard(reason)
        if not self._paused_by and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # ---------------------------------------------------------------- input

    def data_received(self, data: bytes | bytearray) -> None:
        # bytearray too: compiled, an annotation is a check, and asyncio's transports
        # promise only a bytes-like object (uvloop's and the selector loop's pass bytes).
        if self._close_after_flush or self._closed:
            return
        decoder = self._decoder
        if decoder is None:
            self._pending += data
            first = self._first_input()
            if first is None:
                return
            decoder, data = self._decoder, first
        assert decoder is not None
        if self._text_waiting or self._output_blocked or self._held or self._held_input:
            self._hold_input(data)  # behind what is held, in order
            return
        self._turn_requests = 0
        now = self._turn_started = self.hub.now()
        self._running_input = True
        try:
            if len(data) > DECODE_SLICE_BYTES:
                ran = self._decode_and_run(data)
            else:
                # The usual read: one slice (_decode_and_run's loop, once, with its
                # decode inline as there), and most often one request (one at a time
                # per connection: S1-S3), run without _run's loop: it has no turn to
                # share and nothing after it to hold.
                try:
                    items = decoder.feed(data)
                except Exception:
                    items = self._decode_failed()
                ran = bool(items)
                if ran:
                    self.last_request_at = now
                    if len(items) > 1:
                        self._run(items, now)
                    elif self._run_one(items[0], now):
                        self._hold(items)  # a paced command waits its turn
                    else:
                        self._wait_for_replies()
            while self._read_on_now:  # (a loop: a second AUTH in it may leave more unread)
                self._read_on_now = False
                self._yielded = False
                if self.hub.now() - self._turn_started >= TURN_SECONDS:
                    # The turn is used up (an AUTH that came at a turn check took the
                    # check's place): the rest in the next one, as _run would have it.
                    self._yield_turn()
                    break
                self._release_held()
        finally:
            self._running_input = False
        if ran:
            # Even a command with no reply yet (a parked receive) may have
            # moved the next deadline: the server re-arms its timer.
            self.hub.input_done(self)

    def _decode_failed(self) -> list[Command | Rejected]:
        """_decode_failed: the codec raised while reading. The codecs never raise for
        anything a peer sends; if one does, that is a bug, and the stream's state is
        unknown: log it, answer INTERNAL (request id nil) and close, rather than let
        asyncio drop the connection with no answer."""
        logger.exception("internal error decoding input from %s", self.peer)
        return [Rejected(ProtocolError(INTERNAL, "internal server error while reading "
                                       "the request; see the server log"))]

    def _decode_and_run(self, data: bytes | bytearray) -> bool:
        """_decode_and_run feeds `data` to the decoder DECODE_SLICE_BYTES at a time and runs
        what each slice completes; returns whether any request was complete.

        Once requests are held (a text wait, replies to be written first), the
        rest of `data` is held as raw bytes: decoded, a line can cost hundreds
        of times its size (a two-byte unknown command is an error object of
        over a kilobyte), so no more than one slice is ever held decoded.
        """
        ran = False
        start, size = 0, len(data)
        while start < size and not self._close_after_flush:
            if self._text_waiting or self._output_blocked or self._held or self._yielded:
                self._hold_rest(data, start)
                break
            end = start + DECODE_SLICE_BYTES
            if end < size and self.mode == "text":
                # Whole lines only: the text decoder scans a line it has part of
                # again with each feed, so a long line goes in one piece.
                newline = data.rfind(b"\n", start, end)
                if newline < 0:
                    newline = data.find(b"\n", end)
                end = size if newline < 0 else newline + 1
            try:  # _decode's rule, inline (this runs for every read)
                items = self._decoder.feed(data[start:end])  # type: ignore[union-attr]
            except Exception:
                items = self._decode_failed()
            start = end
            if items:
                ran = True
                now = self.last_request_at = self.hub.now()
                self._run(items, now)
        return ran

    def _first_input(self, at_eof: bool = False) -> bytes | None:
        """_first_input: once the bytes read so far (`_pending`) decide the mode, they are
        handed back to run; None while undecided, and for a refused connection, which is
        answered here instead (TOO_MANY_CONNECTIONS) and runs nothing."""
        if not self._choose_mode(at_eof):
            return None
        data, self._pending = bytes(self._pending), bytearray()
        if self._refusal is not None:
            self._reply_error(None, self._refusal)
            return None
        return data

    def _choose_mode(self, at_eof: bool = False) -> bool:
        """_choose_mode picks the codecs once the first bytes allow; False while undecided.
        At the end of input a start of the preamble (`W`, `WQ`) can no longer become
        it: that is text."""
        head = bytes(self._pending[:len(MAGIC)])
        if len(head) < len(MAGIC) and MAGIC.startswith(head) and not at_eof:
            return False
        limits = self.hub.limits
        stranger = not self.authenticated
        if stranger:  # strangers send small requests (connection_limits.py)
            limits = limits_before_auth(limits)
        if head == MAGIC:
            self.mode = "binary"
            self._decoder, self._encoder = BinaryDecoder(limits, stranger), BinaryEncoder()
        else:
            self.mode = "text"
            self._decoder, self._encoder = TextDecoder(limits, stranger), TextEncoder()
        return True

    def _run(self, items: list[Command | Rejected] | deque[Command | Rejected],
             now: float) -> None:
        for index, item in enumerate(items):
            if self._close_after_flush:
                return
            if self._run_one(item, now):
                self._hold(list(items)[index:])  # a paced command waits its turn
                return
            # A batch counts its items: a reviewer's flood of ack_many of 1,000 items ran
            # about 50 ms a turn where PINGs ran 2 (the clock was read every 64 requests,
            # and only with another request after it in the same slice).
            self._turn_requests += turn_cost(item)
            if self._turn_requests >= TURN_CHECK_REQUESTS and not self._text_waiting:
                self._turn_requests = 0
                if self.hub.now() - self._turn_started >= TURN_SECONDS:
                    # This connection has had its share of the turn: the rest waits for
                    # the next one (what this read holds still undecoded too:
                    # _decode_and_run), so others' requests are not stuck behind a flood.
                    self._yield_turn()
                    self._hold(list(items)[index + 1:])
                    return
            if self._wait_for_replies():
                self._hold(list(items)[index + 1:])
                return

    def _wait_for_replies(self) -> bool:
        """_wait_for_replies, after each request: True when what comes next must wait, for
        a text wait's answer, or until the replies so far are written. Those of one read
        are bounded so: past REPLY_HOLD_BYTES (many requests with big replies: peeks,
        receives) nothing more runs until they are written."""
        if self._text_waiting:
            return True
        if self._out_bytes > REPLY_HOLD_BYTES:
            self._output_blocked = True
            self.hub.want_flush(self)
            return True
        return False

    def _yield_turn(self) -> None:
        """_yield_turn: what this connection sent after its TURN_SECONDS runs in a later
        turn of the event loop (_release_held), after other connections' requests."""
        if not self._yielded:
            self._yielded = True
            self.hub.defer(self._next_turn)

    def _next_turn(self) -> None:
        self._yielded = False
        self._turn_requests = 0
        self._turn_started = self.hub.now()
        if "writing" in self._paused_by:
            # The replies so far fill the socket's buffer (a client that does not read):
            # the rest waits for them to be written (resume_writing), as it would have
            # had it run in one turn (REPLY_HOLD_BYTES). A REDRIVE under way writes
            # nothing until it ends, and runs to its end once begun (PROTOCOL.md): its
            # steps go on; only what follows it waits (a reviewer's stopped half way
            # for as long as its client did not read).
            head = self._stepped_head()
            if head is not None:
                self._held.popleft()
                if self._execute_now(head, self._turn_started):
                    self._held.appendleft(head)
            self._output_blocked = True
            return
        self._release_held()

    def _hold(self, items: list[Command | Rejected]) -> None:
        """_hold keeps the commands after the one that blocked, from the same read."""
        self._held.extend(items)

    def _hold_rest(self, data: bytes | bytearray, start: int) -> None:
        """_hold_rest holds `data` from `start`. Held input handed back (a bytearray, and
        nothing held meanwhile) has its head cut off in place, which CPython's bytearray
        does without moving the rest: a client pipelining past its TURN_SECONDS per turn had
        its whole held input (up to --max-request-buffer-bytes) copied twice per turn,
        2.6 times the CPU for one flooding client (a reviewer)."""
        if type(data) is bytearray:
            del data[:start]
            self._hold_input(data)
        else:
            self._hold_input(data[start:])

    def _hold_input(self, data: bytes | bytearray) -> None:
        """_hold_input keeps bytes read while requests are held, undecoded; a bytearray,
        when nothing is held yet, is kept as it is (it is the held input handed back).

        Raw bytes are measured exactly, so --max-request-buffer-bytes bounds
        them: past it, reading stops until what is held has run.
        """
        if not self._held_input and type(data) is bytearray:
            self._held_input = data
        else:
            self._held_input += data
        if len(self._held_input) > self.hub.connection_limits.max_request_buffer_bytes:
            self._pause("held")

    def _run_one(self, item: Command | Rejected, now: float) -> bool:
        """_run_one runs one request; True when it did not run yet but waits its turn
        (a paced command: admin_pace.py), or has more steps to run in later turns (a
        REDRIVE: service.py), to be held with what came after it."""
        if isinstance(item, Rejected):
            # Answered like any request: error replies count toward the hold
            # too (a two-byte unknown command gets a 200-byte answer).
            self._reply_error(item.request_id, item.error)
            return False
        if not self.authenticated and not self._admit(item, now):
            return False
        if item.name in PACE_ORDERED:
            if item.name != "quit":
                return self._execute_paced(item, now)
            if self._parked is not None:  # a binary QUIT waits for it, and closes after
                self._pace_holding = True
                return True
        return self._execute_now(item, now)

    def _execute_paced(self, command: Command, now: float) -> bool:
        """_execute_paced runs a command whose cost grows with the number of queues when
        its turn comes (admin_pace.py). Until then a binary connection's waits aside
        (`_parked`) and what follows runs on, as after a waiting receive; a text
        connection's waits held, with what follows (replies in order), and so does a
        binary one's next paced command: one waits at a time."""
        if self._parked is None and self.hub.admin_pace.turn(self, self.hub.monotonic()):
            self._run_paced(command, now)
            return False
        if self.mode == "binary" and self._parked is None:
            self._parked = command
            return False
        self._pace_holding = True
        return True

    def _leave_pace(self) -> None:
        """_leave_pace: closing or gone, this connection waits for no turn; a command set
        aside is dropped (what a text one held stays held, never to run)."""
        if self._parked is not None or self._pace_holding:
            self.hub.admin_pace.forget(self)
            self._parked = None

    def _run_paced(self, command: Command, now: float) -> None:
        started = self.hub.monotonic()
        self._execute_now(command, now)
        self.hub.admin_pace.ran(self, started, self.hub.monotonic())

    def take_pace_turn(self) -> None:
        """take_pace_turn: this connection's paced command may run now (admin_pace.py); if
        it cannot (the server stops, or its output is blocked), the turn passes on and it
        asks again when it can."""
        if self._closed or "stopping" in self._paused_by:
            return
        self.last_request_at = now = self.hub.now()  # as a wait that ends (--idle-timeout)
        if self._parked is not None:
            command, self._parked = self._parked, None
            self._run_paced(command, now)
        self._pace_holding = False
        self._release_held()

    def _execute_now(self, command: Command, now: float) -> bool:
        """_execute_now runs one command; True when it has more steps to run (a REDRIVE:
        service.py): it runs again in the next turn, with what came after it held
        behind it (replies in order, in both modes: such a command is rare, and the
        journal writes each step's records before the next)."""
        try:
            if command.name == "cancel":
                self._cancel_waits(command)
                return False
            if command.name == "quit":
                # Its waiting receives are answered with nothing before the goodbye, as
                # at the end of input (eof_received) and by CANCEL: a pipelining client
                # heard nothing more of them (a reviewer).
                self._answer_waits_empty()
            if self.hub.refusing_changes and command.name in REFUSED_WHILE_WRITES_FAIL:
                progress = command.args.get(REDRIVE_PROGRESS)
                if progress is not None:  # moved some, and their records failed
                    raise CommandError(STORAGE_ERROR, _redrive_failed(progress.moved))
                raise CommandError(STORAGE_UNAVAILABLE,
                                   REFUSED_WHILE_WRITES_FAIL[command.name])
            waiter = self.hub.service.execute(command, now, self._respond)
        except WonderQError as exc:
            self._reply_error(command.request_id, exc)
            return False
        except Exception:
            self._internal_error(command)
            return False
        if waiter is UNFINISHED:
            self.last_request_at = now  # a step is activity (--idle-timeout)
            # The flush first, then the next step: each step's records are written before
            # the next step runs (deferred first, two steps went out in each write).
            self.hub.want_flush(self)
            self._yield_turn()
            return True
        if waiter is not None:
            assert isinstance(waiter, Waiter)
            self._waiters[command] = waiter
            if type(command.request_id) is not int and costly_request_id(command.request_id):
                self._costly_waits += 1
            waiter.gone = self._peer_gone
            if self._eof or self._peer_closed:
                self._answer_waits_empty()  # read after the client's FIN: nobody waits
            elif self.mode == "text":
                self._text_waiting = True
            elif self._waits_bytes() > self.hub.connection_limits.waits_room_bytes:
                self._pause("waits")  # see connection_limits.py; _respond resumes
        elif command.name in DURABLE_COMMANDS:
            self._durable.append((len(self._out) - 1, command))
        elif command.name == "quit":
            self._begin_close()
        return False

    def _admit(self, command: Command, now: float) -> bool:
        """_admit is the gate before AUTH: QUIT goes ahead as usual; AUTH runs here and,
        with the right token, opens the gate; anything else is AUTH_REQUIRED. Returns
        whether `command` should still be run."""
        if command.name == "quit":
            return True
        if command.name != "auth":
            self._reply_error(command.request_id, CommandError(
                AUTH_REQUIRED, "authenticate first: AUTH <token> (this server has an auth "
                "token; the client's auth_token, the CLI's --auth-token)"))
            return False
        try:
            self._authenticate(command, now)
        finally:
            self._read_on_after_auth()
        return False

    def _authenticate(self, command: Command, now: float) -> None:
        """_authenticate runs AUTH; with the right token, the gate opens, and requests may
        be as big as the server's limits allow."""
        try:
            self.hub.service.execute(command, now, self._respond)
        except WonderQError as exc:
            if exc.code == AUTH_FAILED:
                self.hub.refusal_log.warn("wrong auth tokens", now, "wrong auth token from "
                                          "%s; its connection closes", self.peer)
            self._reply_error(command.request_id, exc)
            return
        except Exception:
            self._internal_error(command)
            return
        self.authenticated = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        assert self._decoder is not None
        self._decoder.use_limits(self.hub.limits)

    def _read_on_after_auth(self) -> None:
        """_read_on_after_auth: what came after an AUTH in the same read was kept unread
        (the decoders' stop_after_auth), to be decoded under the limits the AUTH brings:
        decoded under a stranger's, a client's first big put, pipelined behind its AUTH,
        was refused (a frame: the connection closed). It runs ahead of anything read since,
        whatever the AUTH's answer, unless the connection closes: before data_received
        returns when the AUTH came in it, else in the next turn. (Not later, when it can be
        helped: over TLS, a client's close_notify in the same read closes the transport
        as soon as the read's callbacks return, and a reviewer's PUT behind its AUTH was
        stored but never answered.)"""
        if self._close_after_flush or self._closed:
            return
        assert self._decoder is not None
        unread = self._decoder.take_unread()
        if not unread:
            return
        self._held_input[:0] = unread
        if self._running_input and not self._yielded:
            self._yielded = True  # what is left of this read is held behind it
            self._read_on_now = True
        else:
            self._yield_turn()

    def _internal_error(self, command: Command) -> None:
        """_internal_error: a bug met while running `command`; logged, answered INTERNAL."""
        logger.exception("internal error running %r for %s", command.name, self.peer)
        self._reply_error(command.request_id,
                          CommandError(INTERNAL, "internal server error; see the server log"))

    # --------------------------------------------------------------- output

    def _respond(self, command: Command, result: Any) -> None:
        """_respond encodes one result; the service calls it, at once or after a wait."""
        if self._closed:
            return
        if self._waiters and self._waiters.pop(command, None) is not None:
            if self._costly_waits and costly_request_id(command.request_id):
                self._costly_waits -= 1
            self.last_request_at = self.hub.now()  # a wait that ends counts as activity
            if "waits" in self._paused_by and self._waits_bytes() \
                    <= self.hub.connection_limits.waits_room_bytes:
                self._resume("waits")
        if command.name in SHOWING_COMMANDS:
            if self._newest_shown is not None and result:
                self._newest_shown = max(self._newest_shown, max(map(_message_id, result)))
        else:
            self._newest_shown = None
        assert self._encoder is not None
        reply = self._encoder.result(command, result)
        self._out.append(reply)
        self._out_bytes += len(reply)
        if not self._running_input:  # else input_done, just after, hands it over
            self.hub.want_flush(self)
        if self._text_waiting and not self._waiters:
            # Not now: we may be inside another connection's call into the
            # broker, and held commands must not re-enter it.
            self.hub.defer(self._release_held)
        elif self._eof and not self._waiters:
            self.hub.defer(self._close_if_done_after_eof)

    def _release_held(self) -> None:
        """_release_held runs what was held once nothing blocks it any more: a text wait
        has been answered, or the replies that blocked requests have been written."""
        if self._closed:
            return
        if self._text_waiting and not self._waiters:
            self._text_waiting = False
        if self._text_waiting or self._output_blocked or self._yielded \
                or self._pace_holding or "stopping" in self._paused_by:
            return  # still blocked (what unblocks it calls again), or the server stops
        held, self._held = self._held, deque()
        now = self.hub.now()
        if held:
            self._run(held, now)
        if self._held_input and not self._held and not self._text_waiting \
                and not self._output_blocked and not self._close_after_flush:
            # Handed over, not copied: _decode_and_run gives back what it does not run
            # (_hold_rest) by cutting its head off, in place.
            data, self._held_input = self._held_input, bytearray()
            self._decode_and_run(data)  # what blocks again is held again, raw
        if not self._held and \
                len(self._held_input) <= self.hub.connection_limits.max_request_buffer_bytes:
            self._resume("held")
        # A held receive that now waits has a deadline the timer must know of.
        self.hub.want_flush(self)
        self._close_if_done_after_eof()

    def _reply_error(self, request_id: Any, error: Exception) -> None:
        if not isinstance(error, WonderQError):
            error = CommandError(INTERNAL, str(error))
        encoder = self._encoder or TextEncoder()
        reply = encoder.error(request_id, error)
        self._newest_shown = None
        self._out.append(reply)
        self._out_bytes += len(reply)
        self.hub.want_flush(self)
        if error.closes_connection:
            if error.code == HTTP_REQUEST:
                self.hub.refusal_log.warn(
                    "HTTP requests", self.hub.now(), "an HTTP request from %s at the message "
                    "port (a web page's browser, or a scraper at the wrong port): answered "
                    "HTTP_REQUEST and closed", self.peer)
            self._begin_close(error.close_delay_s)

    def _stepped_head(self) -> Command | None:
        """_stepped_head: the REDRIVE under way at the head of what is held, if any (it
        has done a step: service.py)."""
        head = self._held[0] if self._held else None
        if isinstance(head, Command) and REDRIVE_PROGRESS in head.args:
            return head
        return None

    def _detach_stepped(self) -> None:
        """_detach_stepped: this connection ends with a REDRIVE under way; the server runs
        the rest of it (finish_detached), as it would have run for the client. (Dropped
        with what is held, it was left half done, answered to nobody and unlogged: a
        reviewer's idle-timeout close of a client that did not read.)"""
        head = self._stepped_head()
        if head is not None:
            self._held.popleft()
            self.hub.finish_detached(head)

    def _begin_close(self, delay_s: float = 0.0) -> None:
        """_begin_close: read nothing more, answer what is buffered, then close: with the
        next flush, or `delay_s` later (a wrong auth token: reading is paused meanwhile)."""
        self._close_after_flush = True
        self._detach_stepped()
        self._withdraw_waits()
        # A paced command still waiting is dropped, not run out of its turn: a client
        # that QUITs or half-closes after one has it answered first (both wait for it),
        # so what ends here is an error, a stop or a cut-off, and a STATS run for each
        # would let a client skip the queue by closing (a reviewer's 92 STATS in 4 s).
        self._leave_pace()
        if delay_s > 0:
            self._pause("closing")
            self.hub.call_later(delay_s, self._close_now)
        else:
            self._close_requested = True

    def _close_now(self) -> None:
        if not self._closed:
            self._close_requested = True
            self.hub.want_flush(self)

    def _withdraw_waits(self) -> None:
        """_withdraw_waits cancels this connection's waiting receives.

        Called as soon as the connection is known to be ending (QUIT, a
        ProtocolError, close, or the socket gone), not only when it is gone:
        a message must not be leased to a reply that will never be read.
        """
        for waiter in self._waiters.values():
            self.hub.service.cancel(waiter)
        self._waiters.clear()
        self._costly_waits = 0

    def take_output(self) -> Output | None:
        """take_output hands over the replies buffered since the last call (server flush)."""
        if not self._out and not self._close_requested:
            return None
        return Output(*self._take())

    def _take(self) -> tuple[list[bytes], list[tuple[int, Command]], bool, int | None]:
        """_take: the buffered replies, their durable ones, the close and the newest id
        shown (Output's fields), leaving the buffers empty."""
        taken = self._out, self._durable, self._close_requested, self._newest_shown
        self._out, self._durable, self._close_requested = [], [], False
        self._newest_shown = 0
        self._out_bytes = 0
        return taken

    def send_output(self, output: Output, failed: bool = False) -> None:
        """send_output writes one Output in one write; `failed` means its journal write
        failed, so replies to durable commands become STORAGE_ERROR."""
        transport = self.transport
        if self._closed or transport is None:
            return
        parts = output.parts
        if failed and output.durable:
            assert self._encoder is not None
            error = CommandError(STORAGE_ERROR, "the journal could not store this change "
                                 "(disk full or I/O error); it may or may not take effect")
            for index, command in output.durable:
                progress = command.args.get(REDRIVE_PROGRESS)
                if progress is not None:  # a REDRIVE's last step: the count, as between steps
                    parts[index] = self._encoder.error(command.request_id, CommandError(
                        STORAGE_ERROR, _redrive_failed(progress.moved,
                                                       "stopping" in self._paused_by)))
                else:
                    parts[index] = self._encoder.error(command.request_id, error)
        self._write(transport, parts, output.close)

    def _write(self, transport: asyncio.Transport, parts: list[bytes], close: bool) -> None:
        """_write: `parts` in one write, then the close they end with, if any."""
        if parts:
            if transport.get_write_buffer_size() > \
                    self.hub.connection_limits.max_reply_buffer_bytes:
                self._cut_off_slow_reader(transport)
                return
            transport.write(b"".join(parts) if len(parts) > 1 else parts[0])
        if close:
            self._close_lingering(transport)
        elif self._output_blocked and "writing" not in self._paused_by:
            self._unblock_output()  # the socket took it all; else resume_writing will

    def _close_lingering(self, transport: asyncio.Transport) -> None:
        """_close_lingering closes after the last reply, as the metrics endpoint does
        (metrics_http.py): our side is ended, and what the client still sends is read and
        dropped until it closes too (eof_received), or CLOSE_LINGER_S has passed. Closed
        with its input unread, the socket answered with a reset, and a client still
        writing (the rest of a frame over --max-frame-bytes) got EPIPE and lost the
        FRAME_TOO_LARGE before it had read it (CI, once in many runs). A client that has
        half-closed already, and TLS (no half-close), are closed at once."""
        if self._eof or self._peer_closed or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._goodbye_said = True  # its end (eof_received) closes ours
        self._paused_by.clear()
        transport.resume_reading()  # read and dropped: _close_after_flush
        self.hub.call_later(CLOSE_LINGER_S, self._abort)

    def _waits_bytes(self) -> int:
        """_waits_bytes: what the waiting receives hold, WAITING_RECEIVE_BYTES each, or
        COSTLY_ID_WAIT_BYTES for one whose request id is an array, a map or an ext value
        (connection_limits.py): a reviewer's 100 waits with ids of 65,000 empty maps held
        448 MB counted as 100 KiB; such ids are now at most 256 bytes packed."""
        return len(self._waiters) * WAITING_RECEIVE_BYTES \
            + self._costly_waits * (COSTLY_ID_WAIT_BYTES - WAITING_RECEIVE_BYTES)

    def memory_bytes(self) -> int:
        """memory_bytes is about what this connection makes the server hold: its partial
        input, input held undecoded, requests held decoded (one slice's worth at most, but
        a two-byte line decodes to an error of about a kilobyte: HELD_REQUEST_BYTES each;
        uncounted, a reviewer's 300 connections held 540 MB the limit did not see),
        replies not yet sent (built or in the transport), and its waiting receives
        (_waits_bytes)."""
        decoder, transport = self._decoder, self.transport
        held = len(self._pending) + len(self._held_input) + self._out_bytes \
            + self._waits_bytes() + len(self._held) * HELD_REQUEST_BYTES
        if decoder is not None:
            held += decoder.buffered_bytes()
        if transport is not None and not self._closed:
            held += transport.get_write_buffer_size()
        return held

    def cut_off_for_client_memory(self, held: int, limit: int) -> None:
        """cut_off_for_client_memory drops this connection, the one holding the most, while
        all connections together hold over --max-client-memory (server.py). Like a slow
        reader: abort, so its buffers go at once; its leases run out as after any
        disconnect."""
        self.hub.counters.client_memory_disconnects += 1
        logger.warning("disconnecting %s: it holds %d bytes of buffers, the most of all "
                       "connections, which together hold over --max-client-memory %d",
                       self.peer, held, limit)
        self._drop_now()

    def _cut_off_slow_reader(self, transport: asyncio.Transport) -> None:
        """_cut_off_slow_reader drops a connection that is not reading its replies.

        Its unsent replies are thrown away with it (abort, not close: close
        would keep them until sent). Leases it holds run out as after any
        disconnect, so no message is lost.
        """
        self.hub.counters.slow_reader_disconnects += 1
        logger.warning("disconnecting %s: %d bytes of replies unsent, over "
                       "--max-reply-buffer-bytes %d; the client is not reading", self.peer,
                       transport.get_write_buffer_size(),
                       self.hub.connection_limits.max_reply_buffer_bytes)
        self._drop_now()

    def _drop_now(self) -> None:
        """_drop_now ends the connection at once, its unsent replies thrown away (abort, not
        close: close would keep them until sent); its leases run out as after any
        disconnect."""
        self._begin_close()
        self._closed = True  # take no more replies; connection_lost still cleans up
        if self.transport is not None:
            self.transport.abort()

    def stop_reading(self) -> None:
        """stop_reading: the server is stopping; read nothing more, for good (no drain or
        release of held requests resumes reading). Its waiting receives are answered
        with nothing, as at EOF, so a consumer hears the stop as an empty receive
        rather than a lost connection. A REDRIVE under way (service.py) stops at the
        step it has reached, and says how far it got: the goodbye's "not run" would
        be wrong for it, and the rest of it could take as long again as the stop."""
        self._pause("stopping")
        self._answer_waits_empty()
        head = self._stepped_head()
        if head is not None:
            self._held.popleft()
            self._reply_error(head.request_id, CommandError(
                INTERRUPTED, f"the server is stopping: this redrive moved "
                f"{head.args[REDRIVE_PROGRESS].moved} messages and stops there; the rest stay "
                f"in {head.args['queue']!r:.140}"))
            self._durable.append((len(self._out) - 1, head))

    def say_goodbye(self) -> bool:
        """say_goodbye: the server has stopped (every reply is written, the journal is
        closed); tell the client so and end the connection. False: it is already gone.

        The client gets SHUTTING_DOWN (request id nil; in text mode an
        `ERR SHUTTING_DOWN` line) after every reply, so it can tell a clean
        stop from a crash, and knows that a request it got no answer to was
        never run. Then our side is shut for writing and what the client
        still sends is read and thrown away until it closes: closing with
        requests unread would answer them with a reset, which can reach the
        client before it has read the goodbye. The server aborts whoever has
        not closed GOODBYE_WAIT_S later (more while it is still reading its
        replies; server.py). Under TLS there is no half-close:
        the transport is closed (close_notify) after the goodbye. A
        connection whose mode is not known yet (its first bytes unread), or
        that is already closing, is closed without one.
        """
        transport = self.transport
        if self._closed or transport is None:
            return False
        if self._encoder is None or self._close_after_flush or transport.is_closing():
            transport.close()
            return True
        goodbye = self._encoder.error(None, ProtocolError(
            SHUTTING_DOWN, "the server is stopping; a request it did not answer was not run"))
        self._begin_close()  # reads are thrown away from here on (data_received)
        parts = self._take()[0]
        parts.append(goodbye)
        transport.write(b"".join(parts))
        if not transport.can_write_eof():
            transport.close()
            return True
        transport.write_eof()
        self._goodbye_said = True
        self._paused_by.clear()
        transport.resume_reading()
        return True

    @property
    def paused(self) -> bool:
        """paused: reading is stopped by flow control (for stats)."""
        return bool(self._paused_by)

    def flush(self) -> None:
        """flush writes what is buffered at once (used without a journal and by tests).

        `take_output` then `send_output`, without the Output between them: with no
        journal no write can fail, so nothing is kept for one (this runs for every read).
        """
        if not self._out and not self._close_requested:
            return
        parts, _, close, _ = self._take()
        transport = self.transport
        if not self._closed and transport is not None:
            self._write(transport, parts, close)

    # ----------------------------------------------------------------- misc

    def close(self) -> None:
        """close ends the connection once what is buffered has been written."""
        self._begin_close()
        self.hub.want_flush(self)


ConnectionFactory = Callable[[], Connection]
