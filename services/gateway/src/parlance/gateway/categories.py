"""OpenAI's moderation categories, in the order its API lists them: /v1/moderations reports
every one (those the running classifier does not evaluate as false with score 0, and listed in
the response's `evaluated_categories` extension, so that a client can tell "not flagged" from
"not checked"), and a route file may set a threshold for any of them."""

from __future__ import annotations

OPENAI_CATEGORIES = (
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
)
