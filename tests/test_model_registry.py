"""A newly trained reward model registered without restarting the stack (issues 16 and 17),
through the real processes: the session's `parlance-train reward` folder (shared with the
trainer's and generator's tests) is registered with POST /v1/admin/models, the generator loads
it (LoadModel, inside its GENERATOR_LOAD_ROOT), /v1/models lists it with task reward, and after
a gateway restart it is still registered and listed. (A generator restart, after which the
gateway loads it there again, is tested in process: services/gateway/tests/test_admin_models.py;
through these processes it costs a second model load, about 20 s on a loaded machine.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from parlance.testing import ALICE_KEY, Stack, wait_until
from parlance.testing.reward_model import RewardTraining
from parlance.testing.stacks import StackPool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ADMIN_KEY = "sk-admin-model-registry-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = {"Authorization": f"Bearer {ALICE_KEY}"}
CHAT = "scripted-chat"


@pytest.fixture(scope="module")
def load_root(reward_training: RewardTraining, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert reward_training.exit_code == 0, reward_training.stderr
    root = tmp_path_factory.mktemp("load-root")
    shutil.copytree(reward_training.folder, root / reward_training.folder.name)
    return root


@pytest.fixture(scope="module")
def stack(stacks: StackPool, load_root: Path) -> Iterator[Stack]:
    """A private generator (scripted chat model, run-time loading inside load_root); safety
    is the pool's."""
    models = [{"id": CHAT, "engine": "scripted", "settings": {"scripted_tokens_per_s": 0}}]
    started = stacks.start(
        "registry",
        gateway_env={
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_MODERATE_OUTPUT": "false",
        },
        env={
            "generator": {
                "GENERATOR_MODELS": json.dumps(models),
                "GENERATOR_LOAD_ROOT": str(load_root),
            }
        },
    )
    yield started
    started.stop()


def models(stack: Stack) -> dict[str, dict[str, object]]:
    response = httpx.get(f"{stack.gateway_url}/v1/models", headers=USER, timeout=30)
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["data"]}


def registered(stack: Stack) -> list[dict[str, object]]:
    response = httpx.get(f"{stack.gateway_url}/v1/admin/models", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    data: list[dict[str, object]] = response.json()["data"]
    return data


def test_register_restart_and_remove(stack: Stack, load_root: Path) -> None:
    (folder,) = load_root.iterdir()
    body = {"id": folder.name, "task": "reward", "path": str(folder)}
    outside = httpx.post(
        f"{stack.gateway_url}/v1/admin/models",
        json=body | {"path": str(load_root.parent)},
        headers=ADMIN,
        timeout=120,
    )
    assert outside.status_code == 400, outside.text
    assert "GENERATOR_LOAD_ROOT" in outside.json()["error"]["message"]

    created = httpx.post(
        f"{stack.gateway_url}/v1/admin/models", json=body, headers=ADMIN, timeout=120
    )
    assert created.status_code == 201, created.text
    assert created.json()["targets"][0]["status"] == "loaded"
    # The trainer's model card, read from the folder (this gateway shares the machine).
    assert created.json()["card"]["id"] == folder.name
    assert models(stack)[folder.name]["task"] == "reward"

    gateway = stack.services["gateway"]
    gateway.stop()
    stack.start_service("gateway")
    assert [r["id"] for r in registered(stack)] == [folder.name]
    assert models(stack)[folder.name]["task"] == "reward"

    removed = httpx.delete(
        f"{stack.gateway_url}/v1/admin/models/{folder.name}", headers=ADMIN, timeout=60
    )
    assert removed.status_code == 200, removed.text
    assert folder.name not in models(stack)
    assert registered(stack) == []


def test_the_report_counts_real_answers_and_ratings(stack: Stack) -> None:
    """GET /v1/admin/models/report over the real history's GetModelReport: one stored answer
    of the scripted model, rated thumbs up by its user."""
    answer = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "store": True},
        headers=USER,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    conversation = f"{stack.gateway_url}/v1/conversations/{answer.json()['conversation_id']}"

    def stored() -> list[dict[str, object]]:
        response = httpx.get(conversation, headers=USER, timeout=30)
        messages: list[dict[str, object]] = (
            response.json()["messages"] if response.status_code == 200 else []
        )
        return messages

    wait_until(lambda: len(stored()) == 2, what="the exchange stored")
    message_id = stored()[-1]["id"]
    rated = httpx.post(
        f"{conversation}/messages/{message_id}/feedback", json={"rating": 1}, headers=USER
    )
    assert rated.status_code == 200, rated.text
    report = httpx.get(f"{stack.gateway_url}/v1/admin/models/report", headers=ADMIN, timeout=30)
    assert report.status_code == 200, report.text
    row = {r["model"]: r for r in report.json()["data"]}[CHAT]
    assert (row["answers"], row["rated_answers"], row["thumbs_up"]) == (1, 1, 1)
    # Wilson for 1 of 1: [1 / (1 + z^2), 1].
    assert row["thumbs_up_rate_ci95"] == pytest.approx([0.2065, 1.0], abs=1e-4)
    bad = httpx.get(f"{stack.gateway_url}/v1/admin/models/report?intent=no%20spaces", headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "intent"
