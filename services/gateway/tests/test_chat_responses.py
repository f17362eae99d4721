"""The shapes of a chat completion: the JSON body, the SSE chunks, OpenAI's error events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parlance.generator.v1 import generator_pb2
from parlance.testing.fakes import Script
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway


async def test_completion_body(gw: InProcessGateway) -> None:
    response = await gw.chat()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "fake-model"
    assert body["system_fingerprint"] is None
    assert "conversation_id" not in body
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, friend.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = body["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3


async def test_n_choices(gw: InProcessGateway) -> None:
    body = (await gw.chat(n=3)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {"Hello there, friend."}
    assert body["usage"]["completion_tokens"] == 9


async def test_length_finish_reason(gw: InProcessGateway) -> None:
    gw.generator.script = Script(
        deltas=["a", "b"], finish_reason=generator_pb2.FINISH_REASON_LENGTH
    )
    body = (await gw.chat(max_tokens=2)).json()
    assert body["choices"][0]["finish_reason"] == "length"


async def test_logprobs_in_the_body(gw: InProcessGateway) -> None:
    gw.generator.script = Script(logprobs=True)
    body = (await gw.chat(logprobs=True, top_logprobs=0)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["Hello", " there", ", friend."]
    assert content[0] == {
        "token": "Hello",
        "logprob": -0.5,
        "bytes": list(b"Hello"),
        "top_logprobs": [],
    }
    assert body["choices"][0]["logprobs"]["refusal"] is None


async def test_sampling_reaches_the_generator(gw: InProcessGateway) -> None:
    await gw.chat(temperature=0.5, top_p=0.9, seed=7, stop=["\n"], max_completion_tokens=9, top_k=4)
    sampling = gw.generator.requests[-1].sampling
    assert round(sampling.temperature, 3) == 0.5
    assert round(sampling.top_p, 3) == 0.9
    assert (sampling.seed, list(sampling.stop), sampling.max_tokens, sampling.top_k) == (
        7,
        ["\n"],
        9,
        4,
    )


async def test_developer_role_reaches_the_model_as_system(gw: InProcessGateway) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (await gw.chat(gw.body(messages=messages))).status_code == 200
    sent = gw.generator.requests[-1].chat.messages
    assert [(m.role, m.content) for m in sent] == [("system", "Be brief."), ("user", "Hi")]


def _choice(event: dict[str, Any]) -> dict[str, Any]:
    (choice,) = event["choices"]
    return choice  # type: ignore[no-any-return]


async def test_stream_chunks(gw: InProcessGateway) -> None:
    events = await gw.events(gw.body(stream=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "fake-model"
        assert chunk["system_fingerprint"] is None
        assert "usage" not in chunk and "conversation_id" not in chunk
    assert _choice(chunks[0]) == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    # Text comes in moderation windows: the first complete word goes ahead on its own (the
    # lead window, GATEWAY_MODERATION_LEAD_AFTER_MS 0 by default), the rest at the end.
    deltas = [_choice(c)["delta"] for c in chunks[1:-1]]
    assert deltas == [{"content": "Hello "}, {"content": "there, friend."}]
    assert _choice(chunks[-1]) == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


async def test_without_a_lead_window_the_first_window_closes_past_16_characters(
    tmp_path: Path,
) -> None:
    async with inprocess_gateway(tmp_path, moderation_lead_after_ms=60_000) as gw:
        chunks = (await gw.events(gw.body(stream=True)))[:-1]
        deltas = [_choice(c)["delta"] for c in chunks[1:-1]]
        assert deltas == [{"content": "Hello there, "}, {"content": "friend."}]


async def test_without_output_moderation_every_delta_is_a_chunk(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, moderate_output=False) as gw:
        chunks = (await gw.events(gw.body(stream=True)))[:-1]
        deltas = [_choice(c)["delta"] for c in chunks[1:-1]]
        assert deltas == [{"content": "Hello"}, {"content": " there"}, {"content": ", friend."}]


async def test_stream_with_usage(gw: InProcessGateway) -> None:
    body = gw.body(stream=True, stream_options={"include_usage": True})
    events = await gw.events(body)
    chunks = events[:-1]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3


async def test_stream_of_n_choices_starts_with_every_role(gw: InProcessGateway) -> None:
    chunks = (await gw.events(gw.body(stream=True, n=2)))[:-1]
    assert [_choice(c)["delta"].get("role") for c in chunks[:2]] == ["assistant", "assistant"]
    assert [_choice(c)["index"] for c in chunks[:2]] == [0, 1]
    finishes = [_choice(c)["index"] for c in chunks if _choice(c)["finish_reason"] == "stop"]
    assert sorted(finishes) == [0, 1]


async def test_stream_logprobs(gw: InProcessGateway) -> None:
    gw.generator.script = Script(logprobs=True)
    chunks = (await gw.events(gw.body(stream=True, logprobs=True)))[:-1]
    content_chunks = [c for c in chunks if _choice(c)["delta"].get("content")]
    # The logprobs of every token, each with the window its text was released in.
    logprobs = [_choice(c)["logprobs"] for c in content_chunks]
    tokens = [t["token"] for lp in logprobs if lp is not None for t in lp["content"]]
    assert tokens == ["Hello", " there", ", friend."]


async def test_a_failure_after_the_headers_is_an_error_event(gw: InProcessGateway) -> None:
    gw.generator.script = Script(fail_after=2)
    events = await gw.events(gw.body(stream=True))
    assert events[-1] == "[DONE]"
    assert events[-2] == {
        "error": {
            "message": "The generator service is unavailable; retry later.",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        }
    }


async def test_generator_down_before_the_first_token_is_a_503(gw: InProcessGateway) -> None:
    gw.generator.script = Script(fail_after=0)
    for stream in (False, True):
        response = await gw.chat(stream=stream)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "service_unavailable"


async def test_engine_that_ends_before_any_message(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path) as gw:
        gw.generator.script = Script(deltas=[], fail_after=None)
        # No delta, only the final message: a complete (empty) answer.
        body = (await gw.chat()).json()
        assert body["choices"][0]["message"]["content"] == ""
        assert body["choices"][0]["finish_reason"] == "stop"
