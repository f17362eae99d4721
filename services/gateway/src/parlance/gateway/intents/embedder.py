"""The embedding model the gateway classifies with: the generator's Embed RPC, through the
gateway's GeneratorClient (so replicas and failover apply), for the model resolved once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from parlance.common.request_id import get_request_id, new_request_id
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.models import DEFAULT_ALIAS
from parlance.gateway.routing import task_of
from parlance.generator.v1 import generator_pb2


class GeneratorEmbedder:
    """`resolve` is the model registry's (ModelRegistry.resolve): the configured model resolved
    for task "embed"; "" or "default" is the first embedding model the generators list (not
    the registry's "default", which an alias may give to a chat model, as `make up` does)."""

    def __init__(
        self,
        generator: GeneratorClient,
        resolve: Callable[..., Awaitable[str]],
        model: str = "",
    ) -> None:
        self.generator = generator
        self._resolve = resolve
        self.requested = "" if model.lower() in ("", DEFAULT_ALIAS) else model
        self.model = ""

    async def _pick(self) -> str:
        if self.requested:
            return await self._resolve(self.requested, task="embed")
        listed = await self.generator.list_models()
        first = next((m.id for m in listed.models if task_of(m) == "embed"), None)
        if first is None:
            raise RuntimeError("no generator lists an embedding model (task 'embed')")
        return first

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        if not self.model:
            self.model = await self._pick()
        request = generator_pb2.EmbedRequest(
            request_id=get_request_id() or new_request_id(),
            model=self.model,
            inputs=[generator_pb2.EmbedInput(text=t) for t in texts],
            # A long message is classified by its start rather than refused.
            truncate=True,
        )
        reply = await self.generator.embed(request)
        return [list(e.values) for e in reply.embeddings]


class CachedEmbedder:
    """An Embedder that remembers the vectors of the last `size` texts (least recently used
    out): a message sent again (a regenerated answer, "thanks") is classified without an
    embedding call, and the re-ask signal finds the previous message's vector here."""

    def __init__(self, inner: Any, size: int = 4096) -> None:
        self.inner = inner
        self.size = size
        self._vectors: OrderedDict[str, Sequence[float]] = OrderedDict()

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            for text, vector in zip(missing, await self.inner.embed(missing), strict=True):
                self._vectors[text] = vector
        found = []
        for text in texts:
            self._vectors.move_to_end(text)
            found.append(self._vectors[text])
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)
        return found
