"""POST /v1/embeddings: OpenAI's embeddings endpoint, with chat's auth, RPM/TPM limits,
concurrency lease, request ids, size limits and per-tenant cache (embeddings.py)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from parlance.common import tracing
from parlance.gateway import errors
from parlance.gateway.deps import LimitedCaller, State, tokens_headers
from parlance.gateway.embeddings import EmbeddingLimits, EmbeddingsRecord, EmbeddingsService
from parlance.gateway.embeddings_protocol import EmbeddingList, EmbeddingRequest
from parlance.gateway.headers import ResponseHeaders, response_headers

log = logging.getLogger(__name__)

router = APIRouter()

Headers = Annotated[ResponseHeaders, Depends(response_headers)]


async def get_embeddings_service(request: Request, state: State) -> EmbeddingsService:
    """One service per app, made on first use (it holds the settlements in flight)."""
    service: EmbeddingsService | None = getattr(request.app.state, "embeddings", None)
    if service is None:
        service = EmbeddingsService(state.settings, state.generator, state.models, state.redis)
        request.app.state.embeddings = service
    return service


Embeddings = Annotated[EmbeddingsService, Depends(get_embeddings_service)]


@router.post("/v1/embeddings", response_model=EmbeddingList)
@tracing.traced("POST /v1/embeddings")
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    caller: LimitedCaller,
    state: State,
    service: Embeddings,
    headers: Headers,
) -> JSONResponse:
    if body.model_extra:
        log.info("ignoring unknown request fields", extra={"fields": sorted(body.model_extra)})
    settings = state.settings
    # Validation and the model first: a request refused as invalid reserves nothing.
    try:
        prepared = await service.prepare(body, caller)
    except errors.APIError:
        headers.update(await tokens_headers(state, caller))
        raise
    if state.slots.locked():
        raise errors.service_unavailable(
            "The server is at its concurrency limit; retry shortly.", settings.retry_after_s
        )
    limits = EmbeddingLimits(settings, state.limiter, state.leases, caller, prepared.estimate)
    await limits.take(headers)
    used: int | None = None
    async with state.slots:
        try:
            bypass = "no-cache" in request.headers.get("cache-control", "").lower()
            record: EmbeddingsRecord | None = None
            if prepared.cache_key is not None and not bypass:
                record = await service.cached(prepared)
            cache = "hit" if record is not None else "miss" if prepared.cache_key else "bypass"
            if bypass:
                cache = "bypass"
            if record is None:
                record = await service.embed(prepared)
                used = record.prompt_tokens
            else:
                used = 0  # a cached answer costs no tokens
        finally:
            service.settle_later(limits, used)
    service.finish(prepared, record, cache)
    headers["x-cache"] = cache
    return JSONResponse(record.render(body.encoding_format), headers=dict(headers))
