"""The layout's rules, read from the source tree itself (DESIGN.md: dependencies point down).

* Deep-learning frameworks are imported only under ``backends/``.
* No room imports a room above it: the import graph between the package's rooms (top-level
  modules and sub-packages), lazy imports inside functions included, has no cycle, and the
  backends import nothing but the byte layer and the shared checks.
* ``import distilldetect`` imports no framework and no extra.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import distilldetect

SRC = Path(distilldetect.__file__).parent
FRAMEWORKS = {"torch", "tensorflow", "keras", "tf_keras", "jax", "flax"}
# What the backends may import from the rest of the package (the floor of the house).
BACKEND_MAY_IMPORT = {"backends", "base", "losses", "files", "_version"}


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def room(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".py")


def imported_rooms(path: Path) -> set[str]:
    """The package rooms a file imports (absolute ``distilldetect.x`` and relative imports)."""
    tree = ast.parse(path.read_text())
    package = list(path.relative_to(SRC).parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "distilldetect" and len(parts) > 1:
                    out.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "distilldetect":
                    names = parts[1:2] or [a.name for a in node.names]
                    out.update(names)
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            if target:
                out.add(target[0])
            else:  # from . import x (at the package root)
                out.update(a.name for a in node.names)
    return out


def framework_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names} & FRAMEWORKS
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module.split(".")[0]} & FRAMEWORKS
    return found


def test_frameworks_are_imported_only_in_backends():
    offenders = {
        str(p.relative_to(SRC)): sorted(framework_imports(p))
        for p in sources()
        if room(p) != "backends" and framework_imports(p)
    }
    assert offenders == {}, f"framework imports outside backends/: {offenders}"


def test_backends_import_only_the_floor():
    offenders = {
        str(p.relative_to(SRC)): sorted(imported_rooms(p) - BACKEND_MAY_IMPORT)
        for p in sources()
        if room(p) == "backends" and imported_rooms(p) - BACKEND_MAY_IMPORT
    }
    assert offenders == {}, f"backends import rooms above them: {offenders}"


def test_the_rooms_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for p in sources():
        r = room(p)
        if r == "__init__":
            continue  # the public face re-exports from every room by design (lazily)
        graph.setdefault(r, set()).update(imported_rooms(p) - {r, "__init__", "__main__"})
    rooms = set(graph)
    graph = {r: deps & rooms for r, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError(f"import cycle between rooms: {' -> '.join(cycle)}")
            if state.get(dep) is None:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_import_is_light():
    code = (
        "import sys, distilldetect, distilldetect.cd, distilldetect.corruptions, "
        "distilldetect.datasets, distilldetect.saving, distilldetect.files; "
        "heavy = {'torch', 'tensorflow', 'keras', 'matplotlib', 'fastapi', 'ray', "
        "'onnxruntime', 'art', 'pyarrow'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
