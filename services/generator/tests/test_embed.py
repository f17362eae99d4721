"""Several models in one generator (GENERATOR_MODELS) and the Embed RPC with the real
all-MiniLM-L6-v2 (transformers, mean pooling, unit vectors), served over real gRPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import pytest_asyncio

from parlance.common.grpc_server import GrpcServiceHost
from parlance.generator.config import GeneratorSettings
from parlance.generator.main import create_host
from parlance.generator.serving import GeneratorServing
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT = "scripted-chat"
EMBED = "all-MiniLM-L6-v2"
MODELS = [
    {"id": CHAT, "engine": "scripted", "settings": {"scripted_tokens_per_s": 0, "n_ctx": 512}},
    {"id": EMBED, "engine": "transformers", "task": "embed", "settings": {"embed_max_inputs": 64}},
]


@dataclass
class Running:
    host: GrpcServiceHost
    serving: GeneratorServing
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def two_models() -> AsyncIterator[Running]:
    settings = GeneratorSettings(
        port=0, metrics_port=-1, shutdown_grace_s=1.0, models=json.dumps(MODELS)
    )
    host, serving = create_host(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    yield Running(host, serving, channel, generator_pb2_grpc.GeneratorServiceStub(channel))
    await channel.close()
    await host.stop()


def chat_request(user: str, model: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model, chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=user)])
    )


def embed_request(*texts: str, model: str = EMBED, **fields: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(model=model, inputs=[pb.EmbedInput(text=t) for t in texts], **fields)


def vectors(reply: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in reply.embeddings])


async def test_lists_every_model_with_its_task(two_models) -> None:  # type: ignore[no-untyped-def]
    listed = {m.id: m for m in (await two_models.stub.ListModels(pb.ListModelsRequest())).models}
    assert list(listed) == [CHAT, EMBED]
    assert listed[CHAT].task == pb.MODEL_TASK_CHAT
    assert (listed[CHAT].engine, listed[CHAT].max_model_len, listed[CHAT].dimensions) == (
        "scripted",
        512,
        0,
    )
    assert listed[EMBED].task == pb.MODEL_TASK_EMBED
    assert (listed[EMBED].engine, listed[EMBED].max_model_len, listed[EMBED].dimensions) == (
        "transformers",
        256,
        384,
    )


async def test_embeds_unit_vectors_with_sensible_similarities(two_models) -> None:  # type: ignore[no-untyped-def]
    pairs = [
        ("A man is playing a guitar.", "Someone is playing an instrument."),
        ("How do I reset my password?", "I forgot my password, how can I change it?"),
        ("The weather is sunny and warm today.", "It is a bright, hot day outside."),
    ]
    unrelated = "Stock markets fell sharply after the central bank raised interest rates."
    texts = [t for pair in pairs for t in pair] + [unrelated]
    reply = await two_models.stub.Embed(embed_request(*texts))
    assert reply.model == EMBED
    v = vectors(reply)
    assert v.shape == (7, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert all(e.token_count > 2 for e in reply.embeddings)
    assert reply.usage.prompt_tokens == sum(e.token_count for e in reply.embeddings)
    for i in range(3):
        paraphrase = float(v[2 * i] @ v[2 * i + 1])
        assert paraphrase > 0.5, pairs[i]
        assert paraphrase > float(v[2 * i] @ v[6]) + 0.3, pairs[i]
    # The same text alone gives the same vector as in a batch (padding is masked out).
    alone = vectors(await two_models.stub.Embed(embed_request(texts[0])))[0]
    assert np.allclose(alone, v[0], atol=1e-5)


async def test_token_ids_and_text_give_the_same_vector(two_models) -> None:  # type: ignore[no-untyped-def]
    tokenizer = two_models.serving.models[EMBED]._tokenizer
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    by_ids = await two_models.stub.Embed(
        pb.EmbedRequest(model=EMBED, inputs=[pb.EmbedInput(tokens=pb.TokenIds(ids=ids))])
    )
    by_text = await two_models.stub.Embed(embed_request("hello world"))
    assert np.allclose(vectors(by_ids), vectors(by_text), atol=1e-6)
    assert by_ids.embeddings[0].token_count == len(ids) + 2
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await two_models.stub.Embed(
            pb.EmbedRequest(model=EMBED, inputs=[pb.EmbedInput(tokens=pb.TokenIds(ids=[10**6]))])
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "vocabulary" in (info.value.details() or "")


async def test_long_inputs_are_refused_or_truncated(two_models) -> None:  # type: ignore[no-untyped-def]
    long_text = "word " * 400
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await two_models.stub.Embed(embed_request("short", long_text))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256" in (info.value.details() or "")
    reply = await two_models.stub.Embed(embed_request("short", long_text, truncate=True))
    assert [e.token_count for e in reply.embeddings] == [3, 256]


async def test_limits_and_dimensions(two_models) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await two_models.stub.Embed(embed_request(*(["x"] * 65)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 64" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await two_models.stub.Embed(embed_request("x", dimensions=128))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot shorten" in (info.value.details() or "")
    same = await two_models.stub.Embed(embed_request("x", dimensions=384))
    assert len(same.embeddings[0].values) == 384
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await two_models.stub.Embed(pb.EmbedRequest(model=EMBED))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_tasks_and_ids_are_checked(two_models) -> None:  # type: ignore[no-untyped-def]
    stub = two_models.stub
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Embed(embed_request("hi", model=CHAT))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serves the chat task" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Generate(chat_request("hi", model=EMBED)):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serves the embed task" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Embed(embed_request("hi", model="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # No model named: each RPC takes the first model of its task.
    assert (await stub.Embed(embed_request("hi", model=""))).model == EMBED
    replies = [r async for r in stub.Generate(chat_request("echo me"))]
    assert replies[-1].model == CHAT


async def test_concurrent_calls_share_batches(two_models) -> None:  # type: ignore[no-untyped-def]
    engine = two_models.serving.models[EMBED]
    before = engine.batches
    texts = [f"sentence number {i} about something" for i in range(24)]
    replies = await asyncio.gather(*(two_models.stub.Embed(embed_request(t)) for t in texts))
    assert all(len(r.embeddings) == 1 for r in replies)
    batches = engine.batches - before
    assert batches < len(texts), "concurrent calls should share forward passes"
    # Each answer is its own text's vector, whatever batch it rode in.
    solo = vectors(await two_models.stub.Embed(embed_request(texts[5])))[0]
    assert np.allclose(vectors(replies[5])[0], solo, atol=1e-5)
