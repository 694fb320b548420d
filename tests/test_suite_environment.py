"""The suite's own environment: what conftest.py keeps of the developer's shell."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent


def test_wonderq_settings_are_dropped_and_the_suites_own_knobs_kept():
    # A shell set up for WonderQ must not steer the servers and tools the tests start;
    # WONDERQ_FUZZ_SEED, which a fuzz failure tells the developer to set, must still work.
    shell = {**os.environ, "WONDERQ_PORT": "1", "WONDERQ_CLIENT_TLS": "1",
             "WONDERQ_AUTH_TOKEN": "x" * 20, "WONDERQ_FUZZ_SEED": "1234",
             "WONDERQ_FUZZ_SECONDS": "1.5"}
    code = ("import os, conftest, test_e2e_fuzz; "
            "print(sorted(k for k in os.environ if k.startswith('WONDERQ_')), "
            "test_e2e_fuzz.SEED, test_e2e_fuzz.FUZZ_SECONDS)")
    done = subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=shell,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['WONDERQ_FUZZ_SECONDS',", "'WONDERQ_FUZZ_SEED']", "1234",
                                   "1.5"]
