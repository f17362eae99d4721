"""OpenAI's error shape on every failure of the chat route, and the headers errors carry."""

from __future__ import annotations

from typing import Any

from parlance.testing.inprocess import InProcessGateway


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_no_key_is_401(gw: InProcessGateway) -> None:
    response = await gw.client.post("/v1/chat/completions", json=gw.body())
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "invalid_api_key"
    assert "Authorization header" in error["message"]


async def test_a_wrong_key_is_401(gw: InProcessGateway) -> None:
    response = await gw.client.post(
        "/v1/chat/completions", json=gw.body(), headers={"Authorization": "Bearer sk-wrong"}
    )
    assert response.status_code == 401
    assert error_of(response)["message"] == "Incorrect API key provided."


async def test_wrong_method_is_405_with_allow(gw: InProcessGateway) -> None:
    response = await gw.client.get("/v1/chat/completions", headers=gw.alice.headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_of(response)["code"] == "method_not_allowed"


async def test_a_body_over_the_limit_is_413(gw: InProcessGateway) -> None:
    big = gw.body("x" * (gw.settings.max_request_bytes + 1))
    response = await gw.chat(big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


async def test_safety_down_refuses_the_input_with_503(gw: InProcessGateway) -> None:
    gw.safety.down = True
    response = await gw.chat()
    assert response.status_code == 503
    assert error_of(response)["code"] == "service_unavailable"
    assert gw.generator.requests == []


async def test_flagged_input_is_400_content_filter(gw: InProcessGateway) -> None:
    response = await gw.chat(gw.body("you badword"))
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["param"]) == ("content_filter", "messages")
    assert "harassment" in error["message"]
    assert gw.generator.requests == []


async def test_an_unknown_conversation_is_404(gw: InProcessGateway) -> None:
    response = await gw.chat(conversation_id="conv_missing")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


async def test_another_users_conversation_is_404(gw: InProcessGateway) -> None:
    conversation = gw.history.create(gw.bob.user_id)
    response = await gw.chat(conversation_id=conversation)
    assert response.status_code == 404
    assert gw.generator.requests == []


async def test_errors_carry_the_request_id(gw: InProcessGateway) -> None:
    response = await gw.chat(gw.body(n=100), headers={"X-Request-ID": "req-abc"})
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "req-abc"
