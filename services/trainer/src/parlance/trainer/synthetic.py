"""Simulated users with a hidden, learnable preference, for tests and benchmarks of the loop:
preference pairs over varied prompts, where the preferred answer has the trait.

Traits: "bullets" (the same points as a bulleted list rather than as prose) and "short"
(under 40 words rather than padded past 40). Both answers of a pair say the same things, so
the trait is all there is to learn. Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from typing import Any, Literal

Trait = Literal["bullets", "short"]

_TOPICS = [
    "sourdough bread",
    "a vegetable garden",
    "a home network",
    "a job interview",
    "a road trip",
    "a marathon",
    "a small aquarium",
    "a wedding toast",
    "a python project",
    "a chess opening",
    "a compost bin",
    "a first apartment",
    "a camping weekend",
    "a book club",
    "a bicycle",
    "a houseplant",
    "a budget spreadsheet",
    "a podcast",
    "a birthday party",
    "a watercolor painting",
    "a language course",
    "a team meeting",
    "a science fair project",
    "a photo album",
    "a kitchen renovation",
    "a morning routine",
    "a study plan",
    "a board game night",
    "a winter coat",
    "a moving day",
    "a blog",
    "a rainy holiday",
    "a bird feeder",
    "a guitar lesson",
    "a resume",
    "a picnic",
    "a yoga practice",
    "a used car",
    "a fish tank filter",
    "a puppy",
]
_ASKS = [
    "How do I get started with {t}?",
    "What should I know before planning {t}?",
    "Any tips for {t}?",
    "Can you help me think through {t}?",
    "What matters most when you prepare {t}?",
    "Give me advice on {t}, please.",
    "I am new to {t}. Where do I begin?",
    "What are common mistakes with {t}?",
]
_VERBS = [
    "check",
    "plan",
    "measure",
    "compare",
    "write down",
    "test",
    "clean",
    "schedule",
    "ask about",
    "budget for",
    "practice",
    "review",
]
_OBJECTS = [
    "the basic tools",
    "a realistic timeline",
    "the costs",
    "the space you have",
    "what others recommend",
    "the weather",
    "your energy level",
    "the first small step",
    "a backup option",
    "the instructions",
    "the quality of materials",
    "your goals",
]
_WHENS = [
    "early",
    "every week",
    "before you commit",
    "at the start",
    "once a month",
    "after each try",
    "with a friend",
    "in the evening",
]
_OPENERS = [
    "Here is what helps:",
    "A few things to keep in mind:",
    "Sure.",
    "Good question.",
    "Try this:",
]
_FILLER = [
    "It is worth remembering that everyone learns at a different pace and that is fine.",
    "Many people find that patience matters just as much as any particular technique here.",
    "In the end the details depend a lot on your own situation and on what you enjoy most.",
    "You can always adjust the plan later once you have a bit more experience with it.",
]


def _points(rng: random.Random, count: int) -> list[str]:
    return [
        f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_WHENS)}".capitalize()
        for _ in range(count)
    ]


def _prose(points: list[str]) -> str:
    return " ".join(f"{p}." for p in points)


def _bullets(points: list[str]) -> str:
    return "\n".join(f"- {p}" for p in points)


def _answers(rng: random.Random, trait: Trait) -> tuple[str, str]:
    """(preferred, other) for one comparison."""
    opener = rng.choice(_OPENERS)
    points = _points(rng, rng.randint(3, 4))
    if trait == "bullets":
        return f"{opener}\n{_bullets(points)}", f"{opener} {_prose(points)}"
    short = f"{opener} {_prose(points)}"
    padding = " ".join(rng.sample(_FILLER, k=3))
    return short, f"{short} {padding}"


def has_trait(answer: str, trait: Trait) -> bool:
    """Whether an answer shows the trait the simulated users prefer."""
    if trait == "bullets":
        return any(line.lstrip().startswith(("- ", "* ", "• ")) for line in answer.splitlines())
    return len(answer.split()) < 40


def pairs(
    n_prompts: int, *, trait: Trait = "bullets", seed: int = 0, max_per_prompt: int = 2
) -> list[dict[str, Any]]:
    """Preference records in the admin export's format (conversational, explicit prompt): one
    to max_per_prompt comparisons per prompt, the preferred answer chosen."""
    rng = random.Random(seed)
    records = []
    for _ in range(n_prompts):
        ask = rng.choice(_ASKS).format(t=rng.choice(_TOPICS))
        prompt = [{"role": "user", "content": ask}]
        for _ in range(rng.randint(1, max_per_prompt)):
            good, bad = _answers(rng, trait)
            records.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                }
            )
    return records


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)
