"""Distinct, realistic sentences for the embedding benchmarks (10-16 words, ~15-20 tokens):
sentence i is never the same as sentence j, so no cache answers."""

from __future__ import annotations

SUBJECTS = ["The weather", "My account", "This recipe", "The train", "Our team", "The report"]
VERBS = ["looks", "seems", "turned out", "became", "stays", "felt"]
ENDINGS = [
    "much better than it did yesterday morning",
    "hard to understand without a few examples",
    "ready for the meeting with the new customers",
    "slower than anyone expected after the update",
    "surprisingly good for such a small amount of work",
    "worth another look before we decide anything",
]


def sentence(i: int) -> str:
    return f"{SUBJECTS[i % 6]} {VERBS[(i // 6) % 6]} {ENDINGS[(i // 36) % 6]} (note {i})."


def sentences(count: int, offset: int = 0) -> list[str]:
    return [sentence(i) for i in range(offset, offset + count)]
