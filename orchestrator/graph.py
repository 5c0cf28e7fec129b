"""Dependency graphs given as {id: [prerequisite ids]} in input order: references, cycles, order.

Plans have up to thousands of tasks, so nothing here recurses: a long chain must not hit Python's
recursion limit (it would turn a bad plan into a 500 instead of a 422).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence


def unknown_references(graph: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """id → the prerequisites it names that are not in the graph."""
    return {node: missing for node, pres in graph.items() if (missing := [p for p in pres if p not in graph])}


def _cycle_from(graph: Mapping[str, Sequence[str]], start: str, state: dict[str, int],
                within: set[str] | None = None) -> list[str] | None:
    """Depth-first from `start` along prerequisites; the first cycle met as a closed path, or None."""
    on_path, done = 1, 2
    path = [start]
    stack: list[Iterator[str]] = [iter(graph[start])]
    state[start] = on_path
    while stack:
        pre = next(stack[-1], None)
        if pre is None:
            state[path.pop()] = done
            stack.pop()
            continue
        if pre not in graph or (within is not None and pre not in within):
            continue
        if state.get(pre) == on_path:
            return path[path.index(pre):] + [pre]
        if pre not in state:
            state[pre] = on_path
            path.append(pre)
            stack.append(iter(graph[pre]))
    return None


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a closed path [a, b, a] where each id waits on the next, or None.

    The search starts from nodes in input order, so the answer is deterministic. Unknown
    references are ignored (report them with `unknown_references`).
    """
    state: dict[str, int] = {}
    for node in graph:
        if node not in state and (found := _cycle_from(graph, node, state)):
            return found
    return None


def _components(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Strongly connected components (Kosaraju, iterative), each in input order, ordered by first member."""
    index = {n: i for i, n in enumerate(graph)}
    finished: list[str] = []
    seen: set[str] = set()
    for root in graph:
        if root in seen:
            continue
        seen.add(root)
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        while stack:
            node, it = stack[-1]
            nxt = next((p for p in it if p in graph and p not in seen), None)
            if nxt is None:
                finished.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(graph[nxt])))
    reverse: dict[str, list[str]] = {n: [] for n in graph}
    for node, pres in graph.items():
        for pre in pres:
            if pre in graph:
                reverse[pre].append(node)
    assigned: set[str] = set()
    components: list[list[str]] = []
    for root in reversed(finished):
        if root in assigned:
            continue
        assigned.add(root)
        members, todo = [root], [root]
        while todo:
            for nxt in reverse[todo.pop()]:
                if nxt not in assigned:
                    assigned.add(nxt)
                    members.append(nxt)
                    todo.append(nxt)
        components.append(sorted(members, key=index.__getitem__))
    return sorted(components, key=lambda c: index[c[0]])


def find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle (closed path) for each group of ids that wait on each other, in input order.

    A group is a strongly connected component. Listing every elementary cycle could take exponential
    time; one per group still points at every knot a person fixing the input must untie.
    """
    cycles = []
    for members in _components(graph):
        group = set(members)
        if len(members) > 1 or members[0] in graph[members[0]]:
            cycle = _cycle_from(graph, members[0], {}, within=group)
            assert cycle is not None  # a strongly connected group of more than one, or a self-loop
            cycles.append(cycle)
    return cycles


def topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Prerequisites first; whenever several ids are ready, the earliest in input order goes next.

    So an input already in a valid order comes back unchanged. Unknown references are ignored.
    Raises ValueError naming a cycle when there is one.
    """
    index = {n: i for i, n in enumerate(graph)}
    nodes = list(graph)
    waiting = {n: len({p for p in pres if p in graph}) for n, pres in graph.items()}
    dependents: dict[str, list[str]] = {n: [] for n in graph}
    for node, pres in graph.items():
        for pre in {p for p in pres if p in graph}:
            dependents[pre].append(node)
    ready = [index[n] for n in graph if not waiting[n]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for dep in dependents[node]:
            waiting[dep] -= 1
            if not waiting[dep]:
                heapq.heappush(ready, index[dep])
    if len(order) != len(graph):
        raise ValueError(f"cycle: {find_cycle(graph)}")
    return order
