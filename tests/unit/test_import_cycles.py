"""The package's modules import each other without cycles.

A cycle works only while every import in it sits inside a function or the modules happen
to load in the right order; it breaks as soon as someone moves an import to the top.  So
every ``import dpdeepsets.x`` / ``from dpdeepsets.x import y`` / ``from .x import y`` is
read with :mod:`ast`, at module level and inside functions alike (only those under
``if TYPE_CHECKING:`` are left out: they never run), and the graph they form must have no
cycle.  ``from dpdeepsets.data import store`` counts as an import of the submodule
``dpdeepsets.data.store``, ``from dpdeepsets.data import load_split`` as one of the
package's ``__init__``.  The implicit import of a module's parent package is not counted:
otherwise every submodule would close a cycle with an ``__init__`` that imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "dpdeepsets"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE

# Cycles that exist today, each as the set of modules in it.  Empty: keep it so.  A new
# cycle fails the test; breaking a cycle listed here fails it too, until it is removed.
KNOWN_CYCLES: list[frozenset[str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every module of the package."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node in ``tree``, at any depth, except under TYPE_CHECKING."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules) -> str | None:
    """The longest prefix of dotted ``name`` that is one of ``modules``."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its body)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if not base.split(".")[0] == PACKAGE:
                    continue
                # ``from pkg import sub`` imports the submodule; ``from pkg import name``, pkg.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                resolved = _resolve(target, modules) if target.split(".")[0] == PACKAGE else None
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []

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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(component: frozenset[str], graph) -> str:
    edges = sorted(f"{a} -> {b}" for a in component for b in graph[a] if b in component)
    return "{" + ", ".join(sorted(component)) + "}: " + "; ".join(edges)


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # module-level imports are seen, and so are those of the new shared module
    assert "dpdeepsets.inception_onnx" in graph["dpdeepsets.metrics"]
    assert "dpdeepsets.fid_inception" in graph["dpdeepsets.inception_onnx"]
    # an import inside a function counts; one under TYPE_CHECKING does not
    tree = ast.parse("def f():\n    from .metrics import X\n"
                     "if TYPE_CHECKING:\n    import dpdeepsets.tables\n")
    assert [(type(node).__name__, node.module) for node in _imports(tree)] == [("ImportFrom", "metrics")]
    toy = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(toy) == [frozenset({"a", "b"})]


def test_no_new_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    new = [c for c in found if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, "import cycles among dpdeepsets modules:\n" + "\n".join(_describe(c, graph) for c in new)
    gone = [known for known in KNOWN_CYCLES if not any(known & c for c in found)]
    assert not gone, f"these known cycles are gone, remove them from KNOWN_CYCLES: {gone}"


def test_metrics_and_inception_onnx_do_not_import_each_other():
    graph = import_graph()
    assert "dpdeepsets.metrics" not in graph["dpdeepsets.inception_onnx"]
