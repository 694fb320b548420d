"""The compiled build's bookkeeping: the stale-build guard and how a server names its build.

The compiled modules themselves are tested by the whole suite: .ci/run runs the
tests that use them in process and end to end again against a compiled build
(`pytest --compiled`, which stops unless every one of them runs compiled)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from importlib.machinery import EXTENSION_SUFFIXES

import pytest
from server_process import server_command

from wonderq_client import connect
from wonderq_server.compiled import (
    COMPILED_MODULES,
    StaleBuild,
    build_description,
    check_not_stale,
    running_compiled,
)

SUFFIX = EXTENSION_SUFFIXES[0]


def source_tree(tmp_path, *, setup_py: bool = True):
    package = tmp_path / "wonderq_server"
    package.mkdir()
    if setup_py:  # a checkout: setup.py and the build backend beside the package
        (tmp_path / "setup.py").write_text("")
        (tmp_path / "build_backend").mkdir()
        (tmp_path / "build_backend" / "wonderq_build.py").write_text("")
    for name in COMPILED_MODULES:
        (package / f"{name.rpartition('.')[2]}.py").write_text("")
    return package


def compiled_ids(package, *, source_at: float, built_at: float):
    """compiled_ids puts an extension file for ids.py in `package`, with these times."""
    built = package / f"ids{SUFFIX}"
    built.write_bytes(b"")
    os.utime(package / "ids.py", (source_at, source_at))
    os.utime(built, (built_at, built_at))
    return built


def test_a_compiled_module_older_than_its_source_is_refused_naming_the_fix(tmp_path):
    package = source_tree(tmp_path)
    built = compiled_ids(package, source_at=1_000_001, built_at=1_000_000)  # edited after
    with pytest.raises(StaleBuild) as refused:
        check_not_stale(package)
    message = str(refused.value)
    assert str(built) in message and "ids.py" in message
    assert f"WONDERQ_COMPILE=1 pip install -e {tmp_path}" in message


def test_a_build_newer_than_its_source_and_a_source_with_no_build_are_fine(tmp_path):
    package = source_tree(tmp_path)
    compiled_ids(package, source_at=1_000_000, built_at=1_000_001)
    check_not_stale(package, runtime_library="json")  # a library that is there
    # and no other module has a build: their source runs


def test_a_compiled_module_without_its_library_is_refused_naming_the_fix(tmp_path):
    # The library deleted by hand, or a build interrupted: the import failed naming only
    # the library.
    package = source_tree(tmp_path)
    built = compiled_ids(package, source_at=1_000_000, built_at=1_000_001)
    with pytest.raises(StaleBuild) as refused:
        check_not_stale(package, runtime_library="no_such_library_here__mypyc")
    message = str(refused.value)
    assert str(built) in message and "no_such_library_here__mypyc" in message
    assert f"`pip install -e {tmp_path}` (which deletes the compiled files)" in message


def test_a_compiled_module_this_version_does_not_compile_is_refused(tmp_path):
    # A build that compiled more modules left one behind: it imported, then failed
    # to find its part of the new build's library (a module was dropped from the list).
    package = source_tree(tmp_path)
    compiled_ids(package, source_at=1_000_000, built_at=1_000_001)
    (package / "dropped.py").write_text("")
    left = package / f"dropped{SUFFIX}"
    left.write_bytes(b"")
    with pytest.raises(StaleBuild) as refused:
        check_not_stale(package, runtime_library="json")
    message = str(refused.value)
    assert str(left) in message and "dropped.py" in message
    assert f"WONDERQ_COMPILE=1 pip install -e {tmp_path}" in message
    left.unlink()
    check_not_stale(package, runtime_library="json")  # ids alone is fine


def test_an_installed_package_is_not_checked(tmp_path):
    # No build files beside it: its files' times are the install's, not the build's.
    package = source_tree(tmp_path, setup_py=False)
    compiled_ids(package, source_at=1_000_001, built_at=1_000_000)
    check_not_stale(package)


def test_the_description_says_which_build_this_is(pytestconfig):
    compiled = running_compiled()
    assert compiled in ([], list(COMPILED_MODULES)), "a partly compiled tree"
    assert build_description() == ("compiled" if compiled else "pure Python")
    if pytestconfig.getoption("compiled"):
        assert compiled == list(COMPILED_MODULES)


def test_the_server_names_its_build_in_version_ready_line_and_stats(server):
    version = subprocess.run([*server_command(), "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    assert version.endswith(f"({build_description()})\n")
    assert f", {build_description()})" in server.log  # the ready line

    async def stats() -> dict:
        async with connect(server.host, server.port) as client:
            return await client.stats()

    assert asyncio.run(stats())["server"]["build"] == build_description()
