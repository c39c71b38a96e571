"""The service's layers (docs/README.md#layers), and a check that keeps them.

``python -m tests.support.layers`` prints each layer with its modules and their sizes, then checks:

- every module of the service (``stream/*.py``) is in exactly one layer;
- no module imports one of a higher layer, nor from the tools' sub-packages;
- the import graph among the service's modules has no cycle (type-only imports count);
- no import of a service module sits inside a function (a cycle dodged, not removed);
- no module is longer than ``MAX_LINES`` unless docs/README.md's table of long modules says why.

It exits 1 and names what broke, or prints ``layers: ok``. ``tests/unit/test_layers.py`` runs it.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stream"
MAX_LINES = 500

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaves", ("errors", "secrets", "wire", "events", "logs")),
    (
        "primitives",
        (
            "settings",
            "validation",
            "pacing",
            "due",
            "retry",
            "offsets",
            "metrics",
            "topics",
            "producer",
        ),
    ),
    ("kafka", ("consumer", "commits", "leases", "dlq", "receipts", "sharing")),
    ("credentials", ("credentials", "minting")),
    ("configuration", ("config",)),
    ("tokens", ("held", "pool", "tokens")),
    ("api", ("api",)),
    ("engines", ("batching", "lanes", "outcomes", "delivery", "realtime", "labels")),
    ("reconciliation", ("statuses", "originals", "reconcile")),
    ("process", ("http", "finishing", "app")),
    ("command line", ("cli", "__main__", "__init__")),
)
"""Bottom to top. A module imports only modules of its own layer or of a lower one. Names not
(yet) in the package are allowed, so the table can lead a move by one commit."""


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    line: int
    local: bool
    """Inside a function body."""


_COMMAND_LINE = frozenset(LAYERS[-1][1])
"""The command line starts the tools too; nothing below it may."""


def modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}


def imports(path: Path) -> Iterator[Import]:
    """Every ``stream.*`` import of the file, type-only ones included."""
    tree = ast.parse(path.read_text(), str(path))
    yield from _walk(tree, local=False)


def _walk(node: ast.AST, *, local: bool) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ImportFrom) and child.module is not None and child.level == 0:
            yield from _named(child.module, [a.name for a in child.names], child.lineno, local)
        elif isinstance(child, ast.Import):
            for alias in child.names:
                yield from _named(alias.name, [], child.lineno, local)
        inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, local=inner)


def _named(module: str, names: list[str], line: int, local: bool) -> Iterator[Import]:
    parts = module.split(".")
    if parts[0] != "stream":
        return
    if len(parts) >= 2:
        yield Import(parts[1], line, local)
    else:  # from stream import x: x is a module (or __version__, from __init__)
        for name in names:
            yield Import(name if (PACKAGE / f"{name}.py").exists() else "__init__", line, local)


def graph(found: Mapping[str, Path]) -> dict[str, set[str]]:
    return {
        name: {i.module for i in imports(path) if i.module in found and i.module != name}
        for name, path in found.items()
    }


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def long_modules_explained() -> set[str]:
    """Modules named in docs/README.md's table under "Long modules"."""
    text = (ROOT / "docs" / "README.md").read_text()
    section = re.search(r"^### Long modules\n(.*?)(?=^#|\Z)", text, re.M | re.S)
    if section is None:
        return set()
    return set(re.findall(r"^\| `(\w+)\.py` \|", section.group(1), re.M))


def problems() -> list[str]:
    found = modules()
    layer_of: dict[str, int] = {}
    said: list[str] = []
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            if name in layer_of:
                said.append(f"{name} is in two layers")
            layer_of[name] = rank
    for name in found:
        if name not in layer_of:
            said.append(f"stream/{name}.py is in no layer (tests/support/layers.py LAYERS)")
    explained = long_modules_explained()
    for name, path in found.items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and name not in explained:
            said.append(f"stream/{name}.py: {lines} lines (> {MAX_LINES}, not in docs/README.md)")
        for i in imports(path):
            where = f"stream/{name}.py:{i.line}"
            if i.module not in found:
                if (PACKAGE / i.module).is_dir() and name not in _COMMAND_LINE:
                    said.append(f"{where} imports the tools' package stream.{i.module}")
                continue
            if i.local:
                said.append(f"{where} imports stream.{i.module} inside a function")
            if name in layer_of and layer_of.get(i.module, -1) > layer_of[name]:
                said.append(
                    f"{where}: {name} ({LAYERS[layer_of[name]][0]}) imports {i.module} "
                    f"({LAYERS[layer_of[i.module]][0]}), a higher layer"
                )
    for cycle in cycles(graph(found)):
        said.append("import cycle among " + ", ".join(cycle))
    return said


def main() -> int:
    found = modules()
    for name, members in LAYERS:
        present = [m for m in members if m in found]
        sizes = ", ".join(f"{m} ({len(found[m].read_text().splitlines())})" for m in present)
        print(f"{name:>15}: {sizes}")
    said = problems()
    for line in said:
        print(f"layers: {line}", file=sys.stderr)
    if not said:
        print("layers: ok")
    return 1 if said else 0


if __name__ == "__main__":
    sys.exit(main())
