"""The CPU a worker may use, read from cgroup files laid out as the kernel shows them: a
directory stands for /proc (with the process's cgroup and mountinfo files) and others for
the cgroup mounts that mountinfo names."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from app import cpu_limit
from app.cpu_limit import (
    CpuLimit,
    ThrottledPeriods,
    follow_cpu_limit,
    worker_cpu_capacity,
    worker_cpu_limit,
)


def write(root: Path, relative: str, text: str) -> None:
    file = root / relative
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def mounted(
    proc: Path, point: Path, root: str = "/", fstype: str = "cgroup2", options: str = "rw"
) -> None:
    """A line of /proc/self/mountinfo: the part `root` of a cgroup hierarchy at `point`."""
    point.mkdir(parents=True, exist_ok=True)
    escaped = str(point).replace(" ", "\\040")
    with (proc / "self" / "mountinfo").open("a") as file:
        file.write(f"41 31 0:38 {root} {escaped} rw,relatime shared:9 - {fstype} cg {options}\n")


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    return tmp_path / "proc"


@pytest.fixture
def cgroup(tmp_path: Path) -> Path:
    return tmp_path / "cgroup"


def capacity(proc: Path) -> float:
    return worker_cpu_capacity(proc)


def test_v2_in_its_own_namespace_the_root_holds_the_container_limit(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "0::/\n")
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "50000 100000\n")
    assert capacity(proc) == 0.5


def test_v2_the_lowest_limit_of_the_cgroup_and_its_ancestors_applies(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "0::/kubepods/pod1/container\n")
    mounted(proc, cgroup)
    write(cgroup, "kubepods/cpu.max", "max 100000\n")
    write(cgroup, "kubepods/pod1/cpu.max", "30000 100000\n")  # the pod's
    write(cgroup, "kubepods/pod1/container/cpu.max", "50000 100000\n")
    assert capacity(proc) == 0.3
    write(cgroup, "kubepods/pod1/cpu.max", "70000 100000\n")
    assert capacity(proc) == 0.5


def test_v2_without_a_limit_or_above_one_core_is_one_core(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/service\n")
    mounted(proc, cgroup)
    write(cgroup, "service/cpu.max", "max 100000\n")
    assert capacity(proc) == 1.0
    write(cgroup, "service/cpu.max", "200000 100000\n")  # two cores: a worker uses one
    assert capacity(proc) == 1.0


def test_v2_on_a_hybrid_host_under_the_unified_mount(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "4:memory:/a\n0::/job\n")
    mounted(proc, cgroup / "memory", fstype="cgroup", options="rw,memory")
    mounted(proc, cgroup / "unified")
    write(cgroup, "unified/job/cpu.max", "25000 50000\n")
    assert capacity(proc) == 0.5


def test_v2_without_a_namespace_the_mount_shows_the_container_own_part(
    proc: Path, cgroup: Path
) -> None:
    # The host's path of the cgroup; the mount shows the container's part of the hierarchy.
    write(proc, "self/cgroup", "0::/kubepods.slice/cri-containerd-abc.scope\n")
    mounted(proc, cgroup, root="/kubepods.slice/cri-containerd-abc.scope")
    write(cgroup, "cpu.max", "40000 100000\n")
    assert capacity(proc) == 0.4


def test_v2_systemd_in_a_container_reads_its_own_unit_not_a_sibling(
    proc: Path, cgroup: Path
) -> None:
    mounted(proc, cgroup, root="/docker/abc")
    write(cgroup, "system.slice/cpu.max", "50000 100000\n")  # another unit's slice
    write(proc, "self/cgroup", "0::/docker/abc/init.scope\n")
    assert capacity(proc) == 1.0
    write(cgroup, "system.slice/audiohook.service/cpu.max", "30000 100000\n")
    write(proc, "self/cgroup", "0::/docker/abc/system.slice/audiohook.service\n")
    assert capacity(proc) == 0.3  # its own unit's limit, lower than its slice's


def test_v1_quota_and_period_of_the_cpu_hierarchy(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "7:memory:/docker/abc\n5:cpu,cpuacct:/docker/abc\n")
    mounted(proc, cgroup / "cpu,cpuacct", fstype="cgroup", options="rw,cpu,cpuacct")
    mounted(proc, cgroup / "memory", fstype="cgroup", options="rw,memory")
    write(cgroup, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "25000\n")
    write(cgroup, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    write(cgroup, "memory/docker/abc/cpu.cfs_quota_us", "1000\n")  # not the cpu hierarchy
    write(cgroup, "memory/docker/abc/cpu.cfs_period_us", "100000\n")
    assert capacity(proc) == 0.25


def test_v1_a_container_mount_is_its_own_cgroup_not_a_child_of_the_same_name(
    proc: Path, cgroup: Path
) -> None:
    # Without a cgroup namespace the path is the host's, and the container's mount shows its
    # own cgroup at the mount point; a child it made, named like a host cgroup, is not it.
    write(proc, "self/cgroup", "3:cpu:/docker/abc\n")
    mounted(proc, cgroup / "cpu", root="/docker/abc", fstype="cgroup", options="rw,cpu")
    write(cgroup, "cpu/cpu.cfs_quota_us", "150000\n")
    write(cgroup, "cpu/cpu.cfs_period_us", "200000\n")
    write(cgroup, "cpu/docker/cpu.cfs_quota_us", "20000\n")  # a nested runtime's own cgroup
    write(cgroup, "cpu/docker/cpu.cfs_period_us", "100000\n")
    assert capacity(proc) == 0.75


def test_a_mount_of_another_part_of_the_hierarchy_is_not_read(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/mine\n")
    mounted(proc, cgroup / "theirs", root="/theirs")
    write(cgroup, "theirs/cpu.max", "10000 100000\n")
    assert capacity(proc) == 1.0


def test_a_mount_shows_a_cgroup_by_whole_names_only(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/docker/abcdef\n")
    mounted(proc, cgroup, root="/docker/abc")  # another container, whose id is a prefix
    write(cgroup, "cpu.max", "10000 100000\n")
    assert capacity(proc) == 1.0


def test_a_cgroup_outside_its_namespace_root_is_not_looked_for_above_the_mount(
    proc: Path, cgroup: Path
) -> None:
    # The kernel writes ".." when the process's cgroup is not under its namespace's root
    # (nsenter into a container's namespaces): the mount point is not one of its ancestors.
    write(proc, "self/cgroup", "0::/../../user.slice/session-1.scope\n")
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "20000 100000\n")
    assert capacity(proc) == 1.0


def test_a_mount_covered_by_a_later_one_at_the_same_point_is_not_read(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "0::/docker/abc\n")
    mounted(proc, cgroup)  # the whole hierarchy, then the container's own cgroup over it
    mounted(proc, cgroup, root="/docker/abc")
    write(cgroup, "cpu.max", "60000 100000\n")
    write(cgroup, "docker/abc/cpu.max", "10000 100000\n")  # a nested runtime's cgroup
    assert capacity(proc) == 0.6


def test_mountinfo_fields_are_split_on_single_spaces(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/\n")
    cgroup.mkdir()
    # An empty source (two spaces), and a no-break space in the mount point, which the
    # kernel does not escape.
    point = cgroup / "a\u00a0b"
    point.mkdir()
    write(proc, "self/mountinfo", f"41 31 0:38 / {point} rw - cgroup2  rw\n")
    write(point, "cpu.max", "50000 100000\n")
    assert capacity(proc) == 0.5


def test_a_mount_point_with_a_space_is_found(proc: Path, tmp_path: Path) -> None:
    write(proc, "self/cgroup", "0::/\n")
    mounted(proc, tmp_path / "cgroup fs")
    write(tmp_path, "cgroup fs/cpu.max", "60000 100000\n")
    assert capacity(proc) == 0.6


def test_v1_quota_minus_one_is_no_limit(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "3:cpu:/\n")
    mounted(proc, cgroup / "cpu", fstype="cgroup", options="rw,cpu")
    write(cgroup, "cpu/cpu.cfs_quota_us", "-1\n")
    write(cgroup, "cpu/cpu.cfs_period_us", "100000\n")
    assert capacity(proc) == 1.0


def test_unreadable_or_garbled_files_are_one_core(proc: Path, cgroup: Path) -> None:
    assert capacity(proc) == 1.0  # no /proc/self/cgroup or mountinfo at all
    write(proc, "self/cgroup", "garbage\n0::relative\n")
    write(proc, "self/mountinfo", "garbage\n1 2 3 - cgroup2\n")
    assert capacity(proc) == 1.0
    write(proc, "self/cgroup", "0::/\n")
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "fifty\n")
    assert capacity(proc) == 1.0
    write(cgroup, "cpu.max", "0 100000\n")  # no CPU at all is no reading, not a divisor
    assert capacity(proc) == 1.0
    write(cgroup, "cpu.max", "50000 0\n")  # nor is a period of 0
    assert capacity(proc) == 1.0


def test_a_cgroup_name_of_any_bytes_is_followed(proc: Path, cgroup: Path) -> None:
    (proc / "self" / "cgroup").write_bytes(b"0::/caf\xe9\n")  # not UTF-8
    mounted(proc, cgroup)
    directory = Path(os.fsdecode(bytes(cgroup) + b"/caf\xe9"))
    directory.mkdir()
    (directory / "cpu.max").write_text("20000 100000\n")
    assert capacity(proc) == 0.2


def test_a_path_the_system_refuses_to_look_up_is_skipped(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/" + "a" * 300 + "\n")  # a name too long for the kernel
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "50000 100000\n")
    assert capacity(proc) == 0.5  # its parent's limit still counts


def test_numbers_beyond_reason_never_stop_the_worker(
    proc: Path, cgroup: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_limit, "_warned", False)
    write(proc, "self/cgroup", "0::/\n")
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "1 " + "9" * 400 + "\n")  # a tiny share: the kernel's least
    assert capacity(proc) == cpu_limit.LEAST_CORES
    write(cgroup, "cpu.max", "9" * 400 + " 1\n")  # too large for a float
    with caplog.at_level(logging.WARNING, logger="app.cpu_limit"):
        assert capacity(proc) == 1.0
        assert capacity(proc) == 1.0
    warnings = [
        r for r in caplog.records if r.getMessage() == "cpu limit not read: counted as one core"
    ]
    assert len(warnings) == 1  # once, however often it is read


def test_this_machine_gives_a_share_of_one_core() -> None:
    assert 0.0 < worker_cpu_capacity() <= 1.0


async def test_a_limit_changed_while_running_is_followed(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/\n")
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "50000 100000\n")
    seen: list[CpuLimit] = []
    read = lambda: worker_cpu_limit(proc)  # noqa: E731
    follower = asyncio.create_task(follow_cpu_limit(read(), seen.append, read, 0.01))
    quarter, whole = CpuLimit(0.25, long_stall=True), CpuLimit()
    try:
        for text, expected in (("25000 100000\n", [quarter]), ("max 100000\n", [quarter, whole])):
            write(cgroup, "cpu.max", text)  # resized in place
            async with asyncio.timeout(5):
                while seen != expected:
                    await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # ten more readings of an unchanged limit
        assert seen == [quarter, whole]
    finally:
        follower.cancel()


# --- the kernel's count of throttled periods ---------------------------------------------------

V1_STAT = "nr_periods 40\nnr_throttled {}\nthrottled_time 912000000\n"
V2_STAT = "usage_usec 9\nuser_usec 5\nsystem_usec 4\nnr_periods 40\nnr_throttled {}\n"


def test_v2_throttled_periods_of_every_limited_cgroup_up_from_the_worker(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "0::/kubepods/pod1/ctr\n")
    mounted(proc, cgroup)
    write(cgroup, "kubepods/pod1/cpu.max", "50000 100000\n")
    write(cgroup, "kubepods/pod1/cpu.stat", V2_STAT.format(3))
    write(cgroup, "kubepods/pod1/ctr/cpu.max", "30000 100000\n")
    write(cgroup, "kubepods/pod1/ctr/cpu.stat", V2_STAT.format(17))
    write(cgroup, "kubepods/cpu.stat", V2_STAT.format(40))  # no limit: never throttles
    throttled = ThrottledPeriods(proc)
    assert set(throttled.stat_files) == {
        cgroup / "kubepods/pod1/ctr/cpu.stat",
        cgroup / "kubepods/pod1/cpu.stat",
    }
    assert throttled() == 0  # counted from the first look
    write(cgroup, "kubepods/pod1/ctr/cpu.stat", V2_STAT.format(18))
    assert throttled() == 1  # read again each time
    # The pod's quota, shared with a busy sibling container, ran out: that stops ours too.
    write(cgroup, "kubepods/pod1/cpu.stat", V2_STAT.format(5))
    assert throttled() == 3
    # A file unreadable for a while: the others' sum is no continuation of the count.
    (cgroup / "kubepods/pod1/cpu.stat").rename(cgroup / "kubepods/pod1/cpu.stat.away")
    assert throttled() == 3
    (cgroup / "kubepods/pod1/cpu.stat.away").rename(cgroup / "kubepods/pod1/cpu.stat")
    assert throttled() == 3


def test_v1_throttled_periods_follow_a_changed_limit_once_looked_for_again(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "5:cpu,cpuacct:/gw\n")
    mounted(proc, cgroup / "cpu", fstype="cgroup", options="rw,cpu,cpuacct")
    write(cgroup, "cpu/gw/cpu.cfs_quota_us", "30000\n")
    write(cgroup, "cpu/gw/cpu.cfs_period_us", "100000\n")
    write(cgroup, "cpu/gw/cpu.stat", V1_STAT.format(4))
    write(cgroup, "cpu/cpu.cfs_quota_us", "-1\n")
    write(cgroup, "cpu/cpu.cfs_period_us", "100000\n")
    write(cgroup, "cpu/cpu.stat", V1_STAT.format(99))
    throttled = ThrottledPeriods(proc)
    assert throttled() == 0
    write(cgroup, "cpu/gw/cpu.stat", V1_STAT.format(6))
    assert throttled() == 2
    # A limit on the parent too: its count (99) is not a continuation of the one before.
    write(cgroup, "cpu/cpu.cfs_quota_us", "60000\n")
    throttled.find()
    assert throttled() == 2
    write(cgroup, "cpu/cpu.stat", V1_STAT.format(100))
    assert throttled() == 3
    throttled.find()  # nothing changed: the count goes on
    write(cgroup, "cpu/gw/cpu.stat", V1_STAT.format(7))
    assert throttled() == 4
    write(cgroup, "cpu/gw/cpu.cfs_quota_us", "-1\n")  # both limits lifted
    write(cgroup, "cpu/cpu.cfs_quota_us", "-1\n")
    throttled.find()
    assert throttled.stat_files == ()
    assert throttled() is None


def test_a_limit_whose_stall_is_short_is_not_counted(proc: Path, cgroup: Path) -> None:
    """12.5 ms per 20 ms stops the worker 7.5 ms at most; 62.5 ms per 100 ms, 37.5 ms."""
    write(proc, "self/cgroup", "0::/\n")
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "12500 20000\n")
    write(cgroup, "cpu.stat", V2_STAT.format(5))
    assert ThrottledPeriods(proc)() is None
    write(cgroup, "cpu.max", "62500 100000\n")
    assert ThrottledPeriods(proc)() == 0
    write(cgroup, "cpu.max", "200000 100000\n")  # two cores: a single worker never reaches it
    assert ThrottledPeriods(proc)() is None


def test_a_limit_stalls_long_where_its_period_less_its_quota_passes_20_ms(
    proc: Path, cgroup: Path
) -> None:
    write(proc, "self/cgroup", "0::/pod/ctr\n")
    mounted(proc, cgroup)
    write(cgroup, "pod/ctr/cpu.max", "12500 20000\n")  # 7.5 ms: as a slower core
    assert worker_cpu_limit(proc) == CpuLimit(0.625, long_stall=False)
    write(cgroup, "pod/cpu.max", "90000 100000\n")  # 10 ms
    assert worker_cpu_limit(proc) == CpuLimit(0.625, long_stall=False)
    # A parent's higher limit that stalls long still stalls the worker once it is spent.
    write(cgroup, "pod/cpu.max", "75000 100000\n")  # 25 ms
    assert worker_cpu_limit(proc) == CpuLimit(0.625, long_stall=True)
    write(cgroup, "pod/ctr/cpu.max", "30000 100000\n")  # Kubernetes' period at 0.3 of a core
    assert worker_cpu_limit(proc) == CpuLimit(0.3, long_stall=True)
    write(cgroup, "pod/cpu.max", "90000 100000\n")  # a parent whose stall is short: still long
    assert worker_cpu_limit(proc) == CpuLimit(0.3, long_stall=True)
    write(cgroup, "pod/cpu.max", "max 100000\n")
    write(cgroup, "pod/ctr/cpu.max", "max 100000\n")
    assert worker_cpu_limit(proc) == CpuLimit()


def test_no_limit_or_an_unreadable_count_is_no_count(proc: Path, cgroup: Path) -> None:
    write(proc, "self/cgroup", "0::/\n")
    mounted(proc, cgroup)
    write(cgroup, "cpu.max", "max 100000\n")
    write(cgroup, "cpu.stat", V2_STAT.format(5))
    assert ThrottledPeriods(proc)() is None  # never throttled without a quota
    write(cgroup, "cpu.max", "50000 100000\n")
    write(cgroup, "cpu.stat", "nr_throttled lots\n")
    assert ThrottledPeriods(proc)() is None
    (cgroup / "cpu.stat").unlink()
    assert ThrottledPeriods(proc)() is None
    assert ThrottledPeriods(proc / "nowhere")() is None
