"""The gateway's long-lived services, started and stopped together by the app's lifespan.

``Gateway`` holds what every connection needs: settings, the Redis client, the publisher,
the control plane, the integration registry, the authenticator, the IP allowlist, the live
connections, and the drain state. One per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.control.plane import ControlPlane
from app.cpu_limit import CpuLimit, ThrottledPeriods, follow_cpu_limit, worker_cpu_limit
from app.observability import metrics
from app.protocol.media import MediaPolicy
from app.protocol.session import SessionConfig
from app.publisher.publisher import Publisher
from app.redis.client import close_redis, create_redis
from app.redis.health import RedisHealthCheck
from app.security.authenticator import Authenticator
from app.security.integrations import Integration, IntegrationRegistry
from app.security.ipallow import IpAllowlist
from app.security.session_owners import SessionOwners
from app.security.upgrade_claims import UpgradeClaims
from app.tasks import stop_task
from app.transport.load_shedding import LoadShedder
from app.transport.session_reporter import AUDIO_METRICS_INTERVAL_SECONDS, flush_audio_tallies
from app.transport.source_limiter import SourceRateLimiter

if TYPE_CHECKING:
    from app.transport.connection import Connection

log = logging.getLogger("app.runtime")

TICK_INTERVAL_SECONDS = 0.25


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = create_redis(settings)
        self.publisher = Publisher(self.redis, settings)
        self.redis_health = RedisHealthCheck(settings, self.publisher.health_checked)
        self.control = ControlPlane.from_settings(self.redis, settings)
        self.replica_id = self.control.replica_id
        self.integrations = IntegrationRegistry.from_settings(settings)
        self.authenticator = Authenticator.from_settings(settings, self.integrations, self.redis)
        self.allowlist = IpAllowlist.from_settings(settings, self.redis)
        self.upgrade_claims = UpgradeClaims(
            self.redis,
            self.authenticator.nonces,
            SessionOwners(self.redis, settings.stream_ttl_seconds),
            self.control,
        )
        self.upgrade_limiter = SourceRateLimiter(
            settings.upgrades_per_second_per_source,
            settings.upgrade_burst_per_source,
            settings.source_ipv6_prefix_length,
        )
        self.cpu_limit = worker_cpu_limit()
        self.throttled_periods = ThrottledPeriods()
        self.load_shedder = LoadShedder.from_settings(
            settings,
            self.publisher.take_round_trip_seconds,
            self.cpu_limit.cores,
            self.throttled_periods,
            self.cpu_limit.long_stall,
        )
        if self.cpu_limit != CpuLimit():
            self._log_cpu_limit()
        self.connections: set[Connection] = set()
        # Sessions admitted and not yet finished: counted at admission, before the upgrade's
        # awaits, so simultaneous upgrades cannot all slip under a limit.
        self.admitted_sessions = 0
        self.admitted_by_integration: Counter[str] = Counter()
        # Failed authentications being answered `disconnect` unauthorized: bounded on their own
        # and never counted as sessions, so failed logins cannot take real calls' slots.
        self.pending_auth_failures = 0
        self.draining = False
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.failed_task: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._check_encryption_keys()
        await self.publisher.start()
        await self.control.start()
        await self.allowlist.load_cached()
        self._spawn(self.allowlist.run(), "ip-ranges-refresh")
        self._spawn(self._tick_sessions(), "session-ticker")
        self._spawn(self._report_metrics(), "metrics-report")
        self._spawn(self.redis_health.run(), "redis-health")
        self._spawn(self.load_shedder.run(), "event-loop-lag-monitor")
        self._spawn(
            follow_cpu_limit(self.cpu_limit, self._cpu_limit_changed, self._read_cpu_limit),
            "cpu-limit-follower",
        )
        self._spawn(
            self.integrations.run_reload_loop(self.settings.integrations_reload_seconds),
            "integrations-reload",
        )
        log.info("gateway started", extra={"replica_id": self.replica_id})

    def _read_cpu_limit(self) -> CpuLimit:
        """The worker's CPU limit now, and the limited cgroups whose throttled periods load
        shedding reads (they may change with no change of capacity: one at a core or more)."""
        self.throttled_periods.find()
        return worker_cpu_limit()

    def _cpu_limit_changed(self, limit: CpuLimit) -> None:
        self.cpu_limit = limit
        self.load_shedder.set_cpu_capacity(limit.cores, limit.long_stall)
        self._log_cpu_limit()

    def _log_cpu_limit(self) -> None:
        """Load shedding's CPU signal is a share of what the worker may use: say what that is."""
        log.info(
            "cpu limit",
            extra={
                "cpu_capacity_cores": round(self.load_shedder.cpu_capacity, 3),
                "long_stall": self.load_shedder.long_stall,
                "max_cpu_utilization": self.load_shedder.max_cpu,
            },
        )

    def _check_encryption_keys(self) -> None:
        """Refuse to start when an integration names an encryption key that is not configured."""
        missing = sorted(
            f"{integration.name} -> {integration.encryption_key_id}"
            for integration in self.integrations.integrations
            if integration.encryption_key_id
            and not self.publisher.has_key(integration.encryption_key_id)
        )
        if missing:
            raise ValueError(
                "integrations name payload encryption keys missing from "
                f"AUDIOHOOK_PAYLOAD_ENCRYPTION_KEYS: {', '.join(missing)}"
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:  # cancelled again if one swallowed it (app/tasks.py)
            await stop_task(task)
        # Claims first: one finishing later would note an entry the stopped plane never deletes.
        await self.upgrade_claims.close()
        await self.control.stop()
        await self.publisher.stop(flush_timeout=self.settings.drain_close_wait_seconds)
        await close_redis(self.redis)
        log.info("gateway stopped", extra={"replica_id": self.replica_id})

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._background_task_done)
        self._tasks.append(task)

    def _background_task_done(self, task: asyncio.Task[None]) -> None:
        """A background service that fails must not fail silently: log it and stop being
        ready, so the orchestrator replaces this replica. (Some return at once by design, for
        example the IP-range refresher when no Genesys credentials are configured.)"""
        if task.cancelled() or task.exception() is None:
            return
        self.failed_task = task.get_name()
        log.error(
            "background task ended unexpectedly",
            extra={"task": self.failed_task},
            exc_info=task.exception(),
        )

    async def _tick_sessions(self) -> None:
        """Drive every session's timeouts from one task rather than one timer per session."""
        while True:
            await asyncio.sleep(TICK_INTERVAL_SECONDS)
            self._tick_each(time.monotonic())

    async def _report_metrics(self) -> None:
        """Live calls' audio reaches the metrics within a second (AudioTally), and so does the
        publisher's side of it, even while a stalled Redis holds its round trips."""
        while True:
            await asyncio.sleep(AUDIO_METRICS_INTERVAL_SECONDS)
            flush_audio_tallies()
            self.publisher.report_metrics()

    def _tick_each(self, now: float) -> None:
        # Not inline in the loop above: its loop variable would keep the last session ticked
        # alive while the task sleeps, past that session's end.
        for connection in list(self.connections):
            try:
                connection.tick(now)
            except Exception:  # one broken session must not stop every session's timers
                log.exception("session timer failed", extra=connection.log_fields)
                connection.fail("Server Error: internal error")

    def connection_started(self, connection: Connection) -> None:
        self.connections.add(connection)
        self._no_connections.clear()

    def connection_finished(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._no_connections.set()

    async def _wait_for_no_connections(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_connections.wait(), seconds)

    # --- drain --------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Stop taking sessions, let live ones finish, then ask the rest to go.

        Sessions still live after the grace period get the configured action. `reconnect` is
        only a request: clients that ignore it (the reference client does) are then sent
        `disconnect` completed, so they close cleanly and their in-flight audio is kept.
        """
        self.draining = True
        metrics.DRAINING.set(1)
        log.info("draining", extra={"sessions": len(self.connections)})
        await self._wait_for_no_connections(self.settings.drain_grace_seconds)
        actions = (
            ["reconnect", "disconnect"]
            if self.settings.drain_action == "reconnect"
            else ["disconnect"]
        )
        for action in actions:
            if not self.connections:
                break
            log.info(
                "asking sessions to end",
                extra={"sessions": len(self.connections), "action": action},
            )
            for connection in list(self.connections):
                connection.drain(action)
            await self._wait_for_no_connections(self.settings.drain_close_wait_seconds)
        log.info("drain finished", extra={"sessions_left": len(self.connections)})

    # --- queries used by admission and connections ----------------------------------------------
    def ready_for_sessions(self) -> bool:
        return self.publisher.ready and self.allowlist.ready

    def readiness(self) -> dict[str, bool]:
        return {
            "redis": self.publisher.ready,
            "ip_allowlist": self.allowlist.ready,
            "not_draining": not self.draining,
            "background_tasks": self.failed_task is None,
        }

    def at_session_limit(self) -> bool:
        return self.admitted_sessions >= self.settings.max_sessions

    def admit_session(self, integration: Integration | None) -> str | None:
        """Count a session against the limits; the refusal cause if a limit is reached."""
        if self.at_session_limit():
            return "session_limit"
        if integration is not None:
            limit = integration.max_concurrent_sessions
            if limit is not None and self.admitted_by_integration[integration.name] >= limit:
                return "integration_limit"
            self.admitted_by_integration[integration.name] += 1
        self.admitted_sessions += 1
        return None

    def admit_auth_failure(self) -> bool:
        """Count a failed authentication that will be answered `disconnect` unauthorized;
        False when max_pending_auth_failures is reached (answer HTTP 401 instead)."""
        if self.pending_auth_failures >= self.settings.max_pending_auth_failures:
            metrics.AUTH_FAILURES_OVER_LIMIT.inc()
            return False
        self.pending_auth_failures += 1
        metrics.AUTH_FAILURES_PENDING.set(self.pending_auth_failures)
        return True

    def release_session(self, integration: Integration | None) -> None:
        """Release what admission counted. Only an authenticated connection has an
        integration; `None` is a failed authentication (admit_auth_failure)."""
        if integration is None:
            self.pending_auth_failures -= 1
            metrics.AUTH_FAILURES_PENDING.set(self.pending_auth_failures)
            return
        self.admitted_sessions -= 1
        self.admitted_by_integration[integration.name] -= 1

    def session_config_for(self, integration: Integration | None) -> SessionConfig:
        settings = self.settings
        formats = tuple(settings.media_formats)
        prefer = settings.media_prefer
        start_paused = False
        allowed_orgs: frozenset[str] | None = None
        languages = tuple(settings.supported_languages)
        close_window = 0.0
        if integration is not None:
            formats = tuple(integration.media_formats or formats)
            prefer = integration.media_prefer or prefer
            start_paused = integration.start_paused
            if integration.supported_languages is not None:
                languages = tuple(integration.supported_languages)
            close_window = integration.close_window(settings.close_window_seconds)
            if not integration.any_organization:
                allowed_orgs = frozenset(integration.allowed_organizations or ())
        return SessionConfig(
            media_policy=MediaPolicy(formats=formats, prefer=prefer),
            start_paused=start_paused,
            supported_languages=languages,
            open_timeout=settings.open_timeout_seconds,
            idle_timeout=settings.idle_timeout_seconds,
            close_timeout=settings.close_timeout_seconds,
            close_window=close_window,
            max_frame_bytes=settings.max_frame_bytes,
            allowed_organizations=allowed_orgs,
            max_audio_speed=settings.max_audio_speed,
            audio_burst_seconds=settings.audio_burst_seconds,
            max_messages_per_second=settings.max_messages_per_second,
            message_burst=settings.message_burst,
        )
