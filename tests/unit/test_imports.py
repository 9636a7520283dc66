"""The shape of tasks/: no import cycle, and no import inside a function (the usual way to hide one).
Both read the source with ast, so the check needs no import of the package."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tasks"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(TASKS.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """The tasks modules a module imports, wherever in it the import statement is."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in out if name in MODULES} - {module_name(path)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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


def test_no_import_cycle_in_tasks():
    graph = {name: imported(path) for name, path in MODULES.items()}
    assert cycles(graph) == []


def test_the_cycle_check_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_inside_a_function_in_tasks():
    inside = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [f"{path.relative_to(ROOT)}:{sub.lineno} in {node.name}()" for sub in ast.walk(node)
                           if isinstance(sub, (ast.Import, ast.ImportFrom))]
    assert inside == []


# The layers of tasks/ as docs/architecture.md draws them, lowest first: a module imports from its own
# layer or a lower one, never from one above.
LAYERS = (
    ("config", ("tasks.config",)),
    ("lib", ("tasks.lib", "tasks.remote")),
    ("gateway", ("tasks.gateway",)),
    ("components", ("tasks.balancer", "tasks.state_hosts", "tasks.key_converge")),
    ("run", ("tasks.context",)),
    ("uses the run", ("tasks.deploy_gateway", "tasks.rotation")),
)


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module}: in no layer of LAYERS (docs/architecture.md) — fix: place it in one")


def test_every_module_is_in_a_layer_and_imports_none_above_it():
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
              for name, path in MODULES.items() if name != "tasks"
              for target in sorted(imported(path)) if target != "tasks" and layer_of(target) > layer_of(name)]
    assert upward == []


def test_the_layer_check_finds_an_upward_import():
    assert layer_of("tasks.config.settings") < layer_of("tasks.gateway.stack") < layer_of("tasks.context")
