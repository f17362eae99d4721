"""Every 400 the chat route gives, in OpenAI's error shape, before anything is generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

USER = {"role": "user", "content": "Hi"}


def assert_error(response: Any, status: int, param: str | None, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]
    return str(error["message"])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [USER, {"role": "function", "content": "x"}]}, "messages.1.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens"),
        ({"n": 9}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"parent_message_id": "msg_1"}, "parent_message_id"),
    ],
)
async def test_rules_of_the_flow(gw: InProcessGateway, fields: dict[str, Any], param: str) -> None:
    response = await gw.chat(gw.body(**{"messages": [USER]} | fields))
    assert_error(response, 400, param)
    assert gw.generator.requests == []


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": 0}, "stream"),
        ({"n": 1.5}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"conversation_id": "c" * 129}, "conversation_id"),
        # Beyond the generator contract's int32 (a schemathesis case made it a 500).
        ({"top_k": 38060659828567252992}, "top_k"),
    ],
)
async def test_schema_rules(gw: InProcessGateway, fields: dict[str, Any], param: str) -> None:
    message = assert_error(await gw.chat(gw.body() | fields), 400, param)
    assert message.startswith(f"Invalid value for '{param}'")


async def test_missing_model_names_the_parameter(gw: InProcessGateway) -> None:
    response = await gw.chat({"messages": [USER]})
    assert assert_error(response, 400, "model") == "Missing required parameter: 'model'."


@pytest.mark.parametrize("content", [b"{not json", b""], ids=["not-json", "empty"])
async def test_a_body_that_is_not_json(gw: InProcessGateway, content: bytes) -> None:
    # An empty body used to say "Missing required parameter: 'None'".
    response = await gw.client.post(
        "/v1/chat/completions",
        content=content,
        headers=gw.alice.headers | {"content-type": "application/json"},
    )
    assert "could not parse the JSON body" in assert_error(response, 400, None)


async def test_query_parameters_are_named_without_their_location(gw: InProcessGateway) -> None:
    response = await gw.client.get(
        "/v1/conversations", params={"limit": "many"}, headers=gw.alice.headers
    )
    assert assert_error(response, 400, "limit").startswith("Invalid value for 'limit'")


async def test_a_validator_message_has_no_library_prefix(gw: InProcessGateway) -> None:
    message = assert_error(await gw.chat(gw.body(stop=["a", "b", "c", "d", "e"])), 400, "stop")
    assert "Value error" not in message


async def test_unknown_model_is_404_model_not_found(gw: InProcessGateway) -> None:
    response = await gw.chat(model="no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["param"] == "model"


async def test_model_names_match_case_insensitively(gw: InProcessGateway) -> None:
    response = await gw.chat(model="FAKE-MODEL")
    assert response.status_code == 200
    assert response.json()["model"] == "fake-model"


async def test_unknown_fields_are_tolerated(gw: InProcessGateway) -> None:
    assert (await gw.chat(gw.body(some_future_field={"x": 1}))).status_code == 200


async def test_limits_from_the_settings(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, max_messages=2, max_input_chars=10) as gw:
        too_many = await gw.chat(gw.body(messages=[USER] * 3))
        assert "at most 2" in assert_error(too_many, 400, "messages")
        too_long = await gw.chat(gw.body("x" * 11))
        assert_error(too_long, 400, "messages", "context_length_exceeded")


async def test_a_key_max_tokens_limit(gw: InProcessGateway) -> None:
    caller = await gw.create_key(max_tokens=5)
    response = await gw.chat(gw.body(max_tokens=6), caller=caller)
    assert "at most 5" in assert_error(response, 400, "max_tokens")
    assert (await gw.chat(gw.body(max_tokens=5), caller=caller)).status_code == 200


async def test_a_regenerate_may_send_no_messages(gw: InProcessGateway) -> None:
    conversation = gw.history.create(gw.alice.user_id)
    first = await gw.chat(gw.body(conversation_id=conversation))
    assert first.status_code == 200
    question = gw.history.stored(conversation)[0].id
    again = await gw.chat(
        gw.body(messages=[], conversation_id=conversation, parent_message_id=question)
    )
    assert again.status_code == 200, again.text


async def test_the_default_answer_length_applies_only_where_the_request_sets_none(
    tmp_path: Path,
) -> None:
    """GATEWAY_DEFAULT_MAX_TOKENS: an answer's length when the request sets none; a request's
    own max_tokens wins within the limit, and a limit below the default still holds."""
    async with inprocess_gateway(tmp_path, default_max_tokens=7, max_tokens_limit=50) as gw:
        for fields, asked in (({}, 7), ({"max_tokens": 30}, 30), ({"max_completion_tokens": 3}, 3)):
            response = await gw.chat(gw.body(**fields))
            assert response.status_code == 200, response.text
            assert gw.generator.requests[-1].sampling.max_tokens == asked, fields
    async with inprocess_gateway(tmp_path, default_max_tokens=70, max_tokens_limit=50) as gw:
        assert (await gw.chat(gw.body())).status_code == 200
        assert gw.generator.requests[-1].sampling.max_tokens == 50
    async with inprocess_gateway(tmp_path) as gw:  # 0, the default: up to the limit
        assert (await gw.chat(gw.body())).status_code == 200
        assert gw.generator.requests[-1].sampling.max_tokens == gw.settings.max_tokens_limit


async def test_a_dicts_own_keys_are_not_taken_for_union_members(gw: InProcessGateway) -> None:
    # pydantic puts a union member's name in an error's location too (`input.list[str].0`);
    # a capitalised key the client sent is a key, not a member.
    response = await gw.chat(gw.body(metadata={"Session": 1}))
    assert assert_error(response, 400, "metadata.Session").startswith("Invalid value for")
