"""Integrations: validation, lookup, environment + file, reload without touching live sessions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.security.integrations import (
    Integration,
    IntegrationConfigError,
    IntegrationRegistry,
    parse_integrations,
)
from tests.unit.security.vectors import OTHER_SECRET, SECRET


def entry(name: str, api_key: str, **extra: object) -> dict[str, object]:
    return {"name": name, "api_key": api_key, "client_secrets": [SECRET]} | extra


def test_defaults_and_policy_fields() -> None:
    [one] = parse_integrations(json.dumps([entry("a", "key-a")]), "test")
    assert one.enabled
    assert not one.start_paused
    assert one.allowed_organizations is None
    assert one.media_prefer is None
    assert one.media_formats is None
    assert one.max_concurrent_sessions is None
    assert one.encryption_key_id is None
    assert one.secret_keys == (b"MySuperSecretKeyTellNo-1!2@3#4$5",)
    assert not one.allows_unsigned

    full = entry(
        "b",
        "key-b",
        client_secrets=[],
        allowed_organizations=["D7934305-0972-4844-938E-9060EEF73D05"],
        enabled=False,
        media_prefer="mono",
        media_formats=["L16"],
        max_concurrent_sessions=5,
        start_paused=True,
        encryption_key_id="k1",
    )
    [two] = parse_integrations(json.dumps([full]), "test")
    assert two.allows_unsigned
    assert two.secret_keys == ()
    assert two.allows_organization("d7934305-0972-4844-938e-9060eef73d05")
    assert two.allows_organization(" D7934305-0972-4844-938E-9060EEF73D05 ")
    assert not two.allows_organization("00000000-0000-0000-0000-000000000000")
    assert (two.media_prefer, two.media_formats, two.max_concurrent_sessions) == (
        "mono",
        ["L16"],
        5,
    )


def test_repr_hides_key_and_secrets() -> None:
    one = Integration.model_validate(entry("a", "key-a"))
    assert "key-a" not in repr(one)
    assert SECRET not in repr(one)
    assert SECRET not in str(one)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"name": "a"}', "expected a JSON list"),
        (json.dumps([entry("a", "key-a", client_secrets=["not base64!"])]), "not valid base64"),
        (json.dumps([entry("a", "key-a", client_secrets=[""])]), "empty"),
        (json.dumps([entry("a", "bad key with spaces")]), "api_key"),
        (json.dumps([entry("a", "key-a", surprise=1)]), "surprise"),
        (json.dumps([entry("a", "key-a", max_concurrent_sessions=0)]), "max_concurrent_sessions"),
        (json.dumps([entry("a", "key-a", media_formats=["OPUS"])]), "media_formats"),
    ],
)
def test_invalid_content_is_rejected_without_echoing_input(content: str, message: str) -> None:
    with pytest.raises(IntegrationConfigError, match=message) as raised:
        parse_integrations(content, "test")
    assert "not base64!" not in str(raised.value)
    assert SECRET not in str(raised.value)


def test_empty_content_means_no_integrations() -> None:
    assert parse_integrations("", "env") == []
    assert parse_integrations("[]", "env") == []


def test_duplicates_are_rejected() -> None:
    a = Integration.model_validate(entry("a", "key-a"))
    with pytest.raises(IntegrationConfigError, match="used twice"):
        IntegrationRegistry([a, Integration.model_validate(entry("a", "key-b"))])
    with pytest.raises(IntegrationConfigError, match="reuses an API key"):
        IntegrationRegistry([a, Integration.model_validate(entry("b", "key-a"))])


def test_from_settings_combines_environment_and_file(tmp_path: Path) -> None:
    file = tmp_path / "integrations.json"
    file.write_text(json.dumps([entry("from-file", "key-file")]))
    settings = Settings(
        integrations=SecretStr(json.dumps([entry("from-env", "key-env")])),
        integrations_file=file,
    )
    registry = IntegrationRegistry.from_settings(settings)
    assert {i.name for i in registry.integrations} == {"from-env", "from-file"}
    assert registry.get("key-file") is registry.by_name("from-file")
    assert registry.get("unknown") is None
    file.write_text(json.dumps([entry("clash", "key-env")]))
    with pytest.raises(IntegrationConfigError):
        IntegrationRegistry.from_settings(settings)


def test_settings_read_integrations_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOHOOK_INTEGRATIONS", json.dumps([entry("env", "key-env")]))
    settings = Settings()
    assert SECRET not in repr(settings)
    assert IntegrationRegistry.from_settings(settings).get("key-env") is not None


def test_missing_file_at_startup_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IntegrationConfigError, match="cannot be read"):
        IntegrationRegistry(file=tmp_path / "absent.json")


def test_reload_swaps_integrations_and_keeps_live_ones(tmp_path: Path) -> None:
    file = tmp_path / "integrations.json"
    file.write_text(json.dumps([entry("a", "key-a")]))
    registry = IntegrationRegistry(file=file)
    live_session_integration = registry.get("key-a")
    assert live_session_integration is not None
    assert registry.reload() is False  # unchanged content

    file.write_text(
        json.dumps([entry("a", "key-a", client_secrets=[OTHER_SECRET]), entry("b", "key-b")])
    )
    assert registry.reload() is True
    assert registry.reloads == 1
    reloaded = registry.get("key-a")
    assert reloaded is not None
    assert reloaded.client_secrets == [OTHER_SECRET]
    assert registry.get("key-b") is not None
    # the session that started earlier still holds what it started with
    assert live_session_integration.client_secrets == [SECRET]

    file.write_text(json.dumps([entry("b", "key-b")]))  # key-a removed: new sessions refused
    assert registry.reload() is True
    assert registry.get("key-a") is None
    assert live_session_integration.name == "a"


def test_invalid_reload_keeps_the_old_integrations(tmp_path: Path) -> None:
    file = tmp_path / "integrations.json"
    file.write_text(json.dumps([entry("a", "key-a")]))
    registry = IntegrationRegistry(file=file)

    file.write_text('[{"name": "a", "api_key": ')  # a half-written file
    assert registry.reload() is False
    assert registry.reload() is False  # the same bad content is counted once
    assert registry.reload_failures == 1
    assert registry.get("key-a") is not None

    file.write_text(json.dumps([entry("a", "key-a", client_secrets=["%%%"])]))
    assert registry.reload() is False
    assert registry.reload_failures == 2

    file.unlink()
    assert registry.reload() is False
    assert registry.reload_failures == 3
    assert registry.get("key-a") is not None

    file.write_text(json.dumps([entry("c", "key-c")]))
    assert registry.reload() is True
    assert registry.get("key-a") is None
    assert registry.get("key-c") is not None


async def test_reload_loop_picks_up_changes(tmp_path: Path) -> None:
    file = tmp_path / "integrations.json"
    file.write_text(json.dumps([entry("a", "key-a")]))
    registry = IntegrationRegistry(file=file)
    task = asyncio.create_task(registry.run_reload_loop(0.02))
    try:
        file.write_text(json.dumps([entry("b", "key-b")]))
        for _ in range(250):
            if registry.get("key-b") is not None:
                break
            await asyncio.sleep(0.02)
        assert registry.get("key-b") is not None
        assert registry.get("key-a") is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_reload_loop_without_file_returns() -> None:
    await asyncio.wait_for(IntegrationRegistry().run_reload_loop(0.01), timeout=5)


def test_close_window_by_mode() -> None:
    monitor, transcription, own = parse_integrations(
        json.dumps(
            [
                entry("m", "key-m"),
                entry("t", "key-t", mode="transcription"),
                entry("o", "key-o", mode="transcription", close_window_seconds=2.5),
            ]
        ),
        "test",
    )
    assert monitor.close_window(5.0) == 0.0  # Monitor answers `close` at once
    assert transcription.close_window(5.0) == 5.0  # the gateway's default
    assert own.close_window(5.0) == 2.5


@pytest.mark.parametrize(
    "extra",
    [
        {"mode": "voicebot"},
        {"close_window_seconds": 9.5},  # past the reference client's 10 s wait for `closed`
        {"close_window_seconds": -1},
        {"supported_languages": ["en"]},  # a bare language is not a language code
    ],
)
def test_transcription_fields_are_checked(extra: dict[str, object]) -> None:
    with pytest.raises(IntegrationConfigError):
        parse_integrations(json.dumps([entry("a", "key-a", **extra)]), "test")


def test_supported_languages_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="language code"):
        Settings(supported_languages=["english"])
