"""The package's layers (fusiondp/__init__.py, docs/design.md): no module imports one of a higher layer,
and no two modules import each other, directly or through others. Every import counts, including those
inside functions and under TYPE_CHECKING: each is a dependency a reader must follow."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "fusiondp"
LAYERS = ["models", "mechanism", "experiment", "tabular", "text", "datasets", "audit"]
"""Bottom to top: a module may import its own layer and those below it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    assert top in LAYERS, f"{module}: not in any layer; add its folder to LAYERS and to docs/design.md"
    return LAYERS.index(top)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The fusiondp modules ``path`` imports (``from fusiondp.x import y`` counts y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("fusiondp.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("fusiondp"):
                submodules = {f"{node.module}.{alias.name}" for alias in node.names}
                found |= (submodules & known) or {node.module}
    return {name for name in found if name != "fusiondp"}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {
        module_name(p): imports_of(p, known) - {module_name(p)}
        for p in paths
        if p.parent != PACKAGE or p.stem != "__init__"
    }


def test_every_module_belongs_to_a_layer_and_imports_no_higher_layer():
    upward = [
        f"{module} (layer {LAYERS[layer_of(module)]}) imports {target} (layer {LAYERS[layer_of(target)]})"
        for module, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_the_mechanism_reads_no_settings_files_or_run_layer():
    for module, targets in graph().items():
        if module.startswith("fusiondp.mechanism."):
            assert {layer_of(t) for t in targets} <= {0, 1}, (module, targets)


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, set())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_paths_computed_from_a_module_location_still_name_the_repository(monkeypatch):
    """Moving a module one folder down must not move what it locates from its own file."""
    from fusiondp.experiment import launch
    from fusiondp.tabular.data import data_root

    monkeypatch.delenv("FUSIONDP_DATA", raising=False)
    assert data_root() == REPO.parent / "shared" / "data"
    assert launch.REPO == REPO
