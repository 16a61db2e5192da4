"""The import graph of gpucost's packages, read from the source (every `import`, also those inside
functions): prints each package's dependencies and any cycle, at package and at module level.

    python -m bench.imports          # the package graph, cycles (none expected)
    python -m bench.imports --dot    # Graphviz dot of the package graph
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "contracts", "ingest", "streaming", "api", "web", "optimizer", "gpucost")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_imports(path: Path) -> set[str]:
    """Modules of this project that a file imports (absolute imports; `from a import b` counts
    as a.b when a.b is a module, else as a)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out.add(f"{node.module}.{a.name}")
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    """module -> project modules it imports (only names that are modules of the project)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for mod, path in files.items():
        targets = set()
        for imported in module_imports(path):
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != mod:
                targets.add(imported)
        edges[mod] = targets
    return edges


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for mod, targets in edges.items():
        src = mod.split(".")[0]
        out[src].update(t.split(".")[0] for t in targets if t.split(".")[0] != src)
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dot", action="store_true")
    args = ap.parse_args()
    edges = graph()
    packages = package_graph(edges)
    if args.dot:
        print("digraph gpucost {\n  rankdir=BT;")
        for src, targets in packages.items():
            for t in sorted(targets):
                print(f'  "{src}" -> "{t}";')
        print("}")
        return
    for src in PACKAGES:
        print(f"{src:10s} -> {', '.join(sorted(packages[src])) or '(nothing)'}")
    package_cycles, module_cycles = cycles(packages), cycles(edges)
    print(f"package cycles: {package_cycles or 'none'}")
    print(f"module cycles: {module_cycles or 'none'}")
    sys.exit(1 if package_cycles or module_cycles else 0)


if __name__ == "__main__":
    main()
