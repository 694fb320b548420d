"""Authentication: the server's auth token, loading it, checking it, and what a failure costs.

Design decision: one shared secret per server (`--auth-token`, the
WONDERQ_AUTH_TOKEN variable, or `--auth-token-file`), as Redis' `requirepass`
and beanstalkd's proxies do, rather than users and roles: WonderQ has one
kind of client. A connection proves it knows the token with the AUTH command
once; the connection holds the result as one boolean (connection.py), so
an authenticated connection pays nothing more per command.

Rules:
* The token is loaded once, at start-up. It is 1 to MAX_TOKEN_BYTES bytes with
  no whitespace and no control characters (text mode sends it as one word),
  and it is kept as bytes. Requests before AUTH may always be big enough to
  carry the longest (connection.py's limits before AUTH): a token longer than
  a small --max-message-bytes allowed a text line locked text clients out.
* The token never appears in a log line, in `--help` (config.py prints "set"
  or "off"), in Config's repr, or in a Command's repr (SecretBytes).
* Tokens are compared in constant time: both sides are hashed with SHA-256
  first and the digests compared with hmac.compare_digest, so neither the
  position of the first wrong byte nor the token's length shows in the time
  a check takes.
* A wrong token is answered AUTH_FAILED, then the connection reads nothing
  more and is closed AUTH_FAILURE_DELAY_S later. The delay slows a guesser
  down to one guess per connection per second; it costs the server one
  timer per failed connection, never anything on the message path.
* Every wrong token, on any connection, counts in `failures`
  (stats: server.auth_failures_total).
* `is_loopback` decides whether a bind address is reachable only from this
  machine; main.py warns when it is not and no token is set.

Must not know: sockets, asyncio, the broker.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path

from .errors import AUTH_FAILED, BAD_ARGUMENT, CommandError, ProtocolError


class SecretBytes(bytes):
    """Bytes that never show in a repr or a log line: an AUTH command's token. (Here, not
    in commands.py, which a compiled build compiles: mypyc builds no subclass of bytes.)"""

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

# The longest token: a JWT or an `openssl rand -hex` of any sensible size fits.
MAX_TOKEN_BYTES = 4096
# Seconds between a wrong token's answer and the close; see the rules above.
AUTH_FAILURE_DELAY_S = 1.0
# AUTH to a server without a token. It names what to do: the token sent is often one
# exported for another server (WONDERQ_AUTH_TOKEN), not one the user typed.
NO_TOKEN_MESSAGE = ("AUTH sent, but this server has no auth token (it was started without "
                    "--auth-token): connect without one")


class AuthFailed(ProtocolError):
    """A wrong token: answered, then the connection closes after `close_delay_s`."""

    close_delay_s = AUTH_FAILURE_DELAY_S


def check_token(text: str, source: str) -> bytes:
    """check_token returns a configured token as bytes, or raises ValueError naming
    `source` (a flag or a file) and the reason, never the token."""
    if not text:
        raise ValueError(f"{source} is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{source} holds whitespace or a control character; a token is "
                         "one word (text mode sends it as `AUTH <token>`)")
    token = text.encode()
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"{source} is {len(token)} bytes long, over the limit of "
                         f"{MAX_TOKEN_BYTES}; use a shorter token")
    return token


def load_token(token: str | None, token_file: str | None) -> bytes | None:
    """load_token is the configured token: from --auth-token (or WONDERQ_AUTH_TOKEN), from
    --auth-token-file (one trailing newline stripped), or None. Raises ValueError with a
    message for people when both are given, or the file cannot be read or is empty."""
    if token is not None and token_file is not None:
        raise ValueError("give --auth-token (or WONDERQ_AUTH_TOKEN) or --auth-token-file, "
                         "not both")
    if token is not None:
        return check_token(token, "--auth-token")
    if token_file is None:
        return None
    source = f"--auth-token-file {token_file}"
    try:
        with Path(token_file).open("rb") as file:
            # At most a token and its newline: a file named by mistake (/dev/zero, a log)
            # was read whole, into a MemoryError or for ever (a reviewer).
            raw = file.read(MAX_TOKEN_BYTES + 3)
    except OSError as exc:
        raise ValueError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TOKEN_BYTES + 2:
        raise ValueError(f"{source} is over {MAX_TOKEN_BYTES} bytes: not a token file")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{source} is not UTF-8 text") from None
    return check_token(text.removesuffix("\n").removesuffix("\r"), source)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class TokenCheck:
    """TokenCheck is the server's token (or None: no authentication) and its failure count."""

    def __init__(self, token: bytes | None) -> None:
        self._digest = _digest(token) if token is not None else None
        self.failures = 0

    @property
    def required(self) -> bool:
        """required: connections must AUTH before anything but QUIT."""
        return self._digest is not None

    def matches(self, given: bytes) -> bool:
        """matches compares `given` with the token in constant time (no counting)."""
        return self._digest is not None and hmac.compare_digest(self._digest, _digest(given))

    def check(self, given: bytes) -> None:
        """check is the AUTH command: returns when `given` is the token; raises AuthFailed
        (counted) when it is not, and a CommandError when no token is configured."""
        if self._digest is None:
            raise CommandError(BAD_ARGUMENT, NO_TOKEN_MESSAGE)
        if not self.matches(given):
            self.failures += 1
            raise AuthFailed(AUTH_FAILED, "wrong auth token; the connection closes")

    def bearer_ok(self, authorization: str) -> bool:
        """bearer_ok checks an HTTP `Authorization: Bearer <token>` header (the metrics
        endpoint); true for anything when no token is configured. A wrong token given
        is counted with the wrong AUTHs; no header at all is not (a scraper not yet
        configured is not a guesser)."""
        if self._digest is None:
            return True
        if not authorization.strip():
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and self.matches(
                credentials.strip().encode("latin-1", errors="replace")):  # as metrics_http
            return True                                                  # decoded it
        self.failures += 1
        return False


def is_loopback(host: str) -> bool:
    """is_loopback: an address to listen on that only this machine can reach (127.0.0.0/8,
    ::1, "localhost"). Anything else, "" and 0.0.0.0 included, may be reachable from
    other machines."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything
