"""Names a route file uses: the moderation categories a route may tighten, and a route's
name as an example text (its name anchor, with the file's name_anchors)."""

from __future__ import annotations

import re

# The OpenAI moderation categories a route may set a threshold for.
SAFETY_CATEGORIES = frozenset(
    {
        "harassment",
        "harassment/threatening",
        "hate",
        "hate/threatening",
        "illicit",
        "illicit/violent",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "sexual/minors",
        "violence",
        "violence/graphic",
    }
)


def anchor(name: str) -> str:
    """A route's name as an example text ("small_talk" -> "small talk")."""
    return re.sub(r"[_.-]+", " ", name).strip()
