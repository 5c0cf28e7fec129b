"""Dependency graphs given as {id: [prerequisite ids]} in input order: references, cycles, order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def unknown_references(graph: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """id → the prerequisites it names that are not in the graph."""
    return {node: missing for node, pres in graph.items() if (missing := [p for p in pres if p not in graph])}


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a closed path ([a, b, a]), or None. Unknown references are ignored."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for pre in graph.get(node, ()):
            if pre not in graph:
                continue
            if state.get(pre) == 1:
                return path[path.index(pre):] + [pre]
            if pre not in state and (found := visit(pre)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Prerequisites first; among nodes that are ready together, input order. Raises ValueError on a cycle."""
    remaining = {n: {p for p in pres if p in graph} for n, pres in graph.items()}
    order: list[str] = []
    while remaining:
        ready = [n for n in graph if n in remaining and not remaining[n]]
        if not ready:
            raise ValueError(f"cycle: {find_cycle(graph)}")
        for n in ready:
            del remaining[n]
            order.append(n)
        for pres in remaining.values():
            pres.difference_update(ready)
    return order
