"""IntentRouter over the real all-MiniLM-L6-v2: a generator gRPC server on port 0 (a scripted
chat model and the embedding model, as `make up` pairs them), reached through the gateway's
own GeneratorClient and ModelRegistry. Classification, the default route, the context window,
actions, the model check against the routing table, and reload."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from parlance.gateway.intents import (
    GeneratorEmbedder,
    IntentMatch,
    IntentRouter,
    RouteFileError,
)
from parlance.gateway.intents.index import anchor
from parlance.testing.generator_host import ServedGenerator, gateway_generator

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT = "scripted-chat"
EMBED = "all-MiniLM-L6-v2"
MODELS = [
    {"id": CHAT, "engine": "scripted", "settings": {"scripted_tokens_per_s": 0, "n_ctx": 512}},
    {"id": EMBED, "engine": "transformers", "task": "embed"},
]

ROUTES = """\
threshold: 0.35
default:
  system_prompt: You are a helpful assistant.
routes:
  - name: coding
    model: default
    system_prompt: You are a programming assistant.
    sampling: {temperature: 0.1}
    examples:
      - why does my python script throw a KeyError
      - how do I reverse a linked list in java
      - my react component renders twice
      - git push is rejected, how do I fix it
  - name: cooking
    model: scripted-chat
    store: false
    examples:
      - how long should I boil an egg
      - a simple recipe for pancakes
      - what can I cook with rice and beans
      - how do I make a tomato sauce from scratch
"""


Generator = ServedGenerator


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def generator() -> AsyncIterator[Generator]:
    async with gateway_generator(MODELS) as served:
        yield served


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


async def router_for(generator: Generator, path: Path, **kwargs: float) -> IntentRouter:
    embedder = GeneratorEmbedder(generator.client, generator.registry.resolve)
    return await IntentRouter.load(str(path), embedder, **kwargs)


def user(*texts: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": t} for t in texts]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_messages_go_to_the_intent_they_mean(generator: Generator, tmp_path: Path) -> None:
    router = await router_for(generator, write(tmp_path / "routes.yaml", ROUTES))
    before = counter("parlance_gateway_intent_requests_total", intent="coding", model="default")
    coding = await router.classify(user("TypeError: undefined is not a function in my JS code"))
    cooking = await router.classify(user("how many minutes do I bake a chocolate cake"))
    assert (coding.name, coding.fallback) == ("coding", False)
    assert (cooking.name, cooking.fallback) == ("cooking", False)
    for match in (coding, cooking):
        assert 0.35 <= match.score <= 1.0 and 0.0 < match.margin <= match.score
        assert match.duration_s > 0
    assert counter("parlance_gateway_intent_requests_total", intent="coding", model="default") == (
        before + 1
    )
    # The embedding model was found through the registry's "default" for embeddings.
    assert router.embedder.model == EMBED  # type: ignore[attr-defined]


async def test_only_the_newest_user_message_counts(generator: Generator, tmp_path: Path) -> None:
    router = await router_for(generator, write(tmp_path / "routes.yaml", ROUTES))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "how do I boil pasta properly"},
        {"role": "assistant", "content": "In salted water."},
        {"role": "user", "content": [{"type": "text", "text": "my python loop never ends"}]},
    ]
    assert (await router.classify(messages)).name == "coding"


async def test_unrelated_messages_take_the_default_route(
    generator: Generator, tmp_path: Path
) -> None:
    router = await router_for(generator, write(tmp_path / "routes.yaml", ROUTES))
    before = counter("parlance_gateway_intent_fallbacks_total")
    match = await router.classify(user("who won the football world cup in 1998"))
    assert (match.name, match.fallback) == ("default", True)
    assert match.score < 0.35 and match.nearest in {"coding", "cooking"}
    assert router.actions_for(match).system_prompt == "You are a helpful assistant."
    assert counter("parlance_gateway_intent_fallbacks_total") == before + 1
    # Nothing to classify (no user text): the default route, without an embedding call.
    empty = await router.classify([{"role": "system", "content": "hello"}])
    assert (empty.name, empty.fallback, empty.score) == ("default", True, 0.0)


async def test_route_actions(generator: Generator, tmp_path: Path) -> None:
    router = await router_for(generator, write(tmp_path / "routes.yaml", ROUTES))
    coding = router.actions_for(IntentMatch("coding", 0.8, 0.3, fallback=False))
    assert (coding.model, coding.system_prompt, coding.sampling.temperature) == (
        "default",
        "You are a programming assistant.",
        0.1,
    )
    cooking = router.actions_for(IntentMatch("cooking", 0.8, 0.3, fallback=False))
    assert (cooking.model, cooking.store, cooking.system_prompt) == (CHAT, False, None)


async def test_a_context_window_classifies_a_follow_up(
    generator: Generator, tmp_path: Path
) -> None:
    router = await router_for(generator, write(tmp_path / "routes.yaml", ROUTES))
    follow_up = user("how do I reverse a string in rust", "and what about in kotlin?")
    with_context = router.with_settings(context_turns=1, context_weight=0.6)
    match = await with_context.classify(follow_up)
    alone = await router.classify(follow_up)
    # The earlier turn pulls the vague follow-up towards its intent.
    assert match.nearest == "coding"
    assert match.score > alone.score


async def test_models_are_checked_against_the_routing_table(
    generator: Generator, tmp_path: Path
) -> None:
    router = await router_for(generator, write(tmp_path / "routes.yaml", ROUTES))
    await router.check_models(generator.registry.resolve)  # "default" and scripted-chat exist

    unknown = await router_for(
        generator, write(tmp_path / "unknown.yaml", ROUTES.replace("scripted-chat", "gpt-9"))
    )
    with pytest.raises(RouteFileError) as info:
        await unknown.check_models(generator.registry.resolve)
    assert str(info.value).startswith(
        f"{tmp_path / 'unknown.yaml'}, route 'cooking' (line 14): model 'gpt-9' cannot be used: "
        "The model `gpt-9` does not exist"
    )

    embedder_as_chat = await router_for(
        generator, write(tmp_path / "embed.yaml", ROUTES.replace("scripted-chat", EMBED))
    )
    with pytest.raises(RouteFileError, match="is an embedding model"):
        await embedder_as_chat.check_models(generator.registry.resolve)


async def test_an_edited_file_is_reloaded_and_a_bad_one_refused(
    generator: Generator, tmp_path: Path
) -> None:
    path = write(tmp_path / "routes.yaml", ROUTES)
    router = await router_for(generator, path, reload_check_s=0.0)
    await router.check_models(generator.registry.resolve)
    question = user("my cat keeps scratching the sofa, how do I stop it")
    assert (await router.classify(question)).name != "pets"

    extra = """\
  - name: pets
    examples:
      - my dog barks at night
      - how often should I feed a kitten
      - the cat scratches the furniture
"""
    write(path, ROUTES + extra)
    os.utime(path, ns=(1, 10**18))  # a new mtime even on a coarse clock
    assert (await router.classify(question)).name == "pets"

    ok_before = counter("parlance_gateway_intent_route_reloads_total", outcome="ok")
    errors_before = counter("parlance_gateway_intent_route_reloads_total", outcome="error")
    # A bad edit (a model no generator serves) is refused; the routes in force stay.
    write(path, ROUTES.replace("scripted-chat", "gpt-9") + extra)
    os.utime(path, ns=(1, 2 * 10**18))
    match = await router.classify(question)
    assert match.name == "pets"
    assert counter("parlance_gateway_intent_route_reloads_total", outcome="error") == (
        errors_before + 1
    )
    # Fixed: taken on the next check.
    write(path, ROUTES)
    os.utime(path, ns=(1, 3 * 10**18))
    assert (await router.classify(question)).name != "pets"
    assert counter("parlance_gateway_intent_route_reloads_total", outcome="ok") == ok_before + 1


async def test_a_reload_cannot_change_the_embedding_model(
    generator: Generator, tmp_path: Path
) -> None:
    path = write(tmp_path / "routes.yaml", f"embed_model: {EMBED}\n" + ROUTES)
    router = await router_for(generator, path, reload_check_s=0.0)
    errors_before = counter("parlance_gateway_intent_route_reloads_total", outcome="error")
    # The examples' vectors (and the cached messages') are the first model's: refused.
    write(path, "embed_model: another-embedder\n" + ROUTES)
    os.utime(path, ns=(1, 10**18))
    assert not await router.reload()
    assert router.routes.spec.embed_model == EMBED
    assert counter("parlance_gateway_intent_route_reloads_total", outcome="error") == (
        errors_before + 1
    )


async def test_a_bad_file_fails_the_load(generator: Generator, tmp_path: Path) -> None:
    path = write(tmp_path / "routes.yaml", ROUTES.replace("- name: cooking", "- name: coding"))
    with pytest.raises(RouteFileError, match="route name 'coding' \\(line 14\\) is used twice"):
        await router_for(generator, path)


async def test_out_of_scope_examples_and_centring(generator: Generator, tmp_path: Path) -> None:
    # No threshold: without out-of-scope examples every message takes an intent.
    router = await router_for(
        generator, write(tmp_path / "routes.yaml", ROUTES.replace("0.35", "-1.0"))
    )
    sports = user("which team won the basketball final yesterday")
    assert (await router.classify(sports)).fallback is False
    text = ROUTES.replace("0.35", "-1.0").replace(
        "default:\n",
        "center: true\ndefault:\n  examples: [who won the football match, the tennis results"
        " of today]\n",
    )
    scoped = await router_for(generator, write(tmp_path / "scoped.yaml", text))
    match = await scoped.classify(sports)
    assert (match.name, match.fallback) == ("default", True)
    assert match.nearest in {"coding", "cooking"}
    # In-scope messages still take their intent (the scores are of centred vectors).
    coding = await scoped.classify(user("TypeError: undefined is not a function in my JS code"))
    assert (coding.name, coding.fallback) == ("coding", False)


async def test_name_anchors_make_each_route_name_an_example(
    generator: Generator, tmp_path: Path
) -> None:
    text = ROUTES.replace("0.35", "-1.0").replace("default:\n", "method: nearest\ndefault:\n")
    plain = await router_for(generator, write(tmp_path / "plain.yaml", text))
    anchored_text = text.replace("default:\n", "name_anchors: true\ndefault:\n")
    anchored = await router_for(generator, write(tmp_path / "anchored.yaml", anchored_text))
    # The name is one more example of its route: the message "cooking" is now that example.
    assert (await plain.classify(user("cooking"))).score < 0.9
    match = await anchored.classify(user("cooking"))
    assert match.name == "cooking" and match.score == pytest.approx(1.0, abs=1e-4)
    assert anchor("small_talk") == "small talk" and anchor("faq.billing-v2") == "faq billing v2"
