"""Builds WonderQ; with WONDERQ_COMPILE=1, compiles the message path's modules with mypyc.

Design decision: WonderQ is pure Python and runs as such from any install. The
modules every message passes through on the server (the binary codec, the
command checks, the connection, the broker with its queues, message table,
lease batches and deadline heap, ids and the message record:
wonderq_server/compiled.py names them) can also be compiled to C by mypyc
from the same source, which makes the server's own Python on a request
about a third cheaper (PROTOCOL.md has nothing to say about it: the
wire, the journal and every reply are the same; README's "Compiled build"
has the figures). Everything else is in pyproject.toml; this file only adds
the extension modules.

Rules:
* Opt-in: `WONDERQ_COMPILE=1 pip install .`, or `WONDERQ_COMPILE=1 pip
  install -e .` to compile in place in a checkout. Without the variable the
  build is pure Python, and it removes the compiled modules a compiled
  build left in place, so a developer's `pip install -e .` always runs the
  source they edit, from any directory. A compiled build removes those of
  modules it no longer compiles (left by one that compiled more).
* A failed compile fails the install, rather than falling back to Python
  unseen; mypy (mypyc, which build_backend/ asks for) and a C compiler are
  needed only then.
* compiled.py is loaded from its file, not through the package (which may
  not import yet) and not by putting the package's directory on sys.path.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_wonderq_compiled",
                                               ROOT / "wonderq_server" / "compiled.py")
compiled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compiled)


def remove_in_place_build(keep: tuple[str, ...] = ()) -> None:
    """remove_in_place_build deletes what `WONDERQ_COMPILE=1 pip install -e .` compiled
    into the tree: each module's extension file and the library they share; with
    `keep` (a compiled build's modules), only the extension files of other modules,
    which an earlier build that compiled more left behind."""
    kept = {name.rpartition(".")[2] for name in keep}
    for source, built in compiled.compiled_files(ROOT / "wonderq_server"):
        if source.stem not in kept:
            built.unlink()
    if not keep:
        for library in ROOT.glob(f"{compiled.RUNTIME_LIBRARY}.*"):
            library.unlink()


ext_modules = []
if os.environ.get("WONDERQ_COMPILE") == "1":
    from mypyc.build import mypycify

    remove_in_place_build(keep=compiled.COMPILED_MODULES)

    ext_modules = mypycify(
        # msgpack ships no type information; the modules these import are checked by
        # the compile only as far as the compiled ones use them.
        ["--ignore-missing-imports", "--follow-imports=silent",
         *(f"{name.replace('.', '/')}.py" for name in compiled.COMPILED_MODULES)],
        opt_level="3",
        group_name="wonderq_server",  # so the library is compiled.RUNTIME_LIBRARY
    )
else:
    remove_in_place_build()

setup(ext_modules=ext_modules)
