from __future__ import annotations

import os
import signal

import pytest
from server_process import ServerProcess

# The broker tests' `b` fixture lives with their other helpers; loading the module as a
# plugin also rewrites its asserts (check_invariants) as pytest does a test's own.
pytest_plugins = ["broker_helpers"]
# The crash-load harness asserts what the server answered; keep those failures as detailed.
pytest.register_assert_rewrite("crash_load")
SUITE_VARIABLES = "WONDERQ_FUZZ_"  # test_e2e_fuzz.py's seed and duration

# The servers and command-line tools the tests start inherit this process's
# environment, and both read WONDERQ_* settings from it (a port, TLS, a token).
# A developer's shell set up to use WonderQ would change what every test runs
# against, so none of them reaches a test: a test that wants one passes it itself.
# The suite's own knobs stay (WONDERQ_FUZZ_SEED replays a fuzz failure).
for _name in [name for name in os.environ
              if name.startswith("WONDERQ_") and not name.startswith(SUITE_VARIABLES)]:
    del os.environ[_name]


# A process started in the background by a shell without job control (`cmd &` in a
# script, as some CI runners start the suite) has SIGINT ignored, and its children
# inherit that: the command-line tools then never see the Ctrl-C the tests send them
# (Python leaves an ignored SIGINT ignored). The tests are of a tool at a terminal, so
# this process takes SIGINT back; the exec of every child resets it to the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--compiled", action="store_true",
                     help="the run is of the compiled build (WONDERQ_COMPILE=1, setup.py): "
                          "stop at the start unless every module it compiles runs compiled")


def pytest_sessionstart(session: pytest.Session) -> None:
    # .ci/run tests the compiled build with this flag: a build that fell back to the
    # source, or compiled only some modules, would otherwise pass as the pure one.
    if session.config.getoption("compiled"):
        from wonderq_server.compiled import COMPILED_MODULES, running_compiled

        missing = sorted(set(COMPILED_MODULES) - set(running_compiled()))
        if missing:
            pytest.exit(f"--compiled, but these run from their source: {', '.join(missing)}",
                        returncode=4)


@pytest.fixture
def server():
    """A fresh `wonderq-server` subprocess on a free loopback port."""
    with ServerProcess() as proc:
        yield proc


@pytest.fixture
def server_factory():
    """Start servers with chosen flags; each is killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(*args, env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
