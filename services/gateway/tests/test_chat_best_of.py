"""best_of (chat/best_of.py), in process: k candidates in one generator call, the reward model's
best returned as choice 0 (JSON and stream), usage of all k, flagged candidates never returned,
the refusals, and what is stored. The reward model is FakeGenerator's stand-in (a candidate's
score is its word count unless a test sets score_fn); the real one is tested through the real
stack in tests/test_reward_loop.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from parlance.gateway.chat.best_of import RewardModels
from parlance.gateway.chat.limits import estimate_tokens
from parlance.gateway.chat.protocol import ChatCompletionRequest
from parlance.gateway.config import GatewaySettings
from parlance.generator.v1 import generator_pb2
from parlance.testing.fakes import FAKE_MODEL, FAKE_REWARD_MODEL, FakeGenerator, Script, wait_for
from parlance.testing.inprocess import Caller, InProcessGateway, inprocess_gateway

CHOSEN = "parlance_gateway_best_of_chosen_total"
# Candidate i has i + 1 words (after the first's): with the word-count reward, the last wins.
CANDIDATES = [["One."], ["One", " two."], ["One", " two", " three", " four."], ["Two", " words."]]


def rewarded() -> FakeGenerator:
    generator = FakeGenerator()
    generator.reward = True
    generator.script = Script(deltas=["Plain."], choices=CANDIDATES)
    return generator


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with inprocess_gateway(tmp_path, generator=rewarded()) as gateway:
        yield gateway


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _error(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_the_best_candidate_is_returned_with_the_usage_of_all(gw: InProcessGateway) -> None:
    before = _metric(CHOSEN, n="4", index="2")
    response = await gw.chat(best_of=4, temperature=1.0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0]
    assert body["choices"][0]["message"]["content"] == "One two three four."
    assert body["choices"][0]["finish_reason"] == "stop"
    # One generator call for the four; usage counts every candidate's tokens (1+2+4+2).
    assert [r.sampling.n for r in gw.generator.requests] == [4]
    assert body["usage"]["completion_tokens"] == 9
    assert body["parlance"]["best_of"] == {
        "n": 4,
        "chosen_index": 2,
        "score": 4.0,
        "scores": [1.0, 2.0, 4.0, 2.0],
        "reward_model": FAKE_REWARD_MODEL,
    }
    # The reward model saw the conversation as the generator did, and each candidate.
    (scored,) = gw.generator.score_requests
    assert scored.model == FAKE_REWARD_MODEL
    assert [m.content for m in scored.messages] == ["Hi there"]
    assert list(scored.candidates) == ["One.", "One two.", "One two three four.", "Two words."]
    assert _metric(CHOSEN, n="4", index="2") == before + 1
    assert "reward;dur=" in response.headers["server-timing"]
    assert response.headers["x-cache"] == "bypass"


async def test_a_stream_sends_the_chosen_candidate_after_selection(gw: InProcessGateway) -> None:
    events = await gw.events(
        gw.body(best_of=3, stream=True, stream_options={"include_usage": True})
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["parlance"]["best_of"]["chosen_index"] == 2
    assert all("parlance" not in c for c in chunks[1:])
    assert {choice["index"] for c in chunks for choice in c["choices"]} == {0}
    text = "".join(choice["delta"].get("content") or "" for c in chunks for choice in c["choices"])
    assert text == "One two three four."
    assert chunks[-1]["usage"]["completion_tokens"] == 7  # 1 + 2 + 4 of the three candidates


async def test_equal_scores_choose_the_first(gw: InProcessGateway) -> None:
    gw.generator.score_fn = lambda text: 0.5
    body = (await gw.chat(best_of=4)).json()
    assert body["parlance"]["best_of"]["chosen_index"] == 0
    assert body["choices"][0]["message"]["content"] == "One."


async def test_a_flagged_candidate_is_never_returned_nor_scored(gw: InProcessGateway) -> None:
    # The longest candidate (the reward's favourite) says the fake safety's flag word.
    gw.generator.script = Script(choices=[["Fine", " answer."], ["A", " long", " badword", "."]])
    body = (await gw.chat(best_of=2)).json()
    assert body["choices"][0]["message"]["content"] == "Fine answer."
    assert body["parlance"]["best_of"]["chosen_index"] == 0
    assert body["parlance"]["best_of"]["scores"] == [2.0, None]
    assert list(gw.generator.score_requests[-1].candidates) == ["Fine answer."]


async def test_all_candidates_flagged_is_the_flagged_answer_of_one(gw: InProcessGateway) -> None:
    gw.generator.script = Script(choices=[["badword", " one."], ["badword", " two."]])
    plain = (await gw.chat()).json()  # the single-answer flow, for comparison
    gw.generator.script = Script(choices=[["badword", " one."], ["badword", " two."]])
    body = (await gw.chat(best_of=2)).json()
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"] == plain["choices"][0]["message"]
    assert body["parlance"]["best_of"] == {
        "n": 2,
        "chosen_index": 0,
        "scores": [None, None],
        "reward_model": FAKE_REWARD_MODEL,
    }
    assert gw.generator.score_requests == []


async def test_a_stored_chat_keeps_the_chosen_answer_only(gw: InProcessGateway) -> None:
    body = (await gw.chat(best_of=4, store=True)).json()
    stored = gw.history.stored(body["conversation_id"])
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Hi there"),
        ("assistant", "One two three four."),
    ]
    assert stored[1].model == FAKE_MODEL and stored[1].generated
    assert stored[1].usage.completion_tokens == 9


async def test_refusals(gw: InProcessGateway) -> None:
    too_many = _error(await gw.chat(best_of=5))
    assert too_many["param"] == "best_of" and "at most 4" in too_many["message"]
    with_n = _error(await gw.chat(best_of=2, n=2))
    assert with_n["param"] == "best_of" and "n > 1" in with_n["message"]
    assert _error(await gw.chat(best_of="2"))["param"] == "best_of"
    assert _error(await gw.chat(best_of=0))["param"] == "best_of"
    assert gw.generator.requests == []
    # best_of 1 is the ordinary answer.
    body = (await gw.chat(best_of=1)).json()
    assert "parlance" not in body and gw.generator.requests[-1].sampling.n == 1


async def test_without_a_reward_model_it_is_a_400_saying_so(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with inprocess_gateway(tmp_path / "a") as gw:
        error = _error(await gw.chat(best_of=2))
        assert error["code"] == "reward_model_not_found" and error["param"] == "best_of"
        assert "none is registered" in error["message"]
        assert gw.generator.requests == []
    async with inprocess_gateway(
        tmp_path / "b", generator=rewarded(), reward_model="reward-elsewhere"
    ) as gw:
        error = _error(await gw.chat(best_of=2))
        assert "reward-elsewhere" in error["message"]
    async with inprocess_gateway(tmp_path / "b", generator=rewarded(), max_best_of=1) as gw:
        assert "off" in _error(await gw.chat(best_of=2))["message"]


def test_tpm_reserves_every_candidate() -> None:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 32}], "max_tokens": 10}
    )
    plain = estimate_tokens(body, 256)
    assert estimate_tokens(body.model_copy(update={"best_of": 4}), 256) == plain + 30


async def test_rpm_counts_the_request_once_and_the_lease_every_candidate(
    gw: InProcessGateway,
) -> None:
    """RPM counts HTTP requests (OpenAI's x-ratelimit-*-requests); a best_of=k request holds
    k units of the key's concurrency while it generates, as k requests would, and never more
    than the whole limit."""
    caller = await gw.create_key(rpm=100, max_concurrent=4)

    async def held_by(key: Caller) -> int:
        principal = await gw.state.keys.authenticate(key.key)
        assert principal is not None
        return await gw.state.leases.held(principal.key_id)

    first = await gw.chat(caller=caller, best_of=4, temperature=1.0)
    assert first.status_code == 200, first.text
    second = await gw.chat(caller=caller, best_of=4, temperature=1.0)
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in (first, second)]
    assert remaining[0] - remaining[1] == 1
    await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
    assert await held_by(caller) == 0

    # A best_of=4 request in flight holds all four: a plain request waits for it.
    gw.generator.script = Script(deltas=["One", " two."], hang_after=1)
    held = asyncio.create_task(gw.chat(caller=caller, best_of=4, temperature=1.0))
    await wait_for(lambda: gw.generator.in_flight == 1)
    assert await held_by(caller) == 4
    refused = await gw.chat(caller=caller)
    assert refused.status_code == 429
    message = refused.json()["error"]["message"]
    assert message.endswith("at most 4 at a time. Wait for one to finish.")
    held.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held
    await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
    assert await held_by(caller) == 0

    # Under a limit of 2, best_of=4 takes the whole key (2), is served alone, and is refused
    # only while anything else holds a unit.
    small = await gw.create_key(max_concurrent=2)
    gw.generator.script = Script(deltas=["Plain."], choices=CANDIDATES)
    assert (await gw.chat(caller=small, best_of=4, temperature=1.0)).status_code == 200
    gw.generator.script = Script(deltas=["One", " two."], hang_after=1)
    plain = asyncio.create_task(gw.chat(caller=small))
    await wait_for(lambda: gw.generator.in_flight == 1)
    busy = await gw.chat(caller=small, best_of=4, temperature=1.0)
    assert busy.status_code == 429
    assert "this one counts 2: it generates 4 answers" in busy.json()["error"]["message"]
    plain.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await plain
    await wait_for(lambda: len(gw.state.chat.background._tasks) == 0)
    assert await held_by(small) == 0


def _info(model_id: str, created: int, task: int) -> generator_pb2.ModelInfo:
    return generator_pb2.ModelInfo(id=model_id, created=created, task=task)  # type: ignore[arg-type]


def test_the_newest_reward_model_scores_unless_one_is_configured() -> None:
    listed = [
        _info("chat", 5, generator_pb2.MODEL_TASK_CHAT),
        _info("reward-a", 10, generator_pb2.MODEL_TASK_REWARD),
        _info("reward-b", 20, generator_pb2.MODEL_TASK_REWARD),
        _info("reward-c", 20, generator_pb2.MODEL_TASK_REWARD),
    ]
    models: Any = None
    newest = RewardModels(GatewaySettings(), models)
    assert newest._pick(listed) == "reward-c"  # of equal load times, the one listed last
    configured = RewardModels(GatewaySettings(reward_model="REWARD-A"), models)
    assert configured._pick(listed) == "reward-a"
    assert configured._pick(listed[:1]) is None
    assert newest._pick(listed[:1]) is None


async def test_the_admin_sees_which_reward_model_scores(tmp_path: Path) -> None:
    admin = {"Authorization": "Bearer sk-admin-best-of-0123456789"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with inprocess_gateway(
        tmp_path / "a", generator=rewarded(), admin_key="sk-admin-best-of-0123456789"
    ) as gw:
        current = await gw.client.get("/v1/admin/reward-model", headers=admin)
        assert current.status_code == 200, current.text
        assert current.json() == {
            "object": "reward_model",
            "id": FAKE_REWARD_MODEL,
            "chosen_by": "newest",
            # Listed by the generator, not registered here: no card this gateway can read.
            "registration": None,
        }
        assert (
            await gw.client.get("/v1/admin/reward-model", headers=gw.alice.headers)
        ).status_code == 403
    async with inprocess_gateway(tmp_path / "b", admin_key="sk-admin-best-of-0123456789") as gw:
        missing = await gw.client.get("/v1/admin/reward-model", headers=admin)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "reward_model_not_found"
