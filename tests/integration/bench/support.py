"""Running a benchmark command the way an operator does: a child process of this interpreter."""

from __future__ import annotations

import subprocess
import sys


def run_bench(module: str, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    """`python -m module args...`: (exit code, stdout, stdout and stderr together)."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return completed.returncode, completed.stdout, completed.stdout + completed.stderr
