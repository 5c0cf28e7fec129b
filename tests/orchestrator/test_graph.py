from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.graph import find_cycle, topological_order, unknown_references


def test_unknown_and_cycle() -> None:
    g = {"a": [], "b": ["a", "z"], "c": ["b"]}
    assert unknown_references(g) == {"b": ["z"]}
    assert find_cycle(g) is None
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "c", "b", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_order_is_stable() -> None:
    assert topological_order({"c": [], "b": ["c"], "a": []}) == ["c", "a", "b"]


@given(st.integers(1, 12).flatmap(lambda n: st.lists(
    st.lists(st.integers(0, n - 1), max_size=3), min_size=n, max_size=n)))
def test_dag_orders_respect_every_edge(edges: list[list[int]]) -> None:
    # Only edges to earlier nodes: always acyclic.
    g = {f"n{i}": [f"n{j}" for j in pres if j < i] for i, pres in enumerate(edges)}
    order = topological_order(g)
    assert sorted(order) == sorted(g)
    pos = {n: i for i, n in enumerate(order)}
    assert all(pos[p] < pos[n] for n, pres in g.items() for p in pres)
    assert find_cycle(g) is None
