"""The gateway's Prometheus metrics: one catalogue, named by Prometheus conventions.

Labels are bounded: integration names come from configuration, reasons and kinds from fixed
sets in the code. Session, conversation and organization ids never become labels.
One uvicorn worker per container is the supported layout (scale with replicas), so the
default single-process registry is correct.
"""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Histogram, Info

from app import __version__

NAMESPACE = "audiohook"

# Latency buckets in seconds, dense below 20 ms where the gateway's own targets sit.
FAST_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

BUILD_INFO = Info("build", "Gateway build information.", namespace=NAMESPACE)
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

# --- sessions ---------------------------------------------------------------------------------
SESSIONS_ACTIVE = Gauge(
    "sessions_active", "Sessions with an open WebSocket.", ["integration"], namespace=NAMESPACE
)
SESSIONS_STARTED = Counter(
    "sessions_started",
    "WebSocket sessions accepted; integration is `unknown` when authentication failed.",
    ["integration"],
    namespace=NAMESPACE,
)  # fmt: skip
SESSIONS_ENDED = Counter(
    "sessions_ended",
    "Sessions ended, by outcome: the client's close reason (end, error, disconnect, reconnect) "
    "or dropped when the socket went away without close.",
    ["integration", "outcome"],
    namespace=NAMESPACE,
)
DISCONNECTS_SENT = Counter(
    "disconnects_sent",
    "Server disconnect messages sent, by reason (completed, unauthorized, error).",
    ["integration", "reason"],
    namespace=NAMESPACE,
)
PROBES = Counter(
    "probes", "Connection probes (null conversationId) opened.", ["integration"],
    namespace=NAMESPACE,
)  # fmt: skip
CONNECTIONS_REJECTED = Counter(
    "connections_rejected",
    "Connections refused or ended before a session could run, by cause "
    "(ip_not_allowed, auth_<outcome>, replayed_nonce, session_limit, integration_limit, "
    "rate_limited, not_ready, draining, bad_request, request_head_too_large, request_timeout, "
    "too_many_connections, duplicate_header, session_id_conflict, overloaded).",
    ["cause"],
    namespace=NAMESPACE,
)
AUTH_FAILURES_PENDING = Gauge(
    "auth_failures_pending",
    "Connections that failed authentication and are being answered `disconnect` unauthorized "
    "(bounded by max_pending_auth_failures; they hold no session slot).",
    namespace=NAMESPACE,
)
AUTH_FAILURES_OVER_LIMIT = Counter(
    "auth_failures_over_limit",
    "Failed authentications answered HTTP 401 because max_pending_auth_failures was reached "
    "(each is also counted in connections_rejected by its auth cause).",
    namespace=NAMESPACE,
)
PROTOCOL_ERRORS = Counter(
    "protocol_errors", "Protocol violations by the client, by kind.", ["kind"],
    namespace=NAMESPACE,
)  # fmt: skip
MESSAGES_AFTER_END = Counter(
    "messages_after_end",
    "Messages only counted, never answered or logged: received after the server ended the "
    "session, or before an authentication failure was answered.",
    ["integration"],
    namespace=NAMESPACE,
)
LOG_LINES_SUPPRESSED = Counter(
    "log_lines_suppressed",
    "Log lines not written: a session's lines past its log budget, or refusal and "
    "failed-login lines past their rate per cause.",
    namespace=NAMESPACE,
)
OPEN_LATENCY = Histogram(
    "open_latency_seconds",
    "Time from receiving `open` to sending `opened`.",
    buckets=FAST_LATENCY_BUCKETS,
    namespace=NAMESPACE,
)
CLIENT_RTT = Histogram(
    "client_rtt_seconds",
    "Round-trip time reported by clients in `ping.rtt`.",
    buckets=RTT_BUCKETS,
    namespace=NAMESPACE,
)
CLIENT_ERRORS = Counter(
    "client_errors",
    "`error` messages reported by clients, by code (the protocol's codes, else `other`).",
    ["code"],
    namespace=NAMESPACE,
)  # fmt: skip

# --- audio in ---------------------------------------------------------------------------------
AUDIO_FRAMES_RECEIVED = Counter(
    "audio_frames_received", "Binary audio frames accepted.", ["integration"],
    namespace=NAMESPACE,
)  # fmt: skip
AUDIO_RECEIVED_BYTES = Counter(
    "audio_received_bytes", "Bytes of audio accepted.", ["integration"], namespace=NAMESPACE
)
AUDIO_RECEIVED_SECONDS = Counter(
    "audio_received_seconds", "Seconds of audio accepted (per stream, not per channel).",
    ["integration"], namespace=NAMESPACE,
)  # fmt: skip
AUDIO_FRAMES_DROPPED = Counter(
    "audio_frames_dropped",
    "Audio frames that arrived after the session was ended (in flight when `disconnect` was "
    "sent, or after `close`); not published.",
    ["integration"],
    namespace=NAMESPACE,
)

# --- publishing to Redis ----------------------------------------------------------------------
FRAMES_PUBLISHED = Counter(
    "frames_published", "Audio frames written to Redis.", namespace=NAMESPACE
)
EVENTS_PUBLISHED = Counter(
    "events_published", "Session lifecycle events written to Redis, by type.", ["type"],
    namespace=NAMESPACE,
)  # fmt: skip
PUBLISH_LATENCY = Histogram(
    "publish_latency_seconds",
    "Time from receiving an audio frame to Redis acknowledging its XADD.",
    buckets=FAST_LATENCY_BUCKETS,
    namespace=NAMESPACE,
)
PUBLISH_BACKLOG_FRAMES = Gauge(
    "publish_backlog_frames", "Audio frames waiting to be written to Redis, all sessions.",
    namespace=NAMESPACE,
)  # fmt: skip
PUBLISH_BACKLOG_FILL_RATIO = Gauge(
    "publish_backlog_fill_ratio",
    "Fullest session backlog as a fraction of its bound (1.0 = the session is about to be ended).",
    namespace=NAMESPACE,
)
FRAMES_LOST = Counter(
    "frames_lost",
    "Accepted audio frames that could not be written to Redis (their session was ended).",
    ["integration"],
    namespace=NAMESPACE,
)
REDIS_ERRORS = Counter(
    "redis_errors", "Failed Redis operations, by operation.", ["operation"], namespace=NAMESPACE
)
REDIS_RECONNECTS = Counter(
    "redis_reconnects", "Successful Redis reconnections after a failure.", namespace=NAMESPACE
)
REDIS_UP = Gauge("redis_up", "1 when Redis answered the last check.", namespace=NAMESPACE)

# --- commands from consumers ------------------------------------------------------------------
CONTROL_COMMANDS = Counter(
    "control_commands",
    "Commands from consumers, by command and result (applied, unknown_session, "
    "invalid_state, invalid, rate_limited).",
    ["command", "result"],
    namespace=NAMESPACE,
)
EVENT_MESSAGES_SENT = Counter(
    "event_messages_sent", "`event` messages sent to clients.", ["integration"],
    namespace=NAMESPACE,
)  # fmt: skip
CLOSE_WINDOWS = Counter(
    "close_windows",
    "Close windows (between the client's `close` and `closed`, for final transcripts) ended, "
    "by outcome: finished (the consumer's `finish`), expired (the bound), drained, dropped "
    "(the socket went first).",
    ["integration", "outcome"],
    namespace=NAMESPACE,
)
CLOSE_WINDOW_SECONDS = Histogram(
    "close_window_seconds",
    "Length of close windows, from the client's `close` to `closed`.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0),
    namespace=NAMESPACE,
)
RATE_LIMITED = Counter(
    "rate_limited", "Actions refused by a rate limit, by kind.", ["kind"], namespace=NAMESPACE
)

# --- IP allowlist -----------------------------------------------------------------------------
IP_RANGES_AGE_SECONDS = Gauge(
    "ip_ranges_age_seconds", "Age of the Genesys IP-range list in use.", namespace=NAMESPACE
)
IP_RANGES_SIZE = Gauge(
    "ip_ranges", "CIDR ranges in the allowlist, by source (genesys, static).", ["source"],
    namespace=NAMESPACE,
)  # fmt: skip
IP_RANGES_REFRESHES = Counter(
    "ip_ranges_refreshes", "Genesys IP-range refresh attempts, by result.", ["result"],
    namespace=NAMESPACE,
)  # fmt: skip

# --- load shedding -----------------------------------------------------------------------------
EVENT_LOOP_LAG = Gauge(
    "event_loop_lag_seconds",
    "How late the worker's event loop runs a timer (smoothed); every callback waits this long.",
    namespace=NAMESPACE,
)
WORKER_CPU_UTILIZATION = Gauge(
    "worker_cpu_utilization",
    "Share of worker_cpu_capacity_cores the worker process uses (smoothed over about a second).",
    namespace=NAMESPACE,
)
WORKER_CALLS_CPU_UTILIZATION = Gauge(
    "worker_calls_cpu_utilization",
    "worker_cpu_utilization less the CPU that accepted calls' handshakes took: what load "
    "shedding's CPU bound compares (worker_cpu_utilization itself sheds at 0.98), except "
    "under a CPU limit whose stall is long (there the bound compares worker_cpu_utilization).",
    namespace=NAMESPACE,
)
ACCEPTED_HANDSHAKES_CPU = Counter(
    "accepted_handshakes_cpu_seconds",
    "CPU time the worker spent on the upgrades of the calls it accepted (HTTP request head, "
    "WebSocket handshake, authentication, accept); failed logins and refusals not included.",
    namespace=NAMESPACE,
)
WORKER_CPU_CAPACITY = Gauge(
    "worker_cpu_capacity_cores",
    "Cores the worker process may use: one, or its cgroup's CPU limit (quota) when lower.",
    namespace=NAMESPACE,
)
WORKER_CPU_THROTTLED_PERIODS = Counter(
    "worker_cpu_throttled_periods",
    "CPU periods in which the kernel stopped the worker because its cgroup's quota (CPU limit) "
    "was spent: every live call's audio waited out the rest of the period.",
    namespace=NAMESPACE,
)
REDIS_ROUND_TRIP = Gauge(
    "redis_round_trip_seconds",
    "How long Redis takes to answer the worker's writes (smoothed slowest round trip, or the "
    "age of one still out).",
    namespace=NAMESPACE,
)
HANDSHAKES_IN_FLIGHT = Gauge(
    "handshakes_in_flight", "WebSocket upgrades being admitted (authentication, nonce claim).",
    namespace=NAMESPACE,
)  # fmt: skip
UNFINISHED_REQUESTS = Gauge(
    "connections_without_request_head",
    "Connections on the main listener that have not sent their whole request head yet (bounded "
    "per source and in all; a trusted proxy's are not counted).",
    namespace=NAMESPACE,
)
HANDSHAKE_QUEUE_SECONDS = Histogram(
    "handshake_queue_seconds",
    "Time from an upgrade's TCP connection to the start of its admission.",
    buckets=FAST_LATENCY_BUCKETS,
    namespace=NAMESPACE,
)
LOAD_SHED = Counter(
    "load_shed",
    "Upgrades refused as overloaded, by the signal that decided (event_loop_lag, "
    "cpu_utilization, cpu_headroom, cpu_throttled, redis_round_trip, handshakes_in_flight, "
    "handshake_age).",
    ["signal"],
    namespace=NAMESPACE,
)

# --- lifecycle --------------------------------------------------------------------------------
DRAINING = Gauge("draining", "1 while the replica drains for shutdown.", namespace=NAMESPACE)
