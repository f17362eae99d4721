"""The OpenAPI document states the chat route's real request, response and errors."""

from __future__ import annotations

from parlance.testing.inprocess import InProcessGateway


async def test_chat_route_documents_its_responses(gw: InProcessGateway) -> None:
    document = (await gw.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/chat/completions"]["post"]
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    chunk, done = ok["text/event-stream"]["schema"]["properties"]["data"]["anyOf"]
    assert chunk["contentSchema"] == {"$ref": "#/components/schemas/ChatCompletionChunk"}
    assert done == {"const": "[DONE]"}
    for status in ("400", "401", "404", "429", "503"):
        assert status in operation["responses"]
    assert "422" not in operation["responses"]
    schemas = document["components"]["schemas"]
    for name in ("ChatCompletion", "ChatCompletionChunk", "ChunkChoice", "DeltaMessage", "Usage"):
        assert name in schemas, name
    # Every reference resolves.
    refs = {
        ref.rsplit("/", 1)[1] for ref in _refs(document) if ref.startswith("#/components/schemas/")
    }
    assert refs <= set(schemas)


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []
