"""What each command imports: `serve` and `healthcheck` stay clear of the tools.

Each check runs in a fresh interpreter, as the `audiohook-gateway` entry point does: the test
process itself has imported everything long before.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# The tool packages, and the dev-only dependency some of them need.
TOOLS = ("app.bench", "app.client", "app.tools", "app.transcriber", "psutil")


def _imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def _tools_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == t or m.startswith(t + ".") for t in TOOLS))


def test_serve_imports_no_tool() -> None:
    # The parser for `serve` and everything its handler imports: the whole serving path.
    modules = _imported_after(
        "from app import cli\n"
        "args = cli.build_parser('serve').parse_args(['serve'])\n"
        "assert args.handler is cli._serve\n"
        "import app.preflight, app.server, app.main, app.runtime"
    )
    assert "app.server" in modules
    assert "app.transport.websocket" in modules
    assert _tools_in(modules) == []


def test_healthcheck_imports_no_tool() -> None:
    modules = _imported_after(
        "from app import cli\ncli.build_parser('healthcheck').parse_args(['healthcheck'])"
    )
    assert "app.healthcheck" in modules
    assert _tools_in(modules) == []


@pytest.mark.parametrize(
    ("command", "package"),
    [
        ("simulate", "app.client"),
        ("bench", "app.bench"),
        ("consume", "app.tools"),
        ("transcribe", "app.transcriber"),
    ],
)
def test_a_tool_is_imported_for_its_own_command(command: str, package: str) -> None:
    modules = _imported_after(f"from app import cli\ncli.build_parser({command!r})")
    assert package in modules
    assert "app.server" not in modules


def test_bench_missing_from_the_installation_is_reported() -> None:
    # The container image ships without app/bench.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nsys.modules['app.bench'] = None\n"
            "from app import cli\nsys.exit(cli.main(['bench', '--help']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "not part of this installation" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_command_is_listed_without_importing_it() -> None:
    modules = _imported_after("from app import cli\ncli.build_parser(None).format_help()")
    assert _tools_in(modules) == []
    assert "app.healthcheck" not in modules
