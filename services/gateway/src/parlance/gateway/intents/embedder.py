"""The embedding model the gateway classifies with: the generator's Embed RPC, through the
gateway's GeneratorClient (so replicas and failover apply), for the model resolved once."""

from __future__ import annotations

import asyncio
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

    async def ready(self) -> str:
        """The model this embedder calls, resolved once (raises when none can be used)."""
        if not self.model:
            self.model = await self._pick()
        return self.model

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        await self.ready()
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
    embedding call, the re-ask signal finds the previous message's vector here, and a text
    being embedded by one call (the chat flow's prefetch) is awaited, not embedded twice."""

    def __init__(self, inner: Any, size: int = 4096) -> None:
        self.inner = inner
        self.size = size
        self._vectors: OrderedDict[str, Sequence[float]] = OrderedDict()
        # Texts being embedded now, each with a future done when its call ended (either way).
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        wanted = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        others = {self._pending[t] for t in wanted if t in self._pending}
        mine = [t for t in wanted if t not in self._pending]
        if mine:
            await self._embed(mine)
        if others:
            # Done either way; a text the other call did not get is embedded here.
            await asyncio.wait(others)
            missing = [t for t in wanted if t not in self._vectors]
            if missing:
                await self._embed(missing)
        gone = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if gone:  # evicted meanwhile by other calls (over `size` texts in between)
            await self._embed(gone)
        found = []
        for text in texts:
            self._vectors.move_to_end(text)
            found.append(self._vectors[text])
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)
        return found

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()

    async def _embed(self, texts: list[str]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for text in texts:
            self._pending[text] = done
        try:
            vectors = await self.inner.embed(texts)
            for text, vector in zip(texts, vectors, strict=True):
                self._vectors[text] = vector
        finally:
            for text in texts:
                if self._pending.get(text) is done:
                    del self._pending[text]
            done.set_result(None)
