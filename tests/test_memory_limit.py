"""memory_limit.py: the container's memory limit, read from cgroup files laid out in tmp_path."""

from __future__ import annotations

from pathlib import Path

from wonderq_server.memory_limit import cgroup_limit_bytes

MIB = 1024 * 1024


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_takes_the_lowest_limit_of_the_cgroup_and_its_ancestors(tmp_path):
    write(tmp_path / "memory.max", "max")
    write(tmp_path / "system.slice" / "memory.max", str(512 * MIB))
    write(tmp_path / "system.slice" / "wonderq.service" / "memory.max", "max")
    assert cgroup_limit_bytes("0::/system.slice/wonderq.service\n", tmp_path) == 512 * MIB


def test_cgroup_v1_memory_controller_and_its_unlimited_value(tmp_path):
    proc = "12:pids:/x\n4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n"
    write(tmp_path / "memory" / "memory.limit_in_bytes", "9223372036854771712")  # unlimited
    assert cgroup_limit_bytes(proc, tmp_path) is None
    write(tmp_path / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(128 * MIB))
    assert cgroup_limit_bytes(proc, tmp_path) == 128 * MIB


def test_inside_a_container_the_mount_root_is_its_own_cgroup(tmp_path):
    # The path /proc/self/cgroup names does not exist in the container's view of the mount.
    write(tmp_path / "memory.max", str(256 * MIB))
    assert cgroup_limit_bytes("0::/kubepods/pod1/c2\n", tmp_path) == 256 * MIB


def test_nothing_readable_is_no_limit(tmp_path):
    assert cgroup_limit_bytes("", tmp_path) is None
    assert cgroup_limit_bytes("0::/\n", tmp_path) is None
    write(tmp_path / "memory.max", "garbage")
    assert cgroup_limit_bytes("0::/\n", tmp_path) is None
    write(tmp_path / "memory.max", "0")
    assert cgroup_limit_bytes("0::/\n", tmp_path) is None
    assert cgroup_limit_bytes("0::/../../etc\n", tmp_path) is None  # no walking out
