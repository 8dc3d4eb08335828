"""The house's rules, checked from the code itself: no import cycles among Kairos's modules
(lazy imports inside functions count: they hide a cycle, they don't break it), the decision
core never imports the runtime, the production core never imports its test twin, and no
runtime module grows past what a reader takes in at one sitting."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# where each installed package's source lives (setup.py's package_dir)
SOURCES = {"kairos.core": ROOT / "core", "kairos.cluster": ROOT / "cluster"}
MAX_CLUSTER_MODULE_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The Kairos modules `name` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    # a package's __init__ importing its own modules is not a cycle worth reporting, and
    # Kairos's __init__ files import nothing; so every component is a real cycle
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_core_never_imports_the_runtime():
    edges = graph()
    offenders = {m: sorted(t for t in targets if t.startswith("kairos.cluster"))
                 for m, targets in edges.items() if m.startswith("kairos.core")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_production_core_never_imports_the_twin():
    """`reference` is the NumPy twin the tests hold the kernel to; only the kernel loader
    (which picks it when KAIROS_PURE_PYTHON=1) may import it."""
    edges = graph()
    importers = sorted(m for m, targets in edges.items() if "kairos.core.reference" in targets)
    assert importers == ["kairos.core.kernel"]


def test_runtime_modules_stay_readable():
    long = {name: n for name, path in modules().items()
            if name.startswith("kairos.cluster")
            and (n := len(path.read_text().splitlines())) > MAX_CLUSTER_MODULE_LINES}
    assert long == {}
