"""The structure of src/ (docs/architecture.md): no import circle, no import that runs up
the layers, and the product code never imports the offline pieces."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first: a module may import modules of its own layer or of a lower one.
LAYERS = (
    ("src.errors", "src.experiment_io", "src.record_base", "src.integrity", "src.distributed", "src.faults",
     "src.devices", "src.memory"),
    ("src.arguments", "src.model.registry"),
    ("src.data", "src.model", "src.loss", "src.artifacts", "src.records"),
    ("src.retrieval", "src.data.dataset", "src.augment", "src.trainer_iterative", "src.training"),
    ("src.experiment", "src.job", "src.preflight"),
    ("src.stages", "src.use"),
    ("src.rounds", "src.report", "src.plan"),
    ("src.offline",),
    ("src.cli", "src.launch"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The src modules a file imports, at run time (imports under TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("src"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in SRC.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            # `from src.x import y` may name a module y of package src.x
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def layer_of(module: str) -> int:
    best, best_length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer of LAYERS; add it"
    return best


def test_src_has_no_import_circle():
    edges, state, path = graph(), {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                circle = path[path.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_import_runs_up_the_layers():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_product_code_does_not_import_the_offline_pieces():
    offenders = [
        module
        for module, targets in graph().items()
        if not module.startswith("src.offline")
        and module != "src.cli"
        and any(t.startswith("src.offline") for t in targets)
    ]
    assert not offenders, offenders


def test_only_the_distributed_module_runs_collectives():
    """One rule for the device of collective tensors (src/distributed.py) needs one home."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "distributed.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(name.startswith("torch.distributed") for name in names):
                offenders.append(str(path.relative_to(SRC.parent)))
    assert not offenders, offenders
