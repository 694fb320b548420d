"""WonderQ's build backend: setuptools', asking for mypy only when the build compiles.

Design decision: a compiled build (WONDERQ_COMPILE=1, setup.py) needs mypy
(mypyc) in its build environment, and a pure one does not; a static
`[build-system] requires` would download mypy for every install. So this
in-tree backend (PEP 517's `backend-path`) is setuptools' own but for its
"what else does the build need" hooks, which answer mypy when the variable is
set and nothing otherwise.

Rules:
* Every other hook is setuptools' own.
* The three "what else" hooks (wheel, editable, sdist: setup.py runs for
  each) do not run setup.py, as setuptools' do to collect its
  `setup_requires` (setup.py has none): setup.py imports mypyc when the
  variable is set, and mypyc is what these hooks are asked for.
"""

import os

from setuptools.build_meta import (  # noqa: F401  (the hooks pip calls, as setuptools has them)
    build_editable,
    build_sdist,
    build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

COMPILER = ["mypy>=1.11"]


def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    return COMPILER if os.environ.get("WONDERQ_COMPILE") == "1" else []


get_requires_for_build_editable = get_requires_for_build_sdist = get_requires_for_build_wheel
