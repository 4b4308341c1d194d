"""Render the kustomize base in deploy/kubernetes without kustomize.

The base uses nothing but a `resources` list of files, so rendering is concatenation. This is
the fallback of .ci/lint-deploy when `kubectl kustomize` is not installed; when it is, the lint
script checks that both renderings hold the same objects, so this file cannot drift.

Usage: python deploy/render_kustomize.py [DIR] > rendered.yaml   (DIR: deploy/kubernetes)
Needs PyYAML (a dependency of uvicorn[standard] and kubernetes-validate).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources"}
DEFAULT_DIR = Path(__file__).resolve().parent / "kubernetes"


class RenderError(Exception):
    pass


def resource_files(base: Path) -> list[Path]:
    """The files listed in BASE/kustomization.yaml, refusing features this renderer lacks."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text(encoding="utf-8"))
    if not isinstance(kustomization, dict):
        raise RenderError(f"{base}/kustomization.yaml is not a mapping")
    unsupported = set(kustomization) - SUPPORTED_KEYS
    if unsupported:
        raise RenderError(
            f"kustomization.yaml uses {sorted(unsupported)}; only {sorted(SUPPORTED_KEYS)} can be "
            "rendered without kustomize"
        )
    files = []
    for entry in kustomization.get("resources", []):
        path = base / entry
        if not path.is_file():
            raise RenderError(f"resource {entry!r} is not a file in {base}")
        files.append(path)
    return files


def render_objects(base: Path = DEFAULT_DIR) -> list[dict[str, Any]]:
    """Every object of the base, in listing order."""
    objects = []
    for path in resource_files(base):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise RenderError(f"{path.name}: a document is not a Kubernetes object")
            objects.append(doc)
    return objects


def main(argv: list[str]) -> int:
    base = Path(argv[1]) if len(argv) > 1 else DEFAULT_DIR
    try:
        objects = render_objects(base)
    except (RenderError, OSError, yaml.YAMLError) as exc:
        print(f"render_kustomize: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=100))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
