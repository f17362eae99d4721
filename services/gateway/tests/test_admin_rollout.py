"""Rolling a new model version out, in process (routes/admin_models.py, splits.py,
model_report.py, rollback.py): run-time aliases that split users between versions, the
per-model report's statistics, and the rule that rolls back a version worse beyond doubt.
Registering and removing models is test_admin_models.py's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parlance.gateway.rollback import SplitRollback, rolled_back, worse_beyond_doubt
from parlance.testing.fake_targets import ADMIN, admin_gateway, registry_prefix, reward_folder
from parlance.testing.fakes import FAKE_MODEL
from parlance.testing.inprocess import InProcessGateway


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with registry_prefix() as name:
        yield name


@pytest.fixture
async def gw(tmp_path: Path, prefix: str) -> AsyncIterator[InProcessGateway]:
    async with admin_gateway(tmp_path, prefix) as gateway:
        yield gateway


async def test_a_split_alias_sends_each_user_to_one_version(
    gw: InProcessGateway, tmp_path: Path
) -> None:
    gw.generator.extra_chat_models = ["tuned"]
    split = {"weights": {FAKE_MODEL: 50, "tuned": 50}}
    put = await gw.client.put("/v1/admin/aliases/default", json=split, headers=ADMIN)
    assert put.status_code == 200, put.text
    assert put.json()["percent"] == {FAKE_MODEL: 50.0, "tuned": 50.0}
    cards = (await gw.client.get("/v1/models", headers=gw.alice.headers)).json()["data"]
    assert cards[0]["id"] == "default" and cards[0]["split"] == {FAKE_MODEL: 50.0, "tuned": 50.0}

    users = [await gw.create_key() for _ in range(8)]
    seen: dict[str, set[str]] = {}
    for _ in range(2):
        for user in users:
            response = await gw.chat(gw.body(model="default", store=True), caller=user)
            assert response.status_code == 200, response.text
            body = response.json()
            seen.setdefault(user.user_id, set()).add(body["model"])
            stored = gw.history.stored(body["conversation_id"])[-1]
            assert stored.model == body["model"]  # history keeps the exact model id
    assert all(len(models) == 1 for models in seen.values())
    assert {m for models in seen.values() for m in models} == {FAKE_MODEL, "tuned"}

    report = await gw.client.get("/v1/admin/models/report", headers=ADMIN)
    assert report.status_code == 200, report.text
    answers = {row["model"]: row["answers"] for row in report.json()["data"]}
    expected: dict[str, int] = {}
    for models in seen.values():
        (model,) = models
        expected[model] = expected.get(model, 0) + 2
    assert answers == expected


async def test_alias_errors(gw: InProcessGateway, tmp_path: Path) -> None:
    async def put(alias: str, body: dict[str, Any]) -> Any:
        return await gw.client.put(f"/v1/admin/aliases/{alias}", json=body, headers=ADMIN)

    assert (await put("default", {"weights": {"nope": 1}})).status_code == 404
    assert (await put(FAKE_MODEL, {"model": FAKE_MODEL})).status_code == 409
    assert (await put("default", {"weights": {FAKE_MODEL: 0}})).status_code == 400
    assert (await put("default", {"weights": {FAKE_MODEL: True}})).status_code == 400
    assert (await put("default", {})).status_code == 400
    assert (await gw.client.delete("/v1/admin/aliases/default", headers=ADMIN)).status_code == 404
    # A model an alias sends traffic to is not removed under it.
    body = reward_folder(tmp_path)
    assert (await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)).status_code == 201
    assert (await put("scorer", {"model": body["id"]})).status_code == 200
    in_use = await gw.client.delete(f"/v1/admin/models/{body['id']}", headers=ADMIN)
    assert in_use.status_code == 409 and "scorer" in in_use.json()["error"]["message"]
    assert (await gw.client.delete("/v1/admin/aliases/scorer", headers=ADMIN)).status_code == 200
    listed = (await gw.client.get("/v1/admin/aliases", headers=ADMIN)).json()["data"]
    assert listed == []


async def test_report_statistics(gw: InProcessGateway) -> None:
    from parlance.history.v1 import history_pb2

    async def report(request: Any) -> Any:
        assert request.intent == "coding" and request.since.seconds == 1_700_000_000
        return history_pb2.GetModelReportResponse(
            models=[
                history_pb2.ModelReportRow(
                    model="base", answers=300, rated_answers=263, thumbs_up=81, flagged_answers=3
                ),
                history_pb2.ModelReportRow(model="tuned", answers=10),
            ],
            comparisons=[
                history_pb2.ComparisonOutcome(chosen_model="tuned", rejected_model="base", count=6),
                history_pb2.ComparisonOutcome(chosen_model="base", rejected_model="tuned", count=2),
            ],
        )

    gw.history.get_model_report = report  # type: ignore[method-assign]
    response = await gw.client.get(
        "/v1/admin/models/report?since=1700000000&intent=coding", headers=ADMIN
    )
    assert response.status_code == 200, response.text
    base, tuned = response.json()["data"]
    assert base["thumbs_up_rate_ci95"] == pytest.approx([0.2553, 0.3662], abs=5e-5)
    assert base["flag_rate"] == pytest.approx(0.01)
    assert (base["comparisons_won"], base["comparisons_lost"]) == (2, 6)
    assert tuned["thumbs_up_rate"] is None and tuned["rated_answers"] == 0
    assert tuned["strength"] > 0 > base["strength"]
    assert tuned["strength_ci95"][0] <= tuned["strength"] <= tuned["strength_ci95"][1]
    bad = await gw.client.get("/v1/admin/models/report?since=yesterday", headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    bad = await gw.client.get("/v1/admin/models/report?intent=a%20b", headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "intent"


def test_rollback_rule() -> None:
    # 30/100 against 60/100: intervals (0.22, 0.40) and (0.50, 0.69) do not overlap.
    assert worse_beyond_doubt((30, 100), (60, 100), min_rated=100, margin=0.0)
    assert not worse_beyond_doubt((30, 100), (60, 100), min_rated=101, margin=0.0)
    assert not worse_beyond_doubt((30, 100), (60, 100), min_rated=100, margin=0.15)
    assert not worse_beyond_doubt((45, 100), (55, 100), min_rated=100, margin=0.0)
    assert rolled_back((("base", 90.0), ("tuned", 10.0)), "tuned", "base") == (
        ("base", 100.0),
        ("tuned", 0.0),
    )


async def test_a_worse_adapter_is_rolled_back(gw: InProcessGateway, tmp_path: Path) -> None:
    from parlance.history.v1 import history_pb2

    folder = tmp_path / "tuned@44556677"
    folder.mkdir()
    body = {"id": folder.name, "task": "chat", "path": str(folder), "parent": FAKE_MODEL}
    assert (await gw.client.post("/v1/admin/models", json=body, headers=ADMIN)).status_code == 201
    split = {"weights": {FAKE_MODEL: 80, folder.name: 20}}
    assert (
        await gw.client.put("/v1/admin/aliases/default", json=split, headers=ADMIN)
    ).status_code == 200

    rows = {FAKE_MODEL: (60, 100), folder.name: (30, 100)}

    async def report(request: Any) -> Any:
        return history_pb2.GetModelReportResponse(
            models=[
                history_pb2.ModelReportRow(model=m, rated_answers=n, thumbs_up=up)
                for m, (up, n) in rows.items()
            ]
        )

    gw.history.get_model_report = report  # type: ignore[method-assign]
    rule = SplitRollback(gw.state.runtime_models, gw.state.history, 60, 7, 100, 0.0)
    assert await rule.check() == ["default"]
    assert gw.state.models.aliases["default"] == ((FAKE_MODEL, 100.0), (folder.name, 0.0))
    # Persisted like any run-time alias, and nothing left to roll back.
    assert await gw.state.runtime_models.store.aliases() == gw.state.models.overrides
    assert await rule.check() == []


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00", "1e999", "%00"]
)
async def test_instants_beyond_the_calendar_are_400s(gw: InProcessGateway, value: str) -> None:
    for path in ("/v1/admin/models/report", "/v1/admin/export"):
        for param in ("since", "until"):
            bad = await gw.client.get(f"{path}?{param}={value}", headers=ADMIN)
            assert bad.status_code == 400, (path, param, bad.text)
            error = bad.json()["error"]
            assert error["param"] == param and param in error["message"], error
