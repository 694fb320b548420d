"""How much memory this process may use: the machine's, or its container's limit if lower.

Design decision: --max-memory's default is a share (40%) of the memory the
server may use, so that puts are refused with FULL before the kernel's OOM
killer ends the process. In a container that share must be of the
container's memory limit, not of the host's RAM: 40% of a 24 GiB host in a
128 MiB container is no limit at all, and the server was OOM-killed with
not one FULL (an operator's review). A container's limit is its cgroup's,
so the cgroup files are read, as the JVM (-XX:+UseContainerSupport) and
Go's GOMEMLIMIT tooling do.

Rules:
* cgroup v2: `memory.max` of this process's cgroup (the `0::PATH` line of
  /proc/self/cgroup) and of each ancestor up to the mount's root; "max"
  means none. cgroup v1: `memory.limit_in_bytes` of the memory controller's
  cgroup and its ancestors, where an unlimited one reads as a huge number.
  Inside a container the path in /proc/self/cgroup may not exist under the
  mount (the container sees its own cgroup as the root): the mount's root
  file is read too.
* The lowest limit found counts, and only if it is below physical memory.
* Anything that cannot be read (not Linux, no cgroup mount, a permission
  error, garbage) is no limit: the machine's memory counts, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def physical_memory_bytes() -> int | None:
    """physical_memory_bytes is the machine's RAM, or None where the OS does not say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def cgroup_limit_bytes(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> int | None:
    """cgroup_limit_bytes is the lowest memory limit of this process's cgroups (v2 and
    v1), or None when there is none or it cannot be read. `proc_cgroup` (the text of
    /proc/self/cgroup) and `root` are for tests."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            limits += _limits_up(root, path, "memory.max")
        elif "memory" in controllers.split(","):
            limits += _limits_up(root / "memory", path, "memory.limit_in_bytes")
    return min(limits, default=None)


def _limits_up(mount: Path, path: str, name: str) -> list[int]:
    """_limits_up reads `name` in the cgroup at `path` under `mount` and in each of its
    ancestors, the mount's root included; those that say no limit are left out."""
    limits = []
    parts = [part for part in path.strip("/").split("/") if part and part != ".."]
    for depth in range(len(parts), -1, -1):
        limit = _read_limit(mount.joinpath(*parts[:depth], name))
        if limit is not None:
            limits.append(limit)
    return limits


def _read_limit(file: Path) -> int | None:
    try:
        text = file.read_text().strip()
    except (OSError, ValueError):
        return None
    if not text.isdigit():
        return None  # "max" (v2), or not a number
    value = int(text)
    return value if 0 < value < 2**60 else None  # v1's "unlimited" is about 2**63


def usable_memory_bytes() -> int | None:
    """usable_memory_bytes is physical memory, or the cgroup's limit when that is lower;
    None when neither is known."""
    physical = physical_memory_bytes()
    limit = cgroup_limit_bytes()
    if limit is None:
        return physical
    return limit if physical is None else min(limit, physical)
