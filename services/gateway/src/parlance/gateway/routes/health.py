"""Liveness and readiness. Prometheus metrics are served on their own port (main.py), not
here: they show every key id with its token usage, which the public port must not."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from parlance.gateway.deps import State

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(state: State) -> JSONResponse:
    """Readiness: ready when a generator target and safety (which every chat needs) are
    SERVING. History and Redis are reported but degrade gracefully (outbox; per-process
    limits); `models` says which models are servable now."""
    generator, safety, history, redis_ok = await asyncio.gather(
        state.generator.check_health(),
        state.safety.check_health(),
        state.history.check_health(),
        state.redis.ping(),
    )
    dependencies = {
        "generator": "ok" if generator else "unavailable",
        "safety": "ok" if safety else "unavailable",
        "history": "ok" if history else "unavailable (writes go to the outbox)",
        "redis": "ok" if redis_ok else "unavailable (per-process limits, cache off)",
    }
    ready = generator and (safety or not state.settings.moderate_input)
    return JSONResponse(
        {
            "status": "ready" if ready else "not_ready",
            "dependencies": dependencies,
            "history_outbox_depth": state.outbox.depth,
            "history_outbox_full": state.outbox.full,
            # Per model: servable now ("ok") or not, its task, and its replicas serving.
            "models": {
                model: {
                    "status": "ok" if entry["serving"] else "unavailable",
                    "task": entry["task"],
                    "replicas": f"{entry['serving']}/{entry['targets']}",
                }
                for model, entry in state.models.status().items()
            },
        },
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": str(state.settings.retry_after_s)},
    )
