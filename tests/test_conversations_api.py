"""/v1/conversations and the admin export through the real stack (gateway, history on SQLite):
CRUD, pagination, branches, search, feedback, export contents, and isolation between users."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest

from parlance.history.v1 import history_pb2 as pb
from parlance.history.v1 import history_pb2_grpc
from parlance.testing import ALICE, BOB, MODEL, Stack, assert_openai_error, start_extra_gateway

ADMIN_KEY = "sk-test-admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _url(stack: Stack, path: str) -> str:
    return f"{stack.gateway_url}{path}"


def _req(stack: Stack, method: str, path: str, headers: dict, **kw: object) -> httpx.Response:
    return httpx.request(method, _url(stack, path), headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def _msg(role: str, content: str, parent_id: str | None = None, **fields: object) -> pb.Message:
    if role == "assistant":
        # As the chat flow stores an answer its model generated and finished (the export
        # takes only such answers: issue 14, finding 2).
        fields = {"generated": True, "finish_reason": "stop", **fields}
    message = pb.Message(id=f"msg_{uuid.uuid4().hex}", role=role, content=content, **fields)  # type: ignore[arg-type]
    if parent_id is not None:
        message.parent_id = parent_id
    return message


def _append(stack: Stack, user: str, conversation_id: str, *messages: pb.Message) -> list[str]:
    """Seeds messages through history's gRPC API, as the chat flow stores them."""
    port = stack.services["history"].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        resp = stub.AppendMessages(
            pb.AppendMessagesRequest(
                user_id=user,
                conversation_id=conversation_id,
                create_if_missing=True,
                messages=list(messages),
            ),
            timeout=10,
        )
    return [m.id for m in resp.messages]


@pytest.fixture(scope="module")
def admin_gateway(stack: Stack) -> Iterator[str]:
    gateway = start_extra_gateway(stack, {"GATEWAY_ADMIN_KEY": ADMIN_KEY})
    yield f"http://127.0.0.1:{gateway.http_port}"
    gateway.stop()


def _create(stack: Stack, title: str, headers: dict = ALICE) -> dict:
    response = _req(stack, "POST", "/v1/conversations", headers, json={"title": title})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "conversation" and body["id"].startswith("conv_")
    assert body["title"] == title and body["archived"] is False
    assert body["active_message_id"] is None
    return body


def test_crud_pagination_rename_archive_delete(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6]
    created = [_create(stack, f"{tag} chat {i}") for i in range(5)]
    # Appending makes the oldest the most recently updated.
    _append(stack, "alice", created[0]["id"], _msg("user", "bump"))

    # Walk every page of alice's list; her 5 conversations appear newest first.
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if after:
            params["after"] = after
        page = _req(stack, "GET", "/v1/conversations", ALICE, params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen.extend(c["id"] for c in page["data"])
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert len(seen) == len(set(seen))
    mine = [c for c in seen if c in {x["id"] for x in created}]
    ids = [c["id"] for c in created]
    assert mine == [ids[0], ids[4], ids[3], ids[2], ids[1]]
    first = _req(stack, "GET", "/v1/conversations", ALICE, params={"limit": 1}).json()
    assert first["data"][0]["id"] == ids[0] and first["has_more"] is True

    got = _req(stack, "GET", f"/v1/conversations/{ids[0]}", ALICE).json()
    assert [m["content"] for m in got["messages"]] == ["bump"]
    assert got["messages"][0]["role"] == "user" and got["messages"][0]["usage"] is None

    renamed = _req(stack, "PATCH", f"/v1/conversations/{ids[1]}", ALICE, json={"title": "new"})
    assert renamed.json()["title"] == "new"
    archived = _req(stack, "PATCH", f"/v1/conversations/{ids[2]}", ALICE, json={"archived": True})
    assert archived.json()["archived"] is True
    listed = _req(stack, "GET", "/v1/conversations", ALICE, params={"limit": 100}).json()
    assert ids[2] not in [c["id"] for c in listed["data"]]
    with_archived = _req(
        stack, "GET", "/v1/conversations", ALICE, params={"limit": 100, "include_archived": True}
    ).json()
    assert ids[2] in [c["id"] for c in with_archived["data"]]

    deleted = _req(stack, "DELETE", f"/v1/conversations/{ids[3]}", ALICE).json()
    assert deleted == {"id": ids[3], "object": "conversation.deleted", "deleted": True}
    assert_openai_error(_req(stack, "GET", f"/v1/conversations/{ids[3]}", ALICE), 404)

    assert_openai_error(
        _req(stack, "GET", "/v1/conversations", ALICE, params={"after": "garbage!"}), 400
    )
    assert_openai_error(_req(stack, "GET", "/v1/conversations", ALICE, params={"limit": 0}), 400)
    assert (
        assert_openai_error(_req(stack, "GET", "/v1/conversations", {}), 401)["code"]
        == "invalid_api_key"
    )


def test_branches_switch_and_feedback(stack: Stack) -> None:
    conv = _create(stack, "branches")["id"]
    u1, a1 = _append(stack, "alice", conv, _msg("user", "q1"), _msg("assistant", "r1", model=MODEL))
    (a1b,) = _append(stack, "alice", conv, _msg("assistant", "r1 bis", parent_id=u1, model=MODEL))
    u1c, a1c = _append(
        stack, "alice", conv, _msg("user", "q1 edited", parent_id=""), _msg("assistant", "r1c")
    )

    got = _req(stack, "GET", f"/v1/conversations/{conv}", ALICE).json()
    assert got["active_message_id"] == a1c
    assert [(m["id"], m["sibling_count"], m["sibling_index"]) for m in got["messages"]] == [
        (u1c, 2, 2),
        (a1c, 1, 1),
    ]
    # Each message lists its siblings (itself included, in creation order): the ids a client
    # needs to switch to a branch it never read.
    assert [m["sibling_ids"] for m in got["messages"]] == [[u1, u1c], [a1c]]
    first_question = got["messages"][0]["sibling_ids"][0]
    switched = _req(
        stack,
        "PATCH",
        f"/v1/conversations/{conv}",
        ALICE,
        json={"active_message_id": first_question},
    )
    # The path to it, continued to its newest leaf (the regenerated answer).
    assert switched.json()["active_message_id"] == a1b
    got = _req(stack, "GET", f"/v1/conversations/{conv}", ALICE).json()
    assert [m["id"] for m in got["messages"]] == [u1, a1b]
    assert got["messages"][1]["sibling_ids"] == [a1, a1b]
    switched = _req(
        stack, "PATCH", f"/v1/conversations/{conv}", ALICE, json={"active_message_id": a1}
    )
    assert switched.json()["active_message_id"] == a1
    got = _req(stack, "GET", f"/v1/conversations/{conv}", ALICE).json()
    assert [m["id"] for m in got["messages"]] == [u1, a1]
    assert (got["messages"][1]["sibling_count"], got["messages"][1]["sibling_index"]) == (2, 1)
    assert got["messages"][1]["sibling_ids"] == [a1, a1b]
    assert got["messages"][1]["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }
    assert got["messages"][1]["rating"] is None and got["messages"][1]["feedback"] is None

    path = f"/v1/conversations/{conv}/messages/{a1}/feedback"
    first = _req(stack, "POST", path, ALICE, json={"rating": 1, "comment": "good"})
    assert first.status_code == 200, first.text
    assert first.json()["object"] == "conversation.message.feedback"
    # PUT semantics: the second post replaces the first.
    second = _req(stack, "PUT", path, ALICE, json={"rating": -1, "corrected_content": "R1!"})
    assert second.status_code == 200, second.text
    answer = _req(stack, "GET", f"/v1/conversations/{conv}", ALICE).json()["messages"][1]
    assert answer["rating"] == -1
    assert answer["feedback"]["comment"] == ""
    assert answer["feedback"]["corrected_content"] == "R1!"
    assert answer["feedback"]["rating"] == -1
    # The answer to the POST says when it was stored, as a later read does.
    assert second.json()["updated_at"] == answer["feedback"]["updated_at"] > 0

    assert_openai_error(_req(stack, "POST", path, ALICE, json={"rating": 5}), 400)
    # A misspelt field is named, not dropped with the correction in it.
    typo = _req(stack, "POST", path, ALICE, json={"rating": -1, "corrected_answer": "R1?"})
    assert assert_openai_error(typo, 400)["param"] == "corrected_answer"
    rename_typo = _req(stack, "PATCH", f"/v1/conversations/{conv}", ALICE, json={"nme": "x"})
    assert assert_openai_error(rename_typo, 400)["param"] == "nme"
    # Feedback is on answers: a question has none to take.
    question = f"/v1/conversations/{conv}/messages/{u1}/feedback"
    refused = _req(stack, "POST", question, ALICE, json={"rating": 1})
    assert "feedback is given on answers" in assert_openai_error(refused, 400)["message"]
    # The message must belong to the conversation in the path.
    other = _create(stack, "other")["id"]
    assert_openai_error(
        _req(
            stack,
            "POST",
            f"/v1/conversations/{other}/messages/{a1b}/feedback",
            ALICE,
            json={"rating": 1},
        ),
        404,
    )
    assert_openai_error(
        _req(stack, "PATCH", f"/v1/conversations/{other}", ALICE, json={"active_message_id": a1b}),
        400,
    )


def test_chat_with_conversation_id_is_stored_and_listed(stack: Stack) -> None:
    conv = _create(stack, "chat")["id"]
    response = httpx.post(
        _url(stack, "/v1/chat/completions"),
        headers=ALICE,
        timeout=120,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
            "conversation_id": conv,
        },
    )
    assert response.status_code == 200, response.text
    got = _req(stack, "GET", f"/v1/conversations/{conv}", ALICE).json()
    assert [m["role"] for m in got["messages"]] == ["user", "assistant"]
    assert got["messages"][1]["content"] == response.json()["choices"][0]["message"]["content"]
    assert got["messages"][1]["model"]


def test_search_highlights_only_own_messages(stack: Stack) -> None:
    word = "zebra" + uuid.uuid4().hex[:8]
    conv = _create(stack, "search")["id"]
    _append(stack, "alice", conv, _msg("user", f"Tell me about the {word} <b>please</b>"))
    other = f"conv_{uuid.uuid4().hex}"
    _append(stack, "bob", other, _msg("user", f"bob's {word} too"))
    hits = _req(stack, "GET", "/v1/conversations/search", ALICE, params={"q": word}).json()
    assert hits["object"] == "list" and len(hits["data"]) == 1
    hit = hits["data"][0]
    assert hit["conversation_id"] == conv and hit["conversation_title"] == "search"
    assert f"<mark>{word}</mark>" in hit["snippet"]
    assert "<b>" not in hit["snippet"] and "&lt;b&gt;" in hit["snippet"]
    bob_hits = _req(stack, "GET", "/v1/conversations/search", BOB, params={"q": word}).json()
    assert [h["conversation_id"] for h in bob_hits["data"]] == [other]
    assert_openai_error(_req(stack, "GET", "/v1/conversations/search", ALICE), 400)


def test_bob_gets_404_for_every_alice_id(stack: Stack) -> None:
    conv = _create(stack, "alice's secret")["id"]
    u1, a1 = _append(stack, "alice", conv, _msg("user", "secret q"), _msg("assistant", "secret a"))
    bobs = _create(stack, "bob's", BOB)["id"]
    feedback = {"rating": 1}
    calls = [
        ("GET", f"/v1/conversations/{conv}", None),
        ("PATCH", f"/v1/conversations/{conv}", {"title": "pwned"}),
        ("PATCH", f"/v1/conversations/{conv}", {"archived": True}),
        ("PATCH", f"/v1/conversations/{conv}", {"active_message_id": u1}),
        ("PATCH", f"/v1/conversations/{bobs}", {"active_message_id": a1}),
        ("DELETE", f"/v1/conversations/{conv}", None),
    ]
    for message_id in (u1, a1):
        for conversation_id in (conv, bobs):
            path = f"/v1/conversations/{conversation_id}/messages/{message_id}/feedback"
            calls.append(("POST", path, feedback))
            calls.append(("PUT", path, feedback))
    for method, path, body in calls:
        response = (
            _req(stack, method, path, BOB, json=body) if body else _req(stack, method, path, BOB)
        )
        error = assert_openai_error(response, 404)
        assert "secret" not in response.text, (method, path)
        assert error["code"] == "not_found", (method, path)
    # Nothing changed for alice.
    got = _req(stack, "GET", f"/v1/conversations/{conv}", ALICE).json()
    assert got["title"] == "alice's secret" and got["archived"] is False
    assert [m["rating"] for m in got["messages"]] == [None, None]
    listed = _req(stack, "GET", "/v1/conversations", BOB, params={"limit": 100}).json()
    assert conv not in [c["id"] for c in listed["data"]]


def _export(url: str, headers: dict, **params: str) -> list[dict]:
    with httpx.stream(
        "GET", f"{url}/v1/admin/export", headers=headers, params=params, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [line for line in response.iter_lines() if line]
    return [json.loads(line) for line in lines]


def test_admin_export_sft_and_preferences(stack: Stack, admin_gateway: str) -> None:
    tag = uuid.uuid4().hex[:8]
    model = f"model-{tag}"
    conv = _create(stack, "export")["id"]
    _, u1, a1 = _append(
        stack,
        "alice",
        conv,
        _msg("system", "Be brief."),
        _msg("user", f"Capital of France? {tag}"),
        _msg("assistant", "Paris.", model=model, moderation_json='{"flagged": false}'),
    )
    (a1b,) = _append(stack, "alice", conv, _msg("assistant", "Lyon.", parent_id=u1, model=model))
    _, a2 = _append(
        stack,
        "alice",
        conv,
        _msg("user", "And Italy?", parent_id=a1),
        _msg("assistant", "Milan.", model=model),
    )
    flagged = _create(stack, "flagged")["id"]
    _, f1 = _append(
        stack,
        "alice",
        flagged,
        _msg("user", "nasty", moderation_json='{"flagged": true}'),
        _msg("assistant", "No.", model=model),
    )
    for conversation_id, message_id, body in [
        (conv, a1, {"rating": 1}),
        (conv, a1b, {"rating": -1}),
        (conv, a2, {"rating": -1, "corrected_content": "Rome."}),
        (flagged, f1, {"rating": 1}),
    ]:
        response = _req(
            stack,
            "POST",
            f"/v1/conversations/{conversation_id}/messages/{message_id}/feedback",
            ALICE,
            json=body,
        )
        assert response.status_code == 200, response.text

    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Capital of France? {tag}"},
    ]
    sft = _export(admin_gateway, ADMIN, kind="sft", model=model)
    assert sft == [{"messages": [*prompt, {"role": "assistant", "content": "Paris."}]}]
    pairs = _export(admin_gateway, ADMIN, kind="preference", model=model)
    expected = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}],
        },
        {
            "prompt": [
                *prompt,
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And Italy?"},
            ],
            "chosen": [{"role": "assistant", "content": "Rome."}],
            "rejected": [{"role": "assistant", "content": "Milan."}],
        },
    ]
    assert sorted(map(json.dumps, pairs)) == sorted(map(json.dumps, expected))
    assert len(_export(admin_gateway, ADMIN, model=model)) == 3
    assert _export(admin_gateway, ADMIN, model=model, since="2999-01-01T00:00:00Z") == []
    assert _export(admin_gateway, ADMIN, model=model, until="946684800") == []

    # Only the admin key opens it: a user key is forbidden, anything else unauthorized, and
    # the main gateway (no admin key configured) admits no one.
    assert_openai_error(
        httpx.get(f"{admin_gateway}/v1/admin/export", headers=ALICE, timeout=30), 403
    )
    assert_openai_error(
        httpx.get(
            f"{admin_gateway}/v1/admin/export",
            headers={"Authorization": "Bearer sk-wrong"},
            timeout=30,
        ),
        401,
    )
    assert_openai_error(httpx.get(f"{admin_gateway}/v1/admin/export", timeout=30), 401)
    assert_openai_error(
        httpx.get(f"{stack.gateway_url}/v1/admin/export", headers=ADMIN, timeout=30), 401
    )
    assert_openai_error(
        httpx.get(
            f"{admin_gateway}/v1/admin/export", headers=ADMIN, params={"kind": "x"}, timeout=30
        ),
        400,
    )
    assert_openai_error(
        httpx.get(
            f"{admin_gateway}/v1/admin/export",
            headers=ADMIN,
            params={"since": "yesterday"},
            timeout=30,
        ),
        400,
    )
    # The admin key is not a user key.
    assert_openai_error(
        httpx.get(f"{admin_gateway}/v1/conversations", headers=ADMIN, timeout=30), 401
    )
