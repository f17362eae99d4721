"""GET /v1/admin/reward-model: the reward model best_of uses now, and its card (README,
"Best-of-n"). The card is the registration's (routes/admin_models.py reads it from the folder):
a reward model registered through POST /v1/admin/models has one; one listed in a generator's
GENERATOR_MODELS has none this gateway can read."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from parlance.gateway import errors
from parlance.gateway.chat.best_of import NO_REWARD_MODEL
from parlance.gateway.deps import Admin, State
from parlance.gateway.routes.admin_models import registration_json

router = APIRouter()


@router.get("/v1/admin/reward-model")
async def current_reward_model(_: Admin, state: State) -> dict[str, Any]:
    rewards = state.chat.best_of.rewards
    try:
        model_id = await rewards.current()
    except errors.APIError as exc:
        if exc.code != NO_REWARD_MODEL:
            raise
        raise errors.APIError(404, exc.message, code=NO_REWARD_MODEL) from None
    registration = state.runtime_models.registrations.get(model_id)
    return {
        "object": "reward_model",
        "id": model_id,
        # Why best_of uses it: named by GATEWAY_REWARD_MODEL, or the newest one served.
        "chosen_by": "GATEWAY_REWARD_MODEL" if rewards.configured else "newest",
        "registration": (
            await registration_json(registration, state.generator.targets)
            if registration is not None
            else None
        ),
    }
