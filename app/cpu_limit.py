"""The CPU a worker may use: one core, or less under a container's CPU limit.

A worker is one thread, so it never uses more than one core. A CPU limit (Kubernetes
`resources.limits.cpu`, `docker run --cpus`, compose's `cpus:`) is a CFS quota on the
container's cgroup: past `quota` microseconds of CPU per `period`, the kernel stops the
process until the next period. Load shedding's CPU signal is a share of this capacity: as a
share of a whole core, a worker limited to half a core would look half idle while it is
throttled, and would never shed on CPU.

The limit is read from the cgroup files of this process (cgroup v2 `cpu.max`, v1
`cpu.cfs_quota_us` and `cpu.cfs_period_us`): its cgroup's path (/proc/self/cgroup) is found
under each mount of its hierarchy (/proc/self/mountinfo: the mount shows the part of the
hierarchy below its root), and that directory and each parent up to the mount point are
read; the lowest limit applies, and no file, or no limit, is one core. A limit above what a
mount shows (a pod-level limit above a container's own cgroup namespace) is not seen. It is
read at start and again every ten seconds: a limit can change while the container runs
(Kubernetes resizes a pod's resources in place). This only tunes load shedding, so it never
stops the worker: anything unreadable or unexpected counts as no limit (one warning says so).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("app.cpu_limit")

ONE_CORE = 1.0
LEAST_CORES = 0.001  # the kernel's smallest quota (1 ms) over its longest period (1 s)
# A throttled period stops the worker for at most its period less its quota. A limit whose
# stall cannot reach this (a 12.5 ms quota per 20 ms period: 7.5 ms) costs live calls
# nothing worth refusing new ones for: its throttled periods are not counted, and load
# shedding treats the worker as a slower core, not as a limited one.
SHORT_STALL_SECONDS = 0.02
RECHECK_SECONDS = 10.0
_warned = False  # the one warning about an unreadable limit is out


@dataclass(frozen=True, slots=True)
class CpuLimit:
    """What the worker may use: `cores` (at most one), and whether a throttled period can stop
    it for longer than `SHORT_STALL_SECONDS` (`long_stall`: a limit whose period less quota is
    longer, such as Kubernetes' 100 ms period at any limit below 0.8 of a core)."""

    cores: float = ONE_CORE
    long_stall: bool = False


def worker_cpu_limit(proc: Path = Path("/proc")) -> CpuLimit:
    """The worker's cgroups' lowest CPU limit (at most one core), and whether any of them
    stalls long."""
    global _warned
    capacity, long_stall = ONE_CORE, False
    try:
        for quota, period, _ in _cpu_limits(proc / "self"):
            if quota > 0 and period > 0:
                capacity = min(capacity, quota / period)
                long_stall = long_stall or _stalls_long(quota, period)
    except Exception as exc:  # a surprise in the files must not stop the worker
        if not _warned:
            _warned = True
            log.warning(
                "cpu limit not read: counted as one core",
                extra={"error": f"{type(exc).__name__}: {exc}"[:200]},
            )
        return CpuLimit()
    return CpuLimit(max(capacity, LEAST_CORES), long_stall)


def worker_cpu_capacity(proc: Path = Path("/proc")) -> float:
    """Cores this worker may use (the limit's `cores` alone)."""
    return worker_cpu_limit(proc).cores


def _stalls_long(quota: int, period: int) -> bool:
    """A throttled period stops the worker for at most the period less the quota (µs)."""
    return quota > 0 and period - quota > SHORT_STALL_SECONDS * 1_000_000  # exact for any int


class ThrottledPeriods:
    """How many CPU periods the kernel has throttled the worker in (`nr_throttled` of cpu.stat,
    cgroup v1 and v2): a quota was spent before its period ended, and the whole process,
    every live call's audio with it, waited out the rest. The counts of every limited cgroup
    from the worker's up are added: a limited ancestor that is throttled stops the worker
    too, whichever limit is lowest (a parent's quota shared with a busy sibling runs out
    first). Only limits whose stall can be longer than `SHORT_STALL_SECONDS` are read.
    Calling it gives a count that only grows, from the first look on; None with no such
    limit, or no file to read."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self.stat_files: tuple[Path, ...] = ()
        self._last: tuple[int, int] | None = None  # (files read, their sum) at the last look
        self._total = 0
        self.find()

    def find(self) -> None:
        """Look for the limited cgroups again (a limit can change while the container runs).
        Other files' counts are not this count's continuation: the next look starts afresh."""
        try:
            found = tuple(
                directory / "cpu.stat"
                for quota, period, directory in _cpu_limits(self._proc / "self")
                if _stalls_long(quota, period)
            )
        except Exception:  # as in worker_cpu_limit: a surprise counts as no limit
            found = ()
        if found != self.stat_files:
            self.stat_files, self._last = found, None

    def __call__(self) -> int | None:
        counts = [count for file in self.stat_files if (count := _nr_throttled(file)) is not None]
        if not counts:
            self._last = None
            return None
        last, self._last = self._last, (len(counts), sum(counts))
        # Only a sum of the same files continues the count (one that fell starts afresh).
        if last is not None and last[0] == len(counts) and self._last[1] > last[1]:
            self._total += self._last[1] - last[1]
        return self._total


def _nr_throttled(stat_file: Path) -> int | None:
    try:
        for line in stat_file.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "nr_throttled":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


async def follow_cpu_limit(
    current: CpuLimit,
    changed: Callable[[CpuLimit], None],
    read: Callable[[], CpuLimit] = worker_cpu_limit,
    interval: float = RECHECK_SECONDS,
) -> None:
    """Read the limit again every `interval` seconds, forever, and hand `changed` each new
    value (`current`: the one in use). A few small files: read on the event loop."""
    while True:
        await asyncio.sleep(interval)
        limit = read()
        if limit != current:
            current = limit
            changed(limit)


def _cpu_limits(process: Path) -> Iterator[tuple[int, int, Path]]:
    """(quota, period, directory) of every limited cgroup of this process and its visible
    ancestors."""
    memberships = _read_lines(process / "cgroup")
    # The last mount at a mount point is the one seen there: an earlier one is covered by it.
    seen_at = {
        mount.point: mount
        for mount in map(_Mount.parse, _read_lines(process / "mountinfo"))
        if mount is not None
    }
    mounts = list(seen_at.values())
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not hierarchy or not path.startswith("/"):
            continue
        if hierarchy == "0" and controllers == "":  # cgroup v2, the unified hierarchy
            shown = [mount for mount in mounts if mount.fstype == "cgroup2"]
            read = _read_cpu_max
        elif "cpu" in controllers.split(","):  # cgroup v1, a hierarchy with the cpu controller
            shown = [m for m in mounts if m.fstype == "cgroup" and "cpu" in m.options]
            read = _read_cfs
        else:
            continue
        for mount in shown:
            for directory in mount.directories(path):
                limit = read(directory)
                if limit is not None:
                    yield (*limit, directory)


def _read_lines(file: Path) -> list[str]:
    try:  # cgroup names and mount points are bytes: decoded as paths are, lines at "\n" only
        return os.fsdecode(file.read_bytes()).split("\n")
    except OSError:
        return []


@dataclass(frozen=True, slots=True)
class _Mount:
    """One line of /proc/self/mountinfo: `root` is the part of the filesystem the mount
    shows at `point` (for a cgroup hierarchy, the cgroup at the mount point)."""

    root: str
    point: Path
    fstype: str
    options: frozenset[str]  # the filesystem's (a cgroup v1 mount's controllers among them)

    @classmethod
    def parse(cls, line: str) -> _Mount | None:
        mount, separator, filesystem = line.partition(" - ")
        # Fields are separated by one space each; an empty one (a source) is two in a row.
        fields, filesystem_fields = mount.split(" "), filesystem.split(" ")
        if not separator or len(fields) < 5 or len(filesystem_fields) < 3:
            return None
        return cls(
            root=_unescape(fields[3]),
            point=Path(_unescape(fields[4])),
            fstype=filesystem_fields[0],
            options=frozenset(filesystem_fields[2].split(",")),
        )

    def directories(self, path: str) -> Iterator[Path]:
        """The cgroup at `path` and its parents, as far as this mount shows them; none when
        the mount shows another part of the hierarchy."""
        root = self.root.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            return
        parts = [part for part in path[len(root) :].split("/") if part]
        if "." in parts or ".." in parts:  # outside its cgroup namespace: above what is shown
            return
        for depth in range(len(parts), -1, -1):
            directory = self.point.joinpath(*parts[:depth])
            if os.path.isdir(directory):  # False on any error (a directory it may not search)
                yield directory


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash as an octal escape (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _read_cpu_max(directory: Path) -> tuple[int, int] | None:
    """cgroup v2: "max 100000" (no limit) or "50000 100000"."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
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
