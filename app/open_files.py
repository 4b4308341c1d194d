"""The open-file limit: a worker holds one descriptor per connection.

The common default soft limit, 1,024 (systemd services, and containers since Docker 25), is
half of what the default `AUDIOHOOK_MAX_SESSIONS` needs: past it, new connections are reset
by the kernel before the gateway sees them (no answer, no metric, no log line), calls and
`/readyz` alike. The hard limit is usually far higher, and raising the soft limit to it is
every process's right (nginx's `worker_rlimit_nofile` does the same).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("app.open_files")

# Descriptors a worker needs besides its live calls: upgrades being admitted or answered as
# failed logins (each bounded, together up to a few hundred), the listeners, Redis
# connections, the embedded Redis's pipes.
SPARE_DESCRIPTORS = 1024
_UNLIMITED_TARGET = 1 << 20  # the Linux default of fs.nr_open: no soft limit can exceed it
# The fewest connections without a whole request head the main listener holds in all, however
# low the open-file limit (one too low for max_sessions is warned about at start): four
# sources' worth, so that one never fills the total alone, and never fewer than 1,024.
MIN_UNFINISHED_SOURCES = 4
MIN_UNFINISHED_TOTAL = 1024


def raise_open_file_limit(max_sessions: int) -> int:
    """Raise the soft limit on open files to the hard limit and log the result, as a
    warning when it leaves fewer than `max_sessions` + SPARE_DESCRIPTORS. Returns the soft
    limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("open file limit not raised", extra={"error": str(exc)})
    needed = max_sessions + SPARE_DESCRIPTORS
    fields = {"open_file_limit": soft, "needed_for_max_sessions": needed}
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open file limit below what max_sessions needs: raise the hard limit "
            "(ulimit -Hn, the service's LimitNOFILE or the container's nofile ulimit)",
            extra=fields,
        )
    else:
        log.info("open file limit", extra=fields)
    return soft


def unfinished_requests_bound(max_sessions: int, per_source: int) -> int:
    """How many connections that have not sent their whole request head the main listener
    may hold from all sources together: the descriptors the open-file limit leaves beside
    the live calls' and the spare ones, so that many sources, each within its own bound
    (`per_source`), cannot take those; at least MIN_UNFINISHED_SOURCES sources' worth and
    MIN_UNFINISHED_TOTAL (0: no bound, as without a limit on open files)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    floor = max(MIN_UNFINISHED_SOURCES * per_source, MIN_UNFINISHED_TOTAL)
    return max(floor, soft - max_sessions - SPARE_DESCRIPTORS)
