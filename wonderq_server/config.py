"""Server settings: command-line flags, each also settable by a WONDERQ_* variable.

Design decision: one table (`FLAGS`) names every setting once, with its flag,
its environment variable, its type and its default, so `--help`, the README
and the environment cannot disagree. A flag given on the command line beats
the environment, which beats the default; a variable whose value cannot be
used is refused only when its flag is not given.

Rules:
* Every limit the server enforces has a setting here.
* A bad value (from a flag or the environment) stops start-up with a message
  naming the flag; the server never starts on a setting it did not understand.
* Sizes in bytes may say K, M or G (powers of 1024) where a size is usually
  large (--max-memory); a percentage there is of the memory the server may
  use, read once at start-up: physical memory, or its cgroup's limit (a
  container's) when lower (memory_limit.py).
* Settings that cannot mean what was meant stop start-up too: a
  --max-frame-bytes past the frame's 4-byte length, an empty --data-dir or
  --host (an unset variable in a service file would otherwise mean "keep
  nothing" or "listen on every interface"). A --max-message-bytes over
  --max-frame-bytes is allowed: text mode's lines are not frames.
* Secrets (SECRET_FLAGS: the auth token) are never shown: `--help` says
  "set" or "off" for them, an error about one never repeats its value, and
  Config's repr leaves the token out. A token file is read once, here
  (auth.py says what a token may be).
* TLS: --tls-cert and --tls-key go together; --tls-ca (require client
  certificates) needs them. The files are read when the server starts
  (tls.py), and a bad one stops start-up there.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from . import __version__
from .auth import check_token, load_token
from .broker import DEFAULT_MAX_QUEUES
from .busy_poll import MAX_BUSY_POLL_US
from .commands import MIN_LEASE_S, Limits
from .commit_wait import DEFAULT_GAP_US, DEFAULT_WAIT_US, MAX_WAIT_US
from .compiled import build_description
from .connection_limits import ConnectionLimits
from .journal import DEFAULT_RESERVE_BYTES, MAX_RESERVE_BYTES
from .memory_limit import usable_memory_bytes
from .peer_state import MAX_KEEPALIVE_S

DEFAULT_PORT = 7711
DEFAULT_DATA_DIR = "./wonderq-data"
DEFAULT_COMPACT_MIN_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_MEMORY = "40%"
# Client connections' buffers, all together (connection_limits.py): a quarter of what
# stored messages may take, by default.
DEFAULT_MAX_CLIENT_MEMORY = "10%"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    visibility_timeout_s: float = 30.0
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    data_dir: Path | None = None  # None: in memory, no journal
    ignored_data_dir: str | None = None  # a data directory given, overruled by --in-memory
    fsync: str = "always"
    repair: bool = False
    compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES
    journal_reserve_bytes: int = DEFAULT_RESERVE_BYTES
    max_queues: int = DEFAULT_MAX_QUEUES
    max_memory_bytes: int = 0  # 0: no limit (parse_config always sets one: --max-memory)
    metrics_port: int | None = None  # None: no metrics endpoint; 0 picks a free port
    metrics_host: str | None = None  # None: --host
    metrics_max_connections: int = 32  # metrics_http.DEFAULT_MAX_CONNECTIONS (not imported:
    metrics_timeout_s: float = 10.0  # that module imports h11, only wanted with
    metrics_max_head_bytes: int = 8192  # --metrics-port; a test checks they agree)
    auth_token: bytes | None = field(default=None, repr=False)  # None: no authentication
    tls_cert: Path | None = None  # with tls_key: serve TLS
    tls_key: Path | None = None
    tls_ca: Path | None = None  # require client certificates signed by this CA
    tls_handshake_timeout_s: float = 10.0
    busy_poll_us: int = 0  # 0: the loop sleeps as soon as it has nothing to do
    group_commit_wait_us: int = DEFAULT_WAIT_US  # 0: an fsync never waits (commit_wait.py)
    group_commit_gap_us: int = DEFAULT_GAP_US
    gc_freeze: bool = True  # freeze what survives a middle collection (gc_policy.py)


MAX_FLAG_INTEGER = 2**63 - 1  # the largest integer STATS (msgpack) can report
MSGPACK_MOST_ITEMS = 2**32 - 1  # the most items a msgpack array or map can hold


def _whole_number(text: str) -> int:
    """_whole_number reads an int, saying so in words rather than Python's ("invalid
    literal for int() with base 10"). No flag takes more than 64 bits: a limit past
    them started the server, whose STATS then failed to encode it (a reviewer)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if value > MAX_FLAG_INTEGER:
        raise ValueError(f"must be at most {MAX_FLAG_INTEGER} (64 bits)")
    return value


def _item_count(convert: Callable[[str], int]) -> Callable[[str], int]:
    """_item_count bounds a count of items in one request by what msgpack can hold: a
    --max-batch past it refused every binary request over 64 KiB as malformed (the
    decoder's limits are worked out from it, binary_codec.py)."""

    def item_count(text: str) -> int:
        value = convert(text)
        if value > MSGPACK_MOST_ITEMS:
            raise ValueError(f"must be at most {MSGPACK_MOST_ITEMS}, the most items a "
                             "msgpack array or map can hold")
        return value

    return item_count


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _port(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0-65535")
    return value


def _metrics_port(text: str) -> int | None:
    """_metrics_port reads --metrics-port: a port (0 picks a free one), or off."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    return _port(text)


def _token(text: str) -> str:
    check_token(text, "--auth-token")  # loaded (with --auth-token-file) in parse_config
    return text


def _seconds(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a number of seconds > 0")
    return value


def _lease_seconds(text: str) -> float:
    """_lease_seconds: a lease's length, as a receive's own must be (at least MIN_LEASE_S:
    a shorter default lease was over at once, each message handed out again)."""
    value = _seconds(text)
    if value < MIN_LEASE_S:
        raise ValueError(f"must be a number of seconds >= {MIN_LEASE_S} (a shorter lease "
                         f"is over at once)")
    return value


def _seconds_or_off(text: str) -> float:
    value = _number(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number of seconds >= 0 (0: off)")
    return value


def _whole_between(least: int, most: int, unit: str) -> Callable[[str], int]:
    """_whole_between makes the converter of a whole number of `unit` from `least` (0:
    off) to `most`."""
    lowest = "0 (off)" if least == 0 else str(least)

    def convert(text: str) -> int:
        value = _whole_number(text)
        if not least <= value <= most:
            raise ValueError(f"must be a whole number of {unit} from {lowest} to {most}")
        return value

    return convert


MAX_METRICS_CONNECTIONS = 65536  # each holds a socket, and so may a refusal as many more
_keepalive_seconds = _whole_between(0, MAX_KEEPALIVE_S, "seconds")
_busy_poll_us = _whole_between(0, MAX_BUSY_POLL_US, "microseconds")
_commit_wait_us = _whole_between(0, MAX_WAIT_US, "microseconds")
_commit_gap_us = _whole_between(1, MAX_WAIT_US, "microseconds")
_metrics_connections = _whole_between(1, MAX_METRICS_CONNECTIONS, "connections")


def _count(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
MAX_FRAME_LENGTH = 2**32 - 1  # a binary frame's length is 4 bytes (binary_codec.py)


def memory_size(text: str, physical: int | None = None) -> int:
    """memory_size reads --max-memory: bytes ("1000000", "1000000B"), a size with a K, M or
    G suffix in powers of 1024 ("512M", "512MB", "512MiB", "2g"), or a share of physical
    memory ("40%", "12.5%"). `physical` is for tests; by default the machine's."""
    cleaned = text.strip().replace(" ", "")
    if cleaned.endswith("%"):
        try:
            share = float(cleaned[:-1])
        except ValueError:
            raise ValueError("a percentage is a number then %, such as 40%") from None
        if not 0 < share <= 100:
            raise ValueError("a percentage must be over 0 and at most 100")
        physical = usable_memory_bytes() if physical is None else physical
        if physical is None:
            raise ValueError("physical memory size is unknown on this system; "
                             "give a size such as 2G")
        return max(1, int(physical * share / 100))
    value = _byte_count(cleaned)
    if value is None:
        raise ValueError("must be bytes, a size such as 512M or 2G (powers of 1024), "
                         "or a percentage of physical memory such as 40%")
    if value <= 0:
        raise ValueError("must be > 0")
    if value > MAX_FLAG_INTEGER:
        raise ValueError(f"must be at most {MAX_FLAG_INTEGER} bytes (64 bits)")
    return value


def _byte_count(text: str) -> int | None:
    """_byte_count reads bytes ("1000000", "1000000B") or a size with a K, M or G suffix in
    powers of 1024 ("512M", "512MB", "512MiB", "2g"); None if `text` is neither."""
    upper = text.upper()
    if upper.endswith(("KIB", "MIB", "GIB")):
        upper = upper[:-2]
    elif upper.endswith("B"):  # "512MB", and plain bytes as "100B"
        upper = upper[:-1]
    unit = upper[-1:] if upper[-1:] in ("K", "M", "G") else ""
    number = upper[:len(upper) - len(unit)]
    if not (number.isascii() and number.isdigit()):
        return None
    return int(number) * _SIZE_UNITS[unit]


def _disk_size(text: str) -> int:
    """_disk_size reads a byte count on disk, as _byte_count; 0 allowed (off)."""
    value = _byte_count(text.strip().replace(" ", ""))
    if value is None:
        raise ValueError("must be bytes, or a size such as 512K or 4M (powers of 1024)")
    if value > MAX_RESERVE_BYTES:
        raise ValueError(f"must be at most {MAX_RESERVE_BYTES // 1024**2}M")
    return value


def _positive_size(text: str) -> int:
    """_positive_size reads a byte count over 0: bytes, or K, M, G (powers of 1024), of
    at most 64 bits, as every number flag (a reviewer's 10**23 was taken)."""
    value = _byte_count(text.strip().replace(" ", ""))
    if value is None or value <= 0:
        raise ValueError("must be bytes over 0, or a size such as 64M (powers of 1024)")
    if value > MAX_FLAG_INTEGER:
        raise ValueError(f"must be at most {MAX_FLAG_INTEGER} bytes (64 bits)")
    return value


def _fsync(text: str) -> str:
    if text not in ("always", "everysec", "never"):
        raise ValueError("must be always, everysec or never")
    return text


def _on_off(text: str) -> bool:
    """_on_off: on or off, or the words WONDERQ_* switches take (true, yes, 1; false, no,
    0), so that WONDERQ_GC_FREEZE=false works as WONDERQ_IN_MEMORY=1 does."""
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise ValueError("must be on or off")


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError("must be debug, info, warning or error")
    return level


_LIMITS = Limits()
_CONNECTION_LIMITS = ConnectionLimits()

# (flag, destination, type, default, help)
FLAGS = [
    ("--host", "host", str, Config.host, "address to listen on"),
    ("--port", "port", _port, Config.port, "TCP port (0 picks a free one)"),
    ("--visibility-timeout", "visibility_timeout_s", _lease_seconds,
     Config.visibility_timeout_s,
     "default lease length in seconds for a receive that names none"),
    ("--max-message-bytes", "max_message_bytes", _positive_int, _LIMITS.max_message_bytes,
     "largest message body accepted"),
    ("--max-batch", "max_batch", _item_count(_positive_int), _LIMITS.max_batch,
     "most items in one batch: put_many, ack_many, nack_many, receive, peek"),
    ("--max-wait", "max_wait_s", _seconds, _LIMITS.max_wait_s,
     "longest long-poll wait a receive may ask for, seconds"),
    ("--max-visibility-timeout", "max_visibility_s", _lease_seconds,
     _LIMITS.max_visibility_s,
     "longest lease a receive, a touch or a queue's visibility_timeout may ask for, "
     "seconds"),
    ("--max-delay", "max_delay_s", _seconds, _LIMITS.max_delay_s,
     "longest delay a put, a nack or a queue's delay setting may ask for, seconds"),
    ("--max-expiry", "max_expiry_s", _seconds, _LIMITS.max_expiry_s,
     "longest expiry a put or a queue's expiry setting may ask for, seconds (0, never, "
     "is always allowed)"),
    ("--max-frame-bytes", "max_frame_bytes", _positive_int, _LIMITS.max_frame_bytes,
     "largest binary-protocol frame accepted"),
    ("--max-headers", "max_headers", _item_count(_count), _LIMITS.max_headers,
     "most headers on one message"),
    ("--max-header-bytes", "max_header_bytes", _count, _LIMITS.max_header_bytes,
     "most bytes of header keys and values together on one message (UTF-8)"),
    ("--max-queues", "max_queues", _positive_int, DEFAULT_MAX_QUEUES,
     "most queues; creating one more is refused with TOO_MANY_QUEUES"),
    ("--max-memory", "max_memory_bytes", memory_size, DEFAULT_MAX_MEMORY,
     "memory for stored messages (body + headers + 200 bytes each) beyond which puts are "
     "refused with FULL: bytes, K/M/G (powers of 1024), or a percentage of the memory the "
     "server may use (physical, or a container's cgroup limit when lower)"),
    ("--max-connections", "max_connections", _positive_int, _CONNECTION_LIMITS.max_connections,
     "most client connections; the next is answered TOO_MANY_CONNECTIONS and closed (the "
     "open-file limit is raised to fit, or this is lowered with a warning)"),
    ("--max-connections-per-address", "max_connections_per_address", _count,
     _CONNECTION_LIMITS.max_connections_per_address,
     "most client connections from one IP address; the next is answered "
     "TOO_MANY_CONNECTIONS and closed; 0 no limit"),
    ("--max-request-buffer-bytes", "max_request_buffer_bytes", _positive_int,
     _CONNECTION_LIMITS.max_request_buffer_bytes,
     "bytes of requests one connection may have read but not yet run (text lines behind a "
     "waiting receive; each waiting receive counts 1 KiB); past it, the server stops "
     "reading from that connection"),
    ("--max-client-memory", "max_client_memory_bytes", memory_size, DEFAULT_MAX_CLIENT_MEMORY,
     "memory all client connections together may hold in buffers (partial requests, held "
     "requests, unsent replies, waiting receives); past it, checked once a second, the "
     "connections holding the most are disconnected: bytes, K/M/G, or a percentage of the "
     "memory the server may use"),
    ("--max-reply-buffer-bytes", "max_reply_buffer_bytes", _positive_int,
     _CONNECTION_LIMITS.max_reply_buffer_bytes,
     "bytes of replies one connection may leave unsent; a connection past it when more is "
     "to be written is not reading and is disconnected"),
    ("--auth-timeout", "auth_timeout_s", _seconds, _CONNECTION_LIMITS.auth_timeout_s,
     "with an auth token: close a connection that has not authenticated within this many "
     "seconds (AUTH_TIMEOUT)"),
    ("--idle-timeout", "idle_timeout_s", _seconds_or_off, _CONNECTION_LIMITS.idle_timeout_s,
     "close a connection that sends no request for this many seconds (a waiting receive "
     "counts as activity); 0 never"),
    ("--tcp-keepalive", "tcp_keepalive_s", _keepalive_seconds,
     _CONNECTION_LIMITS.tcp_keepalive_s,
     "probe a client silent for this many seconds (TCP keepalive: then every third of it, "
     "3 probes) and close its connection if its host is gone; 0 off"),
    ("--busy-poll", "busy_poll_us", _busy_poll_us, Config.busy_poll_us,
     "after input, keep polling the sockets this many microseconds before sleeping, so a "
     "client's next request finds the server awake (saves being woken, costly on some "
     "VMs; costs CPU while idle); 0 off"),
    ("--gc-freeze", "gc_freeze", _on_off, "on",
     "on: after each collection of the cyclic garbage collector's middle generation "
     "(every 2 young ones), freeze what survived it, so that no later collection scans "
     "long-lived messages again (leasing a million: pauses up to 20-31 ms, and not a "
     "full collection of 300 ms); off: Python's collector as it is"),
    ("--log-level", "log_level", _log_level, Config.log_level,
     "debug, info, warning or error"),
    ("--data-dir", "data_dir", str, DEFAULT_DATA_DIR,
     "directory of the journal, created if missing; 'none' runs in memory"),
    ("--fsync", "fsync", _fsync, Config.fsync,
     "always (answer after fsync, group commit), everysec, or never"),
    ("--compact-min-bytes", "compact_min_bytes", _positive_size, DEFAULT_COMPACT_MIN_BYTES,
     "compact the journal only once it is at least this big (K, M, G suffixes)"),
    ("--group-commit-wait", "group_commit_wait_us", _commit_wait_us,
     Config.group_commit_wait_us,
     "under --fsync always, an fsync waits up to this many microseconds after the one "
     "before it for the clients that one answered to send their next requests, so they "
     "share it; 0 never waits"),
    ("--group-commit-gap", "group_commit_gap_us", _commit_gap_us, Config.group_commit_gap_us,
     "... and stops waiting as soon as none of them has sent anything for this many "
     "microseconds"),
    ("--journal-reserve", "journal_reserve_bytes", _disk_size, DEFAULT_RESERVE_BYTES,
     "under --fsync always, keep this many bytes of zeros written past the journal's "
     "records, so the fsync behind each reply does not also commit a new file size "
     "(K, M, G suffixes; 0 off)"),
    ("--metrics-port", "metrics_port", _metrics_port, None,
     "serve GET /metrics (Prometheus) and GET /stats (JSON) over HTTP on this port of "
     "--metrics-host (0 picks a free one; the log names it)"),
    ("--metrics-host", "metrics_host", str, None,
     "address the metrics endpoint listens on, instead of --host, so a Prometheus on "
     "another machine can scrape while clients stay on loopback"),
    ("--metrics-max-connections", "metrics_max_connections", _metrics_connections,
     Config.metrics_max_connections,
     "most HTTP connections the metrics endpoint holds open at once; one more is answered "
     "503 (metrics_connections_refused_total in stats)"),
    ("--metrics-timeout", "metrics_timeout_s", _seconds, Config.metrics_timeout_s,
     "the metrics endpoint drops a connection still open this many seconds after it was "
     "accepted (a peer that sends slowly or does not read)"),
    ("--metrics-max-head-bytes", "metrics_max_head_bytes", _positive_size,
     Config.metrics_max_head_bytes,
     "largest HTTP request head (request line and headers) the metrics endpoint reads; "
     "a bigger one is answered 431 (K, M, G suffixes)"),
    ("--auth-token", "auth_token", _token, None,
     "clients must send AUTH with this token before anything else; also guards "
     "--metrics-port (Authorization: Bearer)"),
    ("--auth-token-file", "auth_token_file", str, None,
     "read the auth token from this file (one trailing newline is dropped) instead"),
    ("--tls-cert", "tls_cert", str, None, "serve TLS with this PEM certificate (chain); "
     "needs --tls-key"),
    ("--tls-key", "tls_key", str, None, "the PEM private key of --tls-cert (unencrypted)"),
    ("--tls-ca", "tls_ca", str, None, "require client certificates signed by this PEM CA "
     "bundle; needs --tls-cert"),
    ("--tls-handshake-timeout", "tls_handshake_timeout_s", _seconds,
     Config.tls_handshake_timeout_s, "close a TLS connection whose handshake is not done "
     "within this many seconds (until then it counts toward --max-connections and "
     "--max-connections-per-address)"),
]

# Flags whose value is a secret: never printed (see the module's rules).
SECRET_FLAGS = frozenset({"--auth-token"})
# What a flag left unset means, where it is not "off" (--help's default).
NONE_MEANS = {"--metrics-host": "--host"}

# Switches: (flag, destination, help). Also settable as WONDERQ_IN_MEMORY=1 etc.
SWITCHES = [
    ("--in-memory", "in_memory", "run without a journal: nothing survives a restart "
     "(same as --data-dir none)"),
    ("--repair", "repair", "at start-up, skip damaged journal records (and report what was "
     "lost) instead of refusing to start"),
]


def env_name(flag: str) -> str:
    """env_name is the environment variable for a flag: --max-batch -> WONDERQ_MAX_BATCH."""
    return "WONDERQ_" + flag.lstrip("-").replace("-", "_").upper()


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad setting is one line: its usage is 25 lines of flags, which buried
    the error (and, for a bad variable, was cut off at the flag being read)."""

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):
            # argparse reads a value that starts with "-" (`--max-memory -5%`) as the
            # next flag, and says only this (a reviewer): name the way that works.
            message += " (a value that starts with '-' is written --flag=VALUE)"
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag and its "
                     "WONDERQ_* variable)\n")


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wonderq-server",
        description="WonderQ: a work-queue broker with SQS-style leases. "
                    "Every flag can also be set with the WONDERQ_* variable shown.")
    parser.add_argument("--version", action="version",
                        version=f"wonderq-server {__version__} ({build_description()})")
    for flag, dest, kind, default, text in FLAGS:
        env = env_name(flag)
        raw = environ.get(env)
        secret = flag in SECRET_FLAGS
        if raw is not None:
            try:
                default = kind(raw)
            except ValueError as exc:
                # Refused only if the flag is not given, which beats it (parse_config):
                # a stray WONDERQ_PORT=abc stopped `--port 0` (a newcomer's review).
                default = _BadVariable(env, f"{env}{'' if secret else f'={raw!r}'}: {exc}")
        if default is None or (default == "" and flag in NONE_MEANS):  # "" is unset too
            shown = NONE_MEANS.get(flag, "off")
        elif secret and not isinstance(default, _BadVariable):  # which names no value
            shown = "set"
        else:
            shown = default
        help_text = f"{text} (env {env}; default {shown})"
        parser.add_argument(flag, dest=dest, type=_named(kind, flag, secret), default=default,
                            help=help_text.replace("%", "%%"))  # argparse formats help
    for flag, dest, text in SWITCHES:
        env = env_name(flag)
        try:
            switch: bool | _BadVariable = _flag(environ.get(env, ""))
        except ValueError as exc:
            switch = _BadVariable(env, f"{env}={environ[env]!r}: {exc}")
        parser.add_argument(flag, dest=dest, action="store_true", default=switch,
                            help=f"{text} (env {env}=1)")
    return parser


class _BadVariable:
    """_BadVariable is the default of a flag whose WONDERQ_* variable cannot be used: the
    start stops with `reason` unless the flag was given (argparse leaves a default that
    is not a string as it is)."""

    def __init__(self, variable: str, reason: str) -> None:
        self.variable = variable
        self.reason = reason

    def __str__(self) -> str:  # --help's "default ..."
        return f"none: {self.variable} cannot be used"


def _parse_flags(argv: Sequence[str] | None,
                 environ: Mapping[str, str]) -> argparse.Namespace:
    """_parse_flags: the flags, with the environment's values for those not given."""
    parser = build_parser(environ)
    ns = parser.parse_args(argv)
    for value in vars(ns).values():
        if isinstance(value, _BadVariable):
            parser.error(value.reason)
    return ns


def _named(kind, flag: str, secret: bool = False):
    """_named wraps a converter so argparse names the flag and the reason on a bad value
    (and the value itself, unless it is a secret)."""

    def convert(text: str):
        try:
            return kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) if secret else f"{text!r}: {exc}") \
                from None

    convert.__name__ = flag
    return convert


# A --data-dir value no command line gives (parse_config tells a flag from none by it).
NOT_GIVEN = "\0not given"


def parse_config(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> Config:
    """parse_config reads flags and environment into a Config; exits with usage on bad input."""
    ns = _parse_flags(argv, os.environ if environ is None else environ)
    limits = Limits(
        max_message_bytes=ns.max_message_bytes,
        max_batch=ns.max_batch,
        max_wait_s=ns.max_wait_s,
        max_visibility_s=ns.max_visibility_s,
        max_delay_s=ns.max_delay_s,
        max_expiry_s=ns.max_expiry_s,
        max_frame_bytes=ns.max_frame_bytes,
        max_headers=ns.max_headers,
        max_header_bytes=ns.max_header_bytes,
    )
    if ns.visibility_timeout_s > limits.max_visibility_s:
        build_parser({}).error("--visibility-timeout is over --max-visibility-timeout")
    if ns.max_frame_bytes > MAX_FRAME_LENGTH:
        build_parser({}).error(f"--max-frame-bytes is over {MAX_FRAME_LENGTH}, the most a "
                               "frame's 4-byte length can say")
    if not ns.host.strip():
        build_parser({}).error("--host is empty (an unset WONDERQ_HOST?): give an address; "
                               "0.0.0.0 or :: listens on every interface")
    for flag, host in (("--host", ns.host), ("--metrics-host", ns.metrics_host)):
        try:
            # As the resolver will encode it: "a..b" or a label over 63 characters ended
            # the start in a UnicodeError traceback (a reviewer).
            (host or "").encode("idna")
        except UnicodeError as exc:
            reason = str(exc.__cause__ or exc).removeprefix("UnicodeError: ")
            build_parser({}).error(f"{flag} {host!r} is not a host name or address: {reason}")
    connection_limits = ConnectionLimits(
        max_connections=ns.max_connections,
        max_connections_per_address=ns.max_connections_per_address,
        max_request_buffer_bytes=ns.max_request_buffer_bytes,
        max_reply_buffer_bytes=ns.max_reply_buffer_bytes,
        idle_timeout_s=ns.idle_timeout_s,
        auth_timeout_s=ns.auth_timeout_s,
        tcp_keepalive_s=ns.tcp_keepalive_s,
        max_client_memory_bytes=ns.max_client_memory_bytes,
    )
    if not ns.data_dir.strip() and not ns.in_memory:
        build_parser({}).error("--data-dir is empty (an unset WONDERQ_DATA_DIR?): give a "
                               "directory, or none (or --in-memory) to keep nothing")
    no_data_dir = ns.data_dir.strip().lower() in ("none", "")
    if ns.in_memory and not no_data_dir:
        # The command line alone, with a data directory no one can give, to tell a
        # --data-dir given (even the default's) from none.
        given = _parse_flags(argv, {env_name("--data-dir"): NOT_GIVEN})
        if not given.in_memory and given.data_dir != NOT_GIVEN:
            # A flag beats the environment: --data-dir given beats a WONDERQ_IN_MEMORY
            # left in a unit file, which made a reviewer's journaled server keep nothing.
            ns.in_memory = False
    in_memory = ns.in_memory or no_data_dir
    # --in-memory wins over a data directory (a WONDERQ_DATA_DIR set for every run, say);
    # the server says so at start rather than silently keep nothing.
    ignored_data_dir = ns.data_dir if ns.in_memory and not no_data_dir \
        and ns.data_dir != DEFAULT_DATA_DIR else None
    try:
        auth_token = load_token(ns.auth_token, ns.auth_token_file)
    except ValueError as exc:
        build_parser({}).error(str(exc))
    if (ns.tls_cert is None) != (ns.tls_key is None):
        build_parser({}).error("--tls-cert and --tls-key go together: give both, or neither")
    if ns.tls_ca is not None and ns.tls_cert is None:
        build_parser({}).error("--tls-ca (require client certificates) needs --tls-cert and "
                               "--tls-key")
    return Config(host=ns.host, port=ns.port, visibility_timeout_s=ns.visibility_timeout_s,
                  log_level=ns.log_level, limits=limits, connection_limits=connection_limits,
                  data_dir=None if in_memory else Path(ns.data_dir),
                  ignored_data_dir=ignored_data_dir,
                  fsync=ns.fsync, repair=ns.repair, compact_min_bytes=ns.compact_min_bytes,
                  journal_reserve_bytes=ns.journal_reserve_bytes,
                  max_queues=ns.max_queues, max_memory_bytes=ns.max_memory_bytes,
                  metrics_port=ns.metrics_port, metrics_host=ns.metrics_host,
                  metrics_max_connections=ns.metrics_max_connections,
                  metrics_timeout_s=ns.metrics_timeout_s,
                  metrics_max_head_bytes=ns.metrics_max_head_bytes,
                  auth_token=auth_token,
                  tls_cert=_path(ns.tls_cert), tls_key=_path(ns.tls_key),
                  tls_ca=_path(ns.tls_ca),
                  tls_handshake_timeout_s=ns.tls_handshake_timeout_s,
                  busy_poll_us=ns.busy_poll_us,
                  group_commit_wait_us=ns.group_commit_wait_us,
                  group_commit_gap_us=ns.group_commit_gap_us,
                  gc_freeze=ns.gc_freeze)


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)
