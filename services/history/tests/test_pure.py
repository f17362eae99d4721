"""The pure parts: the message tree, search query translation, snippet escaping, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from parlance.common.errors import InvalidArgument
from parlance.history.cursor import decode_cursor, encode_cursor
from parlance.history.domain import ConversationRecord, TreeNode
from parlance.history.search_text import mark_escaped_snippet, mark_snippet, to_fts5_query
from parlance.history.tree import newest_leaf_under, path_to, siblings

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _nodes(*edges: tuple[str, str | None]) -> dict[str, TreeNode]:
    return {
        node_id: TreeNode(node_id, parent, T0 + timedelta(seconds=i))
        for i, (node_id, parent) in enumerate(edges)
    }


def test_tree_paths_siblings_and_newest_leaf() -> None:
    # u1 ─ a1 ─ u2 ─ a2
    #    └ a1b        └ a2b      (a1b regenerated later, a2b newest of all)
    nodes = _nodes(
        ("u1", None), ("a1", "u1"), ("u2", "a1"), ("a2", "u2"), ("a1b", "u1"), ("a2b", "u2")
    )
    assert path_to(nodes, "a2") == ["u1", "a1", "u2", "a2"]
    assert path_to(nodes, None) == []
    groups = siblings(nodes.values())
    assert groups["a1"] == groups["a1b"] == ("a1", "a1b")
    assert groups["a2"] == groups["a2b"] == ("a2", "a2b")
    assert groups["u1"] == ("u1",)
    assert newest_leaf_under(nodes, "u1") == "a2b"
    assert newest_leaf_under(nodes, "a1") == "a2b"
    assert newest_leaf_under(nodes, "a1b") == "a1b"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("fox", '("fox")'),
        ("quick fox", '("quick") AND ("fox")'),
        ('"brown fox" jumps', '("brown fox") AND ("jumps")'),
        ("cat OR dog", '("cat" OR "dog")'),
        ("fox -dog", '(("fox")) NOT "dog"'),
        ('AND OR ( "unbalanced', '("AND" OR "unbalanced")'),
        ("-only", ""),
        ("()*", ""),
    ],
)
def test_fts5_query_translation(query: str, expected: str) -> None:
    assert to_fts5_query(query) == expected


def test_snippet_escapes_everything_but_the_marks() -> None:
    raw = 'a <script>x</script> & \x01fox\x02 "q" …'
    assert mark_snippet(raw) == ('a &lt;script&gt;x&lt;/script&gt; &amp; <mark>fox</mark> "q" …')
    assert mark_escaped_snippet("&lt;b&gt; <i>\x01fox\x02") == (
        "&lt;b&gt; &lt;i&gt;<mark>fox</mark>"
    )


def test_cursor_round_trip_and_garbage() -> None:
    record = ConversationRecord("conv_1", "u", "", T0, T0 + timedelta(microseconds=7), False, None)
    assert decode_cursor(encode_cursor(record)) == (record.updated_at, "conv_1")
    for garbage in ("!!!", "bm90IGpzb24", encode_cursor(record)[:-3]):
        with pytest.raises(InvalidArgument):
            decode_cursor(garbage)


def test_flag_detection_in_moderation_json() -> None:
    from parlance.history.export import is_flagged

    assert not is_flagged("")
    assert not is_flagged('{"flagged": false, "categories": {"toxicity": false}}')
    assert is_flagged('{"flagged": true}')
    assert is_flagged('{"input": {"flagged": false}, "output": [{"flagged": true}]}')
    assert is_flagged("not json")  # unreadable verdicts never vouch for the text
