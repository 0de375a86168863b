"""The package graph of src/imgclf has no cycle (issue 28): no package imports one that imports it back, so each
can be read, tested and moved from the bottom up. A module at the top level (errors, atomic, filenames, progress,
inference, ...) is a node of its own. Imports inside functions count too: they are dependencies all the same."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "imgclf"


def node_of(module: str) -> str:
    """``imgclf.data.folder`` -> ``data``; ``imgclf.errors`` -> ``errors`` (a top-level module is its own node)."""
    return module.split(".")[1]


def package_graph() -> dict[str, dict[str, set[str]]]:
    """node -> {imported node: {"file -> module", ...}}."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        source = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("imgclf.") and node_of(name) != source and source != "__init__":
                    graph.setdefault(source, {}).setdefault(node_of(name), set()).add(f"{rel} -> {name}")
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, {})):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target] if target in path else [node, target]
            if target not in state:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_package_graph_has_no_cycle() -> None:
    graph = package_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b}: {sorted(graph[a][b])[:3]}" for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("package cycle " + " -> ".join(cycle) + "\n" + "\n".join(edges))


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": {"x"}}, "b": {"c": {"y"}}}) is None


def test_nothing_imports_a_posix_only_module_at_import_time() -> None:
    """Locks go through filelock, so every module imports on Windows too (fcntl, resource and termios are POSIX)."""
    posix_only = {"fcntl", "resource", "termios", "pwd", "grp"}
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level: what `import imgclf.x` runs
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            found += [f"{path.relative_to(SRC)}: {n}" for n in names if n.split(".")[0] in posix_only]
    assert found == []
