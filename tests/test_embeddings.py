"""POST /v1/embeddings through the real stack as `make up` configures it (scripts/devstack.py:
SmolLM2 through llama.cpp and all-MiniLM-L6-v2 in one generator, the "default" alias): the
official OpenAI SDK (float and base64), similarities that make sense, limits, errors and the
per-tenant cache."""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from parlance.testing import (
    ALICE_KEY,
    BOB_KEY,
    MODEL,
    Stack,
    StackPool,
    scrape,
    start_extra_gateway,
    total,
)

# `make up`'s settings, from scripts/devstack.py (the module that defines Stack).
make_up_env = sys.modules[Stack.__module__].make_up_env

EMBED = "all-MiniLM-L6-v2"
CHAT = MODEL
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture(scope="module")
def stack(stacks: StackPool) -> Iterator[Stack]:
    # Its own gateway and history; the generator and safety are the pool's for these settings.
    stack = stacks.start("embeddings", env=make_up_env())
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=ALICE_KEY, max_retries=0)


def post(
    stack: Stack, body: dict[str, object], key: str = ALICE_KEY, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=60,
    )


def test_sdk_float_and_base64(client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A kitten is resting on a rug."]
    as_float = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model=EMBED, input=texts, encoding_format="base64")
    default = client.embeddings.create(model=EMBED, input=texts)
    assert as_float.model == EMBED and as_float.object == "list"
    assert [d.index for d in as_float.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in as_float.data)
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > 4
    floats = np.array([d.embedding for d in as_float.data])
    # Asked for base64, the SDK hands the string over as it came: little-endian float32.
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in as_base64.data]
    )
    # Asked for nothing, the SDK requests base64 and decodes it to floats itself.
    assert np.allclose(decoded, floats, atol=1e-6)
    assert np.allclose(np.array([d.embedding for d in default.data]), floats, atol=1e-6)
    assert (
        as_base64.usage.prompt_tokens == default.usage.prompt_tokens == as_float.usage.prompt_tokens
    )


def test_base64_is_little_endian_float32(stack: Stack) -> None:
    floats = post(stack, {"model": EMBED, "input": "hello", "encoding_format": "float"}).json()
    packed = post(stack, {"model": EMBED, "input": "hello", "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = np.frombuffer(raw, dtype="<f4")
    assert decoded.shape == (384,)
    assert np.allclose(decoded, floats["data"][0]["embedding"], atol=1e-7)


def test_cosine_similarity_is_sensible(client: openai.OpenAI) -> None:
    pairs = [
        ("How do I reset my password?", "I forgot my password and need to change it."),
        ("What's the weather like tomorrow?", "Will it rain tomorrow?"),
        ("Recommend a good science fiction novel.", "Which sci-fi books should I read?"),
    ]
    unrelated = [
        ("How do I reset my password?", "The recipe needs two cups of flour."),
        ("What's the weather like tomorrow?", "Our quarterly revenue grew by 8 percent."),
        ("Recommend a good science fiction novel.", "The train to Berlin leaves at noon."),
    ]
    texts = [t for pair in pairs + unrelated for t in pair]
    vectors = np.array(
        [d.embedding for d in client.embeddings.create(model=EMBED, input=texts).data]
    )
    cosine = [float(vectors[i] @ vectors[i + 1]) for i in range(0, len(texts), 2)]
    paraphrase, other = cosine[:3], cosine[3:]
    assert min(paraphrase) > 0.5, cosine
    assert max(other) < 0.25, cosine
    assert min(paraphrase) - max(other) > 0.3, cosine


def test_token_id_inputs(stack: Stack) -> None:
    # all-MiniLM-L6-v2's WordPiece ids for "hello world" (special tokens excluded).
    ids = [7592, 2088]
    by_ids = post(stack, {"model": EMBED, "input": ids, "encoding_format": "float"})
    by_text = post(stack, {"model": EMBED, "input": "hello world", "encoding_format": "float"})
    assert by_ids.status_code == 200, by_ids.text
    assert np.allclose(
        by_ids.json()["data"][0]["embedding"], by_text.json()["data"][0]["embedding"], atol=1e-6
    )
    several = post(stack, {"model": EMBED, "input": [ids, [7592]], "encoding_format": "float"})
    assert [d["index"] for d in several.json()["data"]] == [0, 1]
    assert several.json()["usage"]["prompt_tokens"] == 4 + 3


def test_bad_inputs_are_clear_400s(stack: Stack) -> None:
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"model": EMBED, "input": []}, "input", "must not be empty"),
        ({"model": EMBED, "input": ""}, "input", "is empty"),
        ({"model": EMBED, "input": ["ok", 3]}, "input", ""),
        ({"model": EMBED, "input": "x", "dimensions": 64}, "dimensions", "cannot shorten"),
        ({"model": EMBED, "input": "x", "dimensions": 10**35}, "dimensions", ""),
        ({"model": EMBED, "input": "x", "encoding_format": "hex"}, "encoding_format", ""),
        ({"model": EMBED, "input": "word " * 400}, "input", "at most 256"),
        ({"model": EMBED, "input": [[10**7]]}, "input", "vocabulary"),
        ({"model": EMBED, "input": [7592, 37444100842]}, "input", "outside any vocabulary"),
        ({"model": EMBED, "input": ["a"] * 2049}, "input", "at most 2048"),
        ({"model": EMBED, "input": "x" * 50_001}, "input", "the limit is 50000"),
    ]
    for body, param, message in cases:
        response = post(stack, body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param, (body, error)
        assert message in error["message"], (body, error)
    # Truncation on request: the long input is cut to the model's window.
    response = post(stack, {"model": EMBED, "input": "word " * 400, "truncate": True})
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 256
    # The model's own length is not a truncation: accepted.
    assert post(stack, {"model": EMBED, "input": "x", "dimensions": 384}).status_code == 200


def test_model_errors_and_auth(stack: Stack) -> None:
    unknown = post(stack, {"model": "text-embedding-9", "input": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    wrong_task = post(stack, {"model": CHAT, "input": "x"})
    assert wrong_task.status_code == 400
    error = wrong_task.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_task_mismatch")
    assert "is a chat model" in error["message"]
    assert post(stack, {"model": EMBED, "input": "x"}, key="sk-wrong").status_code == 401
    # "default" is an alias of the chat model under `make up`: not an embedding model.
    assert post(stack, {"model": "default", "input": "x"}).status_code == 400


def test_cache_per_tenant(stack: Stack) -> None:
    body = {"model": EMBED, "input": ["cache me please", "and me"], "encoding_format": "float"}
    first = post(stack, body)
    second = post(stack, body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json() == first.json()
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert post(stack, body, key=BOB_KEY).headers["x-cache"] == "miss"
    assert post(stack, body, **NO_CACHE).headers["x-cache"] == "bypass"
    # The encoding is applied after the cache: base64 of the same inputs is a hit too.
    packed = post(stack, {**body, "encoding_format": "base64"})
    assert packed.headers["x-cache"] == "hit"
    assert len(base64.b64decode(packed.json()["data"][0]["embedding"])) == 384 * 4


def test_limits_and_metrics(stack: Stack, tmp_path: Path) -> None:
    before = total(
        scrape(stack.services["gateway"].metrics_port), "parlance_gateway_embeddings_inputs_total"
    )
    response = post(stack, {"model": EMBED, "input": ["one", "two", "three"]}, **NO_CACHE)
    assert response.status_code == 200
    assert "x-ratelimit-remaining-requests" in response.headers
    assert "x-ratelimit-remaining-tokens" in response.headers
    after = total(
        scrape(stack.services["gateway"].metrics_port), "parlance_gateway_embeddings_inputs_total"
    )
    assert after - before == 3
    # A gateway whose keys may spend 40 tokens a minute: the estimate of a big request is
    # refused before the generator is called.
    tight = start_extra_gateway(stack, {"GATEWAY_TPM_LIMIT": "40"})
    url = f"http://127.0.0.1:{tight.http_port}/v1/embeddings"
    headers = {"Authorization": f"Bearer {BOB_KEY}", **NO_CACHE}
    refused = httpx.post(url, json={"model": EMBED, "input": "word " * 200}, headers=headers)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "Retry-After" in refused.headers or "retry-after" in refused.headers
