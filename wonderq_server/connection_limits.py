"""Limits on connections: how many, how much each may make the server hold, how long idle.

Design decision: a client can cost the server memory in three ways that no
request limit sees, and each gets one rule, enforced where the bytes are:

* **Too many connections** (`max_connections`): the server admits at most
  this many. The one over the limit is answered TOO_MANY_CONNECTIONS in
  the mode its first bytes pick (a binary client gets a frame it can read,
  a person with `nc` a line), then closed; it is not kept past
  REFUSAL_WAIT_S if it sends nothing. Connections already open are not
  touched. At start-up the server raises its open-file limit to fit
  (`fit_open_files`), or lowers the limit it enforces and says so, as
  Redis does with maxclients: running out of file descriptors would make
  accept() fail for everyone, with no reply at all.
* **Too many from one address** (`max_connections_per_address`): one
  client address (`address_key`: IPv4 or IPv6, whole, as nginx's
  limit_conn on $binary_remote_addr and HAProxy's src count) may hold at
  most this many, refused as above. Not by IPv6 /64, though a host often
  has one: a cloud subnet or a pod network is one /64 for many client
  hosts, which would share one budget. Without it, one host's silent
  connections (a bug's leak, or an attacker's) could take every
  --max-connections slot and keep every other client out, as nginx's
  limit_conn and HAProxy's conn_cur rules prevent.
  Clients behind one NAT or proxy share an address: the default, 1000, is
  a tenth of --max-connections'; 0 turns it off. On a TLS port a
  connection counts from its accept, handshake included (tls_listener.py).
* **Requests read but not yet run** (`max_request_buffer_bytes`): a text
  connection holds the lines that arrive behind a waiting receive (text
  replies go strictly in order), any connection those behind replies not
  yet written (below). Past the limit the server stops reading from that
  socket until they have run; the kernel's buffers and TCP flow control
  then push back on the client. Input is decoded DECODE_SLICE_BYTES at a
  time and what is held stays raw bytes but for the rest of one slice:
  decoded, a request costs far more than its bytes (a two-byte unknown
  command is an error of about a kilobyte), so held input is measured,
  and bounded, as bytes. A binary connection otherwise runs each request
  as it is read and holds at most one partial frame (up to
  --max-frame-bytes, buffered as it arrives, never set aside in advance);
  but its receives that wait are requests the server holds too, any
  number of them: each counts WAITING_RECEIVE_BYTES, and past the limit
  the server stops reading from it until one ends. A client that closes
  meanwhile is noticed before a message is leased to it (peer_state.py).
* **Replies written but not yet sent** (`max_reply_buffer_bytes`): when the
  socket's send buffer is past its high-water mark, the server stops reading
  from that connection (asyncio's pause_writing), so a client that sends
  without reading stops itself. Within one read, too, once the replies
  not yet written pass REPLY_HOLD_BYTES, the rest of the read's requests
  wait until they are: a few small requests with big replies (peeks and
  receives of large messages) cannot multiply into an unbounded buffer
  between two writes. Replies already owed (a long-polling receive
  answered later) still queue up; if a connection already has more than
  this limit unsent when more is to be written, it is not reading at all:
  it is disconnected, and its leases run out as after any disconnect. The
  check is on what is already queued, so a single large reply (a receive of
  many big messages) to a client that reads always goes out.
* **Fair turns** (TURN_SECONDS): one connection's requests run for about that
  long per turn of the event loop; the rest of what it sent is held,
  as behind a blocking request, and runs in the next turn, after the other
  connections' requests. Its socket is read again once what is held has
  run (or past max_request_buffer_bytes, not at all), so a client that
  floods cheap requests gets its share of the loop, and no more. The clock
  is read every TURN_CHECK_REQUESTS, a batch counting its items (`turn_cost`).
* **All connections together** (`max_client_memory_bytes`): each rule
  above bounds one connection, but 10,000 connections each holding a
  partial 64 MiB frame, or a peek's reply they never read, add up to more
  than any machine has. Once a second the server adds up what each holds
  (`Connection.memory_bytes`: partial input, held input, replies not yet
  sent, waiting receives) and, over the limit, disconnects the connections
  that hold the most until the rest fit: Redis' maxmemory-clients.
  Messages leased to them come back when their leases run out. The pass
  costs about 6 ms a second with 10,000 connections (in process, the
  tests' fake transports), nothing per request. Between two passes the
  connections can add what the server reads in a second (a reviewer: 830
  MiB against a 64 MiB limit on loopback), and the biggest holder may be a
  consumer reading a big receive: the limit is a backstop against many
  connections together, to be set well above what the largest receives of
  all consumers at once can hold.
* **Connections that never authenticate** (`auth_timeout_s`, with an auth
  token only): a connection that has not sent the right AUTH within this
  long is answered AUTH_TIMEOUT and closed, so strangers cannot hold the
  --max-connections slots; one still closing another auth_timeout_s later
  (after AUTH_TIMEOUT, a wrong token or QUIT) is not reading its replies,
  and is aborted, idle timeout or not. Until it has authenticated, a connection's
  frames and lines may be at most PRE_AUTH_REQUEST_BYTES: a stranger cannot
  make the server buffer a 64 MiB frame (Redis limits unauthenticated
  requests for the same reason, CVE-2021-32675). A client sends bigger
  requests once AUTH is answered (the client library waits for it). They
  may always be AUTH_REQUEST_ROOM, whatever smaller --max-frame-bytes or
  --max-message-bytes say, so an AUTH with the longest token a server takes
  (auth.MAX_TOKEN_BYTES) is read in either mode (`limits_before_auth`): a
  text line over a small --max-message-bytes + 1024 locked text clients out
  of a server with a long token (a reviewer).
* **Idle connections** (`idle_timeout_s`, 0 = never): a connection that
  has sent no complete request for this long is answered IDLE_TIMEOUT and
  closed. A waiting receive counts as activity for as long as it waits; a
  partial frame or line does not (a client dribbling bytes is not working).
  One timer per connection, re-armed lazily: a request only stores its
  time, and the timer, when it fires early, re-arms for the remainder.
  A close finishes only once the client has read every reply, so a
  connection still closing (after IDLE_TIMEOUT, QUIT, ...) an idle timeout
  after its last request is not reading at all: it is aborted.

* **Clients that vanished** (`tcp_keepalive_s`, 0 = off): a client whose
  host lost power or whose network path died sends no FIN: without help
  the server would keep its connection, and its --max-connections slot,
  for ever (its leases run out as usual). Every accepted socket gets TCP
  keepalive, as Redis' `tcp-keepalive` (default 300 s) does: the kernel
  probes a connection silent for this long, every third of it, and after 3
  unanswered probes the connection ends (connection_lost). Set once per
  connection, in the kernel: nothing on the message path. It also keeps
  idle connections alive through NAT and firewalls that forget quiet ones.

Every limit has a flag (config.py), an error or a visible effect, and a
stats counter (`Counters`, reported by the server's stats).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from .auth import MAX_TOKEN_BYTES
from .commands import Command, Limits, Rejected

DEFAULT_MAX_CONNECTIONS = 10000  # Redis' maxclients default
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 1000  # a tenth of the above
DEFAULT_MAX_REQUEST_BUFFER_BYTES = 1024 * 1024
DEFAULT_MAX_REPLY_BUFFER_BYTES = 64 * 1024 * 1024

# Replies one connection may build up between two writes before its further
# requests wait for them to be written (see "Replies written" above). Big
# enough that ordinary pipelining (tens of thousands of put replies) never
# notices.
REPLY_HOLD_BYTES = 1024 * 1024

# What one request held decoded (behind a blocking one, or past a connection's turn) is
# counted for against --max-client-memory: about what the largest of them take, an error
# for a two-byte unknown line (see DECODE_SLICE_BYTES).
HELD_REQUEST_BYTES = 1024

# How long one connection's requests may run in one turn of the event loop; the rest of
# what it sent waits for the next turn (held, as behind a blocking request), after the
# other connections' requests. Without it a client pipelining cheap requests without
# reading had a whole 256 KB read run per turn, about 250 ms of PINGs, and a polite
# client's request waited behind every such connection's turn: 12 s with 50 of them (a
# reviewer). By time, not by count: a first version ended a turn after 128 requests,
# and a single client pipelining 2,000,000 PINGs took 5.4 s against 4.5 s without
# (an extra turn and write per 128); 2 ms costs about one turn in a hundred. The clock
# is read once per TURN_CHECK_REQUESTS requests, nothing per request.
TURN_SECONDS = 0.002
TURN_CHECK_REQUESTS = 64


def turn_cost(item: Command | Rejected) -> int:
    """turn_cost: what one request counts toward TURN_CHECK_REQUESTS: 1, and a batch's
    items or bodies (or a receive's or peek's max) besides, as each costs about a request."""
    if not isinstance(item, Command):
        return 1
    args = item.args
    batch = args.get("items") or args.get("bodies")
    if batch is not None:
        return 1 + len(batch)
    most = args.get("max")
    return 1 + most if type(most) is int else 1

# Input is decoded and run this many bytes at a time, so that requests held
# behind a blocking one stay raw bytes (measured against
# max_request_buffer_bytes) but for one slice: decoded, a request can cost
# hundreds of times its size. Small enough that one slice of the worst input
# (two-byte unknown commands, each an error object of about a kilobyte) holds
# a few megabytes; large enough that a slice's own cost (a decoder call, a
# clock read) hides among its requests: 256 KB reads of pipelined 100-byte
# puts measured within noise of undivided reads (about 3% at most).
DECODE_SLICE_BYTES = 4096

# What one waiting receive costs the server, about (the command, its waiter,
# the broker's entries: 500,000 of them measured 520 MB), counted against
# max_request_buffer_bytes: a binary connection may park receives until they
# pass it, then the server stops reading from it until one ends.
WAITING_RECEIVE_BYTES = 1024
# One whose request id is an array, a map or an ext value costs more: such an id may pack to
# 256 bytes (binary_codec.MAX_REQUEST_ID_BYTES), which decode to up to about 23 KiB of
# objects (measured with tracemalloc: 250 empty maps 17.5 KiB, 127 nested one-entry maps
# 22.9 KiB, a reviewer's). An integer or a string id is within the above.
COSTLY_ID_WAIT_BYTES = 24 * 1024
# The waits a connection may always park, whatever a lower --max-request-buffer-bytes says:
# the client library keeps up to 1,000 waiting on the server (wonderq_client.client's
# MAX_WAITS_ON_SERVER) and counts on the connection being read meanwhile. Under a reviewer's
# --max-request-buffer-bytes 65536 (64 waits), 100 receives made the server stop reading,
# and the acks, touches and cancels sent after them waited out a receive's whole wait.
# What waits hold still counts toward --max-client-memory.
MIN_WAITS_ROOM_BYTES = 1024 * WAITING_RECEIVE_BYTES


def costly_request_id(request_id: object) -> bool:
    """costly_request_id: a waiting request with this id counts COSTLY_ID_WAIT_BYTES."""
    return not isinstance(request_id, int | float | str | bytes | type(None))

# The largest frame or line a connection may send before it has authenticated
# (with an auth token only): AUTH and QUIT are small.
PRE_AUTH_REQUEST_BYTES = 64 * 1024
# What such a request may always be: an AUTH with the longest token, its command
# and framing (a text line of `AUTH <token>`, a frame of [id, "auth", {"token": ...}]).
AUTH_REQUEST_ROOM = MAX_TOKEN_BYTES + 1024
BEFORE_AUTH_SOURCE = "the limit for a request before AUTH"


def limits_before_auth(limits: Limits) -> Limits:
    """limits_before_auth: the request limits of a connection that has not yet
    authenticated. Its frames and lines are at most PRE_AUTH_REQUEST_BYTES and at least
    AUTH_REQUEST_ROOM (see the rules); an error for one over them names the flag when it
    is the flag's value that holds, else this limit."""
    frame = min(max(limits.max_frame_bytes, AUTH_REQUEST_ROOM), PRE_AUTH_REQUEST_BYTES)
    # A text line holds max_message_bytes + 1024 (Limits.max_line_bytes).
    message = min(max(limits.max_message_bytes, AUTH_REQUEST_ROOM - 1024),
                  PRE_AUTH_REQUEST_BYTES - 1024)
    return replace(
        limits, max_frame_bytes=frame, max_message_bytes=message,
        max_frame_source=(limits.max_frame_source if frame == limits.max_frame_bytes
                          else BEFORE_AUTH_SOURCE),
        max_line_source=(limits.max_line_source if message == limits.max_message_bytes
                         else BEFORE_AUTH_SOURCE))

# How long a refused connection may take to send its first bytes (which pick
# the language of the refusal) before it is closed without a reply.
REFUSAL_WAIT_S = 1.0

# How long a connection the server closes (a protocol error, QUIT) may go on sending, its
# input read and dropped, after the server has ended its side (Connection._close_lingering)
# and before it is aborted.
CLOSE_LINGER_S = 1.0

# File descriptors kept for the server itself beyond its clients: the
# listener, the journal and its compaction file, the event loop, the standard
# streams, the refusals waiting (below) and a margin. The metrics endpoint's
# come on top (metrics_file_descriptors).
RESERVED_FILE_DESCRIPTORS = 64

# Refused connections waiting for their first bytes, to be answered in their mode: at
# most half the reserved descriptors, and a few from any one address, so that one host's
# flood of refused connections does not leave the others' refusals unanswered (past
# either, a connection is cut off without an answer).
REFUSALS_WAITING = RESERVED_FILE_DESCRIPTORS // 2
REFUSALS_WAITING_PER_ADDRESS = 4


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits on connections; each has a server flag (see config.py)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS  # 0: no limit
    max_request_buffer_bytes: int = DEFAULT_MAX_REQUEST_BUFFER_BYTES
    max_reply_buffer_bytes: int = DEFAULT_MAX_REPLY_BUFFER_BYTES
    idle_timeout_s: float = 0.0  # 0: connections may stay idle forever
    auth_timeout_s: float = 10.0  # with an auth token: time to authenticate
    tcp_keepalive_s: int = 300  # probe a silent peer after this long; 0: no keepalive
    max_client_memory_bytes: int = 0  # all connections' buffers together; 0: no limit
    # Not a flag: the floor under max_request_buffer_bytes for waits (MIN_WAITS_ROOM_BYTES);
    # unit tests of the pause lower it, rather than park a thousand receives.
    min_waits_room_bytes: int = MIN_WAITS_ROOM_BYTES

    @property
    def waits_room_bytes(self) -> int:
        """waits_room_bytes: past what its waiting receives hold (WAITING_RECEIVE_BYTES
        each), a binary connection is not read until one ends: max_request_buffer_bytes,
        and at least min_waits_room_bytes."""
        return max(self.max_request_buffer_bytes, self.min_waits_room_bytes)


class Counters:
    """What the connection limits have done since start-up, for stats."""

    __slots__ = ("auth_timeouts", "client_memory_bytes", "client_memory_disconnects",
                 "idle_disconnects", "refused", "refused_per_address",
                 "slow_reader_disconnects")

    def __init__(self) -> None:
        self.refused = 0  # over max_connections or max_connections_per_address
        self.refused_per_address = 0  # of those, over max_connections_per_address
        self.idle_disconnects = 0  # closed by idle_timeout_s
        self.slow_reader_disconnects = 0  # over max_reply_buffer_bytes
        self.auth_timeouts = 0  # no AUTH within auth_timeout_s
        self.client_memory_disconnects = 0  # over max_client_memory_bytes, together
        self.client_memory_bytes = 0  # what the connections held at the last check


def address_key(peer: object) -> str | None:
    """address_key: what `max_connections_per_address` counts a connection under.

    `peer` is the socket's peername: (host, port) for IPv4, (host, port,
    flowinfo, scope) for IPv6. An address counts as itself, in its normal
    form; an IPv4 one mapped into IPv6 as the IPv4 address. None (no limit)
    for anything else: no IP address at all.
    """
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def metrics_file_descriptors(metrics_max_connections: int | None) -> int:
    """metrics_file_descriptors: what the metrics endpoint can hold at once (None: no
    endpoint), twice --metrics-max-connections: its open connections, TLS handshakes in
    progress included, and as many refusals waiting for their peer to close
    (metrics_http.py). Counted by nothing, a --metrics-max-connections in the thousands
    could take the descriptors --max-connections was fitted to (a reviewer's note)."""
    return 0 if metrics_max_connections is None else 2 * metrics_max_connections


def fit_open_files(max_connections: int, soft: int, hard: int,
                   reserved: int = RESERVED_FILE_DESCRIPTORS) -> tuple[int, int]:
    """fit_open_files decides the open-file limit to ask for and the connection limit to enforce.

    Given the process' soft and hard RLIMIT_NOFILE (-1 meaning unlimited),
    returns (new soft limit, connections to admit), with `reserved`
    descriptors kept beyond the clients. The soft limit is raised as far as
    needed and allowed; if even the hard limit is too low, the connection
    limit comes down to what fits, so that accept() never fails for want of a
    descriptor.
    """
    needed = max_connections + reserved
    if soft == -1 or soft >= needed:
        return soft, max_connections
    new_soft = needed if hard == -1 else min(needed, hard)
    return new_soft, max(1, min(max_connections, new_soft - reserved))
