"""The layering rules of STYLE.md, checked by walking each module's imports with ast."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PURE_MODULES = ["broker", "queue_admin", "replay", "queue_settings", "rates", "deadlines",
                "queues", "message", "ids", "errors", "commands", "binary_codec", "text_codec",
                "text_arguments", "text_replies", "service"]
FORBIDDEN_IN_PURE = {"asyncio", "socket", "time", "os", "selectors", "threading", "uvloop"}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io_and_read_no_clock(module):
    imported = {name.split(".")[0] for name in
                imported_modules(ROOT / "wonderq_server" / f"{module}.py")}
    assert not imported & FORBIDDEN_IN_PURE


def test_every_module_opens_with_a_docstring():
    for path in [*ROOT.glob("wonderq_server/*.py"), *ROOT.glob("wonderq_client/*.py")]:
        if path.name == "__main__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 40, f"{path.name} needs a docstring stating its design"


def test_client_never_imports_the_server():
    for path in ROOT.glob("wonderq_client/*.py"):
        imported = {name.split(".")[0] for name in imported_modules(path)}
        assert "wonderq_server" not in imported, path.name
        assert imported <= {"__future__", "asyncio", "contextlib", "itertools", "collections",
                            "types", "typing", "msgpack",
                            # worker.py: counts, logger, jitter, handler and number checks,
                            # the limit in BATCH_TOO_LARGE
                            "dataclasses", "logging", "random", "inspect", "math", "re",
                            # codec.py: a frame's length, read in place
                            "struct",
                            # busy_poll.py: its clock, and its table of loops
                            "time", "weakref",
                            # keepalive.py: the socket options
                            "socket",
                            # client.py and worker.py: what a port and seconds may be
                            "numbers", "operator",
                            # client.py and worker.py: callbacks that carry their arguments
                            "functools"}, \
            (path.name, imported)


def test_client_ships_type_information():
    assert (ROOT / "wonderq_client" / "py.typed").exists()
