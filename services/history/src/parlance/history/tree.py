"""The message tree of a conversation: active path, siblings, newest leaf. Pure functions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from parlance.history.domain import TreeNode


def _order_key(node: TreeNode) -> tuple[object, str]:
    # Creation order; the id breaks ties of equal timestamps so the order is stable.
    return (node.created_at, node.id)


def path_to(nodes: dict[str, TreeNode], leaf_id: str | None) -> list[str]:
    """The ids from the root down to leaf_id (empty when there is no leaf)."""
    path: list[str] = []
    seen: set[str] = set()
    current = leaf_id
    while current is not None and current in nodes and current not in seen:
        seen.add(current)
        path.append(current)
        current = nodes[current].parent_id
    path.reverse()
    return path


def siblings(nodes: Iterable[TreeNode]) -> dict[str, tuple[str, ...]]:
    """For every message: the ids of the messages sharing its parent (itself included), in
    creation order. Its 1-based place among them is the "2" of a page's "‹ 2/3 ›"."""
    groups: dict[str | None, list[TreeNode]] = defaultdict(list)
    for node in nodes:
        groups[node.parent_id].append(node)
    result: dict[str, tuple[str, ...]] = {}
    for group in groups.values():
        group.sort(key=_order_key)
        ids = tuple(node.id for node in group)
        for node in group:
            result[node.id] = ids
    return result


def newest_leaf_under(nodes: dict[str, TreeNode], start_id: str) -> str:
    """The most recently created leaf among start_id and its descendants."""
    children: dict[str | None, list[TreeNode]] = defaultdict(list)
    for node in nodes.values():
        children[node.parent_id].append(node)
    best: TreeNode | None = None
    stack = [nodes[start_id]]
    while stack:
        node = stack.pop()
        below = children.get(node.id)
        if below:
            stack.extend(below)
        elif best is None or _order_key(node) > _order_key(best):
            best = node
    assert best is not None  # start_id itself is a leaf when nothing is below it
    return best.id
