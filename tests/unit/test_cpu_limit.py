"""The CPU a worker may use, read from cgroup files laid out as the kernel shows them (a
directory stands for /proc and one for /sys/fs/cgroup)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from app import cpu_limit
from app.cpu_limit import follow_cpu_capacity, worker_cpu_capacity


def write(root: Path, relative: str, text: str) -> None:
    file = root / relative
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    return tmp_path / "proc"


@pytest.fixture
def cgroup(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    return root


def capacity(proc: Path, cgroup: Path) -> float:
    return worker_cpu_capacity(proc, cgroup)


def test_v2_in_its_own_namespace_the_root_holds_the_container_limit(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "0::/\n")
    write(cgroup, "cpu.max", "50000 100000\n")
    assert capacity(proc, cgroup) == 0.5


def test_v2_the_lowest_limit_of_the_cgroup_and_its_ancestors_applies(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "0::/kubepods/pod1/container\n")
    write(cgroup, "kubepods/cpu.max", "max 100000\n")
    write(cgroup, "kubepods/pod1/cpu.max", "30000 100000\n")
    write(cgroup, "kubepods/pod1/container/cpu.max", "max 100000\n")
    assert capacity(proc, cgroup) == 0.3


def test_v2_without_a_limit_or_above_one_core_is_one_core(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/service\n")
    write(cgroup, "service/cpu.max", "max 100000\n")
    assert capacity(proc, cgroup) == 1.0
    write(cgroup, "service/cpu.max", "200000 100000\n")  # two cores: a worker uses one
    assert capacity(proc, cgroup) == 1.0


def test_v2_on_a_hybrid_host_under_the_unified_mount(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "4:memory:/a\n0::/job\n")
    write(cgroup, "unified/job/cpu.max", "25000 50000\n")
    assert capacity(proc, cgroup) == 0.5


def test_v1_quota_and_period_of_the_cpu_hierarchy(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "7:memory:/docker/abc\n5:cpu,cpuacct:/docker/abc\n")
    write(cgroup, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "25000\n")
    write(cgroup, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    write(cgroup, "memory/docker/abc/cpu.cfs_quota_us", "1000\n")  # not the cpu hierarchy
    write(cgroup, "memory/docker/abc/cpu.cfs_period_us", "100000\n")
    assert capacity(proc, cgroup) == 0.25


def test_v1_without_a_namespace_the_mount_root_is_the_container_own(
    proc: Path, cgroup: Path
) -> None:
    # The host's path of the cgroup is not under the container's mount of it.
    write(proc, "self/cgroup", "3:cpu:/docker/0123456789abcdef\n")
    write(cgroup, "cpu/cpu.cfs_quota_us", "150000\n")
    write(cgroup, "cpu/cpu.cfs_period_us", "200000\n")
    assert capacity(proc, cgroup) == 0.75


def test_v1_quota_minus_one_is_no_limit(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "3:cpu:/\n")
    write(cgroup, "cpu/cpu.cfs_quota_us", "-1\n")
    write(cgroup, "cpu/cpu.cfs_period_us", "100000\n")
    assert capacity(proc, cgroup) == 1.0


def test_unreadable_or_garbled_files_are_one_core(proc: Path, cgroup: Path) -> None:
    assert capacity(proc, cgroup) == 1.0  # no /proc/self/cgroup at all
    write(proc, "self/cgroup", "garbage\n0::relative\n")
    assert capacity(proc, cgroup) == 1.0
    write(proc, "self/cgroup", "0::/\n")
    write(cgroup, "cpu.max", "fifty\n")
    assert capacity(proc, cgroup) == 1.0
    write(cgroup, "cpu.max", "0 100000\n")  # no CPU at all is no reading, not a divisor
    assert capacity(proc, cgroup) == 1.0


def test_this_machine_gives_a_share_of_one_core() -> None:
    assert 0.0 < worker_cpu_capacity() <= 1.0


async def test_a_limit_changed_while_running_is_followed(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/\n")
    write(cgroup, "cpu.max", "50000 100000\n")
    seen: list[float] = []
    follower = asyncio.create_task(
        follow_cpu_capacity(
            capacity(proc, cgroup), seen.append, lambda: capacity(proc, cgroup), 0.01
        )
    )
    try:
        for text, expected in (("25000 100000\n", [0.25]), ("max 100000\n", [0.25, 1.0])):
            write(cgroup, "cpu.max", text)  # resized in place
            async with asyncio.timeout(5):
                while seen != expected:
                    await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # ten more readings of an unchanged limit
        assert seen == [0.25, 1.0]
    finally:
        follower.cancel()


def test_the_lowest_of_two_limits_applies_wherever_it_is(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/kubepods/pod1/container\n")
    write(cgroup, "kubepods/pod1/cpu.max", "30000 100000\n")  # the pod's
    write(cgroup, "kubepods/pod1/container/cpu.max", "50000 100000\n")
    assert capacity(proc, cgroup) == 0.3
    write(cgroup, "kubepods/pod1/cpu.max", "70000 100000\n")
    assert capacity(proc, cgroup) == 0.5


def test_a_zero_period_is_no_limit(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/\n")
    write(cgroup, "cpu.max", "50000 0\n")
    assert capacity(proc, cgroup) == 1.0


def test_a_cgroup_name_of_any_bytes_is_followed(proc: Path, cgroup: Path) -> None:
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_bytes(b"0::/caf\xe9\n")  # not UTF-8
    directory = Path(os.fsdecode(bytes(cgroup) + b"/caf\xe9"))
    directory.mkdir()
    (directory / "cpu.max").write_text("20000 100000\n")
    assert capacity(proc, cgroup) == 0.2


def test_a_path_the_system_refuses_to_look_up_is_no_limit(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/" + "a" * 300 + "\n")  # a name too long for the kernel
    write(cgroup, "cpu.max", "50000 100000\n")
    assert capacity(proc, cgroup) == 0.5  # the mount's own limit still counts


def test_numbers_beyond_reason_never_stop_the_worker(
    proc: Path, cgroup: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_limit, "_warned", False)
    write(proc, "self/cgroup", "0::/\n")
    write(cgroup, "cpu.max", "1 " + "9" * 400 + "\n")  # a tiny share: the kernel's least
    assert capacity(proc, cgroup) == cpu_limit.LEAST_CORES
    write(cgroup, "cpu.max", "9" * 400 + " 1\n")  # too large for a float
    with caplog.at_level(logging.WARNING, logger="app.cpu_limit"):
        assert capacity(proc, cgroup) == 1.0
        assert capacity(proc, cgroup) == 1.0
    warnings = [
        r for r in caplog.records if r.getMessage() == "cpu limit not read: counted as one core"
    ]
    assert len(warnings) == 1  # once, however often it is read
