"""The soak script (bench/soak.py) run small, as a smoke test of the whole harness.

It starts its own wonderq-server with --fsync always, kills it with SIGKILL
every few seconds under producers and consumers, drains the queue after a
clean restart and judges its ledger. A clean run must say so in its summary
and its exit code, must have killed the server at least once, and must leave
no server process and no data directory behind. That the verdict can fail
at all is shown by tests/test_soak_ledger.py, which feeds the same ledger
histories of lost, doubled and unknown messages.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 90.0  # the run takes about 14 s; this only stops a hang


def test_a_short_soak_with_kills_passes_and_cleans_up(tmp_path):
    results_path = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "8", "--kill-every", "3",
         "--sample-every", "1", "--die-chance", "0.05", "--json", str(results_path)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert re.search(r"^verdict: PASS$", run.stdout, re.MULTILINE), output
    kills = re.search(r"^kills: (\d+);", run.stdout, re.MULTILINE)
    assert kills and int(kills.group(1)) >= 1, output

    results = json.loads(results_path.read_text())
    ledger = results["ledger"]
    assert results["passed"] and results["problems"] == [] and ledger["errors"] == {}
    assert results["kills"] == int(kills.group(1))
    assert ledger["answered_puts"] > 0
    assert ledger["acked_once"] + ledger["uncertain_applied"] == ledger["answered_puts"]
    assert results["consumer_deaths"] >= 1 and ledger["redeliveries"] >= 1, output
    assert results["samples"], "no memory sample was taken"
    ends = [inc["end"] for inc in results["incarnations"]]
    assert ends.count("kill -9") == results["kills"]
    assert ends[-2:] == ["stopped (exit 0)"] * 2  # after the load, and after the drain

    assert not Path(results["settings"]["data_dir"]).exists(), "the data directory was kept"
    for inc in results["incarnations"]:
        assert not Path(f"/proc/{inc['pid']}").exists(), f"server {inc['pid']} still runs"
