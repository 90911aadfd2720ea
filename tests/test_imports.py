"""The import graph of edgeprune: no cycles, and imports point down the pipeline's layers.

Every module under ``edgeprune/`` is parsed with :mod:`ast`; every import counts, at module top
or inside a function (a lazy import is still a dependency), ``from . import x`` resolved, an
import of a package counted as an import of its ``__init__``. Modules are the nodes
(``edgeprune.pipeline.stages``; ``edgeprune.pipeline`` for its ``__init__``). Imports made from a
string (``importlib.import_module``, the package root's lazy entry points) are not seen.

Layers, lowest first (:data:`LAYERS`), in the pipeline's order: shared plumbing (errors, paths,
the line-progress type, the self-contained latency measurer that is copied alone to a board),
then what every stage reads (outputs, data, layer types), the quality figures (pure NumPy on
outputs), the model zoo, the dependency graph and its counts, plans, surgery, checkpoints (which
rebuild a zoo model and resize it by surgery), the zoo's package face (``edgeprune.models.build``
also takes a checkpoint), training, criteria (some refit layers as training does), pruning,
sensitivity and allocation, recovery recipes, export, other runtimes, device targets (which name
the runtimes), profiling, latency tables and planners (which time files in the runtimes), the
report, the compress pipeline, the public Python API, and the CLI. A module may import its own
layer or a lower one; an import of a higher layer is an *arrow back up*, allowed
:data:`MAX_ARROWS_UP` times.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "edgeprune"
MAX_ARROWS_UP = 2

# Lowest first. A module belongs to the first prefix (longest match wins) that names it.
LAYERS: list[tuple[str, ...]] = [
    ("edgeprune", "edgeprune.errors", "edgeprune.paths", "edgeprune.progress", "edgeprune.latency.measure"),
    ("edgeprune.outputs", "edgeprune.calibration", "edgeprune.layers"),
    ("edgeprune.quality",),
    ("edgeprune.models.registry", "edgeprune.models.cifar", "edgeprune.models.default"),
    ("edgeprune.graph", "edgeprune.counter"),
    ("edgeprune.plan",),
    ("edgeprune.surgery",),
    ("edgeprune.checkpoint",),
    ("edgeprune.models",),
    ("edgeprune.train",),
    ("edgeprune.criteria",),
    ("edgeprune.pruning", "edgeprune.sensitivity"),
    ("edgeprune.allocation",),
    ("edgeprune.recipes",),
    ("edgeprune.export",),
    ("edgeprune.runtimes",),
    ("edgeprune.targets",),
    ("edgeprune.profile",),
    ("edgeprune.latency",),
    ("edgeprune.report",),
    ("edgeprune.pipeline",),
    ("edgeprune.api",),
    ("edgeprune.cli", "edgeprune.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def tree_of(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module ``name`` starts with (``edgeprune.a.b.func`` -> ``edgeprune.a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every edgeprune import in ``path``."""
    tree = tree_of(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    stem = ".".join(base + ([child.module] if child.module else []))
                else:
                    stem = child.module or ""
                # ``from pkg import mod`` imports pkg.mod when that is a module, else pkg itself
                targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem
                           for alias in child.names]
            else:
                visit(child, inner)
                continue
            for target in targets:
                resolved = _resolve(target, known) if target.startswith("edgeprune") else None
                if resolved is not None and resolved != name:
                    found.append((resolved, child.lineno, nested))
    visit(tree, False)
    return found


@cache
def graph() -> dict[str, dict[str, list[tuple[int, bool]]]]:
    known = modules()
    edges: dict[str, dict[str, list[tuple[int, bool]]]] = defaultdict(lambda: defaultdict(list))
    for name, path in known.items():
        for target, line, nested in imports_of(name, path, known):
            edges[name][target].append((line, nested))
    return edges


def cycles(edges: dict[str, dict[str, list]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
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

    for v in sorted(modules()):
        if v not in index:
            connect(v)
    return sorted(found)


def layer_of(name: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level is not None, f"{name} has no layer in LAYERS: add it"
    return level


def arrows_up(edges: dict[str, dict[str, list]]) -> list[str]:
    return sorted(f"{source} -> {target}" for source, targets in edges.items() for target in targets
                  if layer_of(target) > layer_of(source))


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles between edgeprune modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers() -> None:
    found = arrows_up(graph())
    assert len(found) <= MAX_ARROWS_UP, f"{len(found)} imports from a lower layer to a higher one:\n" + "\n".join(found)


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_one_progress_type() -> None:
    """One ``Progress`` (the callback a stage reports through), defined once and imported elsewhere."""
    defined = []
    for name, path in modules().items():
        for node in ast.walk(tree_of(path)):
            targets = [node.target] if isinstance(node, (ast.AnnAssign,)) else getattr(node, "targets", [])
            if isinstance(node, ast.ClassDef) and node.name == "Progress":
                defined.append(name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                    isinstance(t, ast.Name) and t.id == "Progress" for t in targets):
                defined.append(name)
    assert len(defined) == 1, f"Progress is defined {len(defined)} times: {defined}"


# Public names two modules still share, each listed with why it stays (none may be added).
SHARED_NAMES = {"Search": "latency.planner.Search / pipeline.search.Search: not renamed while search.py "
                          "changes on other branches"}


def test_names_say_which() -> None:
    """No two modules named alike (``edgeprune.layers`` and ``latency.layers`` read the same in an
    import) and no public class or type defined in two modules (``prepare.LatencyTable`` beside
    ``latency.table.LatencyTable``), beyond :data:`SHARED_NAMES`."""
    layers = [name for name in modules() if name.rpartition(".")[2] == "layers"]
    assert layers == ["edgeprune.layers"], f"modules named layers: {layers}"
    defined: dict[str, list[str]] = defaultdict(list)
    for name, path in modules().items():
        for node in tree_of(path).body:
            targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            for found in ([node.name] if isinstance(node, ast.ClassDef) else targets):
                if found[:1].isupper() and not found.isupper():
                    defined[found].append(name)
    shared = {key: names for key, names in defined.items() if len(names) > 1 and key not in SHARED_NAMES}
    assert not shared, f"public names defined in more than one module: {shared}"


def test_one_planner_chooser() -> None:
    """The pipeline and the floor's search choose the planner in one place (``stages.planner_for``):
    each planner's maker is called from there alone."""
    calls: dict[str, list[str]] = defaultdict(list)
    for name, path in modules().items():
        for node in ast.walk(tree_of(path)):
            if isinstance(node, ast.Call):
                called = getattr(node.func, "attr", getattr(node.func, "id", None))
                if called in ("latency_planner", "sensitivity_planner"):
                    calls[called].append(f"{name}:{node.lineno}")
    assert all(len(sites) == 1 for sites in calls.values()) and len(calls) == 2, f"planners chosen at {dict(calls)}"


# The imports still made inside functions outside the CLI (whose command bodies import on use so that
# `edgeprune bench` starts without torch), each with why it cannot go to the module's top.
LAZY_IMPORTS = {
    ("edgeprune.models", "edgeprune.checkpoint"): "checkpoint imports models.registry: a loop through this __init__",
    ("edgeprune.runtimes.executorch_xnnpack", "edgeprune.latency.measure"): "latency/__init__ imports the runtimes",
    ("edgeprune.runtimes.ncnn_pnnx", "edgeprune.latency.measure"): "latency/__init__ imports the runtimes",
    ("edgeprune.runtimes.ncnn_pnnx", "edgeprune.runtimes._flat"): "torch, which running an ncnn file must not import",
    ("edgeprune.runtimes.ncnn_pnnx", "edgeprune.runtimes._ncnn_layers"): "torch, as above",
    ("edgeprune.export", "edgeprune.export.baked"): "torch: export's ONNX side works without it",
    ("edgeprune.export", "edgeprune.export.onnx_export"): "torch, as above",
}


def test_imports_sit_at_module_top() -> None:
    """An edgeprune import inside a function hides a dependency: only :data:`LAZY_IMPORTS` (and the
    CLI's command bodies) may make one."""
    known = modules()
    hidden = sorted(f"{name}:{line} -> {target}" for name, path in known.items() if not name.startswith("edgeprune.cli")
                    for target, line, nested in imports_of(name, path, known)
                    if nested and (name, target) not in LAZY_IMPORTS)
    assert not hidden, f"{len(hidden)} edgeprune imports inside functions:\n" + "\n".join(hidden)
