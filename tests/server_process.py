"""Start the real `wonderq-server` as a subprocess on a free loopback port.

The server is started with `--port 0`; the port is read from its ready line
("listening on HOST:PORT"), so tests never guess at free ports and never
sleep waiting for the server: they wait for that line.

The server and the `wonderq` tool are the ones installed with the Python that
runs the tests (console_script), never whatever PATH finds first.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

READY = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT_S = 20.0


def console_script(name: str, module: str) -> list[str]:
    """console_script is the argv of one of the package's commands as this Python installed
    it: the script beside sys.executable (a virtualenv's bin, or the interpreter's own),
    else `python -m MODULE` (uninstalled). Not a lookup in PATH, where another install's
    script may come first: a pyenv shim for another checkout's install once ran every
    server of a CI clone's end-to-end tests, which a test of the compiled build found."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def server_command() -> list[str]:
    return console_script("wonderq-server", "wonderq_server")


def wonderq_command() -> list[str]:
    """wonderq_command: how to run the installed `wonderq` tool (or the module, uninstalled)."""
    return console_script("wonderq", "wonderq_cli")


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.args = list(args)
        self.env = env
        self.preexec_fn = preexec_fn  # run in the child before the server (a limit, say)
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> ServerProcess:
        """start starts the server and waits for its ready line (RuntimeError if none)."""
        self.spawn()
        if not self._ready.wait(START_TIMEOUT_S) or not self.port:
            self.kill()
            raise RuntimeError("wonderq-server did not start:\n" + self.log)
        return self

    def spawn(self) -> ServerProcess:
        """spawn starts the server without waiting for it to be ready."""
        env = dict(os.environ)
        env.update(self.env or {})
        argv = [*server_command(), *self.args]
        if not any(a.startswith("--port") for a in self.args) and "WONDERQ_PORT" not in env:
            argv += ["--port", "0"]
        if not any(a.startswith(("--data-dir", "--in-memory")) for a in self.args) \
                and "WONDERQ_DATA_DIR" not in env:
            argv += ["--in-memory"]  # tests that want a journal name their own directory
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env, preexec_fn=self.preexec_fn)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = READY.search(line)
            if match and not self._ready.is_set():
                self.host, self.port = match.group(1), int(match.group(2))
                self._ready.set()
        self._ready.set()  # the process ended; start() notices port == 0

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """stop sends `sig` and returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit()

    def kill(self) -> None:
        """kill is kill -9: no chance to flush or clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
