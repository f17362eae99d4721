"""Aliases with traffic splits: an alias names one model, or several with weights (`default` →
90% the base model, 10% an adapter). Pure functions, no I/O.

Which model of a split serves a user is a hash of (alias, user id) mapped onto the weights in
their given order: the same user always gets the same model while the weights stay, and
changing 90/10 to 80/20 moves only the users between 0.8 and 0.9 (everyone else stays). A
request without a user (none of the API's have one today) takes the heaviest model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

# (model id, weight) in the configured order; weights are positive, any scale (90/10 or .9/.1).
Weights = tuple[tuple[str, float], ...]

MAX_MODELS_PER_ALIAS = 16


class SplitError(ValueError):
    pass


def parse_alias(alias: str, value: object) -> Weights:
    """A GATEWAY_MODEL_ALIASES value or an admin route's weights: a model id, or an object of
    model id → weight (0 keeps the model listed but sends it nobody)."""
    if isinstance(value, str):
        if not value.strip():
            raise SplitError(f"alias {alias!r}: the model id is empty")
        return ((value, 1.0),)
    if not isinstance(value, Mapping) or not value:
        raise SplitError(f"alias {alias!r}: expected a model id or an object of model id to weight")
    if len(value) > MAX_MODELS_PER_ALIAS:
        raise SplitError(f"alias {alias!r}: at most {MAX_MODELS_PER_ALIAS} models")
    weights: list[tuple[str, float]] = []
    for model, weight in value.items():
        if not isinstance(model, str) or not model.strip():
            raise SplitError(f"alias {alias!r}: a model id is empty")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise SplitError(f"alias {alias!r}: the weight of {model!r} is not a number")
        if not math.isfinite(weight) or weight < 0:
            raise SplitError(f"alias {alias!r}: the weight of {model!r} must be 0 or more")
        weights.append((model, float(weight)))
    if sum(w for _, w in weights) <= 0:
        raise SplitError(f"alias {alias!r}: the weights add up to 0")
    return tuple(weights)


def parse_aliases(config: Mapping[str, object]) -> dict[str, Weights]:
    return {alias: parse_alias(alias, value) for alias, value in config.items()}


def bucket(alias: str, user_id: str) -> float:
    """The user's place in [0, 1) for this alias: the first 8 bytes of SHA-256 (stable across
    processes and versions, unlike Python's hash())."""
    digest = hashlib.sha256(f"{alias}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose(alias: str, weights: Weights, user_id: str | None) -> str:
    """The model of `weights` that serves `user_id` (None: the heaviest)."""
    live = [(model, w) for model, w in weights if w > 0]
    if not live:
        raise SplitError(f"alias {alias!r} sends traffic to no model")
    if user_id is None or len(live) == 1:
        return max(live, key=lambda item: item[1])[0]
    point = bucket(alias, user_id) * sum(w for _, w in live)
    cumulative = 0.0
    for model, weight in live:
        cumulative += weight
        if point < cumulative:
            return model
    return live[-1][0]


def primary(weights: Weights) -> str:
    """The model an alias stands for in listings: the heaviest (the first of equals)."""
    return max(weights, key=lambda item: item[1])[0]


def as_percentages(weights: Weights) -> dict[str, float]:
    total = sum(w for _, w in weights)
    return {model: round(100.0 * w / total, 4) for model, w in weights}
