"""Intent routing of a chat completion (README, "Intent routing"): the newest user message
classified by the IntentRouter, then the route's actions applied to the request with the
request's own choices first (intents/apply.py states the precedence).

A classification that fails (the embedding model down or refusing) never fails the chat: the
request takes the default route and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parlance.gateway.chat.protocol import ChatCompletionRequest
from parlance.gateway.clients import GeneratorClient
from parlance.gateway.config import GatewaySettings
from parlance.gateway.intents import (
    DEFAULT_ROUTE,
    CachedEmbedder,
    GeneratorEmbedder,
    IntentMatch,
    IntentRouter,
    LoadedRoutes,
    ReaskSignal,
    RouteFileError,
    apply_actions,
    load_routes,
)
from parlance.gateway.intents.local_encoder import LocalFirstEmbedder
from parlance.gateway.intents.router import user_turns
from parlance.gateway.metrics import INTENT_FALLBACKS
from parlance.gateway.models import DEFAULT_ALIAS, ModelRegistry
from parlance.history.v1 import history_pb2

if TYPE_CHECKING:
    from parlance.gateway.chat.prepared import PreparedChat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routed:
    """A request after its route's actions: the request to serve (the caller's messages, the
    route's model, sampling and store where the caller left them), the system prompt to put
    first in the context, and the route's input safety thresholds."""

    request: ChatCompletionRequest
    match: IntentMatch
    system_prompt: str | None
    safety: dict[str, float]


class IntentStep:
    def __init__(
        self, router: IntentRouter, models: ModelRegistry, reask: ReaskSignal | None = None
    ) -> None:
        self.router = router
        self.models = models
        self.reask = reask

    def note_reask(self, prepared: PreparedChat) -> None:
        """The re-ask signal of a stored conversation's new message, in the background."""
        if self.reask is not None:
            self.reask.schedule(
                prepared.principal.user_id,
                prepared.conversation_id,
                prepared.intent,
                prepared.previous_turn,
            )

    def is_alias(self, model: str) -> bool:
        """A name the route may replace: a configured alias or "default"."""
        lowered = model.lower()
        return lowered == DEFAULT_ALIAS or lowered in {a.lower() for a in self.models.aliases}

    def routed_estimate(self, prepared: PreparedChat, estimate: int) -> int:
        """The TPM estimate of a routed request (`estimate`: of its messages and max_tokens)
        with the route's system prompt, which is not among its messages (~4 characters a
        token, as chat/limits.py estimates)."""
        if prepared.intent is None:
            return estimate
        prompt = self.router.actions_for(prepared.intent).system_prompt or ""
        return estimate + ((len(prompt) + 8) // 4 if prompt else 0)

    def prefetch(self, request: ChatCompletionRequest) -> asyncio.Task[Any] | None:
        """Embeds the newest user message now, into the router's vector cache, so that its
        classification (once the stored conversation is read) finds it there."""
        if not isinstance(self.router.embedder, CachedEmbedder):
            return None
        newest, _ = user_turns([{"role": m.role, "content": m.text()} for m in request.messages], 0)
        if not newest:
            return None
        task = asyncio.create_task(self.router.embedder.embed([newest]))
        # Its failure is the classification's to report (it embeds again).
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def classify(
        self, request: ChatCompletionRequest, earlier: Sequence[history_pb2.Message] = ()
    ) -> IntentMatch:
        """The route of the request's newest user message; `earlier`: the stored messages it
        continues (their user turns are the context window's)."""
        messages = [{"role": m.role, "content": m.content} for m in earlier if m.role == "user"]
        messages += [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            return await self.router.classify(messages)
        except Exception as exc:
            INTENT_FALLBACKS.inc()
            log.warning(
                "intent classification failed; the default route is taken",
                extra={"error": getattr(exc, "message", None) or repr(exc)},
            )
            return IntentMatch(DEFAULT_ROUTE, 0.0, 0.0, fallback=True)

    async def route(
        self, request: ChatCompletionRequest, earlier: Sequence[history_pb2.Message] = ()
    ) -> Routed:
        match = await self.classify(request, earlier)
        actions = self.router.actions_for(match)
        # The messages are left out (not copied): the route changes only top-level fields here.
        body: dict[str, Any] = request.model_dump(exclude_unset=True, exclude={"messages"})
        # The system prompt goes first in the whole context (before a stored conversation),
        # so it is kept apart from the request's messages, which are stored as sent.
        routed = apply_actions(
            body, actions.model_copy(update={"system_prompt": None}), self.is_alias
        )
        changes = {k: v for k, v in routed.items() if body.get(k) != v}
        return Routed(
            request=request.model_copy(update=changes) if changes else request,
            match=match,
            system_prompt=actions.system_prompt,
            safety=dict(actions.safety),
        )


async def reask_embedder(
    routes: LoadedRoutes, model: str, generator: GeneratorClient, models: ModelRegistry
) -> CachedEmbedder | None:
    """The re-ask signal's own embedder when the file names another model for it (None: the
    routing embedder), its model checked now: one no generator serves stops the start-up."""
    wanted = routes.spec.reask_embed_model
    if not wanted or wanted == model:
        return None
    inner = GeneratorEmbedder(generator, models.resolve, wanted)
    try:
        await inner.ready()
    except Exception as exc:
        reason = getattr(exc, "message", None) or str(exc)
        raise RouteFileError(
            f"{routes.path}: reask_embed_model {wanted!r} cannot be used: {reason}"
        ) from exc
    return CachedEmbedder(inner)


async def load_router(
    settings: GatewaySettings, generator: GeneratorClient, models: ModelRegistry
) -> IntentRouter | None:
    """The IntentRouter of settings.intent_routes (None when unset), its examples embedded
    and its models checked against the routing table; a route file that cannot be used
    stops the start-up with the reason (file, route and line)."""
    if not settings.intent_routes:
        return None
    try:
        routes = load_routes(settings.intent_routes)
        # The file names its embedding model; the setting, when set, overrides it.
        model = settings.intent_embed_model or routes.spec.embed_model or ""
        remote = GeneratorEmbedder(generator, models.resolve, model)
        inner: GeneratorEmbedder | LocalFirstEmbedder = remote
        if settings.intent_local_encoder:
            inner = LocalFirstEmbedder(remote, generator, settings.intent_local_threads)
        embedder = CachedEmbedder(inner)
        router = await IntentRouter.create(
            routes,
            embedder,
            reload_check_s=settings.intent_reload_check_s,
            reask_embedder=await reask_embedder(routes, model, generator, models),
        )
        await router.check_models(models.resolve)
        if isinstance(inner, LocalFirstEmbedder):
            # After the router's checks, which name a model no generator serves; the examples
            # were embedded by the generator (the same vectors). Not awaited: the generator
            # embeds until the copy is fetched and checked (intents/local_encoder.py).
            inner.start_in_background()
    except RouteFileError as exc:
        raise RuntimeError(f"GATEWAY_INTENT_ROUTES cannot be used: {exc}") from None
    log.info(
        "intent routing on",
        extra={
            "routes": len(router.routes.spec.routes),
            "file": settings.intent_routes,
            "embed_model": inner.model,
            "local_encoder": isinstance(inner, LocalFirstEmbedder),
        },
    )
    return router
