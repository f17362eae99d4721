"""Text the chat route accepts is text every store can keep: NUL (U+0000) and unpaired
surrogates are refused with a 400 naming the field, in every text field of the request, and
stop, metadata and user are bounded (issue 14: a NUL made PostgreSQL refuse the history
write, and the outbox retried it forever)."""

from __future__ import annotations

from typing import Any

import pytest

from parlance.testing.inprocess import InProcessGateway

BAD = {"nul": "a\x00b", "surrogate": "a\ud800b"}


def user(content: Any, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **fields}


FIELDS: list[tuple[str, Any]] = [
    ("messages.0.content", lambda s: {"messages": [user(s)]}),
    ("messages.0.content.0.text", lambda s: {"messages": [user([{"type": "text", "text": s}])]}),
    ("messages.0.name", lambda s: {"messages": [user("hi", name=s)]}),
    ("stop", lambda s: {"stop": s}),
    ("stop.1", lambda s: {"stop": ["ok", s]}),
    ("user", lambda s: {"user": s}),
    ("metadata.k", lambda s: {"metadata": {"k": s}}),
    ("metadata", lambda s: {"metadata": {s: "v"}}),
    ("conversation_id", lambda s: {"conversation_id": s}),
    ("parent_message_id", lambda s: {"conversation_id": "c", "parent_message_id": s}),
    ("model", lambda s: {"model": s}),
]


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize(("param", "fields"), FIELDS, ids=[f for f, _ in FIELDS])
async def test_unstorable_text_is_refused(
    gw: InProcessGateway, kind: str, param: str, fields: Any
) -> None:
    response = await gw.chat(gw.body() | fields(BAD[kind]))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]
    if kind == "nul":
        assert "NUL (U+0000)" in error["message"]
    assert gw.generator.requests == []
    assert gw.history.appends == []


async def test_other_control_characters_and_emoji_are_fine(gw: InProcessGateway) -> None:
    response = await gw.chat(gw.body("tab\tnewline\n bell\x07 😀 \u2028", store=True))
    assert response.status_code == 200
    assert gw.history.appends[0].messages[0].content == "tab\tnewline\n bell\x07 😀 \u2028"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": "x" * 257}, "stop"),
        ({"stop": ["ok", "x" * 257]}, "stop.1"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"user": "u" * 257}, "user"),
    ],
)
async def test_bounds(gw: InProcessGateway, fields: dict[str, Any], param: str) -> None:
    response = await gw.chat(gw.body() | fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_within_the_bounds(gw: InProcessGateway) -> None:
    response = await gw.chat(
        gw.body(
            stop=["x" * 256] * 4,
            metadata={f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)},
            user="u" * 256,
        )
    )
    assert response.status_code == 200, response.text
