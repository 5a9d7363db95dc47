"""Dependencies point one way: `mlpl` (pipeline) → `mlpl.stages` → `mlpl.schemas`, checked on every module's imports.

Imports are read with `ast` from the source (also those inside functions and under TYPE_CHECKING), so a
lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"pipeline": "mlpl", "stages": "mlpl.stages", "schemas": "mlpl.schemas"}
STAGE_PACKAGES = ("prepare", "precompute", "train", "evaluate", "deploy")


def module_files() -> dict[str, Path]:
    """Every module of the three folders by its import name."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


MODULES = module_files()


def project_imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports (a `from package import module` counts as the module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return {m for m in found if m == "mlpl" or m.startswith("mlpl.")}


IMPORTS = {name: project_imports(name, path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    """'schemas', 'stages' or 'pipeline'."""
    if module == "mlpl.schemas" or module.startswith("mlpl.schemas."):
        return "schemas"
    if module == "mlpl.stages" or module.startswith("mlpl.stages."):
        return "stages"
    return "pipeline"


def stage_package(module: str) -> str | None:
    """The stage package a module belongs to (prepare, precompute, train, evaluate), or None."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["mlpl", "stages"] and parts[2] in STAGE_PACKAGES:
        return parts[2]
    return None


def is_command(module: str) -> bool:
    return module.startswith("mlpl.commands.")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def violations(rule) -> list[str]:
    return sorted(f"{src} imports {dst}" for src, deps in IMPORTS.items() for dst in deps if rule(src, dst))


def test_the_walk_finds_the_modules_and_their_imports() -> None:
    assert {"mlpl", "mlpl.cli", "mlpl.stages.train.loop", "mlpl.schemas.store"} <= set(MODULES)
    assert "mlpl.schemas.store" in IMPORTS["mlpl.stages.train.loop"]
    assert "mlpl.app" in IMPORTS["mlpl.cli"]


def test_schemas_import_nothing_of_the_stages_or_the_pipeline() -> None:
    assert violations(lambda src, dst: layer(src) == "schemas" and layer(dst) != "schemas") == []


def test_stages_import_no_pipeline_module() -> None:
    assert violations(lambda src, dst: layer(src) == "stages" and layer(dst) == "pipeline") == []


def test_training_never_imports_the_teacher_code() -> None:
    assert violations(lambda src, dst: stage_package(src) == "train" and stage_package(dst) == "precompute") == []


def test_shared_stage_modules_import_no_stage_package() -> None:
    """Modules directly under stages/ (registry, runtime, ...) are shared by the stage packages, never above them."""
    shared = lambda m: layer(m) == "stages" and stage_package(m) is None  # noqa: E731
    assert violations(lambda src, dst: shared(src) and stage_package(dst) is not None) == []


def test_no_cycle_between_stage_packages() -> None:
    graph: dict[str, set[str]] = {p: set() for p in STAGE_PACKAGES}
    for src, deps in IMPORTS.items():
        for dst in deps:
            a, b = stage_package(src), stage_package(dst)
            if a and b and a != b:
                graph[a].add(b)
    assert find_cycle(graph) is None, f"stage packages import each other in a cycle: {find_cycle(graph)}"


def test_command_modules_import_no_other_command_module() -> None:
    assert violations(lambda src, dst: is_command(src) and is_command(dst) and src != dst) == []


def test_no_cycle_between_the_pipeline_modules() -> None:
    """e.g. `mlpl.app` ↔ `mlpl.cli`; the package `mlpl` itself is left out (it only re-exports lazily)."""
    graph = {src: {d for d in deps if layer(d) == "pipeline" and d != "mlpl"}
             for src, deps in IMPORTS.items() if layer(src) == "pipeline" and src != "mlpl"}
    assert find_cycle(graph) is None, f"pipeline modules import each other in a cycle: {find_cycle(graph)}"


@pytest.mark.parametrize(("graph", "cycle"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
    ({"x": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
])
def test_find_cycle(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle
