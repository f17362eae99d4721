"""The input pre-check (input_precheck.py) with the real safety service's serving code and the
real profanity model behind a real gRPC server: the gateway's copy of the classifier starts the
generation beside safety's verdict, and that verdict still decides what is sent.

The servicer is the service's own (SafetyServicer over SafetyServing); the test subclass only
holds each Classify call for `delay_s` and can fail it as a service that is down, to see what
the gateway does before the verdict arrives. The generator is FakeGenerator (a test double:
these tests are about the order of the calls, not about text)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parlance.gateway import input_precheck
from parlance.gateway.chat.generate import Generation
from parlance.gateway.chat.protocol import ChatCompletionRequest
from parlance.gateway.clients.safety import SafetyClient
from parlance.gateway.metrics import INPUT_PRECHECK
from parlance.safety.classifier.profanity import ProfanityClassifier
from parlance.safety.policy import Direction, Policy
from parlance.safety.servicer import SafetyServicer
from parlance.safety.serving import SafetyServing
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc
from parlance.testing.fakes import wait_for
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway
from parlance.testing.servicers import serving

HARASSMENT = "harassment"
# profanity-check's scores (classifier/profanity.py): an insult, and charged words used
# harmlessly that score between 0.5 and the default threshold of 0.97.
INSULT = "You are an idiot."
CHARGED = "What does the word bastard mean historically?"  # 0.953
PLAIN = "What is the capital of France?"
DELAY_S = 0.3


class HeldSafety(SafetyServicer):
    """The service's servicer, each Classify held `delay_s` first (or failed as UNAVAILABLE
    when `down`); records how many generations the gateway had started when it answered."""

    def __init__(self, serving_: SafetyServing) -> None:
        super().__init__(serving_)
        self.serving = serving_
        self.delay_s = 0.0
        self.down = False
        self.generations_at_verdict: list[int] = []
        self.generator_requests: list[object] = []

    async def Classify(
        self, request: safety_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.ClassifyResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "safety is down (test)")
        self.generations_at_verdict.append(len(self.generator_requests))
        return await super().Classify(request, context)

    def set_input_threshold(self, threshold: float) -> None:
        """As a safety restarted with SAFETY_INPUT_THRESHOLDS: Classify and the export both
        take it."""
        self.serving.policy = Policy([HARASSMENT], 0.97, {Direction.INPUT: {HARASSMENT: threshold}})


@pytest.fixture
async def held() -> AsyncIterator[tuple[HeldSafety, str]]:
    classifier = ProfanityClassifier()
    safety_serving = SafetyServing(
        classifier,
        Policy(classifier.evaluated_categories, classifier.default_threshold),
        max_texts_per_call=256,
        max_text_chars=32_768,
    )
    await safety_serving.start()
    servicer = HeldSafety(safety_serving)
    try:
        async with serving(safety_pb2_grpc.add_SafetyServiceServicer_to_server, servicer) as url:
            yield servicer, url
    finally:
        await safety_serving.close()


@pytest.fixture
async def gw(
    tmp_path: Path, held: tuple[HeldSafety, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[InProcessGateway, HeldSafety]]:
    # A copy dropped for a disagreement is taken again at once here (5 s in service).
    monkeypatch.setattr(input_precheck, "RETAKE_MIN_S", 0.0)
    servicer, url = held
    client = SafetyClient(url, timeout_s=5.0, retry_after_s=1)
    async with inprocess_gateway(tmp_path, safety=client) as gateway:
        servicer.generator_requests = gateway.generator.requests  # type: ignore[assignment]
        await copy_taken(gateway)
        yield gateway, servicer


async def copy_taken(gateway: InProcessGateway, threshold: float | None = None) -> None:
    precheck = gateway.state.chat.precheck
    assert precheck is not None
    for _ in range(200):
        copy = precheck.copy
        if copy is not None and (threshold is None or copy.threshold == threshold):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no copy of safety's classifier (threshold {threshold})")


def outcome(name: str) -> float:
    return INPUT_PRECHECK.labels(name)._value.get()


async def test_the_copy_is_safetys_classifier(gw: tuple[InProcessGateway, HeldSafety]) -> None:
    gateway, _ = gw
    copy = gateway.state.chat.precheck.copy  # type: ignore[union-attr]
    assert copy is not None
    assert copy.model.startswith("profanity-check-")
    assert (copy.category, copy.threshold) == (HARASSMENT, 0.97)
    scores = copy.classify([INSULT, CHARGED, PLAIN])
    assert [r.flagged for r in scores.results] == [True, False, False]


@pytest.mark.parametrize("stream", [True, False])
async def test_generation_starts_beside_the_verdict_and_nothing_is_sent_before_it(
    gw: tuple[InProcessGateway, HeldSafety], stream: bool
) -> None:
    gateway, safety = gw
    safety.delay_s = DELAY_S
    passed = outcome("passed")
    started = time.monotonic()
    response = await gateway.chat(content=PLAIN, stream=stream)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    # The generator had been called when safety gave its verdict on the input...
    assert safety.generations_at_verdict[-1] == 1
    # ...and the answer (its headers included) waited for that verdict.
    assert elapsed >= DELAY_S
    assert "precheck;dur=" in response.headers["server-timing"]
    assert outcome("passed") == passed + 1


async def test_an_input_the_copy_flags_never_reaches_the_generator(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    gateway, safety = gw
    flagged = outcome("flagged")
    response = await gateway.chat(content=INSULT, stream=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"
    assert gateway.generator.requests == []
    assert safety.generations_at_verdict[-1] == 0
    assert outcome("flagged") == flagged + 1


async def test_a_refusal_the_copy_did_not_see_stops_the_early_generation(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    """Safety restarted with a lower input threshold: its verdict refuses what the copy
    passed. Nothing is sent, the early generation is stopped, the copy is taken again."""
    gateway, safety = gw
    safety.set_input_threshold(0.5)
    safety.delay_s = 0.1  # the generation is under way when the refusal comes
    disagreed = outcome("disagreed")
    response = await gateway.chat(content=CHARGED, stream=True)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"
    assert len(gateway.generator.requests) == 1
    assert gateway.generator.in_flight == 0
    assert outcome("disagreed") == disagreed + 1
    await copy_taken(gateway, threshold=0.5)
    # The new copy flags it: it no longer reaches the generator.
    again = await gateway.chat(content=CHARGED, stream=True)
    assert again.status_code == 400
    assert len(gateway.generator.requests) == 1


async def test_a_pass_the_copy_did_not_see_takes_the_copy_again(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    gateway, safety = gw
    safety.set_input_threshold(1.1)  # safety flags nothing on input now
    response = await gateway.chat(content=INSULT, stream=False)
    assert response.status_code == 200, response.text
    await copy_taken(gateway, threshold=1.1)
    passed = outcome("passed")
    assert (await gateway.chat(content=INSULT, stream=False)).status_code == 200
    assert outcome("passed") == passed + 1


async def test_safety_down_still_fails_closed(gw: tuple[InProcessGateway, HeldSafety]) -> None:
    """The copy passes the input, the generation starts, safety cannot give its verdict: a
    503, and the generation is stopped (nothing unmoderated goes out)."""
    gateway, safety = gw
    safety.down = True
    response = await gateway.chat(content=PLAIN, stream=True)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert len(gateway.generator.requests) == 1
    assert gateway.generator.in_flight == 0
    # Down is not a disagreement: the copy stays.
    assert gateway.state.chat.precheck.copy is not None  # type: ignore[union-attr]


async def test_the_verdicts_refusal_comes_before_the_generators_failure(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    gateway, safety = gw
    safety.set_input_threshold(0.5)
    safety.delay_s = 0.1  # the generator fails first
    gateway.generator.script.fail_after = 0
    response = await gateway.chat(content=CHARGED, stream=True)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"
    assert len(gateway.generator.requests) == 1


async def test_without_a_refusal_the_generators_failure_is_the_answer(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    gateway, safety = gw
    safety.delay_s = 0.1
    gateway.generator.script.fail_after = 0
    response = await gateway.chat(content=PLAIN, stream=True)
    assert response.status_code == 503, response.text
    assert "generator" in response.json()["error"]["message"]
    assert safety.generations_at_verdict[-1] == 1


async def test_a_refusal_does_not_wait_for_a_slow_generator(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    """The verdict is awaited beside the first message, not after it: a generator that has
    not answered yet is stopped as soon as safety refuses."""
    gateway, safety = gw
    safety.set_input_threshold(0.5)
    gateway.generator.script.hang_after = 0
    # The generator never answers: waiting for its first message would run into the timeout.
    response = await asyncio.wait_for(gateway.chat(content=CHARGED, stream=True), timeout=5)
    assert response.status_code == 400, response.text
    assert gateway.generator.in_flight == 0


async def test_a_client_gone_during_the_early_generation_stops_it(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    gateway, safety = gw
    safety.delay_s = 5.0
    client = asyncio.ensure_future(gateway.chat(content=PLAIN, stream=True))
    await wait_for(lambda: gateway.generator.in_flight == 1)  # generating, verdict not in
    client.cancel()  # the client goes away
    with pytest.raises(asyncio.CancelledError):
        await client
    await wait_for(lambda: gateway.generator.in_flight == 0, timeout_s=1.0)
    assert len(gateway.generator.requests) == 1


async def test_a_cached_answer_starts_no_generation(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    gateway, _ = gw
    body = gateway.body(PLAIN, temperature=0, stream=False)
    first = await gateway.chat(body)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    again = await gateway.chat(body)
    assert again.headers["x-cache"] == "hit"
    assert len(gateway.generator.requests) == 1


async def test_a_comparison_starts_early_as_one_call_of_two_answers(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    """A comparison (n=2) is one generation like any other: it starts beside the verdict and
    both answers are stored after it."""
    gateway, safety = gw
    safety.delay_s = DELAY_S
    events = await gateway.events(
        gateway.body(PLAIN, stream=True, store=True, parlance={"compare": "always"})
    )
    assert events[-1] == "[DONE]"
    assert len(events[0]["parlance"]["comparison"]["message_ids"]) == 2
    (request,) = gateway.generator.requests
    assert request.sampling.n == 2
    assert safety.generations_at_verdict[-1] == 1
    for _ in range(100):
        if gateway.history.appends:
            break
        await asyncio.sleep(0.01)
    (append,) = gateway.history.appends
    assert [m.role for m in append.messages] == ["user", "assistant", "assistant"]


async def test_an_intent_routes_thresholds_tighten_the_copy_too(
    gw: tuple[InProcessGateway, HeldSafety],
) -> None:
    precheck = gw[0].state.chat.precheck
    assert precheck is not None
    assert precheck.check([CHARGED], None).passed  # type: ignore[union-attr]
    assert not precheck.check([CHARGED], {HARASSMENT: 0.5}).passed  # type: ignore[union-attr]
    # Blank texts are not judged (as safety is not asked about them); long inputs wait.
    assert precheck.check(["  ", PLAIN], None).passed  # type: ignore[union-attr]
    assert precheck.check(["word " * 2_000], None) is None


async def test_a_verdict_that_changes_the_request_starts_the_generation_again(
    tmp_path: Path,
) -> None:
    """Answered with care where the copy passed: the first generation is closed and a new one
    starts under an id of its own (the engine may still be aborting the first)."""
    async with inprocess_gateway(tmp_path) as gateway:
        generator = gateway.generator
        generator.script.hang_after = 1  # the first generation stays open until closed
        generation = Generation(gateway.settings, generator, gateway.safety)  # type: ignore[arg-type]
        prepared = await gateway.state.chat.prepare(
            ChatCompletionRequest.model_validate(gateway.body(PLAIN, stream=True)),
            await gateway.state.keys.authenticate(gateway.alice.key),  # type: ignore[arg-type]
        )
        verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        opening = asyncio.ensure_future(generation.open_stream(prepared, verdict))
        await wait_for(lambda: generator.in_flight == 1)
        generator.script.hang_after = None
        verdict.set_result(False)
        stream = await opening
        ids = [r.request_id for r in generator.requests]
        assert ids == [prepared.completion_id, f"{prepared.completion_id}-1"]
        assert generator.cancelled == 1
        assert [m async for m in stream]


async def test_off_with_a_classifier_that_cannot_be_copied(tmp_path: Path) -> None:
    """FakeSafety (a test double of word matching) exports nothing: every input waits."""
    async with inprocess_gateway(tmp_path) as gateway:
        precheck = gateway.state.chat.precheck
        assert precheck is not None
        await wait_for(lambda: gateway.safety.export_requests >= 1)  # type: ignore[attr-defined]
        assert precheck.copy is None
        response = await gateway.chat(content="Hi there", stream=True)
        assert response.status_code == 200
        assert "precheck" not in response.headers["server-timing"]
    async with inprocess_gateway(tmp_path, input_precheck=False) as gateway:
        assert gateway.state.chat.precheck is None
