"""Moderation through the stack: /v1/moderations, and streamed output moderation that never
sends a flagged character. The generator here is the scripted test engine, which emits a
given text (the real model cannot be made to say something toxic on demand)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from parlance.testing import (
    ALICE,
    ALICE_KEY,
    DONE,
    MODEL,
    Stack,
    StackPool,
    assert_openai_error,
    read_events,
    scrape,
    scripted_generator,
    total,
)

CLEAN = "Hello there, this is a friendly answer."
TOXIC = " You are a stupid worthless idiot and a moron."
# Clean sentences after the toxic one keep the generation running (about 4 s at 10 tokens/s)
# while the default classifier, slower on a loaded machine, flags the toxic window.
SCRIPT = CLEAN + TOXIC + " Have a nice day." + " The trains run on time today." * 6
TOXIC_WORDS = ("stupid", "worthless", "idiot", "moron")


@pytest.fixture(scope="module")
def scripted_stack(stacks: StackPool) -> Iterator[Stack]:
    # 10 tokens/s: the generation must still run when the toxic window has been classified
    # (the cancellation test below); the default classifier, a transformer, takes tens of ms
    # per window on a busy 2-core machine, so at 200 tokens/s the script had already ended.
    stack = stacks.start("moderation", env={"generator": scripted_generator(SCRIPT, 10)})
    yield stack
    stack.stop()


def body(**extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 100,
        **extra,
    }


def test_streamed_answer_stops_before_the_toxic_sentence(scripted_stack: Stack) -> None:
    generator_metrics = scripted_stack.services["generator"].metrics_port
    assert generator_metrics is not None
    sent = b""
    with httpx.stream(
        "POST",
        f"{scripted_stack.gateway_url}/v1/chat/completions",
        json=body(stream=True, stream_options={"include_usage": True}),
        headers=ALICE,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for raw in response.iter_raw():
            sent += raw
    content_type = {"content-type": response.headers["content-type"]}
    events = read_events(httpx.Response(200, headers=content_type, content=sent))
    # No character of the flagged sentence ever reached the client, in any form.
    for word in TOXIC_WORDS:
        assert word not in sent.decode()
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == CLEAN
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "content_filter"
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] >= len(CLEAN.split())
    assert usage["prompt_tokens"] > 0
    assert sent.endswith(f"data: {DONE}\n\n".encode())
    # The generation was cancelled, not run to the end (the generator counts it once the
    # cancellation has reached it, just after the client's stream ended).
    cancelled = 'parlance_generator_requests_total{engine="scripted",finish_reason="cancelled"}'
    deadline = time.monotonic() + 10
    while not scrape(generator_metrics).get(cancelled) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scrape(generator_metrics).get(cancelled)


def test_plain_answer_is_cut_before_the_flagged_window(scripted_stack: Stack) -> None:
    client = openai.OpenAI(
        base_url=f"{scripted_stack.gateway_url}/v1", api_key=ALICE_KEY, max_retries=0
    )
    completion = client.chat.completions.create(**body())
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == CLEAN


def test_flagged_answers_are_not_cached(scripted_stack: Stack) -> None:
    url = f"{scripted_stack.gateway_url}/v1/chat/completions"
    first = httpx.post(url, json=body(temperature=0), headers=ALICE, timeout=60)
    second = httpx.post(url, json=body(temperature=0), headers=ALICE, timeout=60)
    assert first.headers["x-cache"] == second.headers["x-cache"] == "miss"


def test_moderations_endpoint_in_openai_shape(scripted_stack: Stack) -> None:
    client = openai.OpenAI(
        base_url=f"{scripted_stack.gateway_url}/v1", api_key=ALICE_KEY, max_retries=0
    )
    reply = client.moderations.create(input=["Have a lovely day!", TOXIC.strip()])
    assert reply.id.startswith("modr-")
    assert [r.flagged for r in reply.results] == [False, True]
    toxic = reply.results[1]
    assert toxic.categories.harassment is True
    assert toxic.category_scores.harassment > 0.9
    assert toxic.categories.violence is False
    single = client.moderations.create(input="Nice weather.")
    assert len(single.results) == 1 and not single.results[0].flagged
    raw = httpx.post(
        f"{scripted_stack.gateway_url}/v1/moderations",
        json={"input": "hello"},
        headers=ALICE,
    ).json()
    # The default classifier (profanity) and exactly the category it scores.
    assert raw["evaluated_categories"] == ["harassment"]
    assert raw["results"][0]["category_applied_input_types"]["hate"] == []


def test_moderations_take_text_parts_and_refuse_images_clearly(scripted_stack: Stack) -> None:
    """The multi-modal form (omni-moderation's): the parts are one input with one result;
    an image is refused by name rather than by a type error about strings."""
    client = openai.OpenAI(
        base_url=f"{scripted_stack.gateway_url}/v1", api_key=ALICE_KEY, max_retries=0
    )
    parts = client.moderations.create(
        input=[{"type": "text", "text": "Hello there."}, {"type": "text", "text": TOXIC.strip()}]
    )
    assert len(parts.results) == 1 and parts.results[0].categories.harassment is True
    url = f"{scripted_stack.gateway_url}/v1/moderations"
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    refused = httpx.post(url, json={"input": [image]}, headers=ALICE)
    error = assert_openai_error(refused, 400)
    assert error["param"] == "input.0.type" and "images are not supported" in error["message"]
    # A wrong part names the field inside it, not the first form's type.
    wrong = httpx.post(url, json={"input": [{"type": "text"}]}, headers=ALICE)
    assert assert_openai_error(wrong, 400)["param"] == "input.0.text"
    too_many = httpx.post(url, json={"input": ["hi"] * 300}, headers=ALICE)
    assert "at most 256" in assert_openai_error(too_many, 400)["message"]


def test_moderation_counts_flags_in_metrics(scripted_stack: Stack) -> None:
    port = scripted_stack.services["gateway"].metrics_port
    samples = scrape(port)
    assert total(samples, "parlance_gateway_moderation_flags_total") >= 1
    assert total(samples, "parlance_gateway_moderation_windows_total") >= 2
