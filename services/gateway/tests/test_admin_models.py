"""The admin model API in process (model_registry.py and its parts, routes/admin_models.py):
registering and removing run-time models on the generator targets, all or nothing, persisted
in the real Redis and re-applied; failed unloads retried; stale reservations. Aliases, the
model report and the rollback rule are test_admin_rollout.py's. The generator targets are
FakeTargetsGenerator's (a test double of the pool's targets; the real LoadModel is exercised
through the real stack in tests/test_model_registry.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parlance.gateway import errors
from parlance.testing.fake_targets import (
    ADMIN,
    TARGETS,
    FakeTargetsGenerator,
    admin_gateway,
    registry_prefix,
    reward_folder,
)
from parlance.testing.fakes import FAKE_MODEL, wait_for
from parlance.testing.inprocess import InProcessGateway


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with registry_prefix() as name:
        yield name


@pytest.fixture
async def gw(tmp_path: Path, prefix: str) -> AsyncIterator[InProcessGateway]:
    async with admin_gateway(tmp_path, prefix) as gateway:
        yield gateway


def targets_of(gw: InProcessGateway) -> list[Any]:
    return list(gw.generator.targets)


async def test_admin_routes_need_the_admin_key(gw: InProcessGateway) -> None:
    for method, path in [
        ("GET", "/v1/admin/models"),
        ("POST", "/v1/admin/models"),
        ("DELETE", "/v1/admin/models/x"),
        ("GET", "/v1/admin/models/report"),
        ("PUT", "/v1/admin/aliases/default"),
    ]:
        anonymous = await gw.client.request(method, path)
        assert anonymous.status_code == 401, (method, path)
        user = await gw.client.request(method, path, headers=gw.alice.headers)
        assert user.status_code == 403, (method, path)
        assert user.json()["error"]["code"] == "permission_denied"


async def test_register_list_and_remove_a_reward_model(
    gw: InProcessGateway, tmp_path: Path
) -> None:
    body = reward_folder(tmp_path)
    created = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert [t["status"] for t in created.json()["targets"]] == ["loaded", "loaded"]
    assert all(body["id"] in t.loaded for t in targets_of(gw))

    models = (await gw.client.get("/v1/models", headers=gw.alice.headers)).json()["data"]
    assert {"id": body["id"], "task": "reward"}.items() <= {
        k: v for m in models if m["id"] == body["id"] for k, v in m.items()
    }.items()
    listed = (await gw.client.get("/v1/admin/models", headers=ADMIN)).json()["data"]
    assert [(m["id"], m["task"], m["card"]["eval"]) for m in listed] == [
        (body["id"], "reward", {"accuracy": 0.9})
    ]

    again = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "model_exists"

    removed = await gw.client.delete(f"/v1/admin/models/{body['id']}", headers=ADMIN)
    assert removed.status_code == 200, removed.text
    assert sorted(removed.json()["unloaded"]) == sorted(TARGETS)
    assert all(body["id"] not in t.loaded for t in targets_of(gw))
    gone = await gw.client.delete(f"/v1/admin/models/{body['id']}", headers=ADMIN)
    assert gone.status_code == 404


async def test_a_refusing_target_leaves_nothing_registered(
    gw: InProcessGateway, tmp_path: Path
) -> None:
    a, b = targets_of(gw)
    b.refuse = errors.invalid_request("cannot load it as a reward model: bad config", "path")
    body = reward_folder(tmp_path)
    refused = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "bad config" in error["message"] and "generator-b:50051" in error["message"]
    assert error["param"] == "path"
    assert body["id"] not in a.loaded and a.unloads == [body["id"]]
    assert (await gw.client.get("/v1/admin/models", headers=ADMIN)).json()["data"] == []
    # The id is free again: with the target fixed, the same registration goes through.
    b.refuse = None
    assert (await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)).status_code == 201


BAD_REGISTRATIONS: list[tuple[dict[str, Any], int, str | None]] = [
    ({"path": "/etc"}, 400, "path"),
    ({"id": FAKE_MODEL}, 409, "id"),
    ({"id": "has space"}, 400, None),
    ({"task": "chat"}, 400, "parent"),
    ({"task": "chat", "parent": "no-such-model"}, 404, "parent"),
    ({"parent": FAKE_MODEL}, 400, "parent"),
    ({"task": "classify"}, 400, None),
    ({"settings": {"batch": 3}}, 400, None),
]


async def test_bad_registrations_are_clear_errors(gw: InProcessGateway, tmp_path: Path) -> None:
    body = reward_folder(tmp_path)
    for change, status, param in BAD_REGISTRATIONS:
        response = await gw.client.post("/v1/admin/models", json=body | change, headers=ADMIN)
        assert response.status_code == status, (change, response.text)
        if param is not None:
            assert response.json()["error"]["param"] == param, change
    # A NUL inside the load root: refused by the gateway, before any generator sees it.
    nul = await gw.client.post(
        "/v1/admin/models", json=body | {"path": body["path"] + "\x00x"}, headers=ADMIN
    )
    assert nul.status_code == 400 and nul.json()["error"]["param"] == "path", nul.text
    assert all(not t.loaded for t in targets_of(gw))


async def test_adapters_load_where_their_parent_is_and_are_never_reused(
    tmp_path: Path, prefix: str
) -> None:
    generator = FakeTargetsGenerator(str(tmp_path), TARGETS)
    async with admin_gateway(tmp_path, prefix, generator) as gw:
        a, b = targets_of(gw)
        b.serving = False  # its parent is not served there: not a target of the adapter
        folder = tmp_path / "tuned@00112233"
        folder.mkdir()
        body = {"id": folder.name, "task": "chat", "path": str(folder), "parent": FAKE_MODEL}
        created = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
        assert created.status_code == 201, created.text
        assert a.load_requests[-1].parent == FAKE_MODEL
        assert folder.name in a.loaded
        removed = await gw.client.delete(f"/v1/admin/models/{folder.name}", headers=ADMIN)
        assert removed.status_code == 200
        again = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
        assert again.status_code == 409
        assert "never reused" in again.json()["error"]["message"]


async def test_registrations_survive_generator_and_gateway_restarts(
    tmp_path: Path, prefix: str
) -> None:
    body = reward_folder(tmp_path)
    async with admin_gateway(tmp_path, prefix) as gw:
        created = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
        assert created.status_code == 201
        b = targets_of(gw)[1]
        # A generator restart loses its run-time models. One that refuses to load it again is
        # asked once per backoff, not at every sync (every 0.05 s here).
        b.refuse = errors.APIError(409, "no GENERATOR_LOAD_ROOT", code="generator_refused")
        b.restart()
        await wait_for(lambda: len(b.load_requests) == 2)
        await asyncio.sleep(0.3)
        assert len(b.load_requests) == 2 and body["id"] not in b.loaded
        b.refuse = None
        gw.state.runtime_models.reapply_backoff_s = 0.0
        gw.state.runtime_models._retry_at.clear()
        await wait_for(lambda: body["id"] in b.loaded)
    # A new gateway (same Redis) before generators that never saw the model.
    fresh = FakeTargetsGenerator(str(tmp_path), TARGETS)
    async with admin_gateway(tmp_path, prefix, fresh) as gw:
        await wait_for(lambda: all(body["id"] in t.loaded for t in fresh.targets))
        listed = (await gw.client.get("/v1/admin/models", headers=ADMIN)).json()["data"]
        assert [m["id"] for m in listed] == [body["id"]]


async def test_a_failed_unload_is_retried_until_the_target_drops_it(
    gw: InProcessGateway, tmp_path: Path, prefix: str
) -> None:
    import redis.asyncio as aioredis

    from parlance.testing.inprocess import REDIS_URL

    body = reward_folder(tmp_path)
    assert (await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)).status_code == 201
    reachable, cut_off = targets_of(gw)
    cut_off.refuse_unload = errors.service_unavailable("The generator service is unavailable.", 1)
    removed = await gw.client.delete(f"/v1/admin/models/{body['id']}", headers=ADMIN)
    assert removed.status_code == 200, removed.text
    assert (removed.json()["unloaded"], removed.json()["pending"]) == (
        [reachable.url],
        [cut_off.url],
    )
    # Noted in Redis, where every replica's sync sees it; retried while the target fails.
    redis = aioredis.from_url(REDIS_URL)
    try:
        noted = await redis.smembers(f"{prefix}:unloading")
        assert [json.loads(m) for m in noted] == [[cut_off.url, body["id"]]]
        await wait_for(lambda: cut_off.unloads.count(body["id"]) >= 3)
        assert body["id"] in cut_off.loaded
        cut_off.refuse_unload = None
        await wait_for(lambda: body["id"] not in cut_off.loaded)
        await wait_for(lambda: not gw.app.state.gateway.runtime_models.unloads._running)
        assert await redis.smembers(f"{prefix}:unloading") == set()
    finally:
        await redis.aclose()
    models = (await gw.client.get("/v1/models", headers=gw.alice.headers)).json()["data"]
    assert body["id"] not in {m["id"] for m in models}


async def test_a_registration_left_loading_is_taken_over_once_stale(
    gw: InProcessGateway, tmp_path: Path
) -> None:
    from parlance.gateway.redis_state import RedisUnavailable

    runtime = gw.app.state.gateway.runtime_models
    store = runtime.store
    saved, removed = store.save, store.remove

    async def redis_drops(*_: object, **__: object) -> None:
        raise RedisUnavailable("test: Redis stops answering after the loads")

    body = reward_folder(tmp_path)

    async def leave_it_loading() -> None:
        # save fails, and so does the drop of the reservation: it stays "loading" in Redis.
        store.save = store.remove = redis_drops
        try:
            failed = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
        finally:
            store.save, store.remove = saved, removed
        assert failed.status_code == 503, failed.text
        message = failed.json()["error"]["message"]
        assert "Redis" in message and "generator target" not in message, message
        assert not any(body["id"] in t.loaded for t in targets_of(gw))

    await leave_it_loading()
    fresh = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
    assert fresh.status_code == 409 and "being registered" in fresh.json()["error"]["message"]
    delete = f"/v1/admin/models/{body['id']}"
    assert (await gw.client.delete(delete, headers=ADMIN)).status_code == 404
    runtime.stale_reservation_s = 0.0  # the reservation is now older than the load deadline
    assert (await gw.client.delete(delete, headers=ADMIN)).status_code == 200
    await leave_it_loading()
    taken = await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)
    assert taken.status_code == 201, taken.text
    assert all(body["id"] in t.loaded for t in targets_of(gw))
    listed = (await gw.client.get("/v1/admin/models", headers=ADMIN)).json()["data"]
    assert [m["id"] for m in listed] == [body["id"]]
