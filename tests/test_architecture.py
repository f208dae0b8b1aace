"""The package's layers (docs/ARCHITECTURE.md): imports point down only and never form a cycle.

Read from the source with ``ast`` (every import, including those inside functions), so a lazy
import that goes up a layer is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bluff_ray"
#: Lower number = lower layer; a module may import its own layer or lower ones.
LAYERS = {"localfile": 0, "engine": 1, "results": 2, "run": 3, "web": 4, "cli": 5}
#: What the engine must never import (storage, Ray, the results layout).
ENGINE_FORBIDDEN = ("ray", "fsspec", "s3fs", "boto3", "bluff_ray.results", "bluff_ray.run", "bluff_ray.web")


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p) if i in mods and i != m and i != "bluff_ray"} for m, p in mods.items()}


def test_no_relative_imports():
    for m, p in _modules().items():
        rel = [n.module for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 0]
        assert not rel, f"{m} uses relative imports {rel}: absolute imports keep the layers visible"


def test_imports_point_down_only():
    upward = []
    for m, deps in _graph().items():
        lm = _layer(m)
        for d in deps:
            ld = _layer(d)
            if lm is not None and ld is not None and ld > lm:
                upward.append(f"{m} -> {d}")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(sorted(upward))


def test_engine_imports_no_storage_ray_or_layout():
    bad = []
    for m, p in _modules().items():
        if _layer(m) == LAYERS["engine"]:
            bad += [
                f"{m} -> {i}"
                for i in _imports(p)
                if i.split(".")[0] in ENGINE_FORBIDDEN or i.startswith(ENGINE_FORBIDDEN)
            ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checks_see_a_known_downward_import():
    # guards against a check that passes because it sees nothing
    graph = _graph()
    assert "bluff_ray.engine.compute" in graph["bluff_ray.run.actor"] or any(
        d.startswith("bluff_ray.engine") for d in graph["bluff_ray.run.actor"]
    )
    assert _layer("bluff_ray.run.driver") > _layer("bluff_ray.results.store") > _layer("bluff_ray.engine.attack")
