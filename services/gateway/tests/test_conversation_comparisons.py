"""The comparisons route, the `intent` filters and the export options (issues 16, 18), in
process: the gateway's app on httpx with fakes of generator and safety, and the REAL history
service (a gRPC server on a SQLite file) behind its real HistoryClient, so that each route is
checked through to what history stores and refuses."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parlance.gateway.clients.history import HistoryClient
from parlance.history.main import HistorySettings, build_host
from parlance.history.v1 import history_pb2 as pb
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

ADMIN_KEY = "sk-admin-comparisons-0123456789"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    host = build_host(
        HistorySettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'data' / 'history.db'}",
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            shutdown_grace_s=0.5,
        )
    )
    await host.start()
    history = HistoryClient(f"127.0.0.1:{host.port}", timeout_s=5.0, retry_after_s=1)
    try:
        async with inprocess_gateway(tmp_path, admin_key=ADMIN_KEY) as gateway:
            gateway.state.history = history
            yield gateway
    finally:
        await history.close()
        await host.stop()


def _msg(role: str, content: str, *, parent_id: str | None = None, **fields: object) -> pb.Message:
    message = pb.Message(role=role, content=content, **fields)  # type: ignore[arg-type]
    if parent_id is not None:
        message.parent_id = parent_id
    return message


async def _store(gw: InProcessGateway, user: str, conv: str, *messages: pb.Message) -> list[str]:
    """Messages written as the gateway's chat writes them (through its HistoryClient)."""
    resp = await gw.state.history.append_messages(
        pb.AppendMessagesRequest(
            user_id=user, conversation_id=conv, create_if_missing=True, messages=list(messages)
        )
    )
    return [m.id for m in resp.messages]


async def _two_answers(gw: InProcessGateway, user: str, intent: str = "geo") -> tuple[str, ...]:
    conv = f"conv_{uuid.uuid4().hex}"
    u, a = await _store(
        gw,
        user,
        conv,
        _msg("user", "Capital of France?", intent=intent),
        _msg("assistant", "Paris.", model="m1", generated=True, finish_reason="stop"),
    )
    (b,) = await _store(
        gw,
        user,
        conv,
        _msg("assistant", "Lyon.", model="m2", generated=True, finish_reason="stop", parent_id=u),
    )
    return conv, u, a, b


async def test_comparison_route_records_the_pick_and_the_page_shows_it(
    gw: InProcessGateway,
) -> None:
    conv, u, a, b = await _two_answers(gw, gw.alice.user_id)
    url = f"/v1/conversations/{conv}/comparisons"
    resp = await gw.client.post(
        url, json={"chosen_message_id": a, "rejected_message_id": b}, headers=gw.alice.headers
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "conversation.comparison"
    assert (body["parent_id"], body["chosen_message_id"], body["rejected_message_id"]) == (u, a, b)
    assert (body["chosen_model"], body["rejected_model"], body["active_message_id"]) == (
        "m1",
        "m2",
        a,
    )
    page = (await gw.client.get(f"/v1/conversations/{conv}", headers=gw.alice.headers)).json()
    assert page["intents"] == ["geo"]
    question, answer = page["messages"]
    assert (question["intent"], question["comparison"]) == ("geo", None)
    assert answer["id"] == a and answer["intent"] is None
    assert (answer["comparison"]["chosen"], answer["comparison"]["peer_id"]) == (True, b)

    # Refusals, OpenAI-shaped: another user's conversation is a 404, bad pairs are 400s.
    refused = [
        (gw.bob, {"chosen_message_id": a, "rejected_message_id": b}, 404),
        (gw.alice, {"chosen_message_id": a, "rejected_message_id": a}, 400),
        (gw.alice, {"chosen_message_id": a, "rejected_message_id": u}, 400),
        (gw.alice, {"chosen_message_id": a, "rejected_message_id": "msg_nope"}, 404),
        (gw.alice, {"chosen_message_id": a}, 400),
        (gw.alice, {"chosen_message_id": a, "rejected_message_id": 7}, 400),
    ]
    for caller, payload, status in refused:
        resp = await gw.client.post(url, json=payload, headers=caller.headers)
        assert resp.status_code == status, (payload, resp.text)
        assert set(resp.json()["error"]) >= {"message", "type", "param", "code"}


async def test_intent_filter_of_the_list_and_the_export(gw: InProcessGateway) -> None:
    alice = gw.alice.user_id
    geo_conv, _, a, b = await _two_answers(gw, alice, intent="geo")
    math_conv, _, c, d = await _two_answers(gw, alice, intent="math")
    for conv, chosen, rejected in ((geo_conv, a, b), (math_conv, c, d)):
        resp = await gw.client.post(
            f"/v1/conversations/{conv}/comparisons",
            json={"chosen_message_id": chosen, "rejected_message_id": rejected},
            headers=gw.alice.headers,
        )
        assert resp.status_code == 200, resp.text
    await gw.state.history.put_implicit_feedback(
        pb.PutImplicitFeedbackRequest(user_id=alice, message_id=b, kind="reask", score=0.9)
    )

    async def listed(query: str) -> list[str]:
        resp = await gw.client.get(f"/v1/conversations{query}", headers=gw.alice.headers)
        assert resp.status_code == 200, resp.text
        return [c["id"] for c in resp.json()["data"]]

    assert await listed("") == [math_conv, geo_conv]
    assert await listed("?intent=geo") == [geo_conv]
    assert await listed("?intent=cooking") == []
    bad = await gw.client.get("/v1/conversations?intent=no%20spaces", headers=gw.alice.headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "intent", bad.text

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def exported(query: str) -> list[dict]:
        resp = await gw.client.get(f"/v1/admin/export{query}", headers=admin)
        assert resp.status_code == 200, resp.text
        return [json.loads(line) for line in resp.text.splitlines()]

    everything = await exported("?kind=preference")
    assert len(everything) == 2 and all("chosen" in r for r in everything)
    geo_only = await exported("?kind=preference&intent=geo")
    assert [r["chosen"][0]["content"] for r in geo_only] == ["Paris."]
    with_implicit = await exported("?kind=preference&intent=geo&include_implicit=true")
    assert with_implicit[1] == {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "completion": [{"role": "assistant", "content": "Lyon."}],
        "label": False,
        "source": "reask",
        "score": 0.9,
    }
    bad = await gw.client.get("/v1/admin/export?intent=%2Fetc", headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "intent", bad.text
