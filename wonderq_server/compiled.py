"""Which server modules a compiled build compiles, which ones run compiled, and stale builds.

Design decision: the server is pure Python, and a build with WONDERQ_COMPILE=1
(setup.py) also compiles the modules below to C with mypyc, from the same
source. They are the ones every message passes through: the binary codec,
the command checks, the connection, the broker and its queues, message
table, lease batches, deadline heap, ids and message record. Not compiled:
what runs once per loop iteration or less (the server, group commit, the
journal's flush), the text protocol, the broker's admin and replay commands
(Broker's base classes, plain Python classes a compiled class may inherit
from), and the service between connection and broker (compiled, it saved
about 0.5 us of 12 a message in process, and tests and embedders could no
longer wrap its calls). Compiled, annotations are checked at run time, so
an annotation that does not say what really arrives is a TypeError there:
the suite runs against the compiled build in CI (`.ci/run`) to find them.
Compiled classes cannot be subclassed or have methods replaced from Python:
tests plant their faults in data, and the one file that subclasses Broker
(test_take_differential.py) runs on the pure build only.

Rules:
* COMPILED_MODULES is the one list: setup.py compiles it, and
  running_compiled() reports which of it the process imports as extension
  modules (`--version`, STATS, the ready line, the bench).
* This module imports nothing of the package: setup.py reads it before the
  package can import.
* A module compiled in place in a source tree whose .py changed after the
  build would run the old code unseen; importing the package there raises
  StaleBuild, naming the file and the commands that rebuild it or return to
  the source. So does an extension file an earlier build left of a module
  no longer compiled, which setup.py deletes (as it does every extension
  file in the package when it builds pure).

Must not know: the rest of the package (setup.py loads this file alone).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

COMPILED_MODULES = (
    "wonderq_server.binary_codec",
    "wonderq_server.broker",
    "wonderq_server.commands",
    "wonderq_server.connection",
    "wonderq_server.deadlines",
    "wonderq_server.ids",
    "wonderq_server.lease_batch",
    "wonderq_server.message",
    "wonderq_server.message_table",
    "wonderq_server.queues",
)

PACKAGE_DIR = Path(__file__).resolve().parent
RUNTIME_LIBRARY = "wonderq_server__mypyc"  # setup.py's group_name, + "__mypyc"


class StaleBuild(ImportError):
    """A compiled module is older than its source in a source tree."""


def running_compiled() -> list[str]:
    """running_compiled names the modules of COMPILED_MODULES that this process imports
    (or imported) as extension modules: those the import system finds compiled."""
    found = []
    for name in COMPILED_MODULES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module else None
        if origin is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec else None
        if str(origin).endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def build_description() -> str:
    """build_description is how --version and the ready line name the build."""
    compiled = running_compiled()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILED_MODULES):
        return "compiled"
    return f"partly compiled ({len(compiled)} of {len(COMPILED_MODULES)} modules)"


def compiled_files(package_dir: Path = PACKAGE_DIR) -> Iterator[tuple[Path, Path]]:
    """compiled_files yields (source, extension file) for each module compiled in
    `package_dir` (an in-place build, or an install's): those of COMPILED_MODULES, and
    any an earlier build compiled that this version no longer does."""
    for built in sorted(package_dir.iterdir()):
        # The longest suffix first: ".so" also ends "ids.cpython-311-x86_64-linux-gnu.so".
        for suffix in sorted(EXTENSION_SUFFIXES, key=len, reverse=True):
            if built.name.endswith(suffix):
                yield package_dir / f"{built.name[:-len(suffix)]}.py", built
                break


def check_not_stale(package_dir: Path = PACKAGE_DIR,
                    runtime_library: str = RUNTIME_LIBRARY) -> None:
    """check_not_stale raises StaleBuild when, in a source tree (setup.py and the build
    backend beside the package), a compiled module's extension file is older than its
    .py, or is there without the library all of them import (deleted by hand, or a
    build interrupted), or is of a module this version does not compile (left by an
    earlier build: it would import, then fail to find its part of the new library).

    An installed package has no build files beside it, and its files' times are the
    install's, so it is not checked."""
    root = package_dir.parent
    if not ((root / "setup.py").exists()
            and (root / "build_backend" / "wonderq_build.py").exists()):
        return
    fix = (f"rebuild with `WONDERQ_COMPILE=1 pip install -e {root}`, or run the source "
           f"with `pip install -e {root}` (which deletes the compiled files)")
    library_found: bool | None = None
    compiled_here = {name.rpartition(".")[2] for name in COMPILED_MODULES}
    for source, built in compiled_files(package_dir):
        if source.stem not in compiled_here:
            raise StaleBuild(f"{built} is left from a build that compiled {source.name}, "
                             f"which this version does not compile: {fix}")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            raise StaleBuild(f"{built} was compiled before {source.name} last changed, "
                             f"and would run the old code: {fix}")
        if library_found is None:
            library_found = importlib.util.find_spec(runtime_library) is not None
        if not library_found:
            raise StaleBuild(f"{built} is compiled, but the library it needs "
                             f"({runtime_library}) is not found: {fix}")
