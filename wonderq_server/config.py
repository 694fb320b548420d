"""Server settings: command-line flags, each also settable by a WONDERQ_* variable.

Design decision: one table (`FLAGS`) names every setting once, with its flag,
its environment variable, its type and its default, so `--help`, the README
and the environment cannot disagree. A flag given on the command line beats
the environment, which beats the default.

Rules:
* Every limit the server enforces has a setting here.
* A bad value (from a flag or the environment) stops start-up with a message
  naming the flag; the server never starts on a setting it did not understand.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .commands import Limits

DEFAULT_PORT = 7711
DEFAULT_DATA_DIR = "./wonderq-data"
DEFAULT_COMPACT_MIN_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    visibility_timeout_s: float = 30.0
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)
    data_dir: Path | None = None  # None: in memory, no journal
    fsync: str = "always"
    repair: bool = False
    compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0-65535")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a number of seconds > 0")
    return value


def _fsync(text: str) -> str:
    if text not in ("always", "everysec", "never"):
        raise ValueError("must be always, everysec or never")
    return text


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

# (flag, destination, type, default, help)
FLAGS = [
    ("--host", "host", str, Config.host, "address to listen on"),
    ("--port", "port", _port, Config.port, "TCP port (0 picks a free one)"),
    ("--visibility-timeout", "visibility_timeout_s", _seconds, Config.visibility_timeout_s,
     "default lease length in seconds for a receive that names none"),
    ("--max-message-bytes", "max_message_bytes", _positive_int, _LIMITS.max_message_bytes,
     "largest message body accepted"),
    ("--max-batch", "max_batch", _positive_int, _LIMITS.max_batch,
     "most messages in one put_many or receive"),
    ("--max-wait", "max_wait_s", _seconds, _LIMITS.max_wait_s,
     "longest long-poll wait a receive may ask for, seconds"),
    ("--max-visibility-timeout", "max_visibility_s", _seconds, _LIMITS.max_visibility_s,
     "longest lease a receive or touch may ask for, seconds"),
    ("--max-delay", "max_delay_s", _seconds, _LIMITS.max_delay_s,
     "longest delay a nack may ask for, seconds"),
    ("--max-frame-bytes", "max_frame_bytes", _positive_int, _LIMITS.max_frame_bytes,
     "largest binary-protocol frame accepted"),
    ("--log-level", "log_level", _log_level, Config.log_level,
     "debug, info, warning or error"),
    ("--data-dir", "data_dir", str, DEFAULT_DATA_DIR,
     "directory of the journal, created if missing; 'none' runs in memory"),
    ("--fsync", "fsync", _fsync, Config.fsync,
     "always (answer after fsync, group commit), everysec, or never"),
    ("--compact-min-bytes", "compact_min_bytes", _positive_int, DEFAULT_COMPACT_MIN_BYTES,
     "compact the journal only once it is at least this big"),
]

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


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wonderq-server",
        description="WonderQ: a work-queue broker with SQS-style leases. "
                    "Every flag can also be set with the WONDERQ_* variable shown.")
    parser.add_argument("--version", action="version", version=f"wonderq-server {__version__}")
    for flag, dest, kind, default, text in FLAGS:
        env = env_name(flag)
        raw = environ.get(env)
        if raw is not None:
            try:
                default = kind(raw)
            except ValueError as exc:
                parser.error(f"{env}={raw!r}: {exc}")
        parser.add_argument(flag, dest=dest, type=_named(kind, flag), default=default,
                            help=f"{text} (env {env}; default {default})")
    for flag, dest, text in SWITCHES:
        env = env_name(flag)
        try:
            default = _flag(environ.get(env, ""))
        except ValueError as exc:
            parser.error(f"{env}={environ[env]!r}: {exc}")
        parser.add_argument(flag, dest=dest, action="store_true", default=default,
                            help=f"{text} (env {env}=1)")
    return parser


def _named(kind, flag: str):
    """_named wraps a converter so argparse names the flag and the reason on a bad value."""

    def convert(text: str):
        try:
            return kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    convert.__name__ = flag
    return convert


def parse_config(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> Config:
    """parse_config reads flags and environment into a Config; exits with usage on bad input."""
    ns = build_parser(os.environ if environ is None else environ).parse_args(argv)
    limits = Limits(
        max_message_bytes=ns.max_message_bytes,
        max_batch=ns.max_batch,
        max_wait_s=ns.max_wait_s,
        max_visibility_s=ns.max_visibility_s,
        max_delay_s=ns.max_delay_s,
        max_frame_bytes=ns.max_frame_bytes,
    )
    if ns.visibility_timeout_s > limits.max_visibility_s:
        build_parser({}).error("--visibility-timeout is over --max-visibility-timeout")
    in_memory = ns.in_memory or ns.data_dir.strip().lower() in ("none", "")
    return Config(host=ns.host, port=ns.port, visibility_timeout_s=ns.visibility_timeout_s,
                  log_level=ns.log_level, limits=limits,
                  data_dir=None if in_memory else Path(ns.data_dir),
                  fsync=ns.fsync, repair=ns.repair, compact_min_bytes=ns.compact_min_bytes)
