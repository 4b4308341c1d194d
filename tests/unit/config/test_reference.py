"""The README's configuration reference and .env.example stay in sync with Settings."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import ENV_PREFIX, Settings, reference_markdown

ROOT = Path(__file__).resolve().parents[3]
BEGIN = "<!-- BEGIN CONFIGURATION REFERENCE -->"
END = "<!-- END CONFIGURATION REFERENCE -->"


def test_every_setting_is_described() -> None:
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == []


def test_readme_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == reference_markdown(), (
        "README configuration reference is stale: regenerate it with "
        "`python -m app.config --update-readme`"
    )


def test_env_example_names_only_real_settings() -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#?\s*(AUDIOHOOK_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert named, ".env.example names no settings"
    assert named <= known, f"unknown settings in .env.example: {sorted(named - known)}"


def test_env_example_loads() -> None:
    settings = Settings(_env_file=ROOT / ".env.example")
    assert settings.port == 8080
    assert settings.integrations.get_secret_value().startswith("[")
