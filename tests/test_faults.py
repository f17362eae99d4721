"""Readiness and the failure policies when a service process dies and comes back."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from parlance.testing import ALICE, Stack, StackPool, chat, chat_body, iter_events, wait_until

BODY = chat_body(max_tokens=5)


@pytest.fixture(scope="module")
def fault_stack(stacks: StackPool) -> Iterator[Stack]:
    # Its own processes: these tests kill them.
    stack = stacks.start("faults", share=False)
    yield stack
    stack.stop()


def readyz(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.gateway_url}/readyz", timeout=10)


@pytest.mark.parametrize("service", ["generator", "safety"])
def test_dead_dependency_turns_readiness_red_and_answers_503(
    fault_stack: Stack, service: str
) -> None:
    assert readyz(fault_stack).status_code == 200
    assert chat(fault_stack, BODY).status_code == 200
    fault_stack.services[service].kill()
    wait_until(lambda: readyz(fault_stack).status_code == 503)
    ready = readyz(fault_stack).json()
    assert ready["dependencies"][service] == "unavailable"
    refused = chat(fault_stack, BODY)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert service in refused.json()["error"]["message"]
    fault_stack.start_service(service)
    wait_until(lambda: readyz(fault_stack).status_code == 200)
    wait_until(lambda: chat(fault_stack, BODY).status_code == 200)


def test_history_down_still_answers_and_writes_later(fault_stack: Stack) -> None:
    fault_stack.services["history"].kill()
    response = chat(fault_stack, {**BODY, "store": True})
    assert response.status_code == 200, response.text
    conversation_id = response.json()["conversation_id"]
    assert readyz(fault_stack).json()["history_outbox_depth"] == 1
    fault_stack.start_service("history")
    wait_until(lambda: readyz(fault_stack).json()["history_outbox_depth"] == 0)

    import grpc

    from parlance.history.v1 import history_pb2, history_pb2_grpc

    port = fault_stack.services["history"].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stored = history_pb2_grpc.HistoryServiceStub(channel).GetConversation(
            history_pb2.GetConversationRequest(user_id="alice", conversation_id=conversation_id)
        )
    assert [m.role for m in stored.messages] == ["user", "assistant"]


def test_history_killed_during_a_streamed_answer_keeps_the_exchange(
    fault_stack: Stack,
) -> None:
    """History dies while an answer streams; the exchange reaches it once it is back."""
    import grpc

    from parlance.history.v1 import history_pb2, history_pb2_grpc

    conversation_id = None
    with httpx.stream(
        "POST",
        f"{fault_stack.gateway_url}/v1/chat/completions",
        # Greedy: the same answer every run, so that output moderation's verdict on a sampled
        # answer (a MiniLM false positive cut one in CI) cannot decide this history test.
        json={**BODY, "max_tokens": 24, "temperature": 0, "store": True, "stream": True},
        headers=ALICE,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for event in iter_events(response):
            if conversation_id is None:
                conversation_id = event["conversation_id"]
                # Mid-stream: the first chunk is out, the answer is still being generated.
                fault_stack.services["history"].kill()
    assert conversation_id is not None
    wait_until(lambda: readyz(fault_stack).json()["history_outbox_depth"] >= 1)
    fault_stack.start_service("history")
    wait_until(lambda: readyz(fault_stack).json()["history_outbox_depth"] == 0)
    port = fault_stack.services["history"].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stored = history_pb2_grpc.HistoryServiceStub(channel).GetConversation(
            history_pb2.GetConversationRequest(user_id="alice", conversation_id=conversation_id)
        )
    assert [m.role for m in stored.messages] == ["user", "assistant"]
    assert stored.messages[1].finish_reason in ("stop", "length")
