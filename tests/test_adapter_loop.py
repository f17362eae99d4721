"""Fine-tuning from feedback, the CI smoke of issue 17, through the real processes: users'
comparisons and ratings go through the product and out of the admin export in the form
`parlance-train dpo` reads; the session's DPO adapter (trained once by the real
`parlance-train dpo`, TRL + PEFT + llama.cpp's converter, shared with the trainer's tests) is
registered with POST /v1/admin/models and served by the llama.cpp engine as its own model id
beside the base, its greedy answers differ from the base's on fixed prompts and the card the
registration returns says its loss went down; a split alias sends each user to one version,
always the same, and the model report counts each version's answers and ratings under its own
id.

What is not trained here: the adapter. DPO on SmolLM2-135M costs minutes of CPU per step on
this shared machine (bench/results/adapter_train.md), so the one the trainer's tests train
(a handful of steps on a few dozen short pairs in the export's format) is reused; the export
that a `parlance-train dpo --from-gateway` run reads is checked by the trainer's own parser.
The GPU proof (thousands of pairs, the trait learned) is in bench/, not here.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from parlance.testing import ALICE_KEY, BOB_KEY, Stack, bearer
from parlance.testing.dpo_adapter import DpoAdapter
from parlance.testing.processes import RedisProcess
from parlance.testing.stacks import StackPool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ADMIN_KEY = "sk-admin-adapter-loop-0123456789"
ADMIN = bearer(ADMIN_KEY)
BASE = "SmolLM2-135M-Instruct"
ALIAS = "tryout"
# Fixed prompts of the greedy comparison (the adapter was trained on bulleted answers to
# everyday "how do I" questions).
PROMPTS = (
    "Any tips for a vegetable garden?",
    "How do I start running?",
    "How should I plan a picnic?",
)
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 24}
EXPORT_PROMPTS = [
    f"How do I {task}?"
    for task in (
        "repot a cactus", "clean a bike chain", "fold a fitted sheet", "sharpen a knife",
        "store fresh herbs", "descale a kettle", "patch a jacket", "plan a reading week",
    )
]  # fmt: skip
# Users of the split: managed keys created through the admin API (ids fixed, so the hash
# puts them where it always does).
SPLIT_USERS = [f"split-user-{i}" for i in range(8)]


@dataclass
class AdapterStack:
    stack: Stack
    adapter: Path  # the adapter's folder inside the generator's GENERATOR_LOAD_ROOT

    @property
    def url(self) -> str:
        return str(self.stack.gateway_url)


@pytest.fixture(scope="module")
def adapter_stack(
    stacks: StackPool,
    dpo_adapter: DpoAdapter,
    tmp_path_factory: pytest.TempPathFactory,
    redis_process: RedisProcess,
) -> Iterator[AdapterStack]:
    root = tmp_path_factory.mktemp("adapter-root")
    folder = root / dpo_adapter.folder.name
    shutil.copytree(dpo_adapter.folder, folder)
    stack = stacks.start(
        "adapter-loop",
        gateway_env={
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_GENERATE_TITLES": "false",
            # Greedy answers of the same prompt would come from the cache (x-cache: hit).
            "GATEWAY_CACHE_ENABLED": "false",
        },
        env={
            "generator": {
                "GENERATOR_LOAD_ROOT": str(root),
                # One thread per llama.cpp context (tests/test_reward_loop.py says why).
                "GENERATOR_N_THREADS": "1",
                "GENERATOR_POOL_SIZE": "2",
            }
        },
        share=False,
        # A Redis of its own: the registry and the aliases live in Redis and outlive the
        # stack, and in the session's shared Redis the adapter and the "tryout" alias showed
        # up in later modules' /v1/models (test_chat_openai_sdk, test_model_registry,
        # test_web_ui failed so in a full run).
        redis_url=redis_process.url,
    )
    yield AdapterStack(stack, folder)
    stack.stop()


@pytest.fixture(scope="module")
def registration(adapter_stack: AdapterStack) -> dict[str, Any]:
    """The adapter registered with POST /v1/admin/models, once per module, for every test that
    serves it: each such test runs alone too (`-k split`), not only after the one that checks
    the registration."""
    folder = adapter_stack.adapter
    registered = httpx.post(
        f"{adapter_stack.url}/v1/admin/models",
        json={"id": folder.name, "task": "chat", "path": str(folder), "parent": BASE},
        headers=ADMIN,
        timeout=300,
    )
    assert registered.status_code == 201, registered.text
    body: dict[str, Any] = registered.json()
    return body


def _chat(url: str, key: str, prompt: str, model: str, **fields: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": prompt}], **fields},
        headers=bearer(key),
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _stored(call: Callable[[], httpx.Response]) -> httpx.Response:
    """`call` until it finds the stored exchange: on a loaded machine history may take it
    from the gateway's outbox a moment after the answer (a direct write that timed out)."""
    for _ in range(30):
        response = call()
        if response.status_code != 404:
            break
        time.sleep(1.0)
    assert response.status_code == 200, response.text
    return response


def _answer_id(url: str, key: str, conversation_id: str) -> str:
    path = f"{url}/v1/conversations/{conversation_id}"
    got = _stored(lambda: httpx.get(path, headers=bearer(key), timeout=60))
    answer_id: str = got.json()["messages"][-1]["id"]
    return answer_id


def test_the_export_is_what_parlance_train_dpo_reads(adapter_stack: AdapterStack) -> None:
    """Comparisons picked in the product come out of the admin export as preference pairs
    that the trainer's parser (the one `parlance-train dpo --from-gateway` uses) accepts."""
    from parlance.trainer import data

    url = adapter_stack.url
    picked = 0
    for prompt in EXPORT_PROMPTS:
        body = _chat(
            url,
            ALICE_KEY,
            prompt,
            "default",
            store=True,
            max_tokens=8,
            temperature=1.0,
            parlance={"compare": "always"},
        )
        if any(c["finish_reason"] == "content_filter" for c in body["choices"]):
            continue  # a candidate withheld by output moderation: nothing to pick
        ids = body["parlance"]["comparison"]["message_ids"]
        texts = [c["message"]["content"] for c in body["choices"]]
        if texts[0] == texts[1]:
            continue  # identical answers are no preference (the trainer refuses them)
        pick = {"chosen_message_id": ids[1], "rejected_message_id": ids[0]}
        path = f"{url}/v1/conversations/{body['conversation_id']}/comparisons"
        _stored(lambda p=path, j=pick: httpx.post(p, json=j, headers=bearer(ALICE_KEY), timeout=60))
        picked += 1
        if picked == 2:
            break
    # Two picks from up to 8 questions: two answers of 8 tokens at temperature 1 are rarely
    # the same, so fewer than two distinct pairs would be a fault, not chance.
    assert picked == 2
    exported = httpx.get(
        f"{url}/v1/admin/export", params={"kind": "preference"}, headers=ADMIN, timeout=120
    )
    assert exported.status_code == 200, exported.text
    pairs = data.parse_preferences(exported.content, "the export")
    assert len(pairs) == picked


def test_the_adapter_is_served_as_its_own_model(
    adapter_stack: AdapterStack, registration: dict[str, Any]
) -> None:
    url, folder = adapter_stack.url, adapter_stack.adapter
    assert [t["status"] for t in registration["targets"]] == ["loaded"]
    # The card is the adapter's manifest: DPO's loss went down on held-out pairs and in
    # training.
    card = registration["card"]
    assert card["method"] == "dpo" and card["id"] == folder.name
    before, after = card["eval"]["held_out_before"], card["eval"]["held_out_after"]
    assert after["loss"] < before["loss"]
    assert card["training"]["loss_last"] < card["training"]["loss_first"]

    listed = httpx.get(f"{url}/v1/models", headers=bearer(ALICE_KEY), timeout=60).json()["data"]
    parents = {m["id"]: m.get("parent") for m in listed}
    assert parents[folder.name] == BASE

    base = [_chat(url, ALICE_KEY, p, BASE, **GREEDY) for p in PROMPTS]
    tuned = [_chat(url, ALICE_KEY, p, folder.name, **GREEDY) for p in PROMPTS]
    assert [b["model"] for b in base] == [BASE] * len(PROMPTS)
    assert [t["model"] for t in tuned] == [folder.name] * len(PROMPTS)
    base_texts = [b["choices"][0]["message"]["content"] for b in base]
    tuned_texts = [t["choices"][0]["message"]["content"] for t in tuned]
    print("\nbase:", json.dumps(base_texts), "\nadapter:", json.dumps(tuned_texts))
    assert all(t.strip() for t in tuned_texts)
    assert all(b != t for b, t in zip(base_texts, tuned_texts, strict=True))
    # Greedy is greedy: the base answers as before beside the adapter.
    again = [
        _chat(url, ALICE_KEY, p, BASE, **GREEDY)["choices"][0]["message"]["content"]
        for p in PROMPTS
    ]
    assert again == base_texts


@pytest.mark.usefixtures("registration")
def test_a_split_keeps_each_user_on_one_version_and_the_report_tells_them_apart(
    adapter_stack: AdapterStack,
) -> None:
    url, adapter = adapter_stack.url, adapter_stack.adapter.name
    split = {"weights": {BASE: 50, adapter: 50}}
    put = httpx.put(f"{url}/v1/admin/aliases/{ALIAS}", json=split, headers=ADMIN, timeout=60)
    assert put.status_code == 200, put.text
    before = _report(url)

    keys = {}
    for user in SPLIT_USERS:
        created = httpx.post(
            f"{url}/v1/admin/keys", json={"user_id": user}, headers=ADMIN, timeout=60
        )
        assert created.status_code == 201, created.text
        keys[user] = created.json()["key"]
    served: dict[str, set[str]] = {user: set() for user in SPLIT_USERS}
    rated: dict[str, list[int]] = {BASE: [0, 0], adapter: [0, 0]}
    for user, key in keys.items():
        for turn in range(3):
            body = _chat(
                url, key, f"Say hello number {turn}.", ALIAS, store=True, max_tokens=4,
                temperature=1.0,
            )  # fmt: skip
            served[user].add(body["model"])
            if turn == 0:
                # Users of the adapter like it, users of the base do not: the report must put
                # each rating under the version that gave the answer.
                model = body["model"]
                rating = 1 if model == adapter else -1
                conversation = body["conversation_id"]
                message_id = _answer_id(url, key, conversation)
                path = f"{url}/v1/conversations/{conversation}/messages/{message_id}/feedback"
                sent = httpx.post(path, json={"rating": rating}, headers=bearer(key), timeout=60)
                assert sent.status_code == 200, sent.text
                rated[model][0 if rating == 1 else 1] += 1
    # Each user saw one version, and both versions have users.
    assert all(len(models) == 1 for models in served.values()), served
    users_of = {m: sum(models == {m} for models in served.values()) for m in (BASE, adapter)}
    print("\nsplit users per version:", users_of)
    assert users_of[BASE] >= 1 and users_of[adapter] >= 1

    after = _report(url)
    for model in (BASE, adapter):
        answers = 3 * users_of[model]
        assert _figure(after, model, "answers") - _figure(before, model, "answers") == answers
        assert (
            _figure(after, model, "thumbs_up") - _figure(before, model, "thumbs_up")
            == rated[model][0]
        )
        assert (
            _figure(after, model, "thumbs_down") - _figure(before, model, "thumbs_down")
            == rated[model][1]
        )
    row = next(r for r in after["data"] if r["model"] == adapter)
    assert row["parent"] == BASE and row["thumbs_up_rate"] == 1.0
    # The report is the admin's: a user's key is refused.
    refused = httpx.get(f"{url}/v1/admin/models/report", headers=bearer(BOB_KEY), timeout=60)
    assert refused.status_code == 403


def _report(url: str) -> dict[str, Any]:
    got = httpx.get(f"{url}/v1/admin/models/report", headers=ADMIN, timeout=120)
    assert got.status_code == 200, got.text
    report: dict[str, Any] = got.json()
    return report


def _figure(report: dict[str, Any], model: str, name: str) -> int:
    row = next((r for r in report["data"] if r["model"] == model), None)
    return int(row[name]) if row is not None else 0
