"""The CPU a worker may use: one core, or less under a container's CPU limit.

A worker is one thread, so it never uses more than one core. A CPU limit (Kubernetes
`resources.limits.cpu`, `docker run --cpus`, compose's `cpus:`) is a CFS quota on the
container's cgroup: past `quota` microseconds of CPU per `period`, the kernel stops the
process until the next period. Load shedding's CPU signal is a share of this capacity: as a
share of a whole core, a worker limited to half a core would look half idle while it is
throttled, and would never shed on CPU.

The limit is read from the cgroup files of this process (cgroup v2 `cpu.max`, v1
`cpu.cfs_quota_us` and `cpu.cfs_period_us`): the path /proc/self/cgroup gives, and each of its
parents, under the usual mount points, and the mount's root (a container's own cgroup, when
the path is not found under it); the lowest limit applies, and no file, or no limit, is one
core. The path is joined to the mount point, not resolved through /proc/self/mountinfo:
right for containers (with or without a cgroup namespace) and services on a host, but in
nested layouts (a container running its own container runtime or systemd) a cgroup of the
same name that is not this process's can be read, or this process's own missed. It is read at start
and again every ten seconds: a limit can change while the container runs (Kubernetes resizes
a pod's resources in place). This only tunes load shedding, so it never stops the worker:
anything unreadable or unexpected counts as no limit (one warning says so).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("app.cpu_limit")

ONE_CORE = 1.0
LEAST_CORES = 0.001  # the kernel's smallest quota (1 ms) over its longest period (1 s)
RECHECK_SECONDS = 10.0
_warned = False  # the one warning about an unreadable limit is out


def worker_cpu_capacity(
    proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> float:
    """Cores this worker may use: its cgroups' lowest CPU limit, at most one core."""
    global _warned
    capacity = ONE_CORE
    try:
        for quota, period in _cpu_limits(proc, cgroup_root):
            if quota > 0 and period > 0:
                capacity = min(capacity, quota / period)
    except Exception as exc:  # a surprise in the files must not stop the worker
        if not _warned:
            _warned = True
            log.warning(
                "cpu limit not read: counted as one core",
                extra={"error": f"{type(exc).__name__}: {exc}"[:200]},
            )
        return ONE_CORE
    return max(capacity, LEAST_CORES)


async def follow_cpu_capacity(
    current: float,
    changed: Callable[[float], None],
    read: Callable[[], float] = worker_cpu_capacity,
    interval: float = RECHECK_SECONDS,
) -> None:
    """Read the capacity again every `interval` seconds, forever, and hand `changed` each new
    value (`current`: the one in use). A few small files: read on the event loop."""
    while True:
        await asyncio.sleep(interval)
        capacity = read()
        if capacity != current:
            current = capacity
            changed(capacity)


def _cpu_limits(proc: Path, cgroup_root: Path) -> Iterator[tuple[int, int]]:
    """(quota, period) of every limited cgroup of this process and its visible ancestors."""
    try:  # cgroup names are bytes: kept as they are, as paths
        memberships = (proc / "self" / "cgroup").read_text(errors="surrogateescape").splitlines()
    except OSError:
        return
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not hierarchy or not path.startswith("/"):
            continue
        if hierarchy == "0" and controllers == "":  # cgroup v2, the unified hierarchy
            for directory in _ancestors((cgroup_root, cgroup_root / "unified"), path):
                limit = _read_cpu_max(directory / "cpu.max")
                if limit is not None:
                    yield limit
        elif "cpu" in controllers.split(","):  # cgroup v1, a hierarchy with the cpu controller
            mounts = [cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"]
            for directory in _ancestors(mounts, path):
                limit = _read_cfs(directory)
                if limit is not None:
                    yield limit


def _ancestors(mounts: list[Path] | tuple[Path, ...], path: str) -> Iterator[Path]:
    """The cgroup's directory and its parents' under each mount point that exists. In a
    container with its own cgroup namespace the path is "/" and the mount is its own cgroup;
    without one, its directory may be missing from the mount, whose root is then its own."""
    parts = [part for part in path.split("/") if part]
    seen: set[Path] = set()
    for mount in mounts:
        if not os.path.isdir(mount):  # False on any error (a directory it may not search)
            continue
        for depth in range(len(parts), -1, -1):
            directory = mount.joinpath(*parts[:depth])
            if directory not in seen and os.path.isdir(directory):
                seen.add(directory)
                yield directory


def _read_cpu_max(file: Path) -> tuple[int, int] | None:
    """cgroup v2: "max 100000" (no limit) or "50000 100000"."""
    try:
        quota, period = file.read_text().split()[:2]
        return None if quota == "max" else (int(quota), int(period))
    except (OSError, ValueError):
        return None


def _read_cfs(directory: Path) -> tuple[int, int] | None:
    """cgroup v1: quota -1 is no limit."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota < 0 else (quota, period)
