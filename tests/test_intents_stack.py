"""Intent routing through the real stack as `make up` configures it (scripts/devstack.py: the
shipped route file, SmolLM2 and all-MiniLM-L6-v2 in one generator, the "default" alias): a
coding question classified by the real embedding model takes the coding route (its system
prompt reaches the model), and the answer names the intent."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from parlance.gateway.intents import load_routes
from parlance.testing import ALICE_KEY, Stack, gateway_url, start_extra_gateway, start_stack

make_up_env = sys.modules[Stack.__module__].make_up_env

CODING_QUESTION = "my python script crashes with a KeyError when I read the config dict, why?"
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    env = make_up_env()
    assert env["gateway"].get("GATEWAY_INTENT_ROUTES"), "make up routes by intent"
    stack = start_stack(tmp_path_factory.mktemp("intents"), redis_server, env=env)
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
    plain = gateway_url(start_extra_gateway(stack, {"GATEWAY_INTENT_ROUTES": ""}))
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
