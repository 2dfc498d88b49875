"""posmon's own modules import one another without cycles, and each imports on its own.

The graph is read from the source with `ast`: every `import` and `from ... import` of a
first-party module, at module level or inside a function (a lazy import is still an
edge: it runs whenever that function does, and a cycle through it breaks the moment the
order of first imports changes), except under `if TYPE_CHECKING:`, which never runs.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("posmon", "agent", "collector", "simulators", "dashboards")
# Alembic's environment script runs migrations when imported: it only runs inside alembic.
NOT_IMPORTABLE_ALONE = frozenset({"collector.migrations.env"})


def first_party_modules() -> dict[str, Path]:
    """Module name -> source file, for every module of posmon's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under an `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            skipped.update(id(inner) for body in node.body for inner in ast.walk(body))
    return skipped


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skipped = _type_checking_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(owner(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                for alias in node.names:  # `from pkg import module` imports the module
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else owner(base))
        graph[name] = {target for target in targets if target and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _edges_within(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    members = set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]


def test_the_graph_sees_imports_of_every_kind() -> None:
    graph = import_graph(first_party_modules())
    assert "posmon.config" in graph["agent.config"]  # from posmon.config import ...
    assert "agent.service" in graph["posmon.cli"]  # inside a function
    assert "collector.influx" in graph["collector.metrics"]  # lazy, inside a function
    assert "collector.config" not in graph["collector.metrics"]  # TYPE_CHECKING only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph(first_party_modules())
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        f"  {' <-> '.join(component)}: {', '.join(_edges_within(graph, component))}"
        for component in found
    )


def test_each_module_imports_in_a_fresh_interpreter() -> None:
    names = sorted(set(first_party_modules()) - NOT_IMPORTABLE_ALONE)
    environment = {**os.environ, "PYTHONWARNINGS": "error"}

    def load(name: str) -> tuple[str, int, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import importlib; importlib.import_module({name!r})"],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        last_line = (done.stderr.strip().splitlines() or [""])[-1]
        return name, done.returncode, last_line

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failed = [result for result in pool.map(load, names) if result[1] != 0]
    assert not failed, "modules that fail to import alone:\n" + "\n".join(
        f"  {name}: {error}" for name, _, error in failed
    )
