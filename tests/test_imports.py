"""The import graph of sortednet, read from the source with ``ast`` (module-level and function-level imports
alike): no cycles among sortednet modules, and a core that imports neither Lightning nor Hydra."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "sortednet"

# The core (GUIDE §3): readable and usable without the training stack or the config framework.
CORE = [
    "sortednet.model",
    "sortednet.loss",
    "sortednet.schedule",
    "sortednet.flops",
    "sortednet.checkpoint",
    "sortednet.hub",
    "sortednet.embedded",
    "sortednet.io",
    "sortednet.errors",
    "sortednet.data.prompts",
    *sorted(f"sortednet.inference.{p.stem}" for p in (PACKAGE / "inference").glob("*.py") if p.stem != "__init__"),
]
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")
TRAINING = {
    "sortednet.module",
    "sortednet.callbacks",
    "sortednet.checkpointing",
    "sortednet.loggers",
    "sortednet.data.datamodule",
}
COMMANDS = {
    f"sortednet.{name}"
    for name in ("train", "generate", "export", "evaluate", "calibrate", "consolidate", "plan", "bench")
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports anywhere in its source: ``import a.b`` gives ``a.b``; ``from a import b``
    gives ``a.b`` where that is a sortednet module, else ``a``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


GRAPH = {name: {m for m in _imports(name) if m in MODULES and m != name} for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    assert "sortednet.model" in GRAPH["sortednet.module"] and len(MODULES) > 30
    assert "sortednet.data.prompts" in GRAPH["sortednet.data.alpaca"]


def test_no_import_cycles_among_sortednet_modules():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


# Evaluation runs on the core: decoding a checkpoint never pulls in the training stack.
EVALUATION = sorted(f"sortednet.eval.{p.stem}" for p in (PACKAGE / "eval").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CORE + EVALUATION)
def test_the_core_imports_neither_lightning_nor_hydra(name):
    """Directly or through any sortednet module it imports (at module level or inside a function)."""
    for module in sorted({name} | _reachable(name)):
        frameworks = {m for m in _imports(module) if m.split(".")[0] in FRAMEWORKS}
        assert not frameworks, f"{name} -> {module} imports {sorted(frameworks)}"
    assert not _reachable(name) & (TRAINING | COMMANDS), f"{name} reaches the training stack or a command"


def test_library_code_never_imports_a_command():
    for name in sorted(set(GRAPH) - COMMANDS):
        assert not GRAPH[name] & COMMANDS, f"{name} imports {sorted(GRAPH[name] & COMMANDS)}"
