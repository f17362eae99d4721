"""Everything the gateway holds for its lifetime, built by the app's lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from parlance.gateway.auth import KeyStore
from parlance.gateway.cache import ResponseCache
from parlance.gateway.chat.serving import ChatService
from parlance.gateway.clients import GeneratorClient, HistoryClient, SafetyClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.intents import IntentRouter
from parlance.gateway.keystore import SqlKeyStore
from parlance.gateway.leases import ConcurrencyLeases
from parlance.gateway.model_registry import RuntimeModels
from parlance.gateway.models import ModelRegistry
from parlance.gateway.outbox import HistoryOutbox
from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState


@dataclass
class GatewayState:
    settings: GatewaySettings
    keys: KeyStore
    key_store: SqlKeyStore
    redis: RedisState
    limiter: RateLimiter
    leases: ConcurrencyLeases
    cache: ResponseCache
    generator: GeneratorClient
    safety: SafetyClient
    history: HistoryClient
    outbox: HistoryOutbox
    models: ModelRegistry
    # Models registered and aliases set through the admin API (model_registry.py).
    runtime_models: RuntimeModels
    chat: ChatService
    # Bounds the requests this process serves at once.
    slots: asyncio.Semaphore
    # Intent routing (None: no route file configured).
    intents: IntentRouter | None = None
