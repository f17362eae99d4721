"""The request flow of POST /v1/embeddings: validate and size-check the input
(embeddings_input.py), resolve the model (task "embed"), take the key's TPM reservation and
concurrency lease, answer from the tenant's cache or the generator, settle the limits with the
real token count.

Embeddings are deterministic, so every answer is cached (unless the cache is off, or the
request says `Cache-Control: no-cache`): the key covers the tenant, the model, the inputs and
everything else that changes the vectors (cache.py's key shape), never the output encoding,
which is applied afterwards. A cached answer costs no tokens of the key's TPM.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from parlance.common.request_id import get_request_id, new_request_id
from parlance.gateway import errors
from parlance.gateway.auth import Principal
from parlance.gateway.cache import cache_key
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.embeddings_input import Item, estimate_tokens, input_items
from parlance.gateway.embeddings_protocol import EmbeddingRequest
from parlance.gateway.key_limits import KeyLimits
from parlance.gateway.metrics import CACHE, EMBEDDINGS, TOKENS
from parlance.gateway.models import ModelRegistry
from parlance.gateway.redis_state import RedisState, RedisUnavailable
from parlance.generator.v1 import generator_pb2

log = logging.getLogger(__name__)


def pack(vector: list[float] | Any) -> bytes:
    """Little-endian float32 bytes: OpenAI's base64 encoding, and the cache's."""
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack(raw: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@dataclass
class EmbeddingsRecord:
    """An answer as cached: the vectors as float32 bytes, token counts per input."""

    model: str
    vectors: list[bytes]
    token_counts: list[int]

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "model": self.model,
                "vectors": [base64.b64encode(v).decode() for v in self.vectors],
                "token_counts": self.token_counts,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EmbeddingsRecord:
        data = json.loads(raw)
        return cls(
            model=data["model"],
            vectors=[base64.b64decode(v) for v in data["vectors"]],
            token_counts=list(data["token_counts"]),
        )

    def render(self, encoding_format: str | None) -> dict[str, Any]:
        as_base64 = encoding_format == "base64"
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": base64.b64encode(raw).decode() if as_base64 else unpack(raw),
                }
                for index, raw in enumerate(self.vectors)
            ],
            "model": self.model,
            "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
        }


@dataclass
class PreparedEmbeddings:
    body: EmbeddingRequest
    principal: Principal
    model: str
    items: list[Item]
    estimate: int
    cache_key: str | None = None
    started: float = field(default_factory=time.monotonic)


class EmbeddingLimits(KeyLimits):
    """The key's TPM reservation and concurrency lease for one embeddings request."""

    async def take(self, headers: MutableMapping[str, str]) -> None:
        try:
            await super().take(headers)
        except RedisUnavailable:
            raise errors.service_unavailable(
                "Rate limiting is unavailable (Redis); retry shortly.", self.settings.retry_after_s
            ) from None

    async def settle(self, used: int | None) -> None:
        """Releases the lease; charges what the request really used (None: refund it all)."""
        try:
            await self.settle_used(used)
        except Exception:
            log.exception("settling embeddings limits failed")


class EmbeddingsService:
    def __init__(
        self,
        settings: GatewaySettings,
        generator: GeneratorClient,
        models: ModelRegistry,
        redis_state: RedisState,
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.models = models
        self.redis = redis_state
        # Limit settlements that outlive a request whose client left.
        self._background: set[asyncio.Task[None]] = set()

    async def prepare(self, body: EmbeddingRequest, principal: Principal) -> PreparedEmbeddings:
        items = input_items(body, self.settings)
        model = await self.models.resolve(body.model, task="embed")
        prepared = PreparedEmbeddings(body, principal, model, items, estimate_tokens(items))
        if self.settings.cache_enabled:
            prepared.cache_key = cache_key(
                principal.user_id,
                {
                    "endpoint": "embeddings",
                    "model": model,
                    "input": items,
                    "dimensions": body.dimensions,
                    "truncate": bool(body.truncate),
                },
            )
        return prepared

    async def cached(self, prepared: PreparedEmbeddings) -> EmbeddingsRecord | None:
        if prepared.cache_key is None:
            return None
        key = prepared.cache_key
        try:
            raw = await self.redis.run(lambda r: r.get(key))
        except RedisUnavailable:
            CACHE.labels("unavailable").inc()
            return None
        CACHE.labels("miss" if raw is None else "hit").inc()
        if raw is None:
            return None
        return EmbeddingsRecord.from_json(raw.encode() if isinstance(raw, str) else raw)

    async def _store(self, key: str, record: EmbeddingsRecord) -> None:
        payload = record.to_json()
        if len(payload) > self.settings.cache_max_bytes:
            return
        try:
            await self.redis.run(lambda r: r.set(key, payload, ex=self.settings.cache_ttl_s))
        except RedisUnavailable:
            pass

    async def embed(self, prepared: PreparedEmbeddings) -> EmbeddingsRecord:
        """The vectors from the generator (then cached)."""
        request = generator_pb2.EmbedRequest(
            request_id=get_request_id() or new_request_id(),
            model=prepared.model,
            inputs=[
                generator_pb2.EmbedInput(text=item)
                if isinstance(item, str)
                else generator_pb2.EmbedInput(tokens=generator_pb2.TokenIds(ids=item))
                for item in prepared.items
            ],
            truncate=bool(prepared.body.truncate),
        )
        if prepared.body.dimensions is not None:
            request.dimensions = prepared.body.dimensions
        reply = await self.generator.embed(request)
        record = EmbeddingsRecord(
            model=reply.model or prepared.model,
            vectors=[pack(e.values) for e in reply.embeddings],
            token_counts=[e.token_count for e in reply.embeddings],
        )
        if prepared.cache_key is not None:
            await self._store(prepared.cache_key, record)
        return record

    def finish(self, prepared: PreparedEmbeddings, record: EmbeddingsRecord, cache: str) -> None:
        key_id = prepared.principal.key_id
        if cache != "hit":
            TOKENS.labels("prompt", record.model, key_id).inc(record.prompt_tokens)
        EMBEDDINGS.labels(record.model, cache).inc(len(record.vectors))
        # One line per request: ids, sizes and timings, never the text.
        log.info(
            "embeddings",
            extra={
                "model": record.model,
                "key_id": key_id,
                "inputs": len(record.vectors),
                "prompt_tokens": record.prompt_tokens,
                "cache": cache,
                "duration_ms": round((time.monotonic() - prepared.started) * 1000, 1),
            },
        )

    def settle_later(self, limits: EmbeddingLimits, used: int | None) -> None:
        """Settles in a task of its own: it also runs when the request was cancelled."""
        task = asyncio.create_task(limits.settle(used))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
