"""Validation-only evidence for how the MiniLM classifier splits a text into units.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/safety_units.py [HEAD.npz]

Harmful validation texts (services/safety/training/data/validation.tsv) are put among 1, 2 or
4 safe validation sentences (seeded), and safe texts are made of 2, 3 or 5 safe validation
sentences; each is scored (a) as the service scores it now, sentence by sentence, and (b) with
the whole text as one more unit (one embedding for several sentences). Printed: harmful texts
caught and safe texts flagged. The evaluation sets are not used. The figures in MODELS.md were
taken with head 3's second-round candidate; the former rule (whole text, sentences only past 32
tokens) caught 50/86 harmful sentences next to one safe sentence.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "safety" / "training"))

import train_head  # noqa: E402

from parlance.safety.classifier.minilm import MiniLMClassifier  # noqa: E402


def main() -> None:
    classifier = MiniLMClassifier(head_path=sys.argv[1] if len(sys.argv) > 1 else None)
    asyncio.run(classifier.load())
    validation = train_head.read_tsv(train_head.VALIDATION)
    harmful = [text for labels, text in validation if labels]
    safe = [text for labels, text in validation if not labels and len(text.split()) > 5]
    rng = random.Random(1)

    def flagged(texts: list[str], whole: bool) -> int:
        scores = classifier.score(texts)
        if whole:  # the whole text as one more unit: its own embedding, scored as one
            scores = [
                {c: max(v, w[c]) for c, v in s.items()}
                for s, w in zip(scores, whole_text_scores(texts), strict=True)
            ]
        return sum(1 for s in scores if max(s.values()) >= 0.5)

    def whole_text_scores(texts: list[str]) -> list[dict[str, float]]:
        encoder = classifier.encoder
        assert encoder is not None
        ids = encoder.tokenizer(texts, truncation=True, max_length=128)["input_ids"]
        embeddings = encoder._forward([list(i) for i in ids])
        probabilities = classifier._head.probabilities(embeddings)
        return [
            dict(zip(classifier._categories, map(float, row), strict=True)) for row in probabilities
        ]

    for context in (1, 2, 4):
        mixed = []
        for text in harmful:
            around = rng.sample(safe, context)
            at = rng.randint(0, context)
            mixed.append(" ".join([*around[:at], text, *around[at:]]))
        clean = [" ".join(rng.sample(safe, context + 1)) for _ in range(60)]
        print(
            f"harmful among {context} safe sentence(s): caught by sentence "
            f"{flagged(mixed, False)}/{len(mixed)}, with the whole text too "
            f"{flagged(mixed, True)}/{len(mixed)}; safe texts of {context + 1} sentences "
            f"flagged by sentence {flagged(clean, False)}/60, with the whole text too "
            f"{flagged(clean, True)}/60"
        )


if __name__ == "__main__":
    main()
