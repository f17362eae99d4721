"""A FakeGenerator with generator targets that load and unload models at run time, for the
in-process tests of the admin model API (model_registry.py). A test double of the pooled
GeneratorClient's targets: LoadModel and UnloadModel answer as the generator's do (the real
RPCs are tested against real generator processes in tests/test_model_registry.py and in the
generator's own tests)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from parlance.gateway import errors
from parlance.generator.v1 import generator_pb2
from parlance.testing.fakes import FAKE_MODEL, FakeGenerator
from parlance.testing.inprocess import REDIS_URL, InProcessGateway, inprocess_gateway

ADMIN_KEY = "sk-admin-registry-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TARGETS = ("generator-a:50051", "generator-b:50051")


class FakeTarget:
    """One generator target. `refuse`: the next LoadModel calls fail with it; `serving`:
    its health. It is its own client (target.client.load_model, as the pool's Target)."""

    def __init__(self, owner: FakeTargetsGenerator, url: str) -> None:
        self.owner = owner
        self.url = url
        self.serving = True
        self.in_flight = 0
        self.loaded: dict[str, generator_pb2.ModelInfo] = {}
        self.refuse: errors.APIError | None = None
        # The next UnloadModel calls fail with it (a target that cannot be reached).
        self.refuse_unload: errors.APIError | None = None
        self.load_requests: list[generator_pb2.LoadModelRequest] = []
        self.unloads: list[str] = []

    @property
    def client(self) -> FakeTarget:
        return self

    @property
    def models(self) -> dict[str, generator_pb2.ModelInfo]:
        return {m.id: m for m in self.owner.base_models()} | self.loaded

    async def load_model(
        self, request: generator_pb2.LoadModelRequest
    ) -> generator_pb2.LoadModelResponse:
        self.load_requests.append(request)
        if not self.serving:
            raise errors.service_unavailable("The generator service is unavailable.", 1)
        if self.refuse is not None:
            raise self.refuse
        root = self.owner.load_root
        if not request.path.startswith(root.rstrip("/") + "/"):
            raise errors.invalid_request(
                f"path {request.path!r} is not inside GENERATOR_LOAD_ROOT ({root})",
                param="path",
            )
        if request.id in self.models:
            raise errors.APIError(
                409, f"model {request.id!r} is served already", param="id", code="conflict"
            )
        info = generator_pb2.ModelInfo(
            id=request.id, created=1_700_000_000, owned_by="parlance", task=request.task
        )
        if request.parent:
            info.parent = request.parent
        self.loaded[request.id] = info
        return generator_pb2.LoadModelResponse(model=info)

    async def unload_model(self, model_id: str) -> None:
        self.unloads.append(model_id)
        if self.refuse_unload is not None:
            raise self.refuse_unload
        if model_id not in self.loaded:
            raise errors.not_found(f"model {model_id!r} is not served here", param="id")
        del self.loaded[model_id]

    def restart(self) -> None:
        """A generator restart: the models loaded at run time are gone."""
        self.loaded.clear()


class FakeTargetsGenerator(FakeGenerator):
    """FakeGenerator whose listing is the union of its targets' (base models on each, plus
    what each loaded at run time); folders load from inside `load_root`."""

    def __init__(
        self, load_root: str = "/models", urls: tuple[str, ...] = ("generator-a:50051",)
    ) -> None:
        super().__init__()
        self.load_root = load_root
        self.targets = tuple(FakeTarget(self, url) for url in urls)

    def base_models(self) -> list[generator_pb2.ModelInfo]:
        """The chat models every target serves from its start."""
        chat = [FAKE_MODEL, *self.extra_chat_models]
        return [self._info(m, generator_pb2.MODEL_TASK_CHAT) for m in chat]

    async def list_models(self) -> generator_pb2.ListModelsResponse:
        listing = await super().list_models()
        ids = {m.id for m in listing.models}
        for target in self.targets:
            if target.serving:
                listing.models.extend(m for m in target.loaded.values() if m.id not in ids)
                ids |= set(target.loaded)
        return listing


# --- the admin model API's tests (test_admin_models.py, test_admin_rollout.py) --------------


@asynccontextmanager
async def registry_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of one test's registrations and aliases, its keys deleted after."""
    name = f"test-registry-{uuid.uuid4().hex[:8]}"
    yield name
    import redis.asyncio as aioredis

    redis = aioredis.from_url(REDIS_URL)
    async for key in redis.scan_iter(match=f"{name}:*"):
        await redis.delete(key)
    await redis.aclose()


@asynccontextmanager
async def admin_gateway(
    tmp_path: Path, prefix: str, generator: FakeTargetsGenerator | None = None
) -> AsyncIterator[InProcessGateway]:
    """An in-process gateway with the admin key, over two fake targets, syncing its registry
    every 50 ms."""
    generator = generator or FakeTargetsGenerator(str(tmp_path), TARGETS)
    async with inprocess_gateway(
        tmp_path,
        generator=generator,
        admin_key=ADMIN_KEY,
        registry_redis_prefix=prefix,
        registry_sync_s=0.05,
    ) as gateway:
        yield gateway


def reward_folder(root: Path, name: str = "reward-x@1a2b3c4d") -> dict[str, Any]:
    """A reward model's folder (its card only: the fake targets load nothing) and the body
    that registers it."""
    folder = root / name
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps({"id": name, "eval": {"accuracy": 0.9}}))
    return {"id": name, "task": "reward", "path": str(folder)}
