"""Commands from consumers to live sessions, whichever replica holds them.

Routing: each replica keeps, for every live session, a registry key
`audiohook:{<sessionId>}:owner` = its replica id (TTL refreshed while the session lives;
deleted at its end only if it still names this replica) and reads its own inbox stream
`audiohook:control:inbox:{<replicaId>}` with XREAD BLOCK. A sender looks up the owner and
appends the command to that inbox; the owner applies it to the session and records a reply,
both in the stream `audiohook:control:replies` (audit trail) and in a short-lived list
`audiohook:control:reply:{<commandId>}` the sender pops. A command for an unknown or closed
session is answered `unknown_session` (by the sender when no replica owns the session, else
by the replica). Results: applied, unknown_session, invalid_state
(e.g. `event` before the session is open, `finish` outside a close window), invalid (bad
parameters), rate_limited.

Consumer side:

    from app.control.plane import ControlClient

    control = ControlClient(redis)          # a redis.asyncio client on the gateway's Redis
    reply = await control.request(session_id, "pause")
    assert reply.result == "applied"
    await control.request(session_id, "resume")
    transcript = {"type": "transcript", "data": {...}}   # docs/protocol.md §3.4
    reply = await control.request(session_id, "event", entities=[transcript])
    if reply.result == "rate_limited":
        ...                                 # reply.detail says when to try again
    await control.request(session_id, "disconnect", reason="completed", info="done")
    # after the client's `close` (event `closing`), with the final transcripts sent:
    await control.request(session_id, "finish")   # ends the close window: `closed` is sent

    # or fire and collect later:
    command_id = await control.send(session_id, "pause")
    reply = await control.wait_reply(command_id, timeout=5.0)

Gateway side: the transport registers each live session with a `ControlTarget` and
unregisters it when the session ends; `ControlPlane.client_retry_after()` forwards a client
`error` 429 `retryAfter` to the session's `event` rate limit. On a single Redis server the
upgrade's claim writes the registry entry (if the session id has none), in the round trip it
makes anyway: `routed_at_claim()` notes it, so that `register()` need not write it again, and
`release()` deletes it when the connection ends without registering the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeGuard, get_args

import orjson
from redis.exceptions import RedisError

from app.observability.metrics import CONTROL_COMMANDS, RATE_LIMITED, REDIS_ERRORS
from app.protocol.messages import DisconnectReason
from app.ratelimit import TokenBucket
from app.redis import keys
from app.redis.client import RedisClient, blocking_read_seconds
from app.redis.resp import PipelineConnection
from app.tasks import stop_task

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("app.streams.control")

COMMANDS: Final = frozenset({"pause", "resume", "disconnect", "event", "finish"})
DISCONNECT_REASONS: Final[frozenset[str]] = frozenset(get_args(DisconnectReason))

APPLIED: Final = "applied"
UNKNOWN_SESSION: Final = "unknown_session"
INVALID_STATE: Final = "invalid_state"
INVALID: Final = "invalid"
RATE_LIMITED_RESULT: Final = "rate_limited"
RESULTS: Final = frozenset({APPLIED, UNKNOWN_SESSION, INVALID_STATE, INVALID, RATE_LIMITED_RESULT})

MAX_PARAMS_BYTES: Final = 60_000  # an `event` must fit a 64 KiB text message
MAX_INFO_CHARS: Final = 1000
# Registry writes per round trip. The refresh of every live session (each third of the TTL)
# in one redis-py pipeline held the event loop for 60-80 ms at 2,000 sessions, and every live
# call's audio waited that long. The writes now go out packed like the publisher's (a few
# microseconds each, where redis-py's pipeline took tens), still in bounded round trips.
REGISTRY_WRITES_PER_ROUND_TRIP: Final = 100
INBOX_MAXLEN: Final = 10_000
INBOX_TTL_SECONDS: Final = 86_400
REPLIES_MAXLEN: Final = 10_000
_BACKOFF_START = 0.05
# A registry entry is deleted only while it still names this replica: the same session id
# live on another replica (a duplicate, or a reconnect that landed elsewhere) keeps its routing.
# One key per call, so it runs on Redis Cluster too.
_DELETE_IF_OWNER: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def is_disconnect_reason(value: object) -> TypeGuard[DisconnectReason]:
    return value in DISCONNECT_REASONS


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """A validated command for one session. `params` by command: disconnect -> `reason`
    (completed | error | unauthorized, default completed) and optional `info`; event ->
    `entities` (non-empty list of {"type": str, "data": {...}}); pause/resume/finish -> none."""

    command_id: str
    session_id: str
    command: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> DisconnectReason:
        reason = self.params.get("reason", "completed")
        if not is_disconnect_reason(reason):  # validate() refuses such a command
            raise ValueError(f"not a disconnect reason: {reason!r}")
        return reason

    @property
    def info(self) -> str | None:
        info = self.params.get("info")
        return None if info is None else str(info)

    @property
    def entities(self) -> list[dict[str, Any]]:
        return list(self.params.get("entities", []))


@dataclass(frozen=True, slots=True)
class ControlReply:
    command_id: str
    session_id: str
    command: str
    result: str
    replica: str = ""
    detail: str | None = None
    time: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "command_id": self.command_id,
                "session_id": self.session_id,
                "command": self.command,
                "result": self.result,
                "replica": self.replica,
                "detail": self.detail,
                "time": self.time,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ControlReply:
        data = orjson.loads(raw)
        return cls(
            command_id=str(data["command_id"]),
            session_id=str(data["session_id"]),
            command=str(data["command"]),
            result=str(data["result"]),
            replica=str(data.get("replica") or ""),
            detail=data.get("detail"),
            time=str(data.get("time") or ""),
        )


class ControlTarget(Protocol):
    """What the transport gives for a live session: apply a validated command to it now and
    return one of RESULTS (applied, or invalid_state when the session state forbids it)."""

    def apply(self, command: ControlCommand) -> str: ...


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def validate(command: str, params: Mapping[str, Any]) -> str | None:
    """None when the command and its parameters are acceptable, else why not."""
    if command not in COMMANDS:
        return "unknown command"
    if command in ("pause", "resume", "finish"):
        return "takes no parameters" if params else None
    if command == "disconnect":
        if set(params) - {"reason", "info"}:
            return "disconnect takes reason and info only"
        if not is_disconnect_reason(params.get("reason", "completed")):
            return "reason must be completed, error or unauthorized"
        info = params.get("info")
        if info is not None and (not isinstance(info, str) or len(info) > MAX_INFO_CHARS):
            return f"info must be a string of at most {MAX_INFO_CHARS} characters"
        return None
    entities = params.get("entities")
    if set(params) != {"entities"} or not isinstance(entities, list) or not entities:
        return "event takes a non-empty `entities` list only"
    for entity in entities:
        if not isinstance(entity, dict) or not isinstance(entity.get("type"), str):
            return "each entity needs a string `type`"
        if not entity["type"] or not isinstance(entity.get("data"), dict):
            return "each entity needs a non-empty `type` and an object `data`"
    return None


async def record_reply(
    redis: RedisClient, reply: ControlReply, *, reply_ttl: int, replies_maxlen: int = REPLIES_MAXLEN
) -> None:
    """Append to the replies stream and hand the reply to a waiting sender."""
    reply_key = keys.control_reply(reply.command_id)
    fields: dict[str, str] = {
        "command_id": reply.command_id,
        "session_id": reply.session_id,
        "command": reply.command,
        "result": reply.result,
        "replica": reply.replica,
        "time": reply.time,
    }
    if reply.detail is not None:
        fields["detail"] = reply.detail
    pipe = redis.pipeline(transaction=False)
    pipe.xadd(keys.CONTROL_REPLIES_STREAM, fields, maxlen=replies_maxlen, approximate=True)  # type: ignore[arg-type]
    pipe.rpush(reply_key, reply.to_json())
    pipe.expire(reply_key, reply_ttl)
    await pipe.execute()


class ControlClient:
    """Sends commands to live sessions and collects their replies (consumer side)."""

    def __init__(
        self, redis: RedisClient, *, reply_ttl: int = 300, block_seconds: float = 1.0
    ) -> None:
        """`block_seconds`: longest single BLPOP; keep it below `redis`'s socket timeout."""
        if block_seconds <= 0:
            raise ValueError("block_seconds must be positive (0 would block for ever)")
        self._redis = redis
        self._reply_ttl = reply_ttl
        self._block = block_seconds

    async def send(self, session_id: str, command: str, **params: Any) -> str:
        """Route `command` to the replica holding `session_id`; returns the command id.
        ValueError for an unknown command name; parameters are checked by the gateway."""
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}; expected one of {sorted(COMMANDS)}")
        command_id = str(uuid.uuid4())
        owner = await self._redis.get(keys.session_owner(session_id))
        if owner is None:
            reply = ControlReply(command_id, session_id, command, UNKNOWN_SESSION, time=_now_iso())
            await record_reply(self._redis, reply, reply_ttl=self._reply_ttl)
            return command_id
        inbox = keys.control_inbox(owner.decode() if isinstance(owner, bytes) else str(owner))
        fields = {
            "command_id": command_id,
            "session_id": session_id,
            "command": command,
            "params": orjson.dumps(params),
            "sent_at": _now_iso(),
        }
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(inbox, fields, maxlen=INBOX_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.expire(inbox, INBOX_TTL_SECONDS)  # inboxes of replicas that are gone vanish
        await pipe.execute()
        return command_id

    async def wait_reply(self, command_id: str, timeout: float) -> ControlReply:  # noqa: ASYNC109
        """The reply to `command_id`; TimeoutError if none arrives within `timeout` seconds."""
        key = keys.control_reply(command_id)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to command {command_id} within {timeout} s")
            # Short blocks stay well inside the client's socket timeout.
            popped = await self._redis.blpop([key], timeout=min(remaining, self._block))
            if popped:
                return ControlReply.from_json(popped[1])

    async def request(
        self, session_id: str, command: str, *, reply_timeout: float = 5.0, **params: Any
    ) -> ControlReply:
        """send() then wait_reply()."""
        command_id = await self.send(session_id, command, **params)
        return await self.wait_reply(command_id, reply_timeout)


class ControlPlane:
    """Gateway side: registry of this replica's live sessions and reader of its inbox."""

    def __init__(
        self,
        redis: RedisClient,
        replica_id: str,
        *,
        session_ttl: float = 30.0,
        reply_ttl: int = 300,
        event_rate: float = 20.0,
        event_burst: int = 50,
        block_seconds: float = 1.0,
        retry_max_seconds: float = 2.0,
        write_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        keys.control_inbox(replica_id)  # ValueError for an id that breaks the hash tag
        self._redis = redis
        self._registry_writes = PipelineConnection(redis)
        self._write_timeout = write_timeout
        self.replica_id = replica_id
        self._inbox = keys.control_inbox(replica_id)
        self._session_ttl = session_ttl
        self._ttl_ms = max(1, int(session_ttl * 1000))
        self._reply_ttl = reply_ttl
        self._event_rate = event_rate
        self._event_burst = event_burst
        self._block_ms = max(1, int(block_seconds * 1000))
        self._retry_max = retry_max_seconds
        self._clock = clock
        self._targets: dict[str, ControlTarget] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._to_register: set[str] = set()
        self._to_remove: set[str] = set()
        # Sessions whose upgrade claim wrote their registry entry, not yet registered: when.
        self._claimed_at: dict[str, float] = {}
        self._registry_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(
        cls, redis: RedisClient, settings: Settings, **overrides: Any
    ) -> ControlPlane:
        options: dict[str, Any] = {
            "session_ttl": settings.control_session_ttl_seconds,
            "reply_ttl": settings.control_reply_ttl_seconds,
            "event_rate": settings.event_messages_per_second,
            "event_burst": settings.event_messages_burst,
            "retry_max_seconds": settings.publish_retry_max_seconds,
            "block_seconds": blocking_read_seconds(settings.redis_timeout_seconds),
            "write_timeout": settings.redis_timeout_seconds,
        }
        options.update(overrides)
        return cls(redis, settings.replica_id or default_replica_id(), **options)

    async def start(self) -> None:
        # The inbox's tail is read before start() returns, so a command sent from then on is
        # after it (never skipped); only a Redis unreachable now leaves that to the loop.
        try:
            inbox_from: bytes | str | None = await self._inbox_tail()
        except (RedisError, OSError):
            inbox_from = None
        self._tasks = [
            asyncio.create_task(self._inbox_loop(inbox_from), name="control-inbox"),
            asyncio.create_task(self._registry_loop(), name="control-registry"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
        # A write cancelled with its task may have left replies unread: a new connection.
        await self._registry_writes.close()
        # Best effort: sessions still registered (or routed here by a claim) stop being routed.
        with contextlib.suppress(RedisError, OSError):
            await self._write_registry(set(), set(self._targets) | set(self._claimed_at))
        await self._registry_writes.close()

    @property
    def entry_ttl_ms(self) -> int:
        """How long a registry entry lives unless refreshed (each third of it)."""
        return self._ttl_ms

    def register(self, session_id: str, target: ControlTarget) -> None:
        """Route commands for `session_id` here (registry write happens in the background;
        none while the entry its upgrade claim wrote is fresh)."""
        self._targets[session_id] = target
        self._buckets[session_id] = TokenBucket(
            self._event_rate, self._event_burst, clock=self._clock
        )
        self._to_remove.discard(session_id)
        claimed_at = self._claimed_at.pop(session_id, None)
        # The claim's entry outlives the next refresh (within a third of its TTL from now)
        # if it was written within the last third; an older one is written again.
        if claimed_at is None or self._clock() - claimed_at > self._session_ttl / 3:
            self._to_register.add(session_id)
            self._registry_wakeup.set()

    def routed_at_claim(self, session_id: str) -> None:
        """An upgrade's claim wrote `session_id`'s registry entry, naming this replica
        (app/security/upgrade_claims.py): register() need not write it again, and release()
        deletes it if the session never registers."""
        self._claimed_at[session_id] = self._clock()
        self._to_remove.discard(session_id)  # an earlier connection's pending delete

    def release(self, session_id: str) -> None:
        """A connection with `session_id` that was claimed ended, or was refused after its
        claim: the entry a claim wrote stops routing here unless a session with that id has
        registered. Kept by session id: of two connections with one id on this replica, the
        first to end unopened releases it, and the other's register() writes it again."""
        if self._claimed_at.pop(session_id, None) is None or session_id in self._targets:
            return
        self._to_remove.add(session_id)
        self._registry_wakeup.set()

    def unregister(self, session_id: str) -> None:
        if self._targets.pop(session_id, None) is None:
            return
        self._buckets.pop(session_id, None)
        self._to_register.discard(session_id)
        self._to_remove.add(session_id)
        self._registry_wakeup.set()

    def client_retry_after(self, session_id: str, seconds: float) -> None:
        """The client answered `error` 429 with retryAfter: hold `event` commands that long."""
        bucket = self._buckets.get(session_id)
        if bucket is not None:
            bucket.pause_until(self._clock() + max(0.0, seconds))

    @property
    def sessions(self) -> int:
        return len(self._targets)

    # --- applying commands -------------------------------------------------------------------

    def handle(self, fields: Mapping[bytes, bytes]) -> ControlReply:
        """Apply one inbox entry to its session; the reply to record."""
        command_id = fields.get(b"command_id", b"").decode(errors="replace")
        session_id = fields.get(b"session_id", b"").decode(errors="replace")
        command = fields.get(b"command", b"").decode(errors="replace")
        result, detail = self._apply(command_id, session_id, command, fields.get(b"params"))
        label = command if command in COMMANDS else "unknown"
        CONTROL_COMMANDS.labels(label, result).inc()
        if result == RATE_LIMITED_RESULT:
            RATE_LIMITED.labels("event").inc()
        session_fields = getattr(self._targets.get(session_id), "log_fields", None) or {}
        log.info(
            "control command",
            extra={**session_fields, "session_id": session_id, "command": label,
                   "result": result, "command_id": command_id},
        )  # fmt: skip
        return ControlReply(
            command_id, session_id, command, result, self.replica_id, detail, _now_iso()
        )

    def _apply(
        self, command_id: str, session_id: str, command: str, raw_params: bytes | None
    ) -> tuple[str, str | None]:
        target = self._targets.get(session_id)
        if target is None:
            return UNKNOWN_SESSION, None
        if raw_params is None or len(raw_params) > MAX_PARAMS_BYTES:
            return INVALID, "parameters missing or too large"
        try:
            params = orjson.loads(raw_params)
        except orjson.JSONDecodeError:
            return INVALID, "parameters are not JSON"
        if not isinstance(params, dict):
            return INVALID, "parameters must be a JSON object"
        problem = validate(command, params)
        if problem is not None:
            return INVALID, problem
        if command == "event":
            bucket = self._buckets[session_id]
            if not bucket.try_acquire():
                return RATE_LIMITED_RESULT, f"retry after {bucket.retry_after():.3f} s"
        try:
            result = target.apply(ControlCommand(command_id, session_id, command, params))
        except Exception:
            log.exception("control target failed", extra={"session_id": session_id})
            return INVALID_STATE, "session could not apply the command"
        if result not in RESULTS:
            log.error("control target returned an unknown result", extra={"result": result})
            return INVALID_STATE, None
        return result, None

    # --- background loops --------------------------------------------------------------------

    async def _inbox_loop(self, last_id: bytes | str | None) -> None:
        if last_id is None:
            last_id = await self._retrying(self._inbox_tail)
        backoff = _BACKOFF_START
        while True:
            try:
                response: Any = await self._redis.xread(
                    {self._inbox: last_id}, count=100, block=self._block_ms
                )
            except (RedisError, OSError) as exc:
                backoff = await self._back_off(
                    backoff, "control_read", "control inbox read failed", exc
                )
                continue
            backoff = _BACKOFF_START
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    reply = self.handle(fields)
                    record = partial(record_reply, self._redis, reply, reply_ttl=self._reply_ttl)
                    await self._retrying(record, attempts=5)

    async def _inbox_tail(self) -> bytes | str:
        """Id of the inbox's last entry: commands older than this replica are not replayed."""
        last: Any = await self._redis.xrevrange(self._inbox, count=1)
        return bytes(last[0][0]) if last else "0-0"

    async def _registry_loop(self) -> None:
        refresh_every = self._session_ttl / 3
        next_refresh = time.monotonic() + refresh_every
        backoff = _BACKOFF_START
        while True:
            wait = max(0.0, next_refresh - time.monotonic())
            if not (self._to_register or self._to_remove):
                self._registry_wakeup.clear()
                # asyncio.timeout, not wait_for: no task of its own for every wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._registry_wakeup.wait()
            refresh = time.monotonic() >= next_refresh
            register = set(self._targets) if refresh else set(self._to_register)
            remove = set(self._to_remove)
            if not (register or remove):
                next_refresh = time.monotonic() + refresh_every if refresh else next_refresh
                continue
            try:
                await self._write_registry(register, remove)
            except (RedisError, OSError) as exc:
                backoff = await self._back_off(
                    backoff, "control_registry", "session registry write failed", exc
                )
                continue
            backoff = _BACKOFF_START
            self._to_register -= register
            self._to_remove -= remove
            if refresh:
                next_refresh = time.monotonic() + refresh_every

    async def _write_registry(self, register: set[str], remove: set[str]) -> None:
        """Write the registry entries of `register` and delete those of `remove` (each write
        is idempotent, so a failure part way is retried in full)."""
        owner, ttl_ms = self.replica_id, self._ttl_ms
        writes: list[tuple[str | int, ...]] = [
            ("SET", keys.session_owner(session_id), owner, "PX", ttl_ms) for session_id in register
        ]
        writes += [
            ("EVAL", _DELETE_IF_OWNER, 1, keys.session_owner(session_id), owner)
            for session_id in remove
        ]
        for start in range(0, len(writes), REGISTRY_WRITES_PER_ROUND_TRIP):
            batch = writes[start : start + REGISTRY_WRITES_PER_ROUND_TRIP]
            for reply in await self._registry_writes.execute(batch, self._write_timeout):
                if isinstance(reply, RedisError):  # e.g. OOM: the whole write is retried
                    raise reply

    async def _back_off(
        self, backoff: float, operation: str, message: str, exc: BaseException
    ) -> float:
        """After a failed Redis call of a loop: count and log it, wait `backoff` seconds and
        return the next (doubled, capped) backoff."""
        REDIS_ERRORS.labels(operation).inc()
        log.debug(message, extra={"error": type(exc).__name__})
        await asyncio.sleep(backoff)
        return min(backoff * 2, self._retry_max)

    async def _retrying(
        self, operation: Callable[[], Awaitable[Any]], attempts: int | None = None
    ) -> Any:
        backoff = _BACKOFF_START
        attempt = 0
        while True:
            attempt += 1
            try:
                return await operation()
            except (RedisError, OSError) as exc:
                REDIS_ERRORS.labels("control").inc()
                if attempts is not None and attempt >= attempts:
                    log.error("control write abandoned", extra={"error": type(exc).__name__})
                    return None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max)
