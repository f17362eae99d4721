"""Task `reward`: a model trained by `parlance-train reward` (the real trainer, bounded: 10 CPU
steps on all-MiniLM-L6-v2; the session's one run, parlance.testing's `reward_training`, shared
with the trainer's test), served over real gRPC: Score ranks the preferred answer of fresh
prompts higher, concurrent calls share forward passes, caps and bad calls are clear errors,
and LoadModel/UnloadModel register a newly trained folder without a restart."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from parlance.common.grpc_server import GrpcServiceHost
from parlance.generator.config import GeneratorSettings
from parlance.generator.main import create_host
from parlance.generator.serving import GeneratorServing
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc
from parlance.testing.reward_model import RewardTraining

# The first test's setup may train the model (~30 s of CPU; minutes of wall time on a busy
# machine) when no earlier suite did.
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

CHAT = "scripted-chat"
REWARD = "reward-bullets"


@pytest.fixture(scope="module")
def trained(reward_training: RewardTraining, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model folder from the real trainer (the simulated users prefer bulleted lists),
    copied into a load root of this module's own (the tests add folders beside it)."""
    assert reward_training.exit_code == 0, reward_training.stderr
    folder = tmp_path_factory.mktemp("models") / reward_training.folder.name
    shutil.copytree(reward_training.folder, folder)
    return folder


@dataclass
class Running:
    host: GrpcServiceHost
    serving: GeneratorServing
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub
    root: Path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def generator(trained: Path) -> AsyncIterator[Running]:
    models = [
        {"id": CHAT, "engine": "scripted", "settings": {"scripted_tokens_per_s": 0}},
        {
            "id": REWARD,
            "engine": "transformers",
            "task": "reward",
            "path": str(trained),
            "settings": {"reward_max_candidates": 8, "reward_max_chars": 4000},
        },
    ]
    settings = GeneratorSettings(
        port=0,
        metrics_port=-1,
        shutdown_grace_s=1.0,
        models=json.dumps(models),
        load_root=str(trained.parent),
    )
    host, serving = create_host(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    yield Running(
        host, serving, channel, generator_pb2_grpc.GeneratorServiceStub(channel), trained.parent
    )
    await channel.close()
    await host.stop()


def score_request(user: str, *candidates: str, model: str = REWARD) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        model=model,
        messages=[pb.ChatMessage(role="user", content=user)],
        candidates=list(candidates),
    )


async def test_listed_with_its_task(generator: Running) -> None:
    listed = {m.id: m for m in (await generator.stub.ListModels(pb.ListModelsRequest())).models}
    assert listed[REWARD].task == pb.MODEL_TASK_REWARD
    assert listed[REWARD].engine == "transformers"
    assert listed[REWARD].max_model_len == 128  # the trainer's max_length, from the card
    assert listed[CHAT].task == pb.MODEL_TASK_CHAT


async def test_preferred_answers_score_higher_on_fresh_prompts(generator: Running) -> None:
    from parlance.trainer import synthetic

    # Prompts the trainer never saw (another seed); the candidates in both orders.
    fresh = synthetic.pairs(20, trait="bullets", seed=999, max_per_prompt=1)
    wins = 0
    for record in fresh:
        good, bad = record["chosen"][0]["content"], record["rejected"][0]["content"]
        user = record["prompt"][0]["content"]
        first = await generator.stub.Score(score_request(user, good, bad))
        second = await generator.stub.Score(score_request(user, bad, good))
        assert first.model == REWARD and len(first.scores) == 2
        # The score of a candidate does not depend on its position in the call.
        assert first.scores[0] == pytest.approx(second.scores[1], abs=1e-4)
        assert len(first.token_counts) == 2 and first.usage.prompt_tokens == sum(first.token_counts)
        wins += first.scores[0] > first.scores[1]
    assert wins >= 17, f"the preferred answer won {wins} of {len(fresh)}"


async def test_concurrent_calls_share_batches(generator: Running) -> None:
    engine = generator.serving.reward_engine(REWARD)[1]
    before = engine.batches  # type: ignore[attr-defined]
    calls = [
        score_request(f"Tips for a trip number {i}?", "- Pack light", "Pack light.")
        for i in range(8)
    ]
    results = await asyncio.gather(*(generator.stub.Score(c) for c in calls))
    assert all(len(r.scores) == 2 for r in results)
    assert engine.batches - before < len(calls)  # type: ignore[attr-defined]


async def test_long_conversations_are_cut_at_their_start(generator: Running) -> None:
    long_user = "Tell me about gardens. " * 60  # far over the 128-token window
    response = await generator.stub.Score(score_request(long_user, "- Water early", "Water early."))
    assert response.truncated == 2
    assert response.token_counts == [128, 128]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (score_request("q"), "candidates must not be empty"),
        (score_request("q", *["a"] * 9), "9 candidates in one call; the limit is 8"),
        (score_request("q" * 4000, "a"), "takes at most 4000 per call"),
        (
            pb.ScoreRequest(model=REWARD, candidates=["a"]),
            "messages must not be empty",
        ),
        (score_request("q", "a", model=CHAT), "serves the chat task"),
    ],
)
async def test_bad_calls_are_invalid_argument(
    generator: Running, request_: pb.ScoreRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.stub.Score(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_unknown_model_is_not_found(generator: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.stub.Score(score_request("q", "a", model="nope@00000000"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_load_and_unload_at_run_time(generator: Running, trained: Path) -> None:
    copy = generator.root / "copy" / trained.name
    shutil.copytree(trained, copy)
    new_id = "reward-bullets@copy"
    loaded = await generator.stub.LoadModel(
        pb.LoadModelRequest(
            id=new_id, task=pb.MODEL_TASK_REWARD, path=str(copy), settings={"max_model_len": "64"}
        )
    )
    assert loaded.model.id == new_id and loaded.model.max_model_len == 64
    listed = [m.id for m in (await generator.stub.ListModels(pb.ListModelsRequest())).models]
    assert new_id in listed
    scored = await generator.stub.Score(score_request("Tips?", "- One\n- Two", model=new_id))
    assert len(scored.scores) == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.stub.LoadModel(
            pb.LoadModelRequest(id=new_id, task=pb.MODEL_TASK_REWARD, path=str(copy))
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    await generator.stub.UnloadModel(pb.UnloadModelRequest(id=new_id))
    listed = [m.id for m in (await generator.stub.ListModels(pb.ListModelsRequest())).models]
    assert new_id not in listed and REWARD in listed
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.stub.Score(score_request("Tips?", "a", model=new_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"path": "/etc"}, grpc.StatusCode.INVALID_ARGUMENT, "is not inside GENERATOR_LOAD_ROOT"),
        ({"task": pb.MODEL_TASK_CHAT}, grpc.StatusCode.INVALID_ARGUMENT, "cannot be loaded at run"),
        ({"task": pb.MODEL_TASK_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "task must be"),
        ({"id": CHAT}, grpc.StatusCode.ALREADY_EXISTS, "is served already"),
        ({"settings": {"nope": "1"}}, grpc.StatusCode.INVALID_ARGUMENT, "not per-model"),
        ({"subfolder": "empty"}, grpc.StatusCode.INVALID_ARGUMENT, "no config.json"),
    ],
)
async def test_load_refusals(
    generator: Running,
    trained: Path,
    fields: dict[str, object],
    code: grpc.StatusCode,
    message: str,
) -> None:
    values: dict[str, object] = {"id": "x@1", "task": pb.MODEL_TASK_REWARD, "path": str(trained)}
    subfolder = fields.pop("subfolder", None)
    if subfolder:
        (generator.root / str(subfolder)).mkdir(exist_ok=True)
        values["path"] = str(generator.root / str(subfolder))
    values.update(fields)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.stub.LoadModel(pb.LoadModelRequest(**values))  # type: ignore[arg-type]
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")
    assert "x@1" not in generator.serving.models


async def test_unload_refusals(generator: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.stub.UnloadModel(pb.UnloadModelRequest(id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.stub.UnloadModel(pb.UnloadModelRequest(id=CHAT))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_loading_is_off_without_a_root(trained: Path) -> None:
    settings = GeneratorSettings(port=0, metrics_port=-1, shutdown_grace_s=1.0, engine="scripted")
    host, _ = create_host(settings)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.LoadModel(
                    pb.LoadModelRequest(id="r@1", task=pb.MODEL_TASK_REWARD, path=str(trained))
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "GENERATOR_LOAD_ROOT" in (caught.value.details() or "")
    finally:
        await host.stop()


def test_chat_ids_reads_both_apply_chat_template_shapes() -> None:
    """transformers 5 (the GPU image's) returns a mapping from apply_chat_template(tokenize=True)
    where the lock's 4.57 returns the ids; the reward engine failed on the H200 with the first
    ('too many dimensions str'). A stand-in tokenizer for each shape (transformers 5 is not
    installed here)."""
    from parlance.generator.engine.reward import chat_ids

    class Returns:
        def __init__(self, out: object) -> None:
            self.out = out

        def apply_chat_template(self, conversation: object, tokenize: bool) -> object:
            assert tokenize
            return self.out

    conversation = [{"role": "user", "content": "hi"}]
    assert chat_ids(Returns([1, 2, 3]), conversation) == [1, 2, 3]
    mapping = {"input_ids": [4, 5], "attention_mask": [1, 1]}
    assert chat_ids(Returns(mapping), conversation) == [4, 5]
