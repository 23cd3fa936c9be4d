"""The import graph of sortednet, read from the source with ``ast`` (module-level and function-level imports
alike): no cycles among sortednet modules, a core that imports neither Lightning nor Hydra, Lightning only in the
training stack, every arrow pointing down the layers of GUIDE §3, and no command importing another. And where
imports sit: sortednet's own at the top of their files, and a third-party import inside a function (a heavy or
optional dependency, loaded lazily) with a comment that says why."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src"
PACKAGE = SRC / "sortednet"

# The core (GUIDE §3): readable and usable without the training stack or the config framework.
CORE = [
    "sortednet.model",
    "sortednet.loss",
    "sortednet.objectives",
    "sortednet.schedule",
    "sortednet.flops",
    "sortednet.checkpoint",
    "sortednet.hub",
    "sortednet.embedded",
    "sortednet.io",
    "sortednet.errors",
    "sortednet.prompts",
    *sorted(f"sortednet.inference.{p.stem}" for p in (PACKAGE / "inference").glob("*.py") if p.stem != "__init__"),
]
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics")
# The `python -m sortednet.X` entry points: thin, each over the library, none over another.
COMMANDS = {
    f"sortednet.{name}"
    for name in ("train", "generate", "export", "evaluate", "calibrate", "consolidate", "plan", "bench")
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TRAINING = {name for name in MODULES if name.startswith("sortednet.training")}
# The layers of GUIDE §3, lowest first: a module imports from its own layer or below, never above. The top-level
# modules (model, loss, hub, checkpoint, prompts, config, ...) are the core; the commands are the top. A new package
# gets its layer here.
LAYERS = ("core", "data", "inference", "eval", "training", "commands")
PACKAGE_LAYERS = {
    "data": "data",
    "inference": "inference",
    "eval": "eval",
    "benchmarks": "eval",  # bench's benchmarks: over the core, data and inference, like the eval suites
    "training": "training",
    "conf": "core",  # Hydra's config files (no modules)
}


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
    assert "sortednet.model" in GRAPH["sortednet.training.module"] and len(MODULES) > 30
    assert "sortednet.prompts" in GRAPH["sortednet.data.alpaca"]


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


def _layer(name: str) -> int:
    if name in COMMANDS:
        return LAYERS.index("commands")
    parts = name.split(".")
    if len(parts) < 3 and not (PACKAGE / parts[-1]).is_dir():
        return LAYERS.index("core")
    return LAYERS.index(PACKAGE_LAYERS[parts[1]])


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer into a higher one, as ``a (layer) -> b (layer)``."""
    return [
        f"{name} ({LAYERS[_layer(name)]}) -> {m} ({LAYERS[_layer(m)]})"
        for name in sorted(graph)
        for m in sorted(graph[name])
        if _layer(m) > _layer(name)
    ]


def _lightning_outside_training(imports: dict[str, set[str]]) -> list[str]:
    """Modules outside ``sortednet.training`` and the train command that import Lightning themselves."""
    return [
        f"{name} imports {sorted(m for m in found if m.split('.')[0] in LIGHTNING)}"
        for name, found in sorted(imports.items())
        if name not in TRAINING | {"sortednet.train"} and any(m.split(".")[0] in LIGHTNING for m in found)
    ]


def _commands_importing_commands(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{name} imports {sorted(graph[name] & COMMANDS)}"
        for name in sorted(COMMANDS & set(graph))
        if graph[name] & COMMANDS
    ]


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages <= set(PACKAGE_LAYERS), f"give {sorted(packages - set(PACKAGE_LAYERS))} a layer in PACKAGE_LAYERS"


def test_no_module_imports_from_a_layer_above_it():
    assert _upward(GRAPH) == []


def test_only_the_training_stack_imports_lightning():
    assert _lightning_outside_training({name: _imports(name) for name in MODULES}) == []


def test_no_command_imports_another():
    assert _commands_importing_commands(GRAPH) == []


def test_the_layer_checks_find_wrong_arrows():
    """Each check above, on a graph with one wrong arrow of its kind."""
    assert _upward({"sortednet.model": {"sortednet.training.module"}, "sortednet.plan": {"sortednet.model"}}) == [
        "sortednet.model (core) -> sortednet.training.module (training)"
    ]
    assert _upward({"sortednet.inference.decode": {"sortednet.eval.loss"}}) == [
        "sortednet.inference.decode (inference) -> sortednet.eval.loss (eval)"
    ]
    assert _upward({"sortednet.embedded": {"sortednet.data.alpaca"}}) == [
        "sortednet.embedded (core) -> sortednet.data.alpaca (data)"
    ]
    found = _lightning_outside_training(
        {"sortednet.eval.exits": {"lightning", "torch"}, "sortednet.training.module": {"lightning"}}
    )
    assert found == ["sortednet.eval.exits imports ['lightning']"]
    assert _lightning_outside_training({"sortednet.train": {"torchmetrics"}}) == []
    assert _lightning_outside_training({"sortednet.model": {"lightning_fabric.utilities"}}) != []
    found = _commands_importing_commands(
        {"sortednet.plan": {"sortednet.train", "sortednet.model"}, "sortednet.io": set()}
    )
    assert found == ["sortednet.plan imports ['sortednet.train']"]


def _function_imports(source: str) -> list[tuple[str, ast.Import | ast.ImportFrom]]:
    """``(function, statement)`` for each import statement inside a function body, in source order; the function
    by its qualified name in the module (``LayerStack.__init__``, ``materialise.write``)."""
    found = []

    def visit(node: ast.AST, name: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom) and in_function:
                found.append((name, child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = f"{name}.{child.name}" if name else child.name
                visit(child, inner, in_function or not isinstance(child, ast.ClassDef))
            else:
                visit(child, name, in_function)

    visit(ast.parse(source), "", False)
    return found


def _imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [node.module or ""] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]


def _sortednet_imports_in_functions(source: str) -> list[str]:
    """``function:line`` of each import of a sortednet module (or a relative one) inside a function."""
    return [
        f"{function}:{node.lineno}"
        for function, node in _function_imports(source)
        if (node.level if isinstance(node, ast.ImportFrom) else 0)
        or any(name.split(".")[0] == "sortednet" for name in _imported_modules(node))
    ]


def _lazy_imports_without_a_reason(source: str) -> list[str]:
    """``function:line`` of the first import inside each function that has no comment on its line or the line
    above (one comment per function says why its imports wait)."""
    comments = {
        token.start[0]
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    first: dict[str, ast.Import | ast.ImportFrom] = {}
    for function, node in _function_imports(source):
        first.setdefault(function, node)
    return [
        f"{function}:{node.lineno}" for function, node in first.items() if not {node.lineno - 1, node.lineno} & comments
    ]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_sortednet_imports_sit_at_the_top_of_their_files(name):
    """A lazy import of our own module hides an arrow (or a cycle) from the reader: imports go on top, and a
    wrong arrow is mended by moving code, not by hiding the import in a function."""
    assert _sortednet_imports_in_functions(MODULES[name].read_text()) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_lazy_import_says_why(name):
    """A third-party import inside a function is there for a reason (slow to import, an optional extra): the
    comment on its line or the line above gives it."""
    assert _lazy_imports_without_a_reason(MODULES[name].read_text()) == []


def test_the_import_placement_checks_find_misplaced_imports():
    source = (
        "import torch\n"
        "from sortednet.io import read_text\n\n"
        "def f():\n"
        "    from sortednet.hub import resolve\n"
        "    import wandb\n\n"
        "class C:\n"
        "    def g(self):\n"
        "        from . import errors  # a comment does not excuse it\n\n"
        "        def h():\n"
        "            # lazy: slow to import\n"
        "            import matplotlib\n"
        "            import matplotlib.pyplot\n\n"
        "def k():\n"
        "    import datasets  # lazy: slow to import\n"
        "    import peft\n"
        "    return '# not a comment'\n\n"
        "def m():\n"
        "    x = '# not a comment either'\n"
        "    import numpy\n"
    )
    assert _sortednet_imports_in_functions(source) == ["f:5", "C.g:10"]
    assert _lazy_imports_without_a_reason(source) == ["f:5", "m:24"]
