"""IntentRouter: the newest user message (with an optional window of earlier user turns)
embedded and matched against the route file's examples; the best intent wins when its score
reaches the file's threshold, otherwise the default route.

The examples are embedded once per load in one batched call and kept (by text, so a reload
embeds only new examples). The file is re-read when its modification time changes, checked at
most every `reload_check_s` on the way into `classify` (no background task); a new file that
fails its checks is refused with a log line and the routes in force stay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from parlance.gateway.intents.index import ExampleIndex, example_texts
from parlance.gateway.intents.routes import (
    DEFAULT_ROUTE,
    Actions,
    LoadedRoutes,
    RouteFile,
    RouteFileError,
    load_routes,
)
from parlance.gateway.metrics import (
    INTENT_FALLBACKS,
    INTENT_LATENCY,
    INTENT_RELOADS,
    INTENT_REQUESTS,
)

log = logging.getLogger(__name__)

# The Server-Timing stage of a chat completion that classification adds.
SERVER_TIMING_STAGE = "intent"


class Embedder(Protocol):
    """Unit-length sentence vectors for texts, in order (one batched call)."""

    async def embed(self, texts: list[str]) -> list[Sequence[float]]: ...


@dataclass(frozen=True)
class IntentMatch:
    # The chosen route's name ("default" for a fallback).
    name: str
    # The best intent's score: cosine similarity (-1..1), or its probability (0..1) with the
    # logistic method; 0.0 when there was nothing to classify.
    score: float
    # Best intent's score minus the second best's (how clear the choice was).
    margin: float
    # True when no intent reached the threshold and the default route was taken.
    fallback: bool
    # The best intent even when it fell short (for logs and calibration).
    nearest: str = ""
    duration_s: float = 0.0
    # The newest user message's own vector (no context mixed in): the re-ask signal compares
    # it with the previous user message's (intents/reask.py).
    newest: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The newest user message's text (the re-ask signal embeds it with its own model when the
    # route file names one).
    text: str = field(default="", compare=False, repr=False)

    @property
    def classified(self) -> bool:
        """False when nothing was classified (no user text, or the embedding call failed):
        the default route then says nothing about the message."""
        return bool(self.nearest)


def message_text(message: Mapping[str, Any]) -> str:
    """A chat message's text: the string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        return "\n".join(p for p in parts if isinstance(p, str) and p)
    return ""


def user_turns(messages: Sequence[Mapping[str, Any]], window: int) -> tuple[str, list[str]]:
    """The newest user message's text and up to `window` user turns before it (newest first)."""
    texts = [message_text(m) for m in messages if m.get("role") == "user"]
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        return "", []
    return texts[-1], list(reversed(texts[:-1]))[:window]


class IntentRouter:
    def __init__(
        self,
        routes: LoadedRoutes,
        embedder: Embedder,
        vectors: dict[str, np.ndarray],
        *,
        reload_check_s: float = 2.0,
        reask_embedder: Embedder | None = None,
    ) -> None:
        self.routes = routes
        self.embedder = embedder
        # The re-ask signal's embedder (the file's reask_embed_model): the routing one unless
        # the file names another model.
        self.reask_embedder = reask_embedder or embedder
        self.reload_check_s = reload_check_s
        self._vectors = vectors
        self._index = ExampleIndex(routes, vectors)
        self._by_name = {r.name: r for r in routes.spec.routes}
        self._mtime = _mtime(routes.path)
        self._checked_at = time.monotonic()
        self._resolve: Callable[[str], Awaitable[str]] | None = None
        self._lock = asyncio.Lock()

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    async def load(
        cls, path: str, embedder: Embedder, *, reload_check_s: float = 2.0
    ) -> IntentRouter:
        """Read and check the route file and embed its examples (RouteFileError if wrong)."""
        return await cls.create(load_routes(path), embedder, reload_check_s=reload_check_s)

    @classmethod
    async def create(
        cls,
        routes: LoadedRoutes,
        embedder: Embedder,
        *,
        reload_check_s: float = 2.0,
        reask_embedder: Embedder | None = None,
    ) -> IntentRouter:
        """The router of a route file already read and checked, its examples embedded."""
        vectors = await _embed_examples(routes, embedder, {})
        return cls(
            routes,
            embedder,
            vectors,
            reload_check_s=reload_check_s,
            reask_embedder=reask_embedder,
        )

    def with_settings(self, **update: Any) -> IntentRouter:
        """A router over the same routes and example vectors with other file-level settings
        (threshold, method, k, context_turns, context_weight): what calibration compares."""
        spec = RouteFile.model_validate({**self.routes.spec.model_dump(), **update})
        routes = dataclasses.replace(self.routes, spec=spec)
        return IntentRouter(
            routes,
            self.embedder,
            self._vectors,
            reload_check_s=self.reload_check_s,
            reask_embedder=self.reask_embedder,
        )

    async def close(self) -> None:
        """Stops what the embedders run in this process (the local encoder's worker)."""
        for embedder in {id(e): e for e in (self.embedder, self.reask_embedder)}.values():
            close = getattr(embedder, "close", None)
            if close is not None:
                await close()

    async def check_models(self, resolve: Callable[[str], Awaitable[str]]) -> None:
        """Check every route's model against the routing table (`resolve` is the model
        registry's, for chat: it raises for an unknown model). Once called, reloads check
        their models too. RouteFileError names the route and line."""
        await _check_models(self.routes, resolve)
        self._resolve = resolve

    async def reload(self) -> bool:
        """Re-read the file now. True when the new routes are in force; False when the file
        was refused (logged; the previous routes stay)."""
        async with self._lock:
            mtime = _mtime(self.routes.path)
            try:
                routes = load_routes(self.routes.path)
                _check_same_model(self.routes, routes)
                vectors = await _embed_examples(routes, self.embedder, self._vectors)
                if self._resolve is not None:
                    await _check_models(routes, self._resolve)
            except RouteFileError as exc:
                # This version is not retried until the file changes again.
                self._mtime = mtime
                INTENT_RELOADS.labels("error").inc()
                log.error("intent route file refused; the previous routes stay: %s", exc)
                return False
            self.routes = routes
            self._vectors = vectors
            self._index = ExampleIndex(routes, vectors)
            self._by_name = {r.name: r for r in routes.spec.routes}
            self._mtime = mtime
            INTENT_RELOADS.labels("ok").inc()
            log.info("intent routes reloaded", extra={"routes": len(routes.spec.routes)})
            return True

    async def maybe_reload(self) -> None:
        """Reload when the file's modification time changed (checked at most every
        reload_check_s)."""
        now = time.monotonic()
        if now - self._checked_at < self.reload_check_s:
            return
        self._checked_at = now
        if _mtime(self.routes.path) != self._mtime:
            await self.reload()

    # --- classification ------------------------------------------------------------------

    async def query_vector(self, messages: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """The vector classified for these messages: the newest user message, mixed with the
        mean of up to context_turns earlier user turns at context_weight; None without one."""
        vectors = await self._embed_turns(messages)
        return None if vectors is None else vectors[1]

    async def _embed_turns(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The newest user message's vector and the query vector (see query_vector)."""
        spec = self.routes.spec
        newest, earlier = user_turns(messages, spec.context_turns)
        if not newest:
            return None
        rows = np.asarray(await self.embedder.embed([newest, *earlier]), dtype=np.float32)
        vector = rows[0]
        if len(rows) > 1 and spec.context_weight > 0:
            vector = vector + spec.context_weight * rows[1:].mean(axis=0)
            vector = vector / np.linalg.norm(vector)
        return rows[0], vector

    def scores(self, vector: np.ndarray) -> dict[str, float]:
        """Each intent's score for a query vector."""
        values, _ = self._index.scores(vector, self.routes.spec.method, self.routes.spec.k)
        return {name: float(v) for name, v in zip(self._index.names, values, strict=True)}

    def match(self, vector: np.ndarray | None, threshold: float | None = None) -> IntentMatch:
        """The route for a query vector (the file's threshold unless one is given)."""
        if vector is None:
            return IntentMatch(DEFAULT_ROUTE, 0.0, 0.0, fallback=True)
        values, out_of_scope = self._index.scores(
            vector, self.routes.spec.method, self.routes.spec.k
        )
        order = np.argsort(values)[::-1]
        best = float(values[order[0]])
        margin = best - float(values[order[1]]) if len(order) > 1 else best
        nearest = self._index.names[order[0]]
        limit = self.routes.spec.threshold if threshold is None else threshold
        if best < limit or (out_of_scope is not None and out_of_scope > best):
            return IntentMatch(DEFAULT_ROUTE, best, margin, fallback=True, nearest=nearest)
        return IntentMatch(nearest, best, margin, fallback=False, nearest=nearest)

    async def classify(self, messages: Sequence[Mapping[str, Any]]) -> IntentMatch:
        """The intent of the newest user message (errors of the embedding call propagate:
        the caller decides whether a request goes on without a route)."""
        await self.maybe_reload()
        started = time.perf_counter()
        vectors = await self._embed_turns(messages)
        match = self.match(None if vectors is None else vectors[1])
        duration = time.perf_counter() - started
        INTENT_LATENCY.observe(duration)
        if match.fallback:
            INTENT_FALLBACKS.inc()
        INTENT_REQUESTS.labels(match.name, self.actions_for(match).model or "").inc()
        return IntentMatch(
            match.name,
            match.score,
            match.margin,
            match.fallback,
            nearest=match.nearest,
            duration_s=duration,
            newest=None if vectors is None else vectors[0],
            text=user_turns(messages, 0)[0],
        )

    def actions_for(self, match: IntentMatch) -> Actions:
        """The route's actions (the default route's for a fallback or a name no longer in
        the file after a reload)."""
        route = self._by_name.get(match.name)
        if route is None:
            default = self.routes.spec.default
            return Actions.model_validate(default.model_dump(exclude={"examples"}))
        return Actions.model_validate(route.model_dump(exclude={"name", "examples"}))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return -1.0


async def _embed_examples(
    routes: LoadedRoutes, embedder: Embedder, known: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Every example's vector: those already known reused, the others in one call."""
    wanted = [text for texts in example_texts(routes.spec) for text in texts]
    missing = list(dict.fromkeys(e for e in wanted if e not in known))
    vectors = {e: known[e] for e in wanted if e in known}
    if missing:
        try:
            fresh = await embedder.embed(missing)
        except Exception as exc:
            raise RouteFileError(
                f"{routes.path}: the examples could not be embedded: {exc}"
            ) from exc
        for text, vector in zip(missing, fresh, strict=True):
            vectors[text] = np.asarray(vector, dtype=np.float32)
    return vectors


def _check_same_model(old: LoadedRoutes, new: LoadedRoutes) -> None:
    """The embedders were built for the file's embed_model and reask_embed_model at start-up
    (their vectors, cached and the examples', are those models'): a new file naming others is
    refused."""
    for name in ("embed_model", "reask_embed_model"):
        before, after = getattr(old.spec, name), getattr(new.spec, name)
        if before != after:
            raise RouteFileError(
                f"{new.path}: {name} changed from {before!r} to {after!r}; the embedding "
                "models change with a restart"
            )


async def _check_models(routes: LoadedRoutes, resolve: Callable[[str], Awaitable[str]]) -> None:
    targets = [(r.name, r.model) for r in routes.spec.routes]
    targets.append((DEFAULT_ROUTE, routes.spec.default.model))
    for name, model in targets:
        if model is None:
            continue
        try:
            await resolve(model)
        except Exception as exc:
            reason = getattr(exc, "message", None) or str(exc)
            raise RouteFileError(
                f"{routes.where(name)}: model {model!r} cannot be used: {reason}"
            ) from None
