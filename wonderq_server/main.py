"""`wonderq-server`: parse settings, set up logging, run the server until a signal.

Design decision: the entry point does only process-level work: settings,
logging (configured once, here), the event loop (uvloop where installed, the
standard loop otherwise) and signals. SIGINT and SIGTERM stop the server
cleanly: stop accepting, answer what is in flight, write and fsync the
journal, close, exit 0. If the journal breaks (an fsync fails) the server
stops with exit code 1: it can no longer keep the promise that answered
writes are on disk.

Listening on an address other machines may reach (not loopback: see
auth.is_loopback) with no auth token logs a warning before the ready line;
the default, 127.0.0.1, is loopback.

The cyclic garbage collector runs its youngest generation every
GC_YOUNG_THRESHOLD container allocations, not Python's default 700. The
message path allocates several containers per message (a Message, its
delivery's fields, a batch's items), all freed by reference counting; at 700
a batch consumer paid a collection every few batches for nothing, about 3-5%
of its server time (bench/probes/batch_path.py with the GC off or at this
threshold). Cycles are still collected, a little later. With --gc-freeze on (the default)
what survives a collection of the middle generation is frozen (gc_policy.py).

The ready line, logged once the socket is bound, names the real address, so
`--port 0` can be used by tests and scripts that read it:

    wonderq-server listening on 127.0.0.1:7711 (pid 1234, version 0.1.0, pure Python)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .auth import is_loopback
from .config import Config, parse_config
from .journal import DataDirLocked, DataDirUnusable, JournalError
from .journal_format import JournalCorrupt
from .message import MESSAGE_OVERHEAD_BYTES
from .server import Server, ready_logger
from .tls import TLSSetupError

logger = logging.getLogger("wonderq.server")
# The ready line is how scripts and tests learn the port (--port 0) and that the server
# is up, so it is logged whatever --log-level says: its logger (server.ready_logger) has a
# level of its own.

GC_YOUNG_THRESHOLD = 10_000
# A frame holds a message's body and its request's other fields (queue, headers, ...).
FRAME_ROOM_BYTES = 1024


def _warn_about_limits(config: Config) -> None:
    """_warn_about_limits: limits each accepted alone, but that together (or with a unit
    left off: `--max-memory 2` is 2 bytes) refuse what the server is for. An operator's
    reviews met each one as errors, or cut-off clients, with no word at the start."""
    limits, connection_limits = config.limits, config.connection_limits
    if limits.max_frame_bytes < limits.max_message_bytes + FRAME_ROOM_BYTES:
        # The largest messages cannot be put in binary mode; with a tiny frame, nothing.
        logger.warning("--max-frame-bytes %d is below --max-message-bytes %d + %d: binary "
                       "requests carrying the largest messages will be refused "
                       "FRAME_TOO_LARGE; raise --max-frame-bytes", limits.max_frame_bytes,
                       limits.max_message_bytes, FRAME_ROOM_BYTES)
    if config.max_memory_bytes and \
            config.max_memory_bytes < limits.max_message_bytes + MESSAGE_OVERHEAD_BYTES:
        logger.warning("--max-memory %d is below one message of --max-message-bytes %d "
                       "(plus %d counted per message): puts of the largest messages, or "
                       "of any, will be refused FULL; raise it (a size without a unit, "
                       "such as 2, is bytes)",
                       config.max_memory_bytes, limits.max_message_bytes,
                       MESSAGE_OVERHEAD_BYTES)
    # One connection may hold its --max-request-buffer-bytes of held requests, and may
    # always park 1,024 waiting receives, whatever that flag says: waits_room_bytes is the
    # larger of the two.
    one_connection = connection_limits.waits_room_bytes
    if connection_limits.max_client_memory_bytes < one_connection:
        logger.warning("--max-client-memory %d is below what one connection may hold, %d "
                       "(--max-request-buffer-bytes, and at least 1,024 waiting receives of "
                       "1 KiB): one connection's waiting receives or held requests can pass "
                       "it, and then it is cut off; raise it (a size without a unit, such "
                       "as 2, is bytes)", connection_limits.max_client_memory_bytes,
                       one_connection)


async def serve(config: Config) -> None:
    server = Server(config)
    if config.auth_token is None and not is_loopback(config.host):
        logger.warning("listening on %r, which other machines may reach, with no auth token: "
                       "anyone who reaches the port can read and delete messages; set "
                       "--auth-token (and --tls-cert/--tls-key)", config.host)
    if config.metrics_host and config.metrics_port is None:
        logger.warning("--metrics-host %r is not used without --metrics-port",
                       config.metrics_host)
    elif (config.metrics_host and config.metrics_host != config.host
            and config.auth_token is None and not is_loopback(config.metrics_host)):
        # (A metrics endpoint on --host is covered by the warning about --host itself.)
        logger.warning("metrics listen on %r, which other machines may reach, with no auth "
                       "token: anyone who reaches it can read the server's stats and queue "
                       "names; set --auth-token (scrapers send it as a Bearer token)",
                       config.metrics_host)
    _warn_about_limits(config)
    loop = asyncio.get_running_loop()
    # SIGHUP too (the terminal that started it closed): a clean stop, as for SIGTERM,
    # rather than the default of dying silently without a last write and fsync.
    received: list[str] = []  # the signal that stopped the server, for its log line
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, _stop_on, signum, server, received)
    # SIGUSR1 and SIGUSR2 would kill the process by default, without the stop's last write
    # and goodbyes: a signal meant for something else (beanstalkd's drain mode is SIGUSR1,
    # nginx's and NATS's log reopening too) must not take the queue down. Said and ignored.
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(signum, _ignored, signum)
    server.recover()
    # A stop asked for during the replay (which holds the loop: its signal waits) is seen
    # here, before the port is bound and the ready line says the server is up (a
    # reviewer's supervisor saw "listening" from a server that then exited).
    for _ in range(3):  # uvloop runs the handler in two steps, asyncio's own loop in three
        if server.stopped.is_set():
            break
        await asyncio.sleep(0)
    if config.gc_freeze and not server.gc_freezer.install():
        logger.warning("--gc-freeze on has no effect on Python %d.%d, whose garbage "
                       "collector is incremental: it is left as it is", *sys.version_info[:2])
    try:
        await _serve_until_stopped(server, received)
    finally:
        server.gc_freezer.uninstall()


async def _serve_until_stopped(server: Server, received: list[str]) -> None:
    """_serve_until_stopped: listen (unless a stop came during the replay) until a signal,
    then stop cleanly."""
    when = " before it listens"
    if not server.stopped.is_set():
        host, port = await server.start()
        # The ready line comes last: whoever reads it may signal us at once.
        ready_logger.info("wonderq-server listening on %s:%d (pid %d, version %s, %s)",
                          host, port, os.getpid(), __version__, server.build)
        await server.stopped.wait()
        when = ""
    # Which signal: a stray SIGHUP (a terminal closed) is not a `systemctl stop` (an
    # operator's review could not tell them apart), as Redis says "Received SIGTERM".
    logger.info("wonderq-server stopping%s%s", when,
                f" ({received[0]} received)" if received else "")
    await server.stop()
    if server.fatal_error is not None:
        raise SystemExit(1)
    logger.info("wonderq-server stopped")


def _stop_on(signum: int, server: Server, received: list[str]) -> None:
    if not received:
        received.append(signal.Signals(signum).name)
    server.stopped.set()


def _ignored(signum: int) -> None:
    logger.warning("%s received: wonderq-server has no use for it, and goes on (SIGTERM "
                   "stops it)", signal.Signals(signum).name)


def _run(coro) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _run(serve(config))
    except (DataDirLocked, DataDirUnusable, TLSSetupError) as exc:
        logger.error("cannot start: %s", exc)
        return 1
    except JournalCorrupt as exc:
        logger.error("cannot start: the journal %s: %s",
                     "is damaged" if exc.repairable else "cannot be read", exc)
        return 1
    except JournalError as exc:
        logger.error("stopping: %s", exc)
        return 1
    except OSError as exc:
        if exc.filename is not None:  # a file of the data directory, not the address
            logger.error("cannot start: %s", exc)
        else:
            logger.error("cannot start on %s:%d: %s", config.host, config.port, exc)
        return 1
    return 0
