"""Names a route file uses: the moderation categories a route may tighten, and a route's
name as an example text (its name anchor, with the file's name_anchors)."""

from __future__ import annotations

import re

from parlance.gateway.categories import OPENAI_CATEGORIES

# The OpenAI moderation categories a route may set a threshold for.
SAFETY_CATEGORIES = frozenset(OPENAI_CATEGORIES)


def anchor(name: str) -> str:
    """A route's name as an example text ("small_talk" -> "small talk")."""
    return re.sub(r"[_.-]+", " ", name).strip()
