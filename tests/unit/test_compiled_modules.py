"""The compiled modules keep to what mypyc runs as Python does (docs/architecture.md, "The
compiled build"): nothing is awaited inside an `except` block. There, compiled code let the
exception being handled reach other coroutines while the await was suspended."""

from __future__ import annotations

import ast

from tests.support.build import REPO_ROOT, compiled_module_paths


def awaits_in_except_blocks(source: str) -> list[int]:
    """Line numbers of the `except` blocks that await (`await`, `async with`, `async for`)."""
    return [
        handler.lineno
        for handler in ast.walk(ast.parse(source))
        if isinstance(handler, ast.ExceptHandler)
        if any(
            isinstance(node, ast.Await | ast.AsyncWith | ast.AsyncFor)
            for statement in handler.body
            for node in ast.walk(statement)
        )
    ]


def test_no_compiled_module_awaits_in_an_except_block() -> None:
    modules = compiled_module_paths()
    assert modules
    found = {
        module: lines
        for module in modules
        if (lines := awaits_in_except_blocks((REPO_ROOT / module).read_text()))
    }
    assert found == {}, "await after the except block instead (set a flag in it)"


def test_the_check_finds_an_await_in_an_except_block() -> None:
    source = """
async def f():
    try:
        pass
    except TimeoutError:
        flag = True
        async with lock:
            pass
    except OSError:
        await g()
    try:
        pass
    except ValueError:
        flag = True
    if flag:
        await g()
"""
    assert awaits_in_except_blocks(source) == [5, 9]
