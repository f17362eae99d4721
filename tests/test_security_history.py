"""Issue 14, findings 1, 2 and 6 (and the search low) through the real stack, on SQLite and on
PostgreSQL: text no database can store is a 400 at every conversation route, never a 503 that
the outbox would retry forever; a search with many exclusions is a 400; feedback text is
classified when it is submitted and the training export re-checks every record through safety.

The exchanges the export test rates are written into history directly (as the gateway writes
the answers it generated, `generated: true`), so that what is tested here is the feedback route
and the export, whatever the chat flow stores.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest

from parlance.gateway.outbox_store import OutboxStore
from parlance.history.v1 import history_pb2 as pb
from parlance.history.v1.history_pb2_grpc import HistoryServiceStub
from parlance.testing import (
    ALICE,
    BOB,
    Stack,
    StackPool,
    assert_openai_error,
    bearer,
    chat,
    chat_body,
    scrape,
    scripted_generator,
    total,
)
from parlance.testing.postgres import create_database_sync, drop_database_sync

ADMIN_KEY = "sk-admin-security-history-0123456789"
ADMIN = bearer(ADMIN_KEY)
# Flagged by the stack's classifier in both directions.
TOXIC = "You are a stupid worthless idiot and a moron."


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def history_stack(request: pytest.FixtureRequest, stacks: StackPool) -> Iterator[Stack]:
    database = create_database_sync("parlance_sec") if request.param == "postgres" else None
    history_env = {"HISTORY_DATABASE_URL": database} if database else {}
    stack = stacks.start(
        f"sec-history-{request.param}",
        gateway_env={
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_RPM_LIMIT": "0",
            "GATEWAY_TPM_LIMIT": "0",
            "GATEWAY_GENERATE_TITLES": "false",
            "GATEWAY_OUTBOX_MAX_ITEMS": "3",
        },
        env={"generator": scripted_generator(), "history": history_env},
    )
    yield stack
    stack.stop()
    if database:
        drop_database_sync(database)


def api(stack: Stack, method: str, path: str, **kwargs: object) -> httpx.Response:
    kwargs.setdefault("headers", ALICE)
    return httpx.request(method, f"{stack.gateway_url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


def raw_json(stack: Stack, method: str, path: str, text: str) -> httpx.Response:
    """A body sent as written: JSON may escape a lone surrogate ("\\ud800"), which a Python
    dict could not be serialized with."""
    return api(
        stack,
        method,
        path,
        content=text.encode(),
        headers={**ALICE, "Content-Type": "application/json"},
    )


def stored_exchange(stack: Stack, answer: str, user: str = "alice") -> tuple[str, str]:
    """A question and a generated answer written into history as the gateway writes them;
    returns (conversation id, answer id)."""
    port = stack.services["history"].grpc_port
    conversation = f"conv_{uuid.uuid4().hex}"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = HistoryServiceStub(channel).AppendMessages(
            pb.AppendMessagesRequest(
                user_id=user,
                conversation_id=conversation,
                create_if_missing=True,
                messages=[
                    pb.Message(role="user", content=f"Question {uuid.uuid4().hex[:6]}?"),
                    pb.Message(
                        role="assistant",
                        content=answer,
                        finish_reason="stop",
                        generated=True,
                        moderation_json='{"output": {"flagged": false}}',
                    ),
                ],
            ),
            timeout=10,
        )
    return conversation, reply.messages[1].id


def test_nul_and_lone_surrogates_are_400_at_every_conversation_route(
    history_stack: Stack,
) -> None:
    created = api(history_stack, "POST", "/v1/conversations", json={"title": "fine"})
    assert created.status_code == 200, created.text
    conv = created.json()["id"]
    conversation, answer = stored_exchange(history_stack, "Paris.")
    feedback = f"/v1/conversations/{conversation}/messages/{answer}/feedback"
    refused = [
        api(history_stack, "POST", "/v1/conversations", json={"title": "a\x00b"}),
        raw_json(history_stack, "POST", "/v1/conversations", '{"title": "a\\ud800b"}'),
        api(history_stack, "PATCH", f"/v1/conversations/{conv}", json={"title": "\x00"}),
        raw_json(history_stack, "PATCH", f"/v1/conversations/{conv}", '{"title": "\\udfff"}'),
        api(history_stack, "POST", feedback, json={"rating": 1, "comment": "x\x00"}),
        raw_json(history_stack, "POST", feedback, '{"rating": -1, "corrected_content": "\\ud83d"}'),
        api(history_stack, "POST", feedback, json={"rating": -1, "corrected_content": "\x00"}),
        # Path and query values reach history, which refuses them (PostgreSQL used to fail
        # inside the database: 503, "database unavailable").
        api(history_stack, "GET", "/v1/conversations/conv%00x"),
        api(history_stack, "DELETE", "/v1/conversations/conv%00x"),
        api(history_stack, "GET", "/v1/conversations/search", params={"q": "a\x00b"}),
    ]
    for response in refused:
        assert_openai_error(response, 400)
    # Nothing changed: the title, and no feedback on the answer.
    got = api(history_stack, "GET", f"/v1/conversations/{conv}").json()
    assert got["title"] == "fine"
    got = api(history_stack, "GET", f"/v1/conversations/{conversation}").json()
    assert got["messages"][1]["feedback"] is None


def test_unstorable_chats_block_no_one_elses_stored_chats(history_stack: Stack) -> None:
    """The outbox holds at most 3 exchanges here. Alice's U+0000 chats with store: true used
    to wait in it for ever ("database unavailable" on PostgreSQL) until everyone's stored
    chats got 503; now each is refused or dead-lettered at once."""
    for _ in range(5):
        response = chat(history_stack, chat_body("poison \x00 here", store=True))
        assert response.status_code in (200, 400), response.text
    answered = chat(history_stack, chat_body("Hello from Bob", store=True), BOB)
    assert answered.status_code == 200, answered.text
    ready = httpx.get(f"{history_stack.gateway_url}/readyz", timeout=10).json()
    assert ready["history_outbox_depth"] == 0 and not ready["history_outbox_full"]
    listed = api(history_stack, "GET", "/v1/conversations", headers=BOB).json()["data"]
    assert listed, "Bob's stored chat is not in history"


def test_a_search_with_a_hundred_exclusions_is_400_not_a_database_error(
    history_stack: Stack,
) -> None:
    port = history_stack.services["history"].metrics_port
    assert port is not None
    errors_before = total(scrape(port), "parlance_history_database_errors_total")
    query = "paris " + " ".join(f"-word{i}" for i in range(100))
    response = api(history_stack, "GET", "/v1/conversations/search", params={"q": query})
    assert_openai_error(response, 400)
    assert total(scrape(port), "parlance_history_database_errors_total") == errors_before


def export(stack: Stack) -> list[dict]:
    response = httpx.get(f"{stack.gateway_url}/v1/admin/export", headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_feedback_is_classified_and_the_export_rechecks_every_record(
    history_stack: Stack,
) -> None:
    """A profane correction used to come out of the export verbatim as the chosen answer."""
    conv_toxic, toxic_fix = stored_exchange(history_stack, "Lyon is the capital of France.")
    conv_clean, clean_fix = stored_exchange(history_stack, "Marseille is the capital of France.")
    # An answer whose stored verdict said clean (an older classifier, say): the export's own
    # check must catch it.
    conv_stale, stale = stored_exchange(history_stack, TOXIC)
    for conversation, answer_id, body in (
        (conv_toxic, toxic_fix, {"rating": -1, "corrected_content": TOXIC}),
        (conv_clean, clean_fix, {"rating": -1, "corrected_content": "Paris."}),
        (conv_stale, stale, {"rating": 1}),
    ):
        response = api(
            history_stack,
            "POST",
            f"/v1/conversations/{conversation}/messages/{answer_id}/feedback",
            json=body,
        )
        assert response.status_code == 200, response.text
    records = export(history_stack)
    assert TOXIC not in json.dumps(records)
    assert [(r["chosen"], r["rejected"]) for r in records] == [
        (
            [{"role": "assistant", "content": "Paris."}],
            [{"role": "assistant", "content": "Marseille is the capital of France."}],
        )
    ]


def test_deleting_a_conversation_deletes_its_dead_letters(history_stack: Stack) -> None:
    """Issue 14, finding 6: dead letters kept the text of conversations their user deleted.
    One is seeded into the gateway's outbox file (an exchange history refused earlier)."""
    created = chat(history_stack, chat_body("remember me", store=True))
    assert created.status_code == 200, created.text
    conversation = created.json()["conversation_id"]
    outbox = history_stack.data_dir / "gateway-outbox.db"
    store = OutboxStore(str(outbox))
    try:
        refused = pb.AppendMessagesRequest(
            user_id="alice",
            conversation_id=conversation,
            messages=[pb.Message(role="user", content="secret words of a refused exchange")],
        )
        store.add_dead(refused.SerializeToString(), "refused", "alice", conversation)
        store.add_dead(refused.SerializeToString(), "refused", "bob", conversation)
        deleted = api(history_stack, "DELETE", f"/v1/conversations/{conversation}")
        assert deleted.status_code == 200, deleted.text
        with sqlite3.connect(outbox) as db:
            left = db.execute(
                "SELECT user_id FROM outbox_dead WHERE conversation_id = ?", (conversation,)
            ).fetchall()
        assert left == [("bob",)]  # another user's are not the caller's to delete
    finally:
        store.close()
