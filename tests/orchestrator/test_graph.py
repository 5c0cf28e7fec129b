from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.graph import find_cycle, find_cycles, topological_order, unknown_references


def test_unknown_and_cycle() -> None:
    g = {"a": [], "b": ["a", "z"], "c": ["b"]}
    assert unknown_references(g) == {"b": ["z"]}
    assert find_cycle(g) is None
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "c", "b", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_every_cycle_group_is_reported_once() -> None:
    g = {"a": ["b"], "b": ["a"], "c": ["c"], "d": ["a"], "e": ["f"], "f": ["g"], "g": ["e", "x"], "h": []}
    assert find_cycles(g) == [["a", "b", "a"], ["c", "c"], ["e", "f", "g", "e"]]
    assert find_cycles({"a": [], "b": ["a"]}) == []


def test_order_is_stable() -> None:
    # Ready together: the earliest in input order goes first, so a valid input order is kept.
    assert topological_order({"c": [], "b": ["c"], "a": []}) == ["c", "b", "a"]
    assert topological_order({"b": ["a"], "c": [], "a": []}) == ["c", "a", "b"]
    assert topological_order({"a": [], "b": ["a", "zz"]}) == ["a", "b"]  # unknown references ignored
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ["b"], "b": ["a"]})


def test_long_chains_do_not_recurse() -> None:
    # Listed dependents first: a recursive search would go 5,000 calls deep.
    n = 5000
    g = {f"t{i}": [f"t{i + 1}"] if i < n - 1 else [] for i in range(n)}
    assert find_cycle(g) is None and find_cycles(g) == []
    assert topological_order(g) == [f"t{i}" for i in reversed(range(n))]
    g[f"t{n - 1}"] = ["t0"]
    cycle = find_cycle(g)
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1] == "t0"


def reachable(g: dict[str, list[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(g[start])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(g[n])
    return seen


graphs = st.integers(1, 10).flatmap(lambda n: st.lists(
    st.lists(st.integers(0, n - 1), max_size=3), min_size=n, max_size=n))


@given(graphs)
def test_dag_orders_respect_every_edge(edges: list[list[int]]) -> None:
    # Only edges to earlier nodes: always acyclic.
    g = {f"n{i}": [f"n{j}" for j in pres if j < i] for i, pres in enumerate(edges)}
    order = topological_order(g)
    assert order == list(g)  # already a valid order: unchanged
    reversed_input = dict(reversed(list(g.items())))
    order = topological_order(reversed_input)
    assert sorted(order) == sorted(g)
    pos = {n: i for i, n in enumerate(order)}
    assert all(pos[p] < pos[n] for n, pres in g.items() for p in pres)
    assert find_cycle(g) is None and find_cycles(reversed_input) == []


@given(graphs)
def test_cycles_found_are_real_and_complete(edges: list[list[int]]) -> None:
    g = {f"n{i}": [f"n{j}" for j in pres] for i, pres in enumerate(edges)}
    cycles = find_cycles(g)
    for cycle in cycles:
        assert cycle[0] == cycle[-1] and len(set(cycle[:-1])) == len(cycle) - 1
        assert all(b in g[a] for a, b in zip(cycle, cycle[1:], strict=False))
    groups = [set(c) for c in cycles]
    assert all(not (x & y) for i, x in enumerate(groups) for y in groups[i + 1:])
    # One per group of ids that wait on each other: each id on any cycle shares a group with exactly one.
    reach = {n: reachable(g, n) for n in g}
    for n in g:
        if n in reach[n]:
            assert sum(1 for c in cycles if c[0] in reach[n] and n in reach[c[0]]) == 1
    one = find_cycle(g)
    assert (one is None) == (cycles == [])
    try:
        order = topological_order(g)
    except ValueError:
        assert cycles
    else:
        assert not cycles and sorted(order) == sorted(g)
