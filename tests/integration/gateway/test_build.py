"""Which build the gateway processes under test run.

By default the tests' gateways run the source tree, as pure Python. `make test-compiled` runs
the gateway tests again against an environment holding the compiled build
(TEST_COMPILED_GATEWAY_PYTHON); there, every module listed for compilation must load as a C
extension, or the run would be testing Python again while claiming to test the compiled build.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.build import REPO_ROOT, compiled_module_paths
from tests.support.gateway_process import COMPILED_GATEWAY_PYTHON


def _compiled_modules() -> list[str]:
    return [path.removesuffix(".py").replace("/", ".") for path in compiled_module_paths()]


def _loaded_from(python: str, modules: list[str]) -> dict[str, str]:
    probe = (
        "import importlib, json, sys; "
        "print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))"
    )
    # -P, as the gateway is started: `app` from the interpreter's environment only.
    result = subprocess.run(
        [python, "-P", "-c", probe, *modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO_ROOT,
    )
    loaded: dict[str, str] = json.loads(result.stdout)
    return loaded


def test_the_compiled_modules_exist_and_are_few() -> None:
    modules = _compiled_modules()
    assert 5 <= len(modules) <= 15
    for module in modules:
        assert (REPO_ROOT / (module.replace(".", "/") + ".py")).is_file(), module


def test_gateway_processes_run_the_build_under_test() -> None:
    modules = _compiled_modules()
    loaded = _loaded_from(COMPILED_GATEWAY_PYTHON or sys.executable, modules)
    if COMPILED_GATEWAY_PYTHON:
        not_compiled = {m: f for m, f in loaded.items() if not f.endswith(".so")}
        assert not not_compiled, f"expected C extensions, got: {not_compiled}"
    else:
        assert all(
            Path(path).resolve() == REPO_ROOT / (module.replace(".", "/") + ".py")
            for module, path in loaded.items()
        ), loaded
