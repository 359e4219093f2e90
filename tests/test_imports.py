"""The pipeline package's modules import each other without a circle: not at module level, and
not hidden inside a function either (a deferred import that closes a circle still ties the two
modules into one). Every ``import`` statement anywhere in a module counts, TYPE_CHECKING ones too."""
import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = "pipeline"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (``pkg.__init__`` named ``pkg``)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its text."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (here[: len(here) - node.level + 1] if node.level else [])
            base = ".".join(base + ([node.module] if node.module else []))
            # `from X import y`: y is X's submodule when there is one, else a name defined in X
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import pipeline.x.y` also names pipeline.x.y only
                t = t.rpartition(".")[0]
            # a module's own packages are imported before it anyway: not an edge
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_deferred_imports():
    """The walker itself: an import inside a function is an edge (so the test below can fail)."""
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert "pipeline.errors" in graph["pipeline.attention"]
    # pipeline.refine registers the learned refiner by a string, and imports SAM's loader only in a method
    assert "pipeline.sam" in graph["pipeline.refine"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_pipeline_has_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    cycles = _cycles(graph)
    shown = ["; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import circles in pipeline/:\n" + "\n".join(shown)
