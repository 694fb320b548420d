"""TLS for the message port (and the metrics port): the server's ssl.SSLContext.

Design decision: TLS is asyncio's, below the protocol. `create_server` gets
the context built here, and a Connection sees decrypted bytes exactly as it
would on plain TCP, so choosing the mode from the first bytes, both codecs
and authentication are unchanged. One port speaks either TLS or plain TCP,
never both: a plain client on a TLS port fails its handshake and is closed,
and other connections never notice.

A failed handshake is the server's to report (`report_failed_handshakes`):
asyncio and uvloop log one at debug level only, so a client with the wrong
CA, without the certificate --tls-ca asks for, or speaking plain TCP left
no line at all (an operator's review). The context's `sslobject_class`
(the standard library's hook for this) is a subclass of ssl.SSLObject
whose do_handshake reports an SSLError before it raises it on: once per
failed connection, nothing per message. The TLS layer does not know the
peer's address there, so the report names the reason, not the client.

Rules:
* Settings: --tls-cert and --tls-key (a PEM certificate chain and its
  unencrypted key), optionally --tls-ca: then every client must present a
  certificate signed by that CA (CERT_REQUIRED), or its handshake fails.
* The context is Python's defaults for a server (ssl.create_default_context:
  TLS 1.2 or newer, the standard library's cipher choice); nothing is
  weakened here.
* A handshake that fails with an SSLError is reported with a hint of what
  it usually means (HANDSHAKE_HINTS); one that never finishes (a client
  that connects and sends nothing, a port scanner, a health check that
  only opens the port) is not an error of TLS and is not reported.
* Handshakes in progress hold a socket each before any Connection exists,
  so --max-connections (which counts Connections) did not see them: a
  reviewer's silent TCP connections to the TLS port filled the
  file-descriptor table, and polite TLS clients then failed. The hook
  counts them (`HandshakeLimit`): one that would start while the
  handshakes in progress and the open connections together are at the
  limit is failed at once (an SSLError, so the TLS layer closes the
  socket), and reported like any failed handshake. Plain TCP gets
  TOO_MANY_CONNECTIONS from the server; over TLS nothing can be said
  before a handshake. The hook cannot count them per address
  (--max-connections-per-address): an SSLObject is made from memory BIOs
  and never learns its peer; tls_listener.py accepts the port's clients
  itself to count them there. The metrics port's handshakes count the same
  way, against --metrics-max-connections (metrics_http.py).
* The files are read once, before the journal is recovered, so a bad file
  stops start-up at once with TLSSetupError: a message naming the flag and
  the file, never a traceback, and never a prompt for a key's passphrase.

Must not know: the broker, the protocol.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Callable
from pathlib import Path

# What a failed handshake's reason (OpenSSL's, ssl.SSLError.reason) usually means.
HANDSHAKE_HINTS = {
    "WRONG_VERSION_NUMBER": "the client does not speak TLS (a plain client on the TLS port?)",
    "HTTP_REQUEST": "the client sent plain text (HTTP, or a text-mode GET or PUT) to the "
                    "TLS port",
    "UNKNOWN_PROTOCOL": "the client does not speak TLS (a plain client on the TLS port?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the server's certificate (its CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected the server's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client rejected the server's certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate; --tls-ca requires one",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate is not signed by --tls-ca "
                                 "(or has expired)",
    "UNSUPPORTED_PROTOCOL": "the client offers only TLS versions older than 1.2",
    "NO_SHARED_CIPHER": "the client and the server share no cipher",
}


class TLSSetupError(Exception):
    """A TLS file could not be used; the message says which and why (start-up stops)."""


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """server_context builds the server's context from --tls-cert, --tls-key and --tls-ca."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except TLSSetupError:
        raise
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            raise TLSSetupError(
                f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its "
                f"matching key ({exc.reason or 'no PEM data it could use'})") from None
        raise TLSSetupError(f"cannot read --tls-cert {cert} or --tls-key {key}: "
                            f"{exc.strerror or exc}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except OSError as exc:
            reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
            raise TLSSetupError(f"cannot use --tls-ca {ca}: {reason or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HandshakeLimit:
    """HandshakeLimit counts a port's TLS handshakes in progress and refuses new ones while
    `room()` (the server's: its limit minus its open connections) is not above them."""

    def __init__(self, room: Callable[[], int], flag: str = "--max-connections") -> None:
        self.room = room
        self.flag = flag  # the limit's flag, for the refusal's reason
        self.in_progress = 0
        self.refused = 0  # handshakes failed at once for want of room


TOO_MANY_HANDSHAKES = "TOO_MANY_CONNECTIONS"


def report_failed_handshakes(context: ssl.SSLContext,
                             report: Callable[[str, str], None],
                             limit: HandshakeLimit | None = None) -> None:
    """report_failed_handshakes makes every failed handshake on `context` call
    `report(reason, why)`: OpenSSL's reason, and it with what it usually means; with a
    `limit`, a handshake that would start without room is failed at once (the rules)."""

    class ReportingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            counted = getattr(self, "_counted", None)
            if counted is None and limit is not None:  # the first call: at accept
                if limit.in_progress >= limit.room():
                    limit.refused += 1
                    self._counted = False
                    report(TOO_MANY_HANDSHAKES, "the server already serves its maximum of "
                           f"connections ({limit.flag}), handshakes in progress included")
                    raise ssl.SSLError(TOO_MANY_HANDSHAKES)
                limit.in_progress += 1
                self._counted = counted = True
                # An abandoned handshake (timed out, the peer gone) ends with the object.
                weakref.finalize(self, _handshake_over, limit, self.__dict__)
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not done yet: the TLS layer calls again when more has come
            except ssl.SSLError as exc:
                self._over(limit)
                report(handshake_reason(exc), describe_handshake_error(exc))
                raise
            self._over(limit)

        def _over(self, limit: HandshakeLimit | None) -> None:
            if limit is not None:
                _handshake_over(limit, self.__dict__)

    context.sslobject_class = ReportingSSLObject


def _handshake_over(limit: HandshakeLimit, state: dict[str, object]) -> None:
    """_handshake_over: a counted handshake has finished, failed, or (its object gone)
    been abandoned: it is no longer in progress. Once only, whichever comes first."""
    if state.get("_counted"):
        state["_counted"] = False
        limit.in_progress -= 1


def handshake_reason(exc: ssl.SSLError) -> str:
    """handshake_reason: OpenSSL's name for why a handshake failed."""
    return exc.reason or type(exc).__name__


def describe_handshake_error(exc: ssl.SSLError) -> str:
    """describe_handshake_error: OpenSSL's reason for a failed handshake, and a hint."""
    reason = handshake_reason(exc)
    hint = HANDSHAKE_HINTS.get(reason)
    detail = getattr(exc, "verify_message", "") or ""
    return reason + (f" ({detail})" if detail else "") + (f": {hint}" if hint else "")


def _no_passphrase() -> bytes:
    # Without this, OpenSSL would ask for a passphrase on the terminal and wait.
    raise TLSSetupError("the --tls-key is encrypted; give an unencrypted key file "
                        "(readable by the server's user only)")
