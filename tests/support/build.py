"""The optional compiled build's module list, as `pyproject.toml` gives it to `setup.py`."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def compiled_module_paths() -> list[str]:
    """Source paths (`app/.../x.py`) of the modules compiled with mypyc."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        paths: list[str] = tomllib.load(file)["tool"]["audiohook-gateway"]["compiled-modules"]
    return paths
