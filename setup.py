"""Builds WonderQ; with WONDERQ_COMPILE=1, compiles the message path's modules with mypyc.

Design decision: WonderQ is pure Python and runs as such from any install. The
modules every message passes through and that hold no asyncio (the binary
codec, the command checks, the message table, the deadline heap, ids and the
message record: wonderq_server/compiled.py names them) can also be compiled
to C by mypyc from the same source, which makes the server's own Python
on a request 6-13% cheaper (PROTOCOL.md has nothing to say about it: the
wire, the journal and every reply are the same; README's "Compiled build"
has the figures). Everything else in pyproject.toml; this file only adds
the extension modules.

Rules:
* Opt-in: `WONDERQ_COMPILE=1 pip install .` (or `python setup.py build_ext
  --inplace` in a checkout); without it the build is pure Python, so a
  developer's editable install always runs the source they edit.
* A failed compile fails the install, rather than falling back to Python
  unseen; mypy (mypyc, which build_backend/ asks for) and a C compiler are
  needed only then.
"""

import os
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "wonderq_server"))
# compiled.py itself, not the package: the package may not import yet
from compiled import COMPILED_MODULES

ext_modules = []
if os.environ.get("WONDERQ_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(
        # msgpack ships no type information; the modules these import are checked by
        # the compile only as far as the compiled ones use them.
        ["--ignore-missing-imports", "--follow-imports=silent",
         *(f"{name.replace('.', '/')}.py" for name in COMPILED_MODULES)],
        opt_level="3",
        group_name="wonderq_server",  # so the library is compiled.RUNTIME_LIBRARY
    )

setup(ext_modules=ext_modules)
