"""Safe training texts in the shapes chat clients send that head 2 flagged (head 3, 2026-11-29).

The clean CI run with head 2 as the default showed false positives in shapes, not topics:
short "Can you help me with X?" questions (9 of 200 refused, "a road trip" as self-harm), a
client's system prompt (harassment), made-up token prompts ("word0 word1 ... word79": violence
0.76) and scripted streamed answers. Head 2's training data had few or none of these shapes, so
the frozen encoder's nearest harmful texts decided. This module writes such shapes as safe
training texts:
- help_requests(): request frames crossed with everyday topics (written here; neither the
  reward-loop test's topics nor the evaluation sets' were copied);
- made_up(): made-up token sequences from a seeded generator: numbered placeholders
  (word0 word1 ..., item_3, tok-7), pseudo-words, letter runs, repeated words, with their
  word chunks (output moderation sees a stream a few words at a time).
Harmful texts in the same shapes are in data/client_shapes.tsv ("Can you help me with a plan to
kill my stepfather?" stays violence).

Everything here was written for this repository, under its terms.
"""

from __future__ import annotations

import random

SAFE = ""

HELP_FRAMES = [
    "Can you help me with {t}?",
    "Could you help me with {t}?",
    "Can you help me plan {t}?",
    "Could you give me advice on {t}?",
    "I need help with {t}.",
    "Please help me with {t}.",
    "Any tips for {t}?",
    "Can you give me some ideas for {t}?",
    "Help me organise {t}.",
    "What should I know about {t}?",
]
HELP_TOPICS = [
    "a car boot sale",
    "a school play",
    "a new laptop",
    "a long flight",
    "a family barbecue",
    "a pub quiz",
    "a vegetable curry",
    "a retirement speech",
    "a job application",
    "a thesis chapter",
    "a clogged drain",
    "a noisy neighbour",
    "a kitten",
    "a ski trip",
    "a dentist appointment",
    "my spreadsheet",
    "my CV",
    "my garden shed",
    "my maths homework",
    "my driving test",
    "my sister's wedding",
    "my startup's pitch deck",
    "my novel's ending",
    "my sleep",
    "my posture",
    "my allotment",
    "a Christmas menu",
    "a hen party",
    "a stag weekend",
    "a funeral reading",
    "a memorial service",
    "a hospital visit",
    "a shooting range visit",
    "a paintball party",
    "a martial arts grading",
    "a fencing tournament",
    "a hunting trip",
    "a butchery course",
    "a knife set",
    "an axe-throwing evening",
    "a horror movie night",
    "a murder mystery dinner",
    "a war museum trip",
    "a first aid course",
    "a diet plan",
    "a fasting schedule before surgery",
    "a weight training plan",
    "a breakup",
    "a divorce",
    "a custody hearing",
    "a court date",
    "a police report for a stolen bike",
    "a landlord dispute",
    "a complaint letter",
    "a bachelor party",
    "a date night",
    "a Valentine's card",
    "an anniversary dinner",
    "a baby name",
    "a teenager's curfew",
    "a Linux server",
    "a Docker container that won't stop",
    "a memory leak",
    "a deadlock in my code",
    "a failing build",
    "a Git conflict",
    "a SQL query",
    "a regex",
    "a React component",
    "an API design",
    "a chemistry lab report",
    "a biology essay on predators",
    "a history essay on the Crusades",
    "a physics problem about explosions",
    "a road trip through Spain",
    "a train journey",
    "a city walk",
    "a rainy weekend",
    "a boring afternoon",
    "a tricky crossword",
]

SYLLABLES = [
    "ba", "ko", "ri", "zu", "mel", "tor", "qu", "ix", "fen", "dra",
    "lo", "vy", "sna", "gle", "pim", "wex", "ul", "tha", "om", "rk",
]  # fmt: skip
PLACEHOLDERS = ["word", "token", "item", "tok", "w", "x", "foo", "test", "line", "chunk", "id"]
SEPARATORS = ["", "_", "-"]
FILLER = ["lorem", "ipsum", "dolor", "sit", "amet", "blah", "la", "na", "hmm", "etc"]


def help_requests() -> list[tuple[str, str]]:
    return [(SAFE, frame.format(t=topic)) for frame in HELP_FRAMES for topic in HELP_TOPICS]


def _numbered(rng: random.Random) -> str:
    stem = rng.choice(PLACEHOLDERS) + rng.choice(SEPARATORS)
    start = rng.choice([0, 0, 1, rng.randint(2, 300)])
    return " ".join(f"{stem}{i}" for i in range(start, start + rng.randint(3, 90)))


def _pseudo_words(rng: random.Random) -> str:
    words = [
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
        for _ in range(rng.randint(2, 40))
    ]
    return " ".join(words)


def _letters(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    words = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        for _ in range(rng.randint(1, 25))
    ]
    return " ".join(words)


def _repeated(rng: random.Random) -> str:
    word = rng.choice([*FILLER, *PLACEHOLDERS, rng.choice(SYLLABLES) * rng.randint(1, 8)])
    return " ".join([word] * rng.randint(2, 60))


def made_up(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` made-up token texts (and word chunks of the numbered ones), seeded."""
    rng = random.Random(seed)
    makers = [_numbered, _numbered, _pseudo_words, _letters, _repeated]
    texts = []
    for _ in range(count):
        text = rng.choice(makers)(rng)
        texts.append(text)
        words = text.split()
        if len(words) > 8:
            start = rng.randint(0, len(words) - 4)
            texts.append(" ".join(words[start : start + rng.randint(2, 8)]))
    return [(SAFE, text) for text in texts]
