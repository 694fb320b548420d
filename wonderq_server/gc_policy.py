"""The cyclic garbage collector's policy: what survives a middle collection is frozen.

Design decision (issue 6, pauses): Python's cyclic collector rescans every object it
tracks in a generation each time it collects that generation, with the loop held. A
leased message is such an object, and so is one with a priority, delay, headers or
expiry; a server taking a backlog of a million of them into lease ran collections of
the middle generation of up to about 40 ms and a full collection of about 300 ms
(figures below; SCALING.md, bench/probes/gc_pauses.py). So, with --gc-freeze on (the
default), the middle generation is collected every YOUNG_COLLECTIONS_PER_MIDDLE young
collections, and after each such collection everything that survived it is frozen
(gc.freeze()): no later collection scans it again, and the oldest generation, whose
collections are the long ones, never fills. gc.freeze() only moves the generations'
lists, whatever their length. Leasing a million messages (`gc_pauses.py 1000000 100000
1`, 2026-12-02): before, 9 middle collections up to 38 ms and a full one of 314 ms;
frozen after each middle one, the full one gone and the middle ones up to 34 ms; with 2
young collections per middle one, 26 of them up to 19-20 ms (20-31 ms in two more runs,
the machine slower by then, beside 36-40 ms and full ones of 255-322 ms with
WONDERQ_GC_FREEZE=off). A steady load (leases acked as fast as taken) runs no
collection at all, so it freezes nothing.

A frozen object is still freed by reference counting the moment nothing uses it (an
acked message is). What the collector no longer frees is a reference cycle whose
objects were alive when they were frozen: it stays for good. So the server's paths
must not leave objects in cycles when they let them go: an error kept past its
`except` is kept detached (errors.py's rules). `bench/probes/cyclic_garbage.py`
counts what each path leaves (none); tests/test_reference_cycles.py guards the
error paths, and tests/test_e2e_reference_cycles.py runs the probe's real servers;
STATS says how many freezes there were (`server.gc_freezes_total`).
--gc-freeze off leaves the collector as Python has it.

Rules:
* Installed by main.serve, for the process that serves (not by Server: a test
  process that runs servers in it keeps its collector); `uninstall` undoes it.
* Only on the Pythons it was measured on (before 3.14, whose collector is
  incremental): elsewhere the server says so and leaves the collector alone.
* The callback runs for every collection and does nothing but at the end of one
  of the middle generation: no work per message.
* Start-up's replay freezes what it built as well (journal.py), whatever the flag.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

# Python 3.14's collector is incremental, with other generations: what a threshold and
# a callback's "generation" mean there is not what this policy was measured on.
SUPPORTED = sys.version_info < (3, 14)

MIDDLE_GENERATION = 1
# Young collections between two of the middle generation (Python's default 10): each
# middle one then scans the survivors of 2 young ones, not 10, before they are frozen.
YOUNG_COLLECTIONS_PER_MIDDLE = 2


class CollectorFreezer:
    """CollectorFreezer freezes the survivors of each middle-generation collection."""

    def __init__(self) -> None:
        self.freezes = 0
        self._middle_threshold: int | None = None  # Python's, while installed

    @property
    def installed(self) -> bool:
        return self._middle_threshold is not None

    def install(self) -> bool:
        """install: True once installed; False on a Python it does not know (SUPPORTED)."""
        if not SUPPORTED:
            return False
        if self._middle_threshold is not None:
            return True
        young, self._middle_threshold, old = gc.get_threshold()
        gc.set_threshold(young, YOUNG_COLLECTIONS_PER_MIDDLE, old)
        gc.callbacks.append(self._after_collection)
        return True

    def uninstall(self) -> None:
        if self._middle_threshold is None:
            return
        young, _, old = gc.get_threshold()
        gc.set_threshold(young, self._middle_threshold, old)
        self._middle_threshold = None
        gc.callbacks.remove(self._after_collection)

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == MIDDLE_GENERATION:
            gc.freeze()
            self.freezes += 1
