"""Exact-match response cache for deterministic requests, in Redis.

Only requests whose answer is reproducible are cached (temperature 0, or a seed). The key
covers the tenant and everything that changes the output: model, the full context sent to the
model, and every sampling parameter, so no two tenants and no two different requests can ever
share an entry. What is stored is a completion *record* (per choice: the text deltas as they
streamed, finish reason), from which both a plain response and a faithful stream are rebuilt.
Interrupted, failed and moderated completions are never stored (the caller decides).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from parlance.gateway.metrics import CACHE
from parlance.gateway.redis_state import RedisState, RedisUnavailable

log = logging.getLogger(__name__)


@dataclass
class CachedChoice:
    index: int
    deltas: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    # Output moderation's verdict of the answer, as history stores it ("" when unmoderated).
    moderation_json: str = ""
    # With logprobs: per delta, its tokens' logprobs (OpenAI's token objects); else empty.
    logprobs: list[list[dict[str, Any]]] = field(default_factory=list)

    def add(self, text: str, logprobs: list[dict[str, Any]]) -> None:
        """One released delta (and its tokens' logprobs, kept aligned with the deltas)."""
        if logprobs and len(self.logprobs) < len(self.deltas):
            self.logprobs.extend([] for _ in range(len(self.deltas) - len(self.logprobs)))
        self.deltas.append(text)
        if logprobs or self.logprobs:
            self.logprobs.append(logprobs)

    @property
    def text(self) -> str:
        return "".join(self.deltas)


@dataclass
class CompletionRecord:
    model: str
    choices: list[CachedChoice]
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> CompletionRecord:
        data = json.loads(raw)
        return cls(
            model=data["model"],
            choices=[CachedChoice(**c) for c in data["choices"]],
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
        )


def cache_key(tenant: str, material: dict[str, Any]) -> str:
    """Key from the tenant and the canonical JSON of every output-changing parameter."""
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{tenant}\x00{canonical}".encode()).hexdigest()
    return f"parlance:cache:v1:{digest}"


class ResponseCache:
    def __init__(self, redis_state: RedisState, ttl_s: int, max_bytes: int) -> None:
        self.redis = redis_state
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    async def get(self, key: str) -> CompletionRecord | None:
        try:
            raw = await self.redis.run(lambda r: r.get(key))
        except RedisUnavailable:
            CACHE.labels("unavailable").inc()
            return None
        if raw is None:
            CACHE.labels("miss").inc()
            return None
        CACHE.labels("hit").inc()
        return CompletionRecord.from_json(raw)

    async def put(self, key: str, record: CompletionRecord) -> None:
        payload = record.to_json()
        if len(payload) > self.max_bytes:
            return
        try:
            await self.redis.run(lambda r: r.set(key, payload, ex=self.ttl_s))
        except RedisUnavailable:
            pass
