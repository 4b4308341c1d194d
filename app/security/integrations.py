"""Integrations: which API keys may connect, with which secrets, and under which policy.

Genesys allows several AudioHook integrations per organization, and one gateway may serve
several organizations, so every API key maps to its own `Integration`. Integrations come from
a JSON list in an environment variable and/or a mounted file (a Kubernetes Secret); the file is
re-read when it changes. A reload swaps the lookup table only: a live session keeps the
`Integration` object it started with.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from app.config import check_languages
from app.protocol.session import MAX_CLOSE_WINDOW

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

ANY_ORGANIZATION = "*"

# The reference client's API-key format.
API_KEY_PATTERN = r"^[a-zA-Z0-9+/_-]+={0,2}$"


class IntegrationConfigError(ValueError):
    """Integration configuration that cannot be used. The message never contains secrets."""


def decode_secret(secret_b64: str) -> bytes:
    """Strict standard base64 (padding required); raises ValueError."""
    try:
        key = base64.b64decode(secret_b64, validate=True)
    except binascii.Error as exc:
        raise ValueError("client secret is not valid base64") from exc
    if not key:
        raise ValueError("client secret is empty; use an empty list to allow unsigned requests")
    return key


class Integration(BaseModel):
    """One Genesys AudioHook integration (one API key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    api_key: str = Field(min_length=1, max_length=256, pattern=API_KEY_PATTERN, repr=False)
    # Base64 client secrets; any of them verifies (rotation). Empty: unsigned requests allowed.
    client_secrets: list[str] = Field(default_factory=list, repr=False)
    # Organization ids allowed to use this key; ["*"] allows any organization explicitly.
    # None (unset) allows any too, for compatibility, with a warning at start-up and reload.
    allowed_organizations: list[str] | None = None
    enabled: bool = True
    media_prefer: Literal["stereo", "mono"] | None = None
    media_formats: list[Literal["PCMU", "L16"]] | None = None
    max_concurrent_sessions: int | None = Field(default=None, ge=1)
    start_paused: bool = False
    encryption_key_id: str | None = None
    # `transcription`: the client's `close` opens a close window (docs/protocol.md §4.6) so
    # that a consumer's final transcripts reach Genesys before `closed`; `monitor` answers at once.
    mode: Literal["monitor", "transcription"] = "monitor"
    close_window_seconds: float | None = Field(default=None, ge=0, le=MAX_CLOSE_WINDOW)
    # Replaces AUDIOHOOK_SUPPORTED_LANGUAGES for this integration's `opened.supportedLanguages`.
    supported_languages: list[str] | None = None

    _secret_keys: tuple[bytes, ...] = PrivateAttr(default=())

    @field_validator("client_secrets")
    @classmethod
    def _secrets_are_base64(cls, secrets: list[str]) -> list[str]:
        for secret in secrets:
            decode_secret(secret)
        return secrets

    @field_validator("supported_languages")
    @classmethod
    def _valid_languages(cls, languages: list[str] | None) -> list[str] | None:
        return None if languages is None else check_languages(languages)

    @field_validator("allowed_organizations")
    @classmethod
    def _lower_case_orgs(cls, orgs: list[str] | None) -> list[str] | None:
        if orgs is None:
            return None
        orgs = [org.strip().lower() for org in orgs]
        if ANY_ORGANIZATION in orgs and len(orgs) > 1:
            raise ValueError('"*" allows any organization and cannot be combined with ids')
        return orgs

    def model_post_init(self, context: object, /) -> None:
        self._secret_keys = tuple(decode_secret(secret) for secret in self.client_secrets)

    @property
    def secret_keys(self) -> tuple[bytes, ...]:
        """The decoded HMAC keys (empty when unsigned requests are allowed)."""
        return self._secret_keys

    @property
    def allows_unsigned(self) -> bool:
        return not self.client_secrets

    @property
    def any_organization(self) -> bool:
        orgs = self.allowed_organizations
        return orgs is None or orgs == [ANY_ORGANIZATION]

    def close_window(self, default_seconds: float) -> float:
        """Seconds `closed` may wait for the consumer's `finish`: its own setting, else
        `default_seconds` in transcription mode, else 0 (answered at once)."""
        if self.close_window_seconds is not None:
            return self.close_window_seconds
        return default_seconds if self.mode == "transcription" else 0.0

    def allows_organization(self, organization_id: str) -> bool:
        orgs = self.allowed_organizations
        return self.any_organization or organization_id.strip().lower() in (orgs or ())


def _describe(exc: ValidationError) -> str:
    # Location and message only: the offending input may be a secret.
    parts = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        location = ".".join(str(part) for part in error["loc"])
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def parse_integrations(text: str | bytes, source: str) -> list[Integration]:
    """A JSON list of integrations; raises IntegrationConfigError naming `source`."""
    try:
        raw = json.loads(text) if text.strip() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrationConfigError(f"{source}: not valid JSON") from exc
    if not isinstance(raw, list):
        raise IntegrationConfigError(f"{source}: expected a JSON list of integrations")
    integrations = []
    for index, item in enumerate(raw):
        try:
            integrations.append(Integration.model_validate(item))
        except ValidationError as exc:
            raise IntegrationConfigError(f"{source}[{index}]: {_describe(exc)}") from None
    return integrations


def warn_unrestricted(integrations: Iterable[Integration]) -> None:
    """An integration without allowed_organizations lets its key claim any organization id in
    `open`, and consumers trust that id: say so, by name, unless ["*"] was chosen explicitly."""
    for integration in integrations:
        if integration.allowed_organizations is None:
            log.warning(
                "integration accepts any organization: set allowed_organizations to its "
                'organization ids (or ["*"] to allow any explicitly)',
                extra={"integration": integration.name},
            )


def _index(integrations: Iterable[Integration]) -> dict[str, Integration]:
    by_key: dict[str, Integration] = {}
    names: set[str] = set()
    for integration in integrations:
        if integration.name in names:
            raise IntegrationConfigError(f"integration name {integration.name!r} used twice")
        if integration.api_key in by_key:
            raise IntegrationConfigError(f"integration {integration.name!r} reuses an API key")
        names.add(integration.name)
        by_key[integration.api_key] = integration
    return by_key


class IntegrationRegistry:
    """API key -> Integration. Static entries (environment) plus a reloadable file."""

    def __init__(self, static: Sequence[Integration] = (), file: Path | None = None) -> None:
        self._static = tuple(static)
        self._file = file
        self._file_digest: bytes | None = None
        self._failed_digest: bytes | None = None
        self._by_key = _index(self._static)
        warn_unrestricted(self._static)
        self.reloads = 0
        self.reload_failures = 0
        if file is not None:
            content = self._read_file(file)
            self._apply(content)

    @classmethod
    def from_settings(cls, settings: Settings) -> IntegrationRegistry:
        static = parse_integrations(
            settings.integrations.get_secret_value(), "AUDIOHOOK_INTEGRATIONS"
        )
        return cls(static, settings.integrations_file)

    @property
    def integrations(self) -> tuple[Integration, ...]:
        return tuple(self._by_key.values())

    def get(self, api_key: str) -> Integration | None:
        return self._by_key.get(api_key)

    def by_name(self, name: str) -> Integration | None:
        return next((i for i in self._by_key.values() if i.name == name), None)

    @staticmethod
    def _read_file(file: Path) -> bytes:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise IntegrationConfigError(f"{file.name}: cannot be read ({exc.strerror})") from None

    def _apply(self, content: bytes) -> None:
        assert self._file is not None
        from_file = parse_integrations(content, self._file.name)
        self._by_key = _index((*self._static, *from_file))  # one assignment: atomic swap
        self._file_digest = hashlib.sha256(content).digest()
        warn_unrestricted(from_file)

    def reload(self) -> bool:
        """Re-read the file; True when new content was applied. Invalid or unreadable content
        keeps the current integrations (logged and counted once per distinct content)."""
        if self._file is None:
            return False
        try:
            content = self._read_file(self._file)
        except IntegrationConfigError as exc:
            self._count_failure(b"unreadable", exc)
            return False
        digest = hashlib.sha256(content).digest()
        if digest == self._file_digest:
            return False
        try:
            self._apply(content)
        except IntegrationConfigError as exc:
            self._count_failure(digest, exc)
            return False
        self._failed_digest = None
        self.reloads += 1
        log.info("integrations reloaded", extra={"integrations": len(self._by_key)})
        return True

    def _count_failure(self, digest: bytes, exc: IntegrationConfigError) -> None:
        if digest == self._failed_digest:
            return
        self._failed_digest = digest
        self.reload_failures += 1
        log.error("integrations reload rejected; keeping the current ones: %s", exc)

    async def run_reload_loop(self, interval_seconds: float) -> None:
        """Poll the file every `interval_seconds` until cancelled."""
        if self._file is None or interval_seconds <= 0:
            return
        while True:
            await asyncio.sleep(interval_seconds)
            await asyncio.to_thread(self.reload)
