"""raise_open_file_limit in a child process (a process cannot take back a lowered hard limit):
the soft limit goes up to the hard one, a hard limit too low for max_sessions is a warning, and
what is left beside the calls bounds the connections without a request head."""

from __future__ import annotations

import subprocess
import sys

RUN = """
import logging, resource, sys
from app.open_files import raise_open_file_limit, unfinished_requests_bound
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
print(raise_open_file_limit(int(sys.argv[3])))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
print(unfinished_requests_bound(int(sys.argv[3]), int(sys.argv[4])))
"""


def run(soft: int, hard: int, max_sessions: int, per_source: int = 256) -> tuple[list[int], str]:
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(soft), str(hard), str(max_sessions), str(per_source)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(line) for line in result.stdout.split()], result.stderr


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    (returned, in_force, _), log = run(256, 8192, 2000)
    assert returned == in_force == 8192
    assert log.startswith("INFO open file limit")


def test_a_hard_limit_below_what_max_sessions_needs_is_a_warning() -> None:
    (returned, in_force, _), log = run(256, 1024, 2000)
    assert returned == in_force == 1024
    assert log.startswith("WARNING open file limit below what max_sessions needs")


def test_connections_without_a_request_head_get_what_the_calls_and_spare_leave() -> None:
    assert run(256, 8192, 2000)[0][2] == 8192 - 2000 - 1024
    # Too low for max_sessions: four sources' worth, so that one cannot fill it alone, and at
    # least 1,024 (the per-source bound off, say).
    assert run(256, 1024, 2000, per_source=512)[0][2] == 4 * 512
    assert run(256, 3000, 2000, per_source=0)[0][2] == 1024
