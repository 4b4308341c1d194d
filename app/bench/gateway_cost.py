"""What the cost benches (`upgrade_cost`, `frame_cost`) share: a gateway and Redis started
unpinned, and the gateway's cost read around a piece of work, as CPU µs (psutil) or, under
valgrind's callgrind, as instructions."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import psutil

from app.bench.spawn import Cores, SpawnedStack

# Under callgrind the event loop runs ~50x slower: no load shedding, a patient Redis client.
CALLGRIND_SETTINGS = {
    "OVERLOAD_MAX_EVENT_LOOP_LAG_SECONDS": "0",
    "OVERLOAD_MAX_CPU_UTILIZATION": "0",
    "OVERLOAD_MAX_CPU_UTILIZATION_UNDER_LIMIT": "0",
    "OVERLOAD_CPU_THROTTLED_HOLD_SECONDS": "0",
    "OVERLOAD_MAX_HANDSHAKE_AGE_SECONDS": "0",
    "REDIS_TIMEOUT_SECONDS": "10",
}


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of `process`, all its threads: from Linux's schedstat (nanoseconds), where
    psutil's user and system times count whole clock ticks of 10 ms, too coarse for a round
    of a few seconds; psutil's elsewhere."""
    try:
        return (
            sum(
                int(stat.read_text().split()[0])
                for stat in Path(f"/proc/{process.pid}/task").glob("*/schedstat")
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        times = process.cpu_times()
        return float(times.user + times.system)


class Callgrind:
    """Instructions of a process running under callgrind: zero its counters, read them."""

    def __init__(self, pid: int, out_dir: Path) -> None:
        self._pid = pid
        self._out_dir = out_dir

    @staticmethod
    def wrapper(out_dir: Path) -> tuple[str, ...]:
        out_dir.mkdir(parents=True, exist_ok=True)
        return (
            "valgrind",
            "--tool=callgrind",
            "--vgdb=yes",
            f"--callgrind-out-file={out_dir}/callgrind.out.%p",
        )

    def _control(self, option: str) -> None:
        subprocess.run(  # noqa: S603 - valgrind's own tool, on our child's pid
            ["callgrind_control", option, str(self._pid)],  # noqa: S607
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def zero(self) -> None:
        self._control("--zero")

    def instructions(self) -> int:
        """Instructions since the last `zero` (dumps the counters to a new file)."""
        self._control("--dump")
        dumps = sorted(
            self._out_dir.glob(f"callgrind.out.{self._pid}.*"), key=lambda p: p.stat().st_mtime
        )
        found = re.search(r"^summary: (\d+)$", dumps[-1].read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no summary line in {dumps[-1]}")
        return int(found.group(1))


def add_callgrind_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--callgrind",
        type=Path,
        metavar="OUT_DIR",
        help="count the gateway's instructions under valgrind's callgrind (dumps in OUT_DIR)",
    )


class GatewayCost:
    """A gateway and Redis of their own (unpinned: pin the whole run yourself), and the
    gateway's cost since the last `start()`: CPU µs, or instructions with `callgrind_dir`."""

    def __init__(self, callgrind_dir: Path | None, python: str | None = None) -> None:
        self.traced = callgrind_dir is not None
        self.unit = "instructions" if self.traced else "µs"
        self.stack = SpawnedStack(
            Cores.plan(pin=False),
            {"LOG_LEVEL": "INFO", **(CALLGRIND_SETTINGS if self.traced else {})},
            python=python,
            wrapper=Callgrind.wrapper(callgrind_dir) if callgrind_dir else (),
        ).start(timeout=600 if self.traced else 30)
        assert self.stack.gateway is not None
        self._process = psutil.Process(self.stack.gateway.pid)
        self.pid = self._process.pid
        self._callgrind = Callgrind(self._process.pid, callgrind_dir) if callgrind_dir else None
        self._baseline = 0.0

    @staticmethod
    def check_callgrind(parser: argparse.ArgumentParser, callgrind_dir: Path | None) -> None:
        if callgrind_dir is not None and shutil.which("callgrind_control") is None:
            parser.error("--callgrind needs valgrind (callgrind_control) on PATH")

    def start(self) -> None:
        if self._callgrind is not None:
            self._callgrind.zero()
        else:
            self._baseline = cpu_seconds(self._process)

    def read(self) -> float:
        if self._callgrind is not None:
            return float(self._callgrind.instructions())
        return (cpu_seconds(self._process) - self._baseline) * 1e6

    def redis_process(self) -> psutil.Process:
        assert self.stack.redis is not None
        assert self.stack.redis.pid is not None
        return psutil.Process(self.stack.redis.pid)

    def stop(self) -> None:
        self.stack.stop()
