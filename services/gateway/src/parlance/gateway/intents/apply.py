"""A route's actions applied to an OpenAI chat request body, with the request's own choices
first (the precedence the README states):

- model: the route's model replaces the request's only when the request names none or names
  an alias (an explicit model id wins);
- sampling: the route's defaults fill only the fields the request leaves out;
- system prompt: added as the first system message (the request's own messages follow);
- store: the route's choice only when the request does not say;
- safety thresholds: returned beside the body for the moderation step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from parlance.gateway.intents.routes import Actions


def apply_actions(
    body: dict[str, Any], actions: Actions, is_alias: Callable[[str], bool]
) -> dict[str, Any]:
    """A new body with the route's actions applied (the given body is not changed)."""
    result = copy.deepcopy(body)
    requested = result.get("model") or ""
    if actions.model and (not requested or is_alias(requested)):
        result["model"] = actions.model
    for name, value in actions.sampling.model_dump(exclude_none=True).items():
        if result.get(name) is None:
            result[name] = value
    if actions.system_prompt:
        messages = list(result.get("messages") or [])
        result["messages"] = [{"role": "system", "content": actions.system_prompt}, *messages]
    if actions.store is not None and result.get("store") is None:
        result["store"] = actions.store
    return result
