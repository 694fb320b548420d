"""TLS for the message port (and the metrics port): the server's ssl.SSLContext.

Design decision: TLS is asyncio's, below the protocol. `create_server` gets
the context built here, and a Connection sees decrypted bytes exactly as it
would on plain TCP, so choosing the mode from the first bytes, both codecs
and authentication are unchanged. One port speaks either TLS or plain TCP,
never both: a plain client on a TLS port fails its handshake and is closed
(asyncio logs that at debug level only), and other connections never notice.

Rules:
* Settings: --tls-cert and --tls-key (a PEM certificate chain and its
  unencrypted key), optionally --tls-ca: then every client must present a
  certificate signed by that CA (CERT_REQUIRED), or its handshake fails.
* The context is Python's defaults for a server (ssl.create_default_context:
  TLS 1.2 or newer, the standard library's cipher choice); nothing is
  weakened here.
* The files are read once, before the journal is recovered, so a bad file
  stops start-up at once with TLSSetupError: a message naming the flag and
  the file, never a traceback, and never a prompt for a key's passphrase.

Must not know: the broker, the protocol.
"""

from __future__ import annotations

import ssl
from pathlib import Path


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


def _no_passphrase() -> bytes:
    # Without this, OpenSSL would ask for a passphrase on the terminal and wait.
    raise TLSSetupError("the --tls-key is encrypted; give an unencrypted key file "
                        "(readable by the server's user only)")
