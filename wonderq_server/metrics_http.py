"""The metrics endpoint's HTTP: one GET, one response, then close.

Design decision: HTTP is parsed by h11 (sans-I/O) fed from an
asyncio.Protocol on the server's own event loop, so a page is rendered on
the loop's thread, where it reads the broker's state with no lock. This
module knows nothing of the broker or of Prometheus: it serves a table of
pages, each a coroutine function of the request's headers returning
(content type, body); a page may hand slow work to a thread after reading.

Rules:
* One request per connection: the response says `Connection: close`, and
  once it is written the server ends its side and drops whatever more the
  peer sends until the peer closes (a lingering close; closing outright with
  unread bytes makes the kernel reset the connection, which can destroy the
  response before it is read). A scraper comes every few seconds;
  keep-alive would buy nothing and cost state.
* Only GET; any other method gets 405, a path not in the table 404, a query
  string is ignored. A request that is not HTTP gets 400 (at its first byte
  that cannot be in a method: a WonderQ client's preamble), a request head
  over `max_head_bytes` (--metrics-max-head-bytes) 431; a body is never read.
* Nothing a peer does can hurt the server: at most `max_connections`
  (--metrics-max-connections) are open at once, and a connection still open
  `timeout_s` (--metrics-timeout) after it was accepted (a peer that sends
  slowly or never reads its response) is aborted. That is one timer per HTTP
  connection, never on the message path. Over TLS the same bounds hold
  before a connection exists: its handshake counts against
  `max_connections` (the server's tls.HandshakeLimit, from
  `handshake_room`) and ends after --tls-handshake-timeout, or
  `timeout_s` if shorter (a reviewer's silent TCP connections to the
  metrics TLS port were counted by nothing and held a descriptor each for
  asyncio's 60 s, until the message port could accept no one).
* One connection more is refused: counted (`refused`, STATS'
  metrics_connections_refused_total) and answered 503 with Retry-After at
  once, its request unread, then closed as any response is (lingering,
  above), so a scraper reports a 503 naming the flag, not a reset. A
  refusal waiting for its peer to close holds a socket too, so at most
  `max_connections` of them wait, each for at most `timeout_s`; past that a
  connection is aborted unanswered (and counted).
* With a check (`authorized`: the server's auth token), a request without
  the right `Authorization: Bearer <token>` header gets 401 before anything
  else is looked at; the check compares in constant time (auth.py). A wrong
  token (not a missing one) is counted with wrong AUTHs and answered
  AUTH_FAILURE_DELAY_S late, as on the message port.
* A page that raises is a bug: it is logged with its traceback and answered
  500, and the server goes on. A page still running when its connection
  goes is cancelled.
* A page of GZIP_MIN_BYTES or more goes gzipped to a request whose
  Accept-Encoding allows gzip (Prometheus always asks: /metrics with 1,500
  queues is about 900 KB as text, 50 KB gzipped). Compressing
  runs in a worker thread (zlib lets go of the GIL), and the compressed
  page is kept beside the page it came from: while a page cache hands out
  the same page object, it is compressed once, however many scrapers come.
  Every page's response says `Vary: Accept-Encoding`.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypedDict, cast

import h11

from .auth import AUTH_FAILURE_DELAY_S
from .errors import detached

if TYPE_CHECKING:
    from ssl import SSLContext

logger = logging.getLogger("wonderq.metrics")

DEFAULT_MAX_HEAD_BYTES = 8192  # nginx's large_client_header_buffers: 8 KiB a line
# What an HTTP method (a token, RFC 9110) is made of.
HTTP_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                             b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
DEFAULT_MAX_CONNECTIONS = 32  # a Prometheus or two and a person with curl, several times over
DEFAULT_TIMEOUT_S = 10.0  # Prometheus' default scrape_timeout
RETRY_AFTER_S = 1  # the 503's Retry-After: connections are short, one is likely free by then
# Below this a page goes as it is: gzip's header and the thread hop would cost more than
# the bytes saved (a small /stats, a server with a few queues).
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 6  # zlib's default: within a few percent of 9's size at a fraction of its time

Headers = Mapping[str, str]  # a request's headers, names in lower case
Page = Callable[[Headers], Awaitable[tuple[str, bytes]]]
Authorized = Callable[[str], bool]  # the Authorization header's value -> may it see pages?


class HttpLimits(TypedDict, total=False):
    """HttpLimits: HttpEndpoint's limits, each flag's value (config.py); absent: the default."""

    max_connections: int
    timeout_s: float
    max_head_bytes: int


class HttpEndpoint:
    """HttpEndpoint is the listener: it serves `pages` (path -> Page) to GET requests."""

    def __init__(self, pages: Mapping[str, Page], authorized: Authorized | None = None, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> None:
        self.pages = dict(pages)
        self.authorized = authorized  # None: no authentication
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.max_head_bytes = max_head_bytes
        self.connections: set[HttpConnection] = set()
        self.refusing: set[HttpConnection] = set()  # answered 503, waiting for the peer to close
        self.refused = 0  # connections refused over max_connections since start
        # (path, content type) -> (page body, its gzip): each page's last compression
        # (rules); /metrics is two pages, Prometheus text and OpenMetrics.
        self._gzipped: dict[tuple[str, str], tuple[bytes, asyncio.Future[bytes]]] = {}
        self.compressions = 0  # pages gzipped since start (tests)
        self._listener: asyncio.base_events.Server | None = None
        self.closed = False  # a connection that opens after close() is dropped

    async def start(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                    ssl: SSLContext | None = None,
                    handshake_timeout_s: float | None = None) -> tuple[str, int]:
        """start listens on host:port, over TLS with `ssl`; returns the (host, port) bound
        (port 0 picks one). Over TLS a connection is made only once its handshake is
        done, so until then nothing here counts or times it: `handshake_timeout_s` (at
        most `timeout_s`) ends a handshake that takes longer, and the server counts
        handshakes in progress against max_connections (tls.HandshakeLimit, with
        `handshake_room`)."""
        over_tls: dict[str, Any] = {}  # asyncio refuses a handshake timeout without ssl
        if ssl is not None:
            limit_s = self.timeout_s if handshake_timeout_s is None \
                else min(handshake_timeout_s, self.timeout_s)
            over_tls = {"ssl": ssl, "ssl_handshake_timeout": limit_s}
        self._listener = await loop.create_server(
            lambda: HttpConnection(self, loop), host, port, reuse_address=True, **over_tls)
        sockname = self._listener.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def gzipped(self, page: tuple[str, str], body: bytes) -> bytes:
        """gzipped is `body` gzipped, `page` being its (path, content type). It is compressed
        in a worker thread unless it is the very page object last compressed for `page`;
        requests that come while that compression runs await the same one."""
        kept = self._gzipped.get(page)
        if kept is None or kept[0] is not body:
            self.compressions += 1
            compressing = asyncio.ensure_future(
                asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0))
            kept = self._gzipped[page] = (body, compressing)
        try:
            return await asyncio.shield(kept[1])  # a scraper that goes cancels only its wait
        except Exception:
            if self._gzipped.get(page) is kept:
                del self._gzipped[page]  # not kept: the next request compresses again
            raise

    def handshake_room(self) -> int:
        """handshake_room: how many TLS handshakes may be in progress at once, the slots
        that open connections leave of max_connections."""
        return self.max_connections - len(self.connections)

    def close(self) -> None:
        """close stops listening and drops every open HTTP connection, and any that opens
        later (a TLS one opens only once its handshake is done, which may be after this)."""
        self.closed = True
        if self._listener is not None:
            self._listener.close()
        for connection in [*self.connections, *self.refusing]:
            connection.abort()


class HttpConnection(asyncio.Protocol):
    """HttpConnection answers the first request on one connection, then closes it."""

    def __init__(self, endpoint: HttpEndpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self.http = h11.Connection(h11.SERVER,
                                   max_incomplete_event_size=endpoint.max_head_bytes)
        self.transport: asyncio.Transport | None = None
        self.received = 0  # bytes of the request received so far
        self.answered = False
        self.head_request = False  # a response to HEAD carries no body
        self._timeout: asyncio.TimerHandle | None = None
        self._page: asyncio.Task[None] | None = None  # the page being rendered
        self._peer_done = False  # the peer has sent EOF
        self._method_read = False  # the request line's first space has come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        endpoint = self.endpoint
        if endpoint.closed:
            self.transport.abort()
            return
        if len(endpoint.connections) >= endpoint.max_connections:
            self._refuse()
            return
        endpoint.connections.add(self)
        self._timeout = self.loop.call_later(endpoint.timeout_s, self.abort)

    def _refuse(self) -> None:
        """_refuse answers a connection over max_connections 503 without reading it (the
        rules); past max_connections refusals waiting to close, it aborts it."""
        endpoint = self.endpoint
        endpoint.refused += 1
        assert self.transport is not None
        if len(endpoint.refusing) >= endpoint.max_connections:
            self.transport.abort()  # a flood: not even a 503
            return
        endpoint.refusing.add(self)
        self.answered = True  # nothing it sends is read
        self._timeout = self.loop.call_later(endpoint.timeout_s, self.abort)
        body = (f"too many connections to the metrics endpoint: {endpoint.max_connections} "
                f"are open (--metrics-max-connections); try again\n").encode()
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\nretry-after: %d\r\n\r\n%s"
            % (len(body), RETRY_AFTER_S, body))
        self._close_after_response()

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.connections.discard(self)
        self.endpoint.refusing.discard(self)
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self._page is not None:
            self._page.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # one request per connection; the rest is not read
        # Only the first max_head_bytes + 1 bytes are parsed, however they arrive:
        # one byte over the bound makes h11 refuse an unfinished head with 431.
        room = self.endpoint.max_head_bytes + 1 - self.received
        self.received += len(data)
        if room <= 0:
            return
        if not self._method_read:
            # Until the request line's first space, its bytes are a method: an HTTP token.
            # A WonderQ client (its binary preamble holds a NUL) or anything else that is
            # not HTTP at the metrics port: h11 waits for a line end that may never come,
            # and the client waited its whole timeout for nothing (a newcomer's review).
            method, space, _ = data.partition(b" ")
            self._method_read = bool(space)
            if not all(byte in HTTP_TOKEN_BYTES for byte in method):
                self._respond(400, b"not an HTTP request: this is WonderQ's metrics "
                                   b"endpoint; clients connect to the server's --port\n")
                return
        self.http.receive_data(data[:room])
        try:
            event = self.http.next_event()
        except h11.RemoteProtocolError as exc:
            # h11 raises it again from a frame whose `self` is the error: a reference
            # cycle through its traceback, holding this connection (errors.py's rules).
            detached(exc)
            self._respond(exc.error_status_hint, f"bad request: {exc}\n".encode())
            return
        if isinstance(event, h11.Request):
            self._answer(event)
        # Otherwise h11.NEED_DATA: the request head is not complete yet.

    def eof_received(self) -> bool:
        """eof_received: the peer stopped sending. Keep the connection only for the
        response of a page still rendering (`printf 'GET ...' | nc` waits for it)."""
        self._peer_done = True
        return self._page is not None

    def _answer(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        self.head_request = request.method == b"HEAD"
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in request.headers}  # h11 gives names in lower case
        authorized = self.endpoint.authorized
        given = headers.get("authorization", "")
        if authorized is not None and not authorized(given):
            refusal = (401, b"unauthorized: send Authorization: Bearer <the server's auth "
                       b"token>\n")
            extra = [("www-authenticate", 'Bearer realm="wonderq"')]
            if not given:
                self._respond(*refusal, extra=extra)
                return
            # A wrong token is answered AUTH_FAILURE_DELAY_S later, as on the message
            # port, so guessing over HTTP is no faster; nothing more is read meanwhile.
            self.answered = True
            self.loop.call_later(AUTH_FAILURE_DELAY_S,
                                 lambda: self._respond(*refusal, extra=extra))
            return
        if request.method != b"GET":
            self._respond(405, b"only GET\n", extra=[("allow", "GET")])
            return
        page = self.endpoint.pages.get(path)
        if page is None:
            self._respond(404, f"not found; try {', '.join(self.endpoint.pages)}\n".encode())
            return
        self.answered = True  # read no more while the page renders
        self._page = self.loop.create_task(self._render(path, page, headers))

    async def _render(self, path: str, page: Page, headers: Headers) -> None:
        extra = [("vary", "accept-encoding")]
        try:
            content_type, body = await page(headers)
            if len(body) >= GZIP_MIN_BYTES and accepts_gzip(headers.get("accept-encoding", "")):
                body = await self.endpoint.gzipped((path, content_type), body)
                extra.append(("content-encoding", "gzip"))
        except Exception:
            logger.exception("internal error while rendering %s", path)
            self._respond(500, b"internal error\n")
            return
        finally:
            self._page = None
        self._respond(200, body, content_type, extra)

    def _respond(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                 extra: list[tuple[str, str]] | None = None) -> None:
        """_respond writes one whole response and closes the connection after it."""
        self.answered = True
        assert self.transport is not None
        if self.transport.is_closing():
            return  # the peer went, or the timeout dropped it, while the page rendered
        headers = [("content-type", content_type), ("content-length", str(len(body))),
                   ("connection", "close"), *(extra or [])]
        events: list[h11.Response | h11.Data | h11.EndOfMessage] = [
            h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)]
        if body and not self.head_request:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        try:  # with passthrough, h11 hands the body back as it is: a cached page is not copied
            chunks = [chunk for event in events
                      for chunk in self.http.send_with_data_passthrough(event) or ()]
        except h11.LocalProtocolError:  # no response is possible in this state
            logger.debug("no HTTP response possible; connection dropped", exc_info=True)
            self.transport.abort()
            return
        self.transport.writelines(chunks)
        self._close_after_response()

    def _close_after_response(self) -> None:
        assert self.transport is not None
        if self.transport.can_write_eof() and not self._peer_done:
            # Lingering close: end our side and drop the rest of the request as it
            # comes, until the peer closes (eof_received) or timeout_s. Closing with
            # unread bytes in the socket makes the kernel send a reset, which can
            # destroy the response before the client reads it (a 431 to a client
            # still sending its long head).
            self.transport.write_eof()
        else:
            self.transport.close()


def accepts_gzip(accept_encoding: str) -> bool:
    """accepts_gzip: does an Accept-Encoding value (RFC 9110, 12.5.3) allow gzip? It does
    when it names gzip (or x-gzip), or `*` without naming gzip, with a q above 0."""
    by_name: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, parameters = item.partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # a q we cannot read does not say yes
        name = name.strip().lower()
        if name:
            by_name[name] = quality
    for name in ("gzip", "x-gzip"):
        if name in by_name:
            return by_name[name] > 0
    return by_name.get("*", 0.0) > 0
