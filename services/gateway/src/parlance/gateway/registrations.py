"""Models registered and aliases set through the admin API, kept in Redis.

Why Redis: the gateway already depends on it, every gateway replica reads the same keys (one
registers, all of them route to it and re-apply it), and it outlives both a gateway restart
and a generator restart; the generators keep run-time models in memory only, so the gateway
must remember them. The keys, under GATEWAY_REGISTRY_REDIS_PREFIX:

- `<prefix>:models`: hash, model id → JSON Registration (state "loading" while the first
  loads run, "ready" after; only ready ones are re-applied, so a replica never races a load).
  A "loading" record keeps `reserved_at`: one older than the load deadline plus a margin was
  left by a gateway that stopped mid-load or could not save or drop it (Redis down), and a new
  registration of the id takes it over (an atomic check-and-set in Redis).
- `<prefix>:aliases`: hash, alias → JSON {model id: weight} (replaces a configured alias).
- `<prefix>:retired`: set of adapter ids that were removed: an adapter id is never registered
  again (vLLM keys its prefix cache by adapter name; other weights under an old name could be
  served stale blocks).
- `<prefix>:unloading`: set of JSON [target url, model id]: removed models whose UnloadModel
  failed on that target (unreachable, past its deadline). Every replica's sync retries them
  while the target lists the model; in Redis so that any replica finishes the removal.

Redis keeps them as long as Redis persists its data (the compose service has a volume and
Redis's default snapshots); when Redis does not answer, the admin routes answer 503 and the
last registrations read stay in force.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from parlance.gateway import errors
from parlance.gateway.redis_state import RedisState
from parlance.gateway.routing import Target, task_of
from parlance.gateway.splits import Weights
from parlance.generator.v1 import generator_pb2

TASKS = {
    "chat": generator_pb2.MODEL_TASK_CHAT,
    "embed": generator_pb2.MODEL_TASK_EMBED,
    "reward": generator_pb2.MODEL_TASK_REWARD,
}


@dataclass(frozen=True)
class Registration:
    id: str
    task: str
    path: str
    # LoRA adapters: the chat model they apply to (loaded only where it is served).
    parent: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    created_at: int = field(default_factory=lambda: int(time.time()))
    state: str = "ready"
    # Unix time the id was reserved ("loading" records only).
    reserved_at: float = 0.0

    def request(self) -> generator_pb2.LoadModelRequest:
        request = generator_pb2.LoadModelRequest(
            id=self.id, task=TASKS[self.task], path=self.path, settings=self.settings
        )
        if self.parent:
            # The field exists from the generator proto that serves adapters on.
            request.parent = self.parent
        return request

    def belongs(self, target: Target) -> bool:
        """Whether `target` should list this model: every target, or for an adapter those
        serving its parent."""
        return not self.parent or self.parent in target.models

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Registration:
        data: dict[str, Any] = json.loads(text)
        return cls(
            id=str(data["id"]),
            task=str(data["task"]),
            path=str(data["path"]),
            parent=data.get("parent") or None,
            settings={str(k): str(v) for k, v in (data.get("settings") or {}).items()},
            created_at=int(data.get("created_at") or 0),
            state=str(data.get("state") or "ready"),
            reserved_at=float(data.get("reserved_at") or 0.0),
        )


# HSET the reservation unless the id is taken: by a ready registration, or by a loading one
# reserved at or after ARGV[3] (older ones are stale); one script, so two replicas cannot both
# take over a stale reservation.
_RESERVE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' or record.state ~= 'loading'
      or (tonumber(record.reserved_at) or 0) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RegistryStore:
    """The Redis keys above. Every method raises RedisUnavailable when Redis does not answer."""

    def __init__(self, redis: RedisState, prefix: str) -> None:
        self.redis = redis
        self.models_key = f"{prefix}:models"
        self.aliases_key = f"{prefix}:aliases"
        self.retired_key = f"{prefix}:retired"
        self.unloading_key = f"{prefix}:unloading"

    async def registrations(self) -> dict[str, Registration]:
        raw = await self.redis.run(lambda r: r.hgetall(self.models_key))
        found = (Registration.from_json(value) for value in raw.values())
        return {reg.id: reg for reg in sorted(found, key=lambda r: (r.created_at, r.id))}

    async def aliases(self) -> dict[str, Weights]:
        raw = await self.redis.run(lambda r: r.hgetall(self.aliases_key))
        result: dict[str, Weights] = {}
        for alias, value in raw.items():
            pairs = json.loads(value)
            result[_text(alias)] = tuple((str(m), float(w)) for m, w in pairs)
        return result

    async def reserve(self, registration: Registration, stale_before: float) -> bool:
        """Takes the id for a registration about to load (False: it is taken); a loading
        reservation made before `stale_before` (Unix time) is taken over."""
        fields = {**asdict(registration), "state": "loading", "reserved_at": time.time()}
        loading = Registration(**fields).to_json()
        return bool(
            await self.redis.run(
                lambda r: r.eval(
                    _RESERVE, 1, self.models_key, registration.id, loading, stale_before
                )
            )
        )

    async def registration(self, model_id: str) -> Registration | None:
        raw = await self.redis.run(lambda r: r.hget(self.models_key, model_id))
        return Registration.from_json(raw) if raw is not None else None

    async def save(self, registration: Registration) -> None:
        await self.redis.run(
            lambda r: r.hset(self.models_key, registration.id, registration.to_json())
        )

    async def remove(self, model_id: str, retire: bool) -> None:
        async def op(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hdel(self.models_key, model_id)
                if retire:
                    pipe.sadd(self.retired_key, model_id)
                await pipe.execute()

        await self.redis.run(op)

    async def retired(self, model_id: str) -> bool:
        return bool(await self.redis.run(lambda r: r.sismember(self.retired_key, model_id)))

    async def note_unloads(self, pending: set[tuple[str, str]]) -> None:
        """(target url, model id) pairs whose UnloadModel is still to succeed."""
        if pending:
            members = [json.dumps(list(pair)) for pair in sorted(pending)]
            await self.redis.run(lambda r: r.sadd(self.unloading_key, *members))

    async def pending_unloads(self) -> set[tuple[str, str]]:
        raw = await self.redis.run(lambda r: r.smembers(self.unloading_key))
        pairs = (json.loads(member) for member in raw)
        return {(str(url), str(model_id)) for url, model_id in pairs}

    async def forget_unload(self, pair: tuple[str, str]) -> None:
        await self.redis.run(lambda r: r.srem(self.unloading_key, json.dumps(list(pair))))

    async def set_alias(self, alias: str, weights: Weights) -> None:
        # A list of pairs, not an object: the order of a split is part of it (splits.py).
        value = json.dumps([[m, w] for m, w in weights])
        await self.redis.run(lambda r: r.hset(self.aliases_key, alias, value))

    async def delete_alias(self, alias: str) -> bool:
        return bool(await self.redis.run(lambda r: r.hdel(self.aliases_key, alias)))


def redis_down(retry_after_s: int) -> errors.APIError:
    return errors.service_unavailable(
        "The model registry is unavailable (Redis does not answer); retry shortly.", retry_after_s
    )


def on_target(exc: errors.APIError, target: Target) -> errors.APIError:
    """The generator's error, naming the target that gave it."""
    return errors.APIError(
        exc.status,
        f"{exc.message} (generator target {target.url})",
        type=exc.type,
        param=exc.param,
        code=exc.code,
        headers=exc.headers,
    )


def check_parent(parent: str, served: dict[str, generator_pb2.ModelInfo]) -> None:
    info = served.get(parent)
    if info is None:
        raise errors.APIError(
            404,
            f"The parent model '{parent}' is not served by any generator.",
            param="parent",
            code="model_not_found",
        )
    if task_of(info) != "chat" or info.parent:
        raise errors.invalid_request(
            f"The parent '{parent}' must be a base chat model (not an adapter, not a "
            f"{task_of(info)} model).",
            param="parent",
        )
