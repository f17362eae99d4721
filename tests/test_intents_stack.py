"""Intent routing through the real stack as `make up` configures it (scripts/devstack.py: the
shipped route file, SmolLM2 and all-MiniLM-L6-v2 in one generator, the "default" alias): a
coding question classified by the real embedding model takes the coding route (its system
prompt reaches the model), and the answer names the intent; the intent is stored on the user
message and filters the conversation list; a re-asked question is exported as implicit feedback
on the answer before it."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from parlance.gateway.intents import load_routes
from parlance.testing import ALICE_KEY, Stack, StackPool, gateway_url, start_extra_gateway

make_up_env = sys.modules[Stack.__module__].make_up_env

CODING_QUESTION = "my python script crashes with a KeyError when I read the config dict, why?"
REASKED = "why does my python script crash with a KeyError when reading the config dict?"
NO_CACHE = {"Cache-Control": "no-cache"}
CHROMIUM = Path("/usr/bin/chromium")
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
ADMIN_KEY = "sk-test-admin-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def stack(stacks: StackPool) -> Iterator[Stack]:
    env = make_up_env()
    assert env["gateway"].get("GATEWAY_INTENT_ROUTES"), "make up routes by intent"
    env["gateway"]["GATEWAY_ADMIN_KEY"] = ADMIN_KEY
    # Own gateway and history (conversations, intents and the export stay this module's); the
    # generator and safety are the pool's for these settings (test_embeddings.py's too).
    stack = stacks.start("intents", env=env)
    yield stack
    stack.stop()


def coding_prompt(path: str) -> str:
    route = next(r for r in load_routes(path).spec.routes if r.name == "coding")
    assert route.system_prompt
    return route.system_prompt


def chat(url: str, **fields: object) -> httpx.Response:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": CODING_QUESTION}],
        "max_tokens": 2,
        "temperature": 0.0,
        **fields,
    }
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {ALICE_KEY}", **NO_CACHE},
        timeout=120,
    )


def test_a_coding_question_takes_the_coding_route(stack: Stack) -> None:
    routed = chat(stack.gateway_url)
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-parlance-intent"] == "coding"
    intent = routed.json()["parlance"]["intent"]
    assert intent["name"] == "coding" and intent["fallback"] is False
    assert "intent;dur=" in routed.headers["server-timing"]

    # A gateway without routing: the same question counts other prompt tokens (SmolLM2's
    # template puts its own system prompt where none is given), and the question sent with the
    # coding route's system prompt counts exactly the routed request's: the prompt reached
    # the model, first.
    # Input moderation off there: it would classify the explicit system prompt, which the
    # routed request never sends to moderation (the safety default, minilm, flagged this one
    # as harassment on 2026-11-29); token counts do not depend on it.
    plain = gateway_url(
        start_extra_gateway(stack, {"GATEWAY_INTENT_ROUTES": "", "GATEWAY_MODERATE_INPUT": "false"})
    )
    unrouted = chat(plain)
    assert unrouted.status_code == 200, unrouted.text
    assert "x-parlance-intent" not in unrouted.headers
    assert "parlance" not in unrouted.json()
    tokens = routed.json()["usage"]["prompt_tokens"]
    assert unrouted.json()["usage"]["prompt_tokens"] != tokens
    prompt = coding_prompt(make_up_env()["gateway"]["GATEWAY_INTENT_ROUTES"])
    explicit = chat(
        plain,
        messages=[
            {"role": "system", "content": prompt},
            {"role": "user", "content": CODING_QUESTION},
        ],
    )
    assert explicit.status_code == 200, explicit.text
    assert explicit.json()["usage"]["prompt_tokens"] == tokens

    # The official SDK reads the stream; its first chunk carries the intent.
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=ALICE_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": CODING_QUESTION}],
        max_tokens=2,
        stream=True,
        extra_headers=NO_CACHE,
    )
    chunks = list(stream)
    assert chunks[0].model_extra is not None
    assert chunks[0].model_extra["parlance"]["intent"]["name"] == "coding"


def listed(url: str, intent: str) -> list[dict[str, object]]:
    response = httpx.get(
        f"{url}/v1/conversations", params={"intent": intent, "limit": 100}, headers=ALICE
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def reask_records(url: str) -> list[dict[str, object]]:
    with httpx.stream(
        "GET",
        f"{url}/v1/admin/export",
        params={"include_implicit": "true", "intent": "coding"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        records = [json.loads(line) for line in response.iter_lines() if line]
    return [r for r in records if r.get("source") == "reask"]


def test_the_intent_is_stored_filterable_and_a_reask_recorded(stack: Stack) -> None:
    url = stack.gateway_url
    first = chat(url, store=True)
    assert first.status_code == 200, first.text
    conversation = first.json()["conversation_id"]
    coding = [c for c in listed(url, "coding") if c["id"] == conversation]
    assert coding and coding[0]["intents"] == ["coding"]
    assert conversation not in [c["id"] for c in listed(url, "math")]
    got = httpx.get(f"{url}/v1/conversations/{conversation}", headers=ALICE).json()
    assert [(m["role"], m["intent"]) for m in got["messages"]] == [
        ("user", "coding"),
        ("assistant", None),
    ]
    # A rename answers with the conversation as a read shows it, intents included.
    renamed = httpx.patch(
        f"{url}/v1/conversations/{conversation}", json={"title": "code"}, headers=ALICE
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["intents"] == ["coding"]

    # Without a re-ask, the export has no implicit record; the same question in other words,
    # in the same conversation, is one (written in the background: waited for, bounded).
    assert reask_records(url) == []
    again = chat(url, conversation_id=conversation, messages=[{"role": "user", "content": REASKED}])
    assert again.status_code == 200, again.text
    deadline = time.monotonic() + 30
    while not (records := reask_records(url)):
        assert time.monotonic() < deadline, "no re-ask recorded"
        time.sleep(0.2)
    assert len(records) == 1
    record = records[0]
    assert record["label"] is False and 0.75 <= float(record["score"]) <= 1.0  # type: ignore[arg-type]
    completion = record["completion"]
    assert (
        isinstance(completion, list) and completion[0]["content"] == got["messages"][1]["content"]
    )


MATH_QUESTION = "what is the integral of x squared from 0 to 3"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_the_sidebar_filters_by_intent_and_shows_it(stack: Stack) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = stack.gateway_url
    ids = {}
    for name, question in (("coding", CODING_QUESTION), ("math", MATH_QUESTION)):
        response = chat(url, store=True, messages=[{"role": "user", "content": question}])
        assert response.headers["x-parlance-intent"] == name, response.headers
        ids[name] = response.json()["conversation_id"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(base_url=url)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto("/")
            page.fill("#signin-key", ALICE_KEY)
            page.click("#signin-submit")
            item = page.locator(f'li.conversation-item[data-id="{ids["math"]}"]')
            expect(item).to_contain_text("math", timeout=30_000)
            expect(page.locator("#intent-filter")).to_be_visible()
            page.select_option("#intent-filter", "coding")
            coding = page.locator(f'li.conversation-item[data-id="{ids["coding"]}"]')
            expect(coding).to_contain_text("coding", timeout=30_000)
            expect(item).to_have_count(0)
            page.select_option("#intent-filter", "")
            expect(item).to_have_count(1, timeout=30_000)
            assert not errors, errors
        finally:
            browser.close()
