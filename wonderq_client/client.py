"""The asyncio client: one connection, many requests in flight at once.

Design decision: the client is an asyncio.Protocol holding a map of request
id -> future. Every call writes one request and awaits its reply, so any
number of calls may run at once on one connection (pipelining), and a
long-polling receive never delays an ack sent beside it. Requests written
during one event-loop iteration go out in one write.

Rules:
* Method names are PROTOCOL.md's command names; durations are seconds as
  floats; ids and leases are ints.
* A server error raises the WonderQError subclass for its code; in the
  batch commands (put_many, ack_many, nack_many) an error about one item is
  returned in that item's place instead (see batches.py).
* An option left None is not sent: the server applies its default (nil and
  absent mean the same on the wire).
* A receive whose caller stopped waiting (cancelled, or timed out by
  asyncio.wait_for or asyncio.timeout) must not swallow messages: one still
  waiting on the server is cancelled there (CANCEL, by its request id), so
  no message is leased to it; if its reply brings messages anyway, whether
  it came after the cancel or just before the task resumed to take it, the
  client nacks them at once, as unseen (that delivery does not count toward
  max_deliveries), so they are ready for others. At most MAX_WAITS_ON_SERVER
  receives wait on the server per connection; more are held here, so that
  the server never stops reading the connection for them (and cancels
  always get through), each first sent once without its wait (_probe_held),
  so what its queue has ready now is not kept from it.
* A request is encoded before it is registered: an argument msgpack cannot
  encode raises from the call and leaves nothing pending, and so does one
  whose frame is over `max_frame_bytes` (FrameTooLarge; the server would close
  the connection, failing every call on it, and a retry the same way).
* close() ends the receives still awaited as cancelled ones: they raise
  ConnectionClosed, and what the server leased to them is given back. A call
  made once close() has begun raises ConnectionClosed and is not sent.
* If the connection ends, every call still waiting raises ConnectionClosed:
  the request may or may not have been carried out (an ack, say), so callers
  that retry must tolerate NOT_FOUND.
* Security is the caller's choice, passed through as given: `ssl` goes to
  loop.create_connection unchanged (an ssl.SSLContext, or True for the
  system's CAs), so this package never imports ssl; with `auth_token`, AUTH
  is the first request, and `connect` raises AuthFailed (and drops the
  connection) when the server refuses it. `timeout` bounds the whole
  connect: TCP, TLS handshake and AUTH.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import numbers
import operator
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import Any

from .admin import QueueAdmin
from .batches import PutItem, SettleItem, item_results, put_items, settle_items
from .busy_poll import check_busy_poll, loop_poller
from .codec import HEADER_BYTES as FRAME_HEADER_BYTES
from .codec import PREAMBLE, NotAReply, ReplyDecoder, encode_request
from .errors import BadArgument, ConnectionClosed, FrameTooLarge, WonderQError, error_from_wire
from .keepalive import DEFAULT_KEEPALIVE_S, check_keepalive, enable_keepalive
from .message import Message, from_deliveries

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7711
# The server's --max-frame-bytes default: a request bigger than this is refused here, before
# it is sent, rather than by a server that closes the connection on every call it carries.
DEFAULT_MAX_FRAME_BYTES = 67_108_864
# close() waits at most this long for unsent requests to be written, then drops them.
CLOSE_DRAIN_S = 5.0
# Most receives one connection keeps waiting on the server at once; more wait here, unsent,
# until one is answered. The server stops reading a connection past about 1,024 of them
# (--max-request-buffer-bytes, 1 MiB, at 1 KiB each): its cancels and acks would wait too.
MAX_WAITS_ON_SERVER = 1000


def _holdable(wait: Any) -> bool:
    """_holdable: `wait` is seconds a held receive can count down (a finite number over 0;
    a float subclass such as numpy's float64 too, which msgpack sends as a float)."""
    return isinstance(wait, (int, float)) and not isinstance(wait, bool) \
        and 0 < wait < math.inf


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, busy_poll: float = 0.0,
                 tcp_keepalive: int = DEFAULT_KEEPALIVE_S) -> None:
        self._loop = loop
        self._tcp_keepalive = tcp_keepalive
        self.max_frame_bytes = max_frame_bytes
        self._busy_poll = busy_poll  # seconds of polling after each request (busy_poll.py)
        self._poller = loop_poller(loop) if busy_poll else None
        self._decoder = ReplyDecoder()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._receives: dict[int, str] = {}  # request id -> queue, for receives in flight
        self._waits_on_server: set[int] = set()  # request ids of waiting receives sent
        # Past MAX_WAITS_ON_SERVER, unsent, oldest first: args, deadline, expiry timer.
        self._waits_held: dict[int, tuple[dict[str, Any], float, asyncio.TimerHandle]] = {}
        # Answers close() waits for: give-back nacks and cancels of waits, unanswered.
        self.awaited_by_close: set[asyncio.Future[Any]] = set()
        self._unseen_refused = False  # the server is older than nack's `unseen`
        self._last_id = 0  # request ids count up from 1
        self._out: list[bytes] = [PREAMBLE]
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.closed_error: ConnectionClosed | None = None
        self._server_error: str = ""  # an error the server sent about the whole connection
        self._server_error_code: str | None = None  # and its code
        self.closed_by_client = False  # close() ended it
        self.aborted_by_client = False  # abort() ended it
        self.closed = loop.create_future()
        self._heard_from_server = False  # a byte has come from the server
        # Receives whose reply brought messages their caller has not yet taken (close()).
        self.replies_not_taken: set[int] = set()
        self._cancelling: set[int] = set()  # receives whose cancel was sent (cancel_wait)
        self._over_tls = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._over_tls = transport.get_extra_info("sslcontext") is not None
        enable_keepalive(transport, self._tcp_keepalive)
        self._schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._server_error or (str(exc) if exc else "")
        if not reason and not self._heard_from_server and not self._over_tls \
                and not self.closed_by_client and not self.aborted_by_client:
            # A TLS port ends a plain connection without a word: say so, as the CLI does
            # (a newcomer's review had only "connection to the server closed").
            reason = ("nothing came from it: the server stopped, or it uses TLS and this "
                      "connection does not")
        if self.aborted_by_client and not self._server_error:
            # The caller's own act, not a server that stopped nor a TLS mismatch (a
            # reviewer's abort() was diagnosed as either).
            self.closed_error = ConnectionClosed("this client aborted the connection (abort())")
        elif self.closed_by_client and not reason:
            self.closed_error = ConnectionClosed("this client closed the connection (close())")
        else:
            self.closed_error = ConnectionClosed(
                f"connection to the server closed{': ' + reason if reason else ''}")
        self.closed_error.server_code = self._server_error_code
        self.closed_error.peer_spoke = self._heard_from_server
        pending, self._pending = self._pending, {}
        self._receives.clear()
        self._waits_on_server.clear()
        for _, _, timer in self._waits_held.values():
            timer.cancel()
        self._waits_held.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(self.closed_exception())
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._heard_from_server = True
        pending = self._pending
        if self._poller is not None:
            self._poller.replied()
        try:
            replies = self._decoder.feed(data)
        except NotAReply as exc:
            # Not a WonderQ server: every call fails with this as the reason.
            self._server_error = str(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        for request_id, error, result in replies:
            if self._waits_on_server and request_id in self._waits_on_server:
                self._waits_on_server.discard(request_id)
                if self._waits_held:
                    self._send_held_waits()
            future = pending.pop(request_id, None)
            queue = self._receives.pop(request_id, None) if self._receives else None
            if future is None or future.done():
                if request_id is None and error is not None:  # about the connection itself
                    self._server_error = f"{error[0]}: {error[1]}"
                    self._server_error_code = error[0]
                elif queue is not None and error is None and result:
                    self.give_back(queue, result)  # nobody waits for these any more
                continue
            if error is None:
                future.set_result(result)
                if queue is not None and result:
                    self.replies_not_taken.add(request_id)  # receive() takes it (close())
            else:
                future.set_exception(error_from_wire(error[0], error[1]))
                if error[0] == FrameTooLarge.code:
                    # The server names the request over its --max-frame-bytes and closes
                    # the connection: the others in flight were not refused, only cut
                    # off (ConnectionClosed, no server_code: they may be sent again).
                    self._server_error = (f"request {request_id} on it was over the "
                                          f"server's frame limit: {error[1]}")

    def closed_exception(self) -> ConnectionClosed:
        """closed_exception is a new ConnectionClosed like closed_error: one instance raised
        by every later call would gather a traceback entry per raise, without bound."""
        assert self.closed_error is not None
        error = ConnectionClosed(self.closed_error.message)
        error.server_code = self.closed_error.server_code
        error.peer_spoke = self.closed_error.peer_spoke
        return error

    def _refuse_if_closing(self) -> None:
        """_refuse_if_closing: a call made once the connection ended, or once close() began,
        raises ConnectionClosed and sends nothing (close() gives back only what the
        receives it found were leased: one sent after them would be left holding its
        messages when the connection drops)."""
        if self.closed_error is not None:
            raise self.closed_exception()
        if self.closed_by_client:
            raise ConnectionClosed("this client is closing the connection (close())")

    def send(self, command: str, args: dict[str, Any]) -> asyncio.Future[Any]:
        if self.closed_error is not None or self.closed_by_client:
            self._refuse_if_closing()  # raises; tested inline, as this is every request's path
        request = encode_request(self._last_id + 1, command, args)  # raises for a bad value
        if len(request) - FRAME_HEADER_BYTES > self.max_frame_bytes:
            raise self._too_large(command, request)
        self._last_id = request_id = self._last_id + 1
        future = self._loop.create_future()
        self._pending[request_id] = future
        if self._poller is not None:
            self._poller.extend(self._busy_poll)
        transport = self.transport
        if self._out or self._flush_scheduled or transport is None or transport.is_closing():
            self._out.append(request)
            self._schedule_flush()
            return future
        # Nothing else waits to go out: send now, saving a loop step per request
        # when calls are made one at a time. Requests made while this one is on
        # its way are gathered into one write on the next step, as before.
        try:  # noqa: SIM105 (as in _write, inline: this is every request's path)
            transport.write(request)
        except RuntimeError:
            pass
        return future

    def _too_large(self, command: str, request: bytes) -> FrameTooLarge:
        return FrameTooLarge(
            f"this {command} is a frame of {len(request) - FRAME_HEADER_BYTES} bytes, over "
            f"the client's max_frame_bytes of {self.max_frame_bytes} (connect(); the "
            f"server's --max-frame-bytes by default): not sent, so the connection and the "
            f"calls on it go on; send fewer or smaller messages per request")

    def send_receive(self, queue: str, args: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        """send_receive is `send` of a receive: it remembers the queue, so that messages
        that come for it after its caller stopped waiting are given back, and returns
        the request id too, for cancel_wait. A receive that waits is held here while
        MAX_WAITS_ON_SERVER others wait on the server (see there), after its probe
        (_probe_held); one whose wait is not a finite number over 0 (negative, nan, inf, a
        string) is sent at once, for the server's BAD_ARGUMENT, rather than held with it.
        (One over the server's --max-wait is held: the client does not know that limit,
        and the server refuses it when it is sent; its probe, without the wait, is not
        refused for it, so messages ready at once end it without that error.)"""
        wait = args.get("wait")
        if wait and len(self._waits_on_server) >= MAX_WAITS_ON_SERVER and _holdable(wait):
            self._refuse_if_closing()
            # Raises now for a value msgpack cannot take, or a frame too big, as send does
            # (the server would close the connection for it when it is sent).
            request = encode_request(self._last_id + 1, "receive", args)
            if len(request) - FRAME_HEADER_BYTES > self.max_frame_bytes:
                raise self._too_large("receive", request)
            self._last_id = request_id = self._last_id + 1
            deadline = self._loop.time() + wait
            timer = self._loop.call_at(deadline, self._held_wait_over, request_id)
            self._waits_held[request_id] = (args, deadline, timer)
            future = self._pending[request_id] = self._loop.create_future()
            self._probe_held(request_id, queue, args)
        else:
            future = self.send("receive", args)
            request_id = self._last_id
            if wait:
                self._waits_on_server.add(request_id)
        self._receives[request_id] = queue
        return request_id, future

    def _probe_held(self, request_id: int, queue: str, args: dict[str, Any]) -> None:
        """_probe_held sends a receive it holds once without its wait: messages its queue
        has ready now are not kept from it while the waits on the server are on other
        queues (a reviewer's receive on a queue with messages waited out its wait behind
        1,000 waits on empty ones). Its answer (_probe_answered) ends the held receive
        with the messages it brings, or with its error; with none, it stays held. A
        non-waiting receive takes no place among the waits; close() awaits its answer."""
        probe = {key: value for key, value in args.items() if key != "wait"}
        probe_id = self._send_later("receive", probe)
        self._await_on_close(probe_id,
                             lambda answer: self._probe_answered(request_id, queue, answer))

    def _probe_answered(self, request_id: int, queue: str,
                        answer: asyncio.Future[Any]) -> None:
        error = answer.exception()
        rows = None if error is not None else answer.result()
        if error is None and not rows:
            return  # nothing ready: it waits on, held
        caller = self._drop_held(request_id)  # None: sent since, ended, or cancelled
        if caller is None or caller.done():
            if rows:
                self.give_back(queue, rows)  # nobody takes them now
            return
        if error is not None:
            caller.set_exception(error)
            return
        caller.set_result(rows)
        self.replies_not_taken.add(request_id)  # receive() takes them (close())

    def _send_held_waits(self) -> None:
        """_send_held_waits sends the oldest held receives while there is room (one that
        waited has been answered), each with what is left of its wait: a receive held
        while the slots were full waits no longer in all than it asked to."""
        while self._waits_held and len(self._waits_on_server) < MAX_WAITS_ON_SERVER:
            request_id = next(iter(self._waits_held))
            args, deadline, timer = self._waits_held.pop(request_id)
            timer.cancel()
            args["wait"] = max(deadline - self._loop.time(), 0.0)
            self._out.append(encode_request(request_id, "receive", args))
            if args["wait"]:
                self._waits_on_server.add(request_id)
        self._schedule_flush()

    def _held_wait_over(self, request_id: int) -> None:
        """_held_wait_over: a held receive's wait ran out before it was sent; like a wait
        that runs out on the server, it is answered with nothing."""
        future = self._drop_held(request_id)
        if future is not None and not future.done():
            future.set_result([])

    def _drop_held(self, request_id: int) -> asyncio.Future[Any] | None:
        """_drop_held forgets a held receive (never sent), returning its future; None when
        `request_id` is not held (sent already, or the connection is gone)."""
        held = self._waits_held.pop(request_id, None)
        if held is None:
            return None
        held[2].cancel()
        del self._receives[request_id]
        return self._pending.pop(request_id)

    def give_back(self, queue: str, rows: list[list[Any]]) -> None:
        """give_back nacks messages delivered to a receive nobody awaits any more, as unseen:
        nobody looked at them, so the delivery does not count (it would bring them closer
        to their dead-letter queue). A server older than `unseen` refuses the field with
        BAD_ARGUMENT naming it; the nack is then sent again without it, and so are later
        give-backs on this connection. close() waits for these answers (CLOSE_DRAIN_S)."""
        if self.closed_error is not None:
            return  # the connection is gone: the leases run out on the server
        for row in rows:
            args = {"queue": queue, "id": row[0], "lease": row[2]}
            if self._unseen_refused:
                self._send_later("nack", args)
                continue
            request_id = self._send_later("nack", {**args, "unseen": True})
            self._await_on_close(request_id, functools.partial(self._given_back, args=args))

    def _given_back(self, answer: asyncio.Future[Any], args: dict[str, Any]) -> None:
        error = answer.exception()
        if isinstance(error, BadArgument) and "unseen" in error.message \
                and self.closed_error is None:
            self._unseen_refused = True  # an older server
            self._send_later("nack", args)

    def cancel_wait(self, request_id: int) -> None:
        """cancel_wait asks the server to withdraw a waiting receive nobody awaits any more,
        so that no message is leased to it. If the server answered first, its messages
        come back to data_received and are given back. One still held here is dropped.
        close() waits for the cancel's answer: the server answers the receive (with any
        messages it leased to it before it read the cancel) first, so by then they are
        being given back, and close() waits for that too."""
        if self._drop_held(request_id) is not None or self.closed_error is not None \
                or request_id in self._cancelling or request_id not in self._receives:
            # Never sent, the connection is gone, cancelled already (close()), or over:
            # answered, or ended here by its probe (_probe_answered) and never sent.
            return
        self._cancelling.add(request_id)
        self._await_on_close(self._send_later("cancel", {"request": request_id}),
                             lambda _: self._cancelling.discard(request_id))

    def abandon_receives(self) -> None:
        """abandon_receives: close() ends the receives still awaited, as their callers'
        cancels would. Each raises ConnectionClosed now; one waiting on the server is
        cancelled there and one in flight has its reply awaited, and what either brings
        is given back (close() waits for all of it), so a message the server leased to
        it just before the close is not left leased to nobody."""
        for request_id, queue in list(self._receives.items()):
            caller = self._pending.get(request_id)
            if caller is None or caller in self.awaited_by_close:
                continue  # answered, or its reply awaited already (await_abandoned_reply)
            if not caller.done():
                caller.set_exception(ConnectionClosed(
                    "this client closed the connection (close()) while the receive waited"))
            elif not caller.cancelled():
                continue
            # (Else cancelled, its task not yet run to end it: through wait_for's inner
            # task, the cancel reaches the receive a loop step after close() began.)
            if request_id in self._waits_on_server or request_id in self._waits_held:
                self.cancel_wait(request_id)
            else:
                self.await_abandoned_reply(request_id, queue)

    def await_abandoned_reply(self, request_id: int, queue: str) -> None:
        """await_abandoned_reply: a receive that did not wait was abandoned before its reply
        came. Its reply is awaited by close() as a cancel's is, and what it brings is given
        back, so that closing right after does not leave those messages leased."""
        answer = self._pending.get(request_id)
        if self.closed_error is not None or answer is None or answer in self.awaited_by_close:
            return  # answered, the connection is gone, or awaited already (close())
        self._await_on_close(request_id,
                             lambda answer: self._abandoned_answered(answer, queue, request_id))

    def _abandoned_answered(self, answer: asyncio.Future[Any], queue: str,
                            request_id: int) -> None:
        # Nobody takes these messages: given back here, so close() does not wait for a
        # caller to take them (data_received counted them as not taken; left there, every
        # close() spun for CLOSE_DRAIN_S, a reviewer's).
        self.replies_not_taken.discard(request_id)
        if answer.exception() is None and answer.result():
            self.give_back(queue, answer.result())

    def _await_on_close(self, request_id: int,
                        then: Callable[[asyncio.Future[Any]], None] | None = None) -> None:
        """_await_on_close registers a future for the answer to `request_id` that close()
        waits for (give-backs, cancels, abandoned receives), and runs `then(answer)` when
        it comes. Its error (a lost connection, an older server's refusal) is always
        retrieved; a cancelled answer runs nothing."""
        answer = self._pending[request_id] = self._loop.create_future()
        self.awaited_by_close.add(answer)

        def answered(done: asyncio.Future[Any]) -> None:
            self.awaited_by_close.discard(done)
            if done.cancelled():
                return
            done.exception()  # retrieved, whether `then` looks at it or not
            if then is not None:
                then(done)

        answer.add_done_callback(answered)

    def _send_later(self, command: str, args: dict[str, Any]) -> int:
        """_send_later queues a request for the next flush and returns its id. Nothing is
        pending for it, so its reply is dropped unless the caller registers a future."""
        self._last_id += 1
        self._out.append(encode_request(self._last_id, command, args))
        self._schedule_flush()
        return self._last_id

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is None or self.transport.is_closing() or not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._write(data)

    def _write(self, data: bytes) -> None:
        # try/except, not contextlib.suppress: no context manager made per write.
        try:  # noqa: SIM105
            self.transport.write(data)  # type: ignore[union-attr]
        except RuntimeError:
            # uvloop closes the handle of a connect() cancelled mid-handshake before
            # is_closing() says so; its connection_lost follows and fails every call.
            pass


def put_options(args: dict[str, Any], delay: float | None, priority: int | None,
                headers: dict[str, str] | None, expiry: float | None) -> None:
    """put_options adds the options that are not None to a put or put_many request."""
    if delay is not None:
        args["delay"] = delay
    if priority is not None:
        args["priority"] = priority
    if headers is not None:
        args["headers"] = headers
    if expiry is not None:
        args["expiry"] = expiry


class Client(QueueAdmin):
    """A connection to a WonderQ server. Make one with `connect()`.

    The message commands are here; the queue administration commands
    (create_queue, queue_info, peek, redrive, ...) come from QueueAdmin.
    """

    def __init__(self, protocol: _ClientProtocol, host: str, port: int) -> None:
        self._protocol = protocol
        self.host = host
        self.port = port

    async def _call(self, command: str, args: dict[str, Any]) -> Any:
        return await self._protocol.send(command, args)

    # ------------------------------------------------------------- messages

    async def put(self, queue: str, body: bytes | str, *, delay: float | None = None,
                  priority: int | None = None, headers: dict[str, str] | None = None,
                  expiry: float | None = None) -> int:
        """put stores one message and returns its id.

        delay: seconds before it can be received (None: the queue's setting).
        priority: lower is handed out first (None: 0). headers: str -> str.
        expiry: seconds after which it is dropped unless acked (None: the
        queue's setting; 0: never).
        """
        args: dict[str, Any] = {"queue": queue, "body": body}
        if delay is not None or priority is not None or headers is not None \
                or expiry is not None:
            put_options(args, delay, priority, headers, expiry)
        return await self._protocol.send("put", args)  # type: ignore[no-any-return]

    async def put_many(self, queue: str, bodies: Iterable[PutItem], *,
                       delay: float | None = None, priority: int | None = None,
                       headers: dict[str, str] | None = None,
                       expiry: float | None = None) -> list[int | WonderQError]:
        """put_many stores several messages in one round trip; returns one result per item.

        An item is a body, or a dict {"body", "delay", "priority", "headers",
        "expiry"}; the keyword options apply to items that do not give their
        own. Each result is the item's id, or the error (returned, not
        raised: Full, BodyTooLarge, ...) that refused that item alone.
        """
        items = put_items(bodies)
        if not items:
            return []  # nothing to put: no round trip (the server refuses an empty batch)
        args: dict[str, Any] = {"queue": queue, "bodies": items}
        put_options(args, delay, priority, headers, expiry)
        return item_results(await self._call("put_many", args))

    async def receive(self, queue: str, *, max: int = 1, wait: float = 0.0,
                      visibility: float | None = None) -> list[Message]:
        """receive leases up to `max` messages, waiting up to `wait` seconds for the first.

        Returns an empty list when nothing arrived in time. Each message stays
        invisible to others for `visibility` seconds (the queue's setting, or
        the server's default, if None) unless acked, nacked or touched.
        """
        args: dict[str, Any] = {"queue": queue}
        if max != 1 or type(max) is not int:  # True == 1, and is the server's to refuse
            args["max"] = max
        if wait:
            args["wait"] = wait
        if visibility is not None:
            args["visibility"] = visibility
        request_id, reply = self._protocol.send_receive(queue, args)
        try:
            rows = await reply
        except asyncio.CancelledError:
            # The reply may have come in before this task resumed to take it: then
            # its messages are leased to a caller that will never see them. Give
            # them back, as the protocol does for a reply that comes after. A
            # receive still waiting is cancelled on the server, or the next message
            # would be leased to it, given back and counted as a delivery: enough
            # abandoned waits dead-lettered messages no consumer ever saw.
            if reply.done() and not reply.cancelled() and reply.exception() is None:
                self._protocol.give_back(queue, reply.result())
                self._protocol.replies_not_taken.discard(request_id)
            elif wait:
                self._protocol.cancel_wait(request_id)
            else:
                self._protocol.await_abandoned_reply(request_id, queue)
            raise
        if rows:
            self._protocol.replies_not_taken.discard(request_id)
        messages = from_deliveries(self, queue, rows)
        if visibility is not None:
            for message in messages:  # what a bare msg.touch() renews for
                message.visibility = visibility
        return messages

    async def ack(self, queue: str, id: int, lease: int) -> None:
        """ack deletes a message; raises LeaseLost if it was delivered again since."""
        await self._protocol.send("ack", {"queue": queue, "id": id, "lease": lease})

    async def ack_many(self, queue: str,
                       items: Iterable[SettleItem]) -> list[WonderQError | None]:
        """ack_many acks (id, lease) pairs or received Messages; one result per item.

        Each result is None (acked) or the error (NotFound, LeaseLost, ...)
        that refused that item alone, returned rather than raised. No items: []
        at once, so the list a receive returned can be acked whatever it holds.
        """
        pairs = settle_items(items, "ack_many")
        if not pairs:
            return []  # a receive that found nothing: no round trip
        return item_results(await self._call("ack_many", {"queue": queue, "items": pairs}))

    async def nack(self, queue: str, id: int, lease: int, *, delay: float = 0.0,
                   unseen: bool = False) -> None:
        """nack gives a message back, ready at once or after `delay` seconds.

        unseen=True says the work was never started (a worker shutting down with
        messages it had not begun): the delivery does not count toward the queue's
        max_deliveries. The flag is sent only when True.
        """
        args: dict[str, Any] = {"queue": queue, "id": id, "lease": lease, "delay": delay}
        if check_unseen(unseen, "nack"):
            args["unseen"] = True
        await self._call("nack", args)

    async def nack_many(self, queue: str, items: Iterable[SettleItem], *,
                        delay: float = 0.0, unseen: bool = False) -> list[WonderQError | None]:
        """nack_many gives back (id, lease) pairs or received Messages; results as ack_many;
        `unseen` as for nack."""
        unseen = check_unseen(unseen, "nack_many")
        pairs = settle_items(items, "nack_many")
        if not pairs:
            return []
        args: dict[str, Any] = {"queue": queue, "items": pairs, "delay": delay}
        if unseen:
            args["unseen"] = True
        return item_results(await self._call("nack_many", args))

    async def touch(self, queue: str, id: int, lease: int, *,
                    visibility: float | None = None) -> float:
        """touch extends a lease to `visibility` seconds from now; returns the new deadline."""
        args: dict[str, Any] = {"queue": queue, "id": id, "lease": lease}
        if visibility is not None:
            args["visibility"] = visibility
        return await self._call("touch", args)  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- other

    async def stats(self) -> dict[str, Any]:
        """stats returns {"server": {...}, "queues": {name: {...}}} (see PROTOCOL.md)."""
        return await self._call("stats", {})  # type: ignore[no-any-return]

    async def ping(self) -> str:
        return await self._call("ping", {})  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self._protocol.closed_error is not None

    @property
    def close_reason(self) -> ConnectionClosed | None:
        """close_reason is why the connection ended, None while it is open: the
        ConnectionClosed its calls raise now, whose `server_code` is what the server said
        about the connection as it closed it (SHUTTING_DOWN, IDLE_TIMEOUT, ...), if it
        said anything. For a caller that finds `closed` between calls, with nothing
        raised to read it from."""
        if self._protocol.closed_error is None:
            return None
        return self._protocol.closed_exception()

    def abort(self) -> None:
        """abort drops the connection at once, with whatever is unsent: for a connection
        that stopped answering (close() is the polite way). Calls still waiting raise
        ConnectionClosed once the loop has seen the connection go."""
        transport = self._protocol.transport
        if transport is not None:
            if not transport.is_closing():
                self._protocol.aborted_by_client = True
            transport.abort()

    async def close(self) -> None:
        """close ends the connection; calls still waiting raise ConnectionClosed.

        A receive still awaited raises it at once and is ended as a cancelled one
        would be (abandon_receives), so what the server leased to it is given back;
        so is one whose task was cancelled just before close(), and one whose reply
        came but was not yet taken is waited for (its task takes it or gives it back).
        The answers to give-backs and to cancels of waiting receives (give_back and
        cancel_wait say why), then writing out what is still unsent, take at most
        CLOSE_DRAIN_S in all; after that the connection is dropped, so a server that
        stopped reading cannot hold close() up."""
        transport = self._protocol.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_DRAIN_S
        try:
            if transport is not None and not transport.is_closing():
                self._protocol.closed_by_client = True  # from here no call is sent
                self._protocol.abandon_receives()
                # A reply that came for a receive whose caller has not yet taken it: its
                # task takes it on its next step, or, cancelled (`task.cancel()` then
                # `close()`, the usual shutdown; through wait_for's inner task a step
                # later), gives its messages back. Closing first left them leased to
                # nobody until their leases ran out (a reviewer: 15 rounds in 60).
                while self._protocol.replies_not_taken and loop.time() < deadline:
                    await asyncio.sleep(0)
            while self._protocol.awaited_by_close and transport is not None \
                    and not transport.is_closing():
                # Their answers may ask for a plain nack again (an older server), or bring
                # messages to give back: wait for them, and for what they start meanwhile.
                self._protocol._flush()
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait(set(self._protocol.awaited_by_close), timeout=left)
            if transport is not None and not transport.is_closing():
                self._protocol._flush()
                transport.close()
            if transport is not None:
                # One deadline for the whole close: the answers above and the writing out
                # below share CLOSE_DRAIN_S (it took twice that against a frozen server).
                left = max(deadline - loop.time(), 0.0)
                try:
                    await asyncio.wait_for(asyncio.shield(self._protocol.closed), left)
                except TimeoutError:
                    transport.abort()
        except BaseException:
            # Cancelled while waiting (a timeout around close(), a second Ctrl-C): the
            # connection must still end, now, rather than stay open for good.
            if transport is not None:
                transport.abort()
            raise
        await self._protocol.closed

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class _Connect:
    """What `connect()` returns: await it, or use it in `async with`."""

    def __init__(self, host: str, port: int, timeout: float | None,
                 auth_token: str | bytes | None, ssl: Any, max_frame_bytes: int,
                 busy_poll: float = 0.0, tcp_keepalive: int = DEFAULT_KEEPALIVE_S) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._auth_token, self._ssl = auth_token, ssl
        self._max_frame_bytes = max_frame_bytes
        self._busy_poll = busy_poll
        self._tcp_keepalive = tcp_keepalive
        self._client: Client | None = None

    async def _open(self) -> Client:
        loop = asyncio.get_running_loop()
        protocol: _ClientProtocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, protocol = await loop.create_connection(
                    lambda: _ClientProtocol(loop, self._max_frame_bytes, self._busy_poll,
                                            self._tcp_keepalive),
                    self._host, self._port, ssl=self._ssl)
                if self._auth_token is not None:
                    await protocol.send("auth", {"token": self._auth_token})
        except BaseException:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()  # refused, timed out or cancelled: not half open
            raise
        return Client(protocol, self._host, self._port)

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._open()
        return self._client

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.close()


def check_unseen(unseen: Any, command: str) -> bool:
    """check_unseen is nack's `unseen` as a bool: True, False, or what equals one of them
    (1, 0, numpy's bools); anything else (a string, None) raises TypeError before
    anything is sent. Taken for its truth, "false" took the delivery off the message's
    count, so a poison message was never dead-lettered (a reviewer)."""
    if unseen is True or unseen is False:
        return unseen
    if not isinstance(unseen, str | bytes):
        with contextlib.suppress(Exception):  # == may raise (an array)
            if unseen == True:  # noqa: E712 (1 and numpy's True are True here)
                return True
            if unseen == False:  # noqa: E712
                return False
    raise TypeError(f"{command}: unseen must be True or False, not {unseen!r}")


def check_address(host: Any, port: Any, timeout: Any) -> int:
    """check_address refuses, when connect() is called and naming the argument, what
    would otherwise fail later with the resolver's or the socket's own words ("argument
    of type 'int' is not iterable", "Servname not supported", a TimeoutError with no
    message): a host that is not a str, bytes or None; a port that is no whole number
    from 0 to 65535 (digits in a str, as from an environment variable, are one); a
    timeout that is not None or seconds over 0 (inf: none). Returns the port as a plain
    int (from an IntEnum, numpy's integers, digits)."""
    if host is not None and not isinstance(host, str | bytes):
        raise TypeError(f"connect: host must be a str, not {host!r}")
    # isdecimal, not isdigit: '²' is a digit that int() cannot read.
    if isinstance(port, str) and port.strip().isdecimal():
        port = int(port)
    if isinstance(port, bool):
        raise TypeError(f"connect: port must be an int, not {port!r}")
    try:
        port = operator.index(port)
    except TypeError:
        raise TypeError(f"connect: port must be an int, not {port!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"connect: port must be from 0 to 65535, not {port}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
            raise TypeError(f"connect: timeout must be seconds or None, not {timeout!r}")
        if not float(timeout) > 0:  # nan too
            raise ValueError(f"connect: timeout must be seconds over 0 (None: no limit), "
                             f"not {timeout}")
    return port


def connect(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
            timeout: float | None = 10.0, auth_token: str | bytes | None = None,
            ssl: Any = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
            busy_poll: float = 0.0, tcp_keepalive: int = DEFAULT_KEEPALIVE_S) -> _Connect:
    """connect opens a connection: `client = await connect()` or `async with connect() as c:`.

    timeout: seconds for the whole connect (None: no limit). auth_token: the
    server's --auth-token, sent first (AuthFailed if refused). ssl: an
    ssl.SSLContext (or True: verify against the system's CAs) for a server
    with --tls-cert; passed to loop.create_connection as it is.
    max_frame_bytes: the server's --max-frame-bytes (its default here); a
    request bigger than this raises FrameTooLarge before it is sent, while a
    server would close the connection, failing every call on it.
    busy_poll: seconds (at most 0.01) to keep the event loop polling after each
    request instead of sleeping until the reply wakes it: faster round trips
    where being woken is costly (some VMs), for CPU spent polling (backing off
    while requests come further apart than that); 0, the default, is off
    (busy_poll.py, and the server's --busy-poll).
    tcp_keepalive: seconds of silence after which the kernel probes the server's
    host, ending the connection (ConnectionClosed) if it is gone; 0 off
    (keepalive.py).
    """
    if not (type(max_frame_bytes) is int and max_frame_bytes > 0):  # not a bool
        raise ValueError(f"max_frame_bytes must be a positive int, not {max_frame_bytes!r}")
    checked_port = check_address(host, port, timeout)
    return _Connect(host, checked_port, timeout, auth_token, ssl, max_frame_bytes,
                    check_busy_poll(busy_poll), check_keepalive(tcp_keepalive))
