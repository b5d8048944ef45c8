"""The core's modules import each other without a circle, and the layers point one way: the
tournament and the model probes never reach up into the leaderboard.

The graph is read from the source with ``ast``: every ``import``/``from ... import`` of an
``arena`` module, at module level and inside functions alike (a function-level import is how a
circle usually hides). ``from arena.x import y`` counts as an import of ``arena.x.y`` where that
is a module, else of ``arena.x``; importing a module's parent packages is not counted, since
every module does it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import arena

PACKAGE = Path(arena.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The arena modules one import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
    found = []
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES:
            found.append(name)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported arena module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path.name == "__init__.py", node):
                    if target != module:
                        edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _describe(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    edges = [f"{MODULES[a].relative_to(PACKAGE.parent)}:{line} imports {b}"
             for a in component for b, line in sorted(graph[a].items()) if b in component]
    return " ⇄ ".join(component) + " (" + "; ".join(edges) + ")"


def test_the_walker_sees_function_level_imports_and_finds_a_circle():
    """On a graph built like the old checks ⇄ leaderboard.tables one, the walker finds it."""
    source = "import math\n\ndef f():\n    from arena.leaderboard.tables import threat_model\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert _targets("arena.checks", False, node) == ["arena.leaderboard.tables"]
    toy = {"arena.checks": {"arena.leaderboard.tables": 4}, "arena.leaderboard.tables": {"arena.checks": 18},
           "arena.threat": {}}
    assert cycles(toy) == [["arena.checks", "arena.leaderboard.tables"]]


def test_arena_has_no_import_circle():
    graph = import_graph()
    assert "arena.tournament.store" in graph and "arena.leaderboard.tables" in graph
    found = cycles(graph)
    assert not found, "import circles: " + " | ".join(_describe(graph, c) for c in found)


def test_the_tournament_and_the_probes_do_not_import_the_leaderboard():
    graph = import_graph()
    lower = [m for m in graph if m == "arena.checks" or m.startswith("arena.tournament")]
    upward = {m: sorted(t for t in graph[m] if t.startswith("arena.leaderboard")) for m in lower}
    assert {m: t for m, t in upward.items() if t} == {}


def test_the_core_imports_no_plugin_package():
    """arena/ names no built-in plugin, at module level or inside a function: the built-ins
    register through entry points like anyone's."""
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{module}:{node.lineno}: {n}" for n in names
                          if n.split(".")[0] in {"arena_builtins", "plugins"}]
    assert not offenders, offenders
