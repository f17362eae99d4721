"""The gateway's FastAPI app factory and lifespan (which owns every resource)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from parlance.gateway.auth import KeyStore, StaticKeyStore, load_secret
from parlance.gateway.cache import ResponseCache
from parlance.gateway.chat import api_router as chat
from parlance.gateway.chat.intent import load_router
from parlance.gateway.chat.serving import ChatService
from parlance.gateway.clients import GeneratorClient, HistoryClient, KeepAlive, SafetyClient
from parlance.gateway.clients.targets import Discovery, parse_targets
from parlance.gateway.config import GatewaySettings
from parlance.gateway.errors import document_errors, install_error_handlers
from parlance.gateway.joint_limits import JointLimits
from parlance.gateway.keystore import CombinedKeyStore, SqlKeyStore
from parlance.gateway.leases import ConcurrencyLeases
from parlance.gateway.middleware import GatewayMiddleware
from parlance.gateway.model_registry import RuntimeModels
from parlance.gateway.models import ModelRegistry
from parlance.gateway.outbox import HistoryOutbox
from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState, redacted_url
from parlance.gateway.registrations import RegistryStore
from parlance.gateway.rollback import SplitRollback
from parlance.gateway.routes import (
    admin_keys,
    admin_models,
    admin_reward,
    conversations,
    embeddings,
    health,
    models,
    moderations,
    ui,
)
from parlance.gateway.state import GatewayState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clients:
    """The gateway's clients of the three gRPC services."""

    generator: GeneratorClient
    safety: SafetyClient
    history: HistoryClient


def connect_clients(s: GatewaySettings) -> Clients:
    keepalive = KeepAlive(s.grpc_keepalive_s, s.grpc_keepalive_timeout_s)
    generator = GeneratorClient(
        s.generator_url,
        s.generator_timeout_s,
        s.retry_after_s,
        s.generator_idle_timeout_s,
        keepalive,
        s.generator_refresh_s,
        affinity=s.generator_routing == "affinity",
        affinity_load_factor=s.generator_affinity_load_factor,
        discovery=Discovery(parse_targets(s.generator_url))
        if s.generator_discovery == "dns"
        else None,
    )
    safety = SafetyClient(s.safety_url, s.safety_timeout_s, s.retry_after_s, keepalive)
    history = HistoryClient(s.history_url, s.history_timeout_s, s.retry_after_s, keepalive)
    return Clients(generator=generator, safety=safety, history=history)


def create_app(
    settings: GatewaySettings, keys: KeyStore | None = None, clients: Clients | None = None
) -> FastAPI:
    """The app; `clients` replaces the gRPC clients built from the settings (the in-process
    tests pass fakes of them)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings
        redis_state = RedisState(s.redis_url)
        connected = clients or connect_clients(s)
        generator, safety, history = connected.generator, connected.safety, connected.history
        outbox = HistoryOutbox(
            history,
            s.outbox_path,
            s.outbox_max_items,
            s.outbox_max_bytes,
            max_items_per_user=s.outbox_max_items_per_user,
            max_attempts=s.outbox_max_attempts,
            max_age_s=s.outbox_max_age_s,
            max_dead=s.outbox_max_dead,
        )
        cache = ResponseCache(redis_state, s.cache_ttl_s, s.cache_max_bytes)
        registry = ModelRegistry(generator, s.model_aliases)
        # Before intent routing checks its route models: run-time aliases are read here.
        runtime_models = RuntimeModels(
            generator,
            registry,
            RegistryStore(redis_state, s.registry_redis_prefix),
            s.registry_sync_s,
            s.retry_after_s,
        )
        await runtime_models.start()
        rollback = SplitRollback(
            runtime_models,
            history,
            s.rollback_check_s,
            s.rollback_window_days,
            s.rollback_min_rated,
            s.rollback_margin,
        )
        rollback.start()
        # Intent routing (README, "Intent routing"): None without a route file.
        intents = await load_router(s, generator, registry)
        key_store = SqlKeyStore(s.database_url, s.key_cache_ttl_s)
        await key_store.create_schema()
        state = GatewayState(
            settings=s,
            keys=keys
            or CombinedKeyStore(
                StaticKeyStore(s.api_keys, load_secret(s.key_id_secret, s.key_id_file)),
                key_store,
            ),
            key_store=key_store,
            redis=redis_state,
            limiter=RateLimiter(redis_state, s.ratelimit_on_redis_down),
            leases=ConcurrencyLeases(redis_state, s.lease_ttl_s, s.leases_on_redis_down),
            cache=cache,
            generator=generator,
            safety=safety,
            history=history,
            outbox=outbox,
            models=registry,
            runtime_models=runtime_models,
            chat=ChatService(s, generator, safety, history, outbox, cache, registry, intents),
            intents=intents,
            slots=asyncio.Semaphore(s.max_concurrent_requests),
        )
        app.state.gateway = state
        outbox.start()
        state.chat.start()
        if not await redis_state.ping() and s.redis_url:
            log.warning(
                "Redis at %s does not answer: per-process fallbacks", redacted_url(s.redis_url)
            )
        try:
            yield
        finally:
            await rollback.close()
            await runtime_models.close()
            await state.chat.close()
            if intents is not None:
                await intents.close()
            await outbox.close()
            for client in (generator, safety, history):
                await client.close()
            await JointLimits.of(state.limiter, state.leases).close()  # give_back() tasks
            await redis_state.close()
            await key_store.close()

    app = FastAPI(
        title="Parlance",
        version="0.1.0",
        description="OpenAI-compatible chat API with moderation, limits, cache and history.",
        # The interactive docs load scripts from a CDN on the origin that holds the API key:
        # off unless GATEWAY_API_DOCS is set (the OpenAPI document stays at /openapi.json).
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    document_errors(app)
    chat.document_stream(app)
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_request_bytes)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(embeddings.router)
    app.include_router(conversations.router)
    app.include_router(moderations.router)
    app.include_router(admin_keys.router)
    app.include_router(admin_models.router)
    app.include_router(admin_reward.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    return app
