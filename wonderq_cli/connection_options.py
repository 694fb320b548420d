"""How `wonderq` connects: the auth token and TLS flags, turned into connect()'s keywords.

Design decision: every subcommand connects through `open_client(args)`, so
the token and TLS settings are read once (main.py calls `resolve` after
parsing) and no subcommand can forget them. The client library takes an
ssl.SSLContext as it is; building one from files is this module's job (the
CLI may import ssl, the client may not).

Rules:
* --auth-token, else the WONDERQ_AUTH_TOKEN variable (read after parsing,
  as WONDERQ_HOST is). The variable is the better place: a flag shows in
  `ps`.
* --tls verifies the server against the system's CAs; --tls-ca FILE trusts
  that CA instead; --tls-cert FILE (with its key inside, or --tls-key FILE)
  presents a client certificate, for a server started with --tls-ca. Any of
  them implies --tls.
* Each TLS flag not given (or given empty) is read from its variable, as
  the token is: WONDERQ_CLIENT_TLS (1, true, yes or on; 0, false, no, off
  or empty), WONDERQ_CLIENT_TLS_CA, WONDERQ_CLIENT_TLS_CERT,
  WONDERQ_CLIENT_TLS_KEY. CLIENT, because the server's WONDERQ_TLS_CA,
  _CERT and _KEY (its flags' variables, config.py) name its own files and
  the CA it checks clients against: a shell that starts a server must not
  hand the tool the server's key as a client certificate. As with the
  flags, a file implies TLS; WONDERQ_CLIENT_TLS=0 does not turn it off.
* --no-tls connects over plain TCP whatever the variables say: the one
  way, short of `env -u`, to reach a plain port from a shell set up for a
  TLS one. Given with a TLS flag it is a contradiction, refused (exit 2)
  rather than settled by order. It still sends WONDERQ_AUTH_TOKEN, as a
  plain server may have a token too, but in such a shell that token is
  likely the TLS server's: sent in plain text, so `args.warning` says so
  (main.py prints it) when a TLS variable is set.
* `tls_environment` is the other way round: the variables that give a
  program (`wonderq work`'s) the settings this run has, files as absolute
  paths, so a `wonderq put` it runs reaches the same server the same way.
  `without_tls_variables` drops the ones a program would otherwise inherit
  from this tool's environment: a --no-tls run's programs run plain too.
* A TLS setting that cannot be used is a ValueError naming where it came
  from (the flag, or the variable) and the file (main.py prints it and
  exits 2), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wonderq_client import connect

if TYPE_CHECKING:
    from wonderq_client.client import _Connect

TOKEN_VARIABLE = "WONDERQ_AUTH_TOKEN"
TLS_VARIABLE = "WONDERQ_CLIENT_TLS"
# The TLS flags that take a file, by their variable.
TLS_FILE_VARIABLES = {"tls_ca": "WONDERQ_CLIENT_TLS_CA", "tls_cert": "WONDERQ_CLIENT_TLS_CERT",
                      "tls_key": "WONDERQ_CLIENT_TLS_KEY"}
TLS_FLAGS = {"tls_ca": "--tls-ca", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}
TLS_VARIABLES = (TLS_VARIABLE, *TLS_FILE_VARIABLES.values())


def add_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """add_flags adds the security flags; `default` is main.py's (None or SUPPRESS)."""
    parser.add_argument("--auth-token", default=default, metavar="TOKEN",
                        help=f"the server's auth token (env {TOKEN_VARIABLE}, better: a flag "
                             "shows in ps)")
    parser.add_argument("--tls", action="store_true", default=default,
                        help="connect with TLS, verifying the server against the system's CAs "
                             f"(env {TLS_VARIABLE}=1)")
    parser.add_argument("--tls-ca", default=default, metavar="FILE",
                        help="connect with TLS, trusting the CA certificates in FILE (PEM) "
                             f"(env {TLS_FILE_VARIABLES['tls_ca']})")
    parser.add_argument("--tls-cert", default=default, metavar="FILE",
                        help="present this client certificate (PEM, with its key unless "
                             f"--tls-key); implies --tls (env {TLS_FILE_VARIABLES['tls_cert']})")
    parser.add_argument("--tls-key", default=default, metavar="FILE",
                        help="the private key of --tls-cert "
                             f"(env {TLS_FILE_VARIABLES['tls_key']})")
    parser.add_argument("--no-tls", action="store_true", default=default,
                        help="connect over plain TCP, whatever the WONDERQ_CLIENT_TLS* "
                             "variables say (a token goes in plain text)")


def resolve(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """resolve fills in the token from the environment and sets `args.connect_options`,
    connect()'s keywords. Raises ValueError naming the flag or variable that cannot be
    used."""
    token_from_env = args.auth_token is None and bool(env.get(TOKEN_VARIABLE))
    args.token_from_env = token_from_env  # main.py names it when the server has no token
    if args.auth_token is None:
        args.auth_token = env.get(TOKEN_VARIABLE) or None
    if args.auth_token is not None:
        try:
            args.auth_token.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8, from the shell (a reviewer)
            raise ValueError(f"{TOKEN_VARIABLE if token_from_env else '--auth-token'} is not "
                             f"UTF-8 text; a token is sent as a string") from None
    args.warning = ""
    args.tls_sources = dict(TLS_FLAGS)  # where each file came from, for the errors
    if getattr(args, "no_tls", None):
        given = [TLS_FLAGS.get(name, "--tls") for name in ("tls", *TLS_FLAGS)
                 if getattr(args, name)]
        if given:
            raise ValueError(f"--no-tls contradicts {given[0]}")
        set_for_tls = [name for name in TLS_VARIABLES if env.get(name)]
        if token_from_env and set_for_tls:
            args.warning = (f"--no-tls sends the token in {TOKEN_VARIABLE} in plain text, "
                            f"though {set_for_tls[0]} is set for TLS")
        args.connect_options = {"auth_token": args.auth_token, "ssl": None}
        return
    if not args.tls:
        args.tls = _switch(env.get(TLS_VARIABLE, ""), TLS_VARIABLE)
    for name, variable in TLS_FILE_VARIABLES.items():
        if not getattr(args, name):  # not given, or given empty ("$UNSET")
            setattr(args, name, env.get(variable) or None)
            if getattr(args, name):
                args.tls_sources[name] = variable
    args.connect_options = {"auth_token": args.auth_token, "ssl": ssl_context(args)}


def _switch(text: str, variable: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{variable}={text!r}: must be 1, true, yes or on, or 0, false, no, off "
                     "or empty")


def tls_environment(args: argparse.Namespace) -> dict[str, str]:
    """tls_environment is the variables that give a child process this run's TLS settings
    (see the rules); empty for plain TCP."""
    variables = {TLS_VARIABLE: "1"} if args.tls else {}
    for name, variable in TLS_FILE_VARIABLES.items():
        path = getattr(args, name)
        if path:
            variables[variable] = os.path.abspath(path)
    return variables


def without_tls_variables(env: Mapping[str, str]) -> dict[str, str]:
    """without_tls_variables is `env` without the client's TLS variables (see the rules)."""
    return {name: value for name, value in env.items() if name not in TLS_VARIABLES}


def ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """ssl_context is the client's TLS context, or None for plain TCP."""
    named = getattr(args, "tls_sources", TLS_FLAGS)  # the flag, or the variable it came from
    if args.tls_key and not args.tls_cert:
        raise ValueError(f"{named['tls_key']} needs {named['tls_cert']}")
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    try:
        context = ssl.create_default_context(cafile=args.tls_ca)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot use {named['tls_ca']} {args.tls_ca}: {_reason(exc)}") from None
    if args.tls_cert:
        key = f" with {named['tls_key']} {args.tls_key}" if args.tls_key else ""
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key,
                                    password=_no_passphrase)
        except (OSError, ValueError) as exc:
            reason = _reason(exc)
            if not args.tls_key and isinstance(exc, ssl.SSLError) and not _holds_a_key(
                    args.tls_cert):
                # A certificate alone was "not PEM, or a key that does not match"; the
                # key is missing (a newcomer's review).
                reason = f"it holds no private key: give its key with {named['tls_key']}"
            raise ValueError(f"cannot use {named['tls_cert']} {args.tls_cert}{key}: "
                             f"{reason}") from None
    return context


def _holds_a_key(path: str) -> bool:
    """_holds_a_key: the PEM file at `path` has a private key block (of any kind)."""
    try:
        with open(path, "rb") as pem:
            return b"PRIVATE KEY-----" in pem.read()
    except OSError:
        return True  # nothing to add: the load's own reason stands


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "not PEM, or a key that does not match"
    return getattr(exc, "strerror", None) or str(exc)


def _no_passphrase() -> bytes:
    # OpenSSL would otherwise prompt on the terminal in the middle of a command.
    raise ValueError("the key is encrypted; give an unencrypted key file")


def open_client(args: argparse.Namespace, timeout: float | None = None) -> _Connect:
    """open_client connects to --host/--port with the security options (await it, or use
    it in `async with`); `timeout` overrides --timeout."""
    return connect(args.host, args.port, timeout=args.timeout if timeout is None else timeout,
                   **args.connect_options)
