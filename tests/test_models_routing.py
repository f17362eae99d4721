"""Several models behind one gateway, routed by model id over two generator processes:
/v1/models lists every model with its task (aliases first), calls go to a generator that
serves the model, replicas share a model's calls, unknown models and wrong tasks are clear
errors, and when a replica is killed the calls not yet started go to the other one.

The chat models are the scripted engine (each replica answers with its own text, so the
reply says which one served it); the embedding model is the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from parlance.testing import (
    ALICE_KEY,
    ServiceProcess,
    Stack,
    free_port,
    scrape,
    total,
    wait_until,
)

VENV_BIN = Path(sys.executable).parent
SMALL, LARGE, SLOW, EMBED = "chat-small", "chat-large", "chat-slow", "all-MiniLM-L6-v2"
ALIASES = {"default": LARGE, "fast": SMALL}


def scripted(model_id: str, text: str, tokens_per_s: float = 0) -> dict[str, object]:
    return {
        "id": model_id,
        "engine": "scripted",
        "settings": {"scripted_text": text, "scripted_tokens_per_s": tokens_per_s},
    }


# Replica one: chat-small, chat-slow and the embedding model. Replica two: chat-small,
# chat-slow and chat-large. chat-slow streams for 5 s, so that its streams are still running
# when a replica dies.
GENERATOR_ONE = [
    scripted(SMALL, "one " * 20, 40),
    scripted(SLOW, "one " * 200, 40),
    {"id": EMBED, "engine": "transformers"},
]
GENERATOR_TWO = [
    scripted(SMALL, "two " * 20, 40),
    scripted(SLOW, "two " * 200, 40),
    scripted(LARGE, "large"),
]


def generator_process(name: str, run_dir: Path, models: list[dict[str, object]]) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        name=name,
        command=[str(VENV_BIN / "parlance-generator")],
        env={
            "PYTHONUNBUFFERED": "1",
            "GENERATOR_PORT": str(port),
            "GENERATOR_METRICS_PORT": str(free_port()),
            "GENERATOR_MODELS": json.dumps(models),
        },
        log_path=run_dir / f"{name}.log",
        grpc_port=port,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Stack]:
    """The stack with two generator processes behind one gateway."""
    tmp = tmp_path_factory.mktemp("routing")
    stack = Stack(
        data_dir=tmp,
        fixed_ports=False,
        api_key=ALICE_KEY,
        redis_url=redis_server,
        extra_env={
            "generator": {"GENERATOR_MODELS": json.dumps(GENERATOR_ONE)},
            "gateway": {
                "GATEWAY_API_KEYS": f"alice:{ALICE_KEY}",
                "GATEWAY_RETRY_AFTER_S": "2",
                "GATEWAY_MODEL_ALIASES": json.dumps(ALIASES),
                # Output moderation would hold back the scripted words; not what is tested.
                "GATEWAY_MODERATE_OUTPUT": "false",
            },
        },
    )
    stack.build()
    two = generator_process("generator-two", tmp / "run", GENERATOR_TWO)
    stack.services["generator-two"] = two
    gateway = stack.services["gateway"]
    one_port = stack.services["generator"].grpc_port
    gateway.env["GATEWAY_GENERATOR_URL"] = f"127.0.0.1:{one_port},127.0.0.1:{two.grpc_port}"
    names = ["generator", "generator-two", "safety", "history"]
    try:
        for name in names:
            stack.services[name].start()
        for name in names:
            stack.wait_ready(name)
        stack.start_service("gateway")
        yield stack
    finally:
        two.resume()
        two.stop()
        stack.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=ALICE_KEY, max_retries=0)


def chat(stack: Stack, model: str, **body: object) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        timeout=60,
    )


def answer(stack: Stack, model: str) -> str:
    response = chat(stack, model)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_models_lists_every_model_with_its_task(stack: Stack, client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["default", "fast", SMALL, SLOW, EMBED, LARGE]
    by_id = {m.id: m.model_dump() for m in models}
    assert by_id["default"]["alias_for"] == LARGE and by_id["fast"]["alias_for"] == SMALL
    assert {i: by_id[i]["task"] for i in by_id} == {
        "default": "chat",
        "fast": "chat",
        SMALL: "chat",
        SLOW: "chat",
        EMBED: "embed",
        LARGE: "chat",
    }
    assert by_id[EMBED]["dimensions"] == 384 and by_id[EMBED]["max_model_len"] == 256
    assert by_id[SMALL]["max_model_len"] == 2048
    assert client.models.retrieve(EMBED).model_dump()["task"] == "embed"
    ready = httpx.get(f"{stack.gateway_url}/readyz").json()
    assert ready["models"][SMALL] == {"status": "ok", "task": "chat", "replicas": "2/2"}
    assert ready["models"][LARGE] == {"status": "ok", "task": "chat", "replicas": "1/1"}


def test_routes_by_model_id_and_alias(stack: Stack) -> None:
    assert answer(stack, LARGE) == "large"
    assert answer(stack, "default") == "large"
    assert answer(stack, "CHAT-LARGE") == "large"
    assert answer(stack, "fast").split()[0] in ("one", "two")
    embedded = httpx.post(
        f"{stack.gateway_url}/v1/embeddings",
        json={"model": EMBED, "input": "routed to replica one"},
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        timeout=60,
    )
    assert embedded.status_code == 200 and embedded.json()["model"] == EMBED


def test_replicas_share_a_models_calls(stack: Stack) -> None:
    served = {answer(stack, SMALL).split()[0] for _ in range(8)}
    assert served == {"one", "two"}
    routed = scrape(stack.services["gateway"].metrics_port)
    per_target = {
        key: value
        for key, value in routed.items()
        if key.startswith("parlance_gateway_generator_calls_total") and 'method="generate"' in key
    }
    assert len(per_target) == 2 and all(v >= 3 for v in per_target.values()), per_target


def test_unknown_model_and_wrong_task(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "x"}])
    assert wrong.value.body["code"] == "model_task_mismatch"
    assert f"'{EMBED}' is an embedding model (task 'embed')" in wrong.value.body["message"]
    assert "/v1/embeddings" in wrong.value.body["message"]
    with pytest.raises(openai.BadRequestError) as reverse:
        client.embeddings.create(model=LARGE, input="x")
    assert "is a chat model" in reverse.value.body["message"]


async def test_conversation_affinity_keeps_each_conversation_on_one_replica(stack: Stack) -> None:
    """GATEWAY_GENERATOR_ROUTING=affinity, through the gateway's own generator client against
    this module's two real generator processes: every turn of a conversation is served by one
    replica (the scripted text says which), and the conversations use both replicas. Runs
    before the replica-killing test below, which leaves one replica."""
    from parlance.gateway.clients.pool import GeneratorClient
    from parlance.generator.v1 import generator_pb2

    one = stack.services["generator"].grpc_port
    two = stack.services["generator-two"].grpc_port
    pool = GeneratorClient(f"127.0.0.1:{one},127.0.0.1:{two}", 30.0, 1, affinity=True)
    try:
        await pool.wait_listed(10.0)
        served: dict[int, set[str]] = {}
        # 16 conversations: the chance that a fair hash puts them all on one replica is 2^-15.
        for conversation in range(16):
            history = [generator_pb2.ChatMessage(role="user", content=f"topic {conversation}")]
            for turn in range(2):
                request = generator_pb2.GenerateRequest(
                    request_id=f"affinity-{conversation}-{turn}",
                    model=SMALL,
                    chat=generator_pb2.ChatInput(messages=history),
                    sampling=generator_pb2.SamplingParams(max_tokens=2),
                )
                text = "".join(
                    [c.text async for reply in pool.generate(request) for c in reply.choices]
                )
                served.setdefault(conversation, set()).add(text.split()[0])
                history = [
                    *history,
                    generator_pb2.ChatMessage(role="assistant", content=text),
                    generator_pb2.ChatMessage(role="user", content=f"and turn {turn + 1}?"),
                ]
        assert all(len(replicas) == 1 for replicas in served.values()), served
        assert set().union(*served.values()) == {"one", "two"}
    finally:
        await pool.close()


async def test_dns_discovery_follows_the_replicas_a_name_resolves_to(stack: Stack) -> None:
    """GATEWAY_GENERATOR_DISCOVERY=dns, through the gateway's own generator client against this
    module's two real generator processes: the name resolves (a test double of DNS) to one
    replica, then to both, then to the second only; calls follow, and the replica that left
    DNS is out of the routing table."""
    from parlance.gateway.clients.pool import GeneratorClient
    from parlance.gateway.clients.targets import Discovery
    from parlance.generator.v1 import generator_pb2

    one = f"127.0.0.1:{stack.services['generator'].grpc_port}"
    two = f"127.0.0.1:{stack.services['generator-two'].grpc_port}"
    answer = [one]

    async def resolver(entry: str) -> list[str]:
        return list(answer)

    discovery = Discovery(["dns:///generators.test:50051"], resolver)
    pool = GeneratorClient(
        "dns:///generators.test:50051", 30.0, 1, 120.0, refresh_s=0.2, discovery=discovery
    )

    async def served(calls: int) -> set[str]:
        texts = set()
        for i in range(calls):
            request = generator_pb2.GenerateRequest(
                request_id=f"discovery-{i}-{len(answer)}-{answer[0]}",
                model=SMALL,
                chat=generator_pb2.ChatInput(
                    messages=[generator_pb2.ChatMessage(role="user", content="hi")]
                ),
                sampling=generator_pb2.SamplingParams(max_tokens=1),
            )
            text = "".join(
                [c.text async for reply in pool.generate(request) for c in reply.choices]
            )
            texts.add(text.split()[0])
        return texts

    async def until_serving(urls: set[str]) -> None:
        for _ in range(100):
            if {t.url for t in pool.targets if t.serving} == urls:
                return
            await asyncio.sleep(0.1)
        raise AssertionError([(t.url, t.serving) for t in pool.targets])

    try:
        await pool.wait_listed(10.0)
        await until_serving({one})
        assert await served(4) == {"one"}
        answer[:] = [one, two]
        await until_serving({one, two})
        assert await served(8) == {"one", "two"}
        answer[:] = [two]
        await until_serving({two})
        assert [t.url for t in pool.targets] == [two]
        assert await served(4) == {"two"}
    finally:
        await pool.close()


def test_killed_replica_traffic_continues(stack: Stack) -> None:
    """Runs last: it kills replica two while streams run on both replicas. The streams on
    replica two end with an error event (a started stream fails, as it always did); those on
    replica one finish; calls made right after the kill, before the gateway's health watch
    can have noticed, go to replica one; readiness says which models are left."""
    two = stack.services["generator-two"]
    streams: list[str] = []
    first_chunks = threading.Semaphore(0)

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{stack.gateway_url}/v1/chat/completions",
            json={"model": SLOW, "stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {ALICE_KEY}"},
            timeout=60,
        ) as response:
            text, signalled = "", False
            for piece in response.iter_text():
                text += piece
                if not signalled and '"content":"' in text.replace(" ", ""):
                    signalled = True
                    first_chunks.release()
            streams.append(text)

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert first_chunks.acquire(timeout=20), "every stream has started"
    two.kill()
    answers = [answer(stack, SMALL) for _ in range(4)]
    for thread in threads:
        thread.join(30)
    assert all(a.split()[0] == "one" for a in answers), answers
    assert len(streams) == 4
    failed = [s for s in streams if '"error"' in s]
    finished = [s for s in streams if '"finish_reason":"stop"' in s.replace(" ", "")]
    assert len(failed) == 2 and len(finished) == 2, streams
    assert all('"two' in s or "two" in s for s in failed)
    wait_until(
        lambda: (
            httpx.get(f"{stack.gateway_url}/readyz").json()["models"][LARGE]["status"]
            == "unavailable"
        ),
        10,
        "chat-large unavailable in /readyz",
    )
    ready = httpx.get(f"{stack.gateway_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"][SMALL] == {"status": "ok", "task": "chat", "replicas": "1/2"}
    gone = chat(stack, LARGE)
    assert gone.status_code == 503
    assert "Retry-After" in gone.headers or "retry-after" in gone.headers
    samples = scrape(stack.services["gateway"].metrics_port)
    up = total(samples, "parlance_gateway_generator_target_up")
    assert up == 1
