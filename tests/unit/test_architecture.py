"""The layers of docs/architecture.md hold in the code: no import runs from a lower layer to
a higher one, and the rooms (packages, and the top-level modules) import each other without
a circle.

The layers are read from the table between the `layers` markers of docs/architecture.md, so
the picture and this test cannot drift apart: a new package fails here until it is placed in
the picture. Every import counts, inside functions and under `if TYPE_CHECKING:` included;
the only exceptions are listed in KNOWN_BACK_ARROWS with the reason, and an exception that no
longer occurs fails too, so that the list only ever shrinks.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
DOC = ROOT / "docs" / "architecture.md"

# (importer module, imported module): why it is allowed for now. Type-only, all of them.
# Empty: the transport's type-only imports of app.runtime.Gateway went with issue #15 item 3
# (it names the narrow interfaces of app/transport/host.py instead).
KNOWN_BACK_ARROWS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    type_only: bool


def read_layers(text: str) -> list[list[str]]:
    """Rooms per layer, top first, from the table between the layers markers."""
    found = re.search(r"<!-- layers -->\n```text\n(.*?)```\n<!-- /layers -->", text, re.S)
    assert found, f"no layers table in {DOC.name}"
    layers = []
    for row in found.group(1).splitlines():
        if row.strip():
            _name, *rooms = row.split()
            layers.append(rooms)
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    """`app` itself, else the package or top-level module under app/: app.x.y -> app.x."""
    return ".".join(module.split(".")[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[Edge]:
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    type_only_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if hasattr(sub, "lineno"):
                        type_only_lines.add(sub.lineno)
    edges = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from app.x import y` imports app.x.y when that is a module of its own.
            targets = [
                f"{module}.{alias.name}" if _exists(f"{module}.{alias.name}") else module
                for alias in node.names
            ]
        for target in targets:
            if target == "app" or target.startswith("app."):
                edges.append(Edge(importer, target, node.lineno, node.lineno in type_only_lines))
    return edges


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def all_edges() -> list[Edge]:
    return [edge for path in sorted(APP.rglob("*.py")) for edge in imports_of(path)]


def layer_index(layers: list[list[str]]) -> dict[str, int]:
    return {room: rank for rank, rooms in enumerate(layers) for room in rooms}


def back_arrows(edges: list[Edge], layers: list[list[str]]) -> list[Edge]:
    rank = layer_index(layers)
    return [e for e in edges if rank[room_of(e.imported)] < rank[room_of(e.importer)]]


def circles(edges: list[Edge]) -> list[list[str]]:
    """Cycles of the room graph (one per strongly connected component), self-loops aside."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        a, b = room_of(edge.importer), room_of(edge.imported)
        graph.setdefault(a, set())
        graph.setdefault(b, set())
        if a != b:
            graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def layers() -> list[list[str]]:
    return read_layers(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return all_edges()


def test_every_room_is_in_the_picture(layers: list[list[str]], edges: list[Edge]) -> None:
    rank = layer_index(layers)
    rooms = {room_of(module_name(path)) for path in APP.rglob("*.py")}
    assert sorted(rooms - rank.keys()) == [], "place these in docs/architecture.md"
    assert sorted(rank.keys() - rooms) == [], "docs/architecture.md names rooms that are gone"
    assert all(room_of(e.imported) in rank for e in edges)


def test_no_import_runs_up(layers: list[list[str]], edges: list[Edge]) -> None:
    up = [
        e for e in back_arrows(edges, layers) if (e.importer, e.imported) not in KNOWN_BACK_ARROWS
    ]
    assert up == [], "imports from a lower layer to a higher one (see docs/architecture.md)"


def test_known_back_arrows_are_type_only_and_still_there(
    layers: list[list[str]], edges: list[Edge]
) -> None:
    known = [e for e in back_arrows(edges, layers) if (e.importer, e.imported) in KNOWN_BACK_ARROWS]
    assert all(e.type_only for e in known), "a known back-arrow is imported at run time"
    gone = KNOWN_BACK_ARROWS.keys() - {(e.importer, e.imported) for e in known}
    assert sorted(gone) == [], "gone: remove these from KNOWN_BACK_ARROWS"


def test_rooms_import_each_other_without_a_circle(edges: list[Edge]) -> None:
    allowed = [e for e in edges if (e.importer, e.imported) not in KNOWN_BACK_ARROWS]
    assert circles(allowed) == []


def test_the_checks_see_a_back_arrow_and_a_circle(layers: list[list[str]]) -> None:
    # The checks themselves: a publisher module importing the transport would be caught.
    planted = Edge("app.publisher.publisher", "app.transport.websocket", 1, type_only=False)
    assert back_arrows([planted], layers) == [planted]
    loop = [planted, Edge("app.transport.websocket", "app.publisher.publisher", 1, False)]
    assert circles(loop) == [["app.publisher", "app.transport"]]
