"""The package's layers: imports only go down (optim -> train -> distributed -> experiments -> CLI), and
no two modules import each other, directly or around a loop (function-level imports included)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["optim", "train", "distributed", "experiments"]  # each may import only those before it


def _modules() -> dict[str, Path]:
    out = {}
    for base, prefix in ((ROOT / "core" / "mousse", "mousse"), (ROOT / "mousse_cli", "mousse_cli")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join((prefix, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules a module imports (absolute or relative, at any depth in the file)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known}
    return found - {name}


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] == "mousse_cli":
        return len(LAYERS)
    if len(parts) == 1:  # the top-level package re-exports the optimizer library
        return 0
    return LAYERS.index(parts[1])


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_every_engine_module_sits_in_a_layer():
    loose = [m for m in _modules() if m.startswith("mousse.") and m.split(".")[1] not in LAYERS]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_imports_only_go_down():
    upward = [
        f"{m} imports {t}"
        for m, targets in _graph().items()
        for t in targets
        if t != "mousse" and _layer(t) > _layer(m)
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def _test_imports(path: Path) -> set[str]:
    """Every module a test file imports (any depth), by its absolute name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_optim_imports_nothing_else_of_mousse():
    """The library and its own suite: mousse.optim imports no other layer, and neither do
    tests/optim (`pytest tests/optim` runs without the training stack) nor the tests/support
    helpers it imports."""
    leaks = [
        f"{m} imports {t}"
        for m, targets in _graph().items()
        if m.startswith("mousse.optim")
        for t in targets
        if not t.startswith("mousse.optim")
    ]
    tests = ROOT / "tests"
    todo, seen = sorted((tests / "optim").rglob("*.py")), set()
    while todo:
        path = todo.pop()
        seen.add(path)
        for name in sorted(_test_imports(path)):
            if (
                name == "mousse_cli"
                or name.split(".")[0] == "mousse_cli"
                or (name.startswith("mousse.") and name.split(".")[1] in LAYERS[1:])
            ):
                leaks.append(f"{path.relative_to(ROOT)} imports {name}")
            elif name.startswith("support."):
                helper = tests / Path(*name.split(".")[:2]).with_suffix(".py")
                if helper.exists() and helper not in seen:
                    todo.append(helper)
    assert not leaks, "\n".join(leaks)


def test_no_import_cycles():
    graph = {
        m: {t for t in ts if t != "mousse" and not m.startswith(t + ".")}
        for m, ts in _graph().items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_checker_sees_an_upward_import(tmp_path):
    """The checker itself: a train module importing experiments is caught."""
    path = tmp_path / "bad.py"
    path.write_text("from mousse.experiments.results import render\n")
    targets = _imports("mousse.train.bad", path, {"mousse.experiments.results"})
    assert targets == {"mousse.experiments.results"}
    assert _layer("mousse.experiments.results") > _layer("mousse.train.bad")


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore stays in its module: what others need is public."""
    reached = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or "mousse" in (node.module or "")):
                reached += [
                    f"{name}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert reached == []
