"""Rewrites the shipped head's per-category thresholds by a fixed rule (head 4b and later).

    .venv/bin/python services/safety/training/set_thresholds.py [--head PATH] [--out PATH]
        [--safe-rate 0.02] [--floor 0.5] [--check]

Rule: each category's threshold is the lowest grid value (0.01 steps) at which at most
SAFE_RATE (2%) of the development safe texts are flagged in that category, and never below
FLOOR (0.5, the uncalibrated point of a class-balanced head). One free parameter, chosen
before looking at a fresh set: it bounds each category's false-positive rate on the safe
texts seen so far instead of trading it against recall. The development safe texts are the
calibration set's safe texts (train_head.calibration_set(): data/validation.tsv and
bench/data/safety_eval_2) and every benign and hard-negative text of bench/data/safety_eval_3
(scored once as a test set for head 4, a development set since: its README says so).

Why not train_head.choose_thresholds (head 4's calibration): it minimised missed texts plus
3 x safe texts flagged on a calibration set whose safe kinds the training round had targeted,
so those scored low and thresholds came out at 0.21-0.45; on eval_3 that flagged 16% of the
hard negatives. bench/results/safety_eval_3.md ("development use after the first scoring")
has the figures of this rule on the development data, and why the issue's hard-negative
target is not reachable by thresholds of this head.

The head file keeps its thresholds folded into the output biases (b - logit(t)) and stores
them in "thresholds"; this script unfolds them (b + logit(t_stored)), so it can be run on its
own output and gives the same head. Only the biases, thresholds and name change.
--check recomputes the thresholds and compares with the head file instead of writing it.
A fine-tuned head (head 5, finetune.py: the same rule, applied when it is written) is scored
with its encoder deltas merged and can only be checked here: `--head PATH --out PATH --check`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_head  # noqa: E402

from parlance.safety.classifier.minilm import (  # noqa: E402
    MiniLMEncoder,
    default_model_path,
    load_head,
)

# The name the service reports for a head whose thresholds this rule set.
HEAD_NAME = "minilm-l6-safety-head-4b"
SAFE_RATE = 0.02
FLOOR = 0.5
EVAL_3 = train_head.ROOT / "bench" / "data" / "safety_eval_3"
GRID = np.round(np.arange(0.01, 0.991, 0.01), 2)


def development_set() -> list[tuple[str, str]]:
    """(labels, text): the calibration set and the whole of safety_eval_3 (benign and hard
    negatives as safe)."""
    rows = train_head.calibration_set() + train_head.read_tsv(EVAL_3 / "toxic.tsv")
    for line in (EVAL_3 / "benign.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append((train_head.SAFE_LABEL, line.split("\t")[-1].strip()))
    return rows


def unfolded(path: Path) -> dict[str, np.ndarray]:
    """The head's arrays with its stored thresholds taken out of the output biases."""
    with np.load(path, allow_pickle=False) as data:
        head = {name: data[name] for name in data.files}
    t = head["thresholds"].astype(np.float64)
    head["biases"] = head["biases"].astype(np.float64) + np.log(t / (1 - t))
    return head


def rule_thresholds(safe_scores: np.ndarray, safe_rate: float, floor: float) -> np.ndarray:
    """Per column: the lowest grid value flagging at most safe_rate of the rows, >= floor.

    Raises ValueError when no grid value flags few enough rows in a column (np.argmax of an
    all-False array is 0, which would give the floor: the loosest threshold, not the tightest).
    """
    thresholds = np.zeros(safe_scores.shape[1])
    for column in range(safe_scores.shape[1]):
        rates = np.array([np.mean(safe_scores[:, column] >= t) for t in GRID])
        within = rates <= safe_rate
        if not within.any():
            name = train_head.CATEGORIES[column] if column < len(train_head.CATEGORIES) else "?"
            raise ValueError(
                f"column {column} ({name}): no threshold up to {GRID[-1]:.2f} flags at most "
                f"{safe_rate:.1%} of the {len(safe_scores)} safe texts (at {GRID[-1]:.2f}: "
                f"{rates[-1]:.1%})"
            )
        thresholds[column] = max(floor, float(GRID[np.argmax(within)]))
    return thresholds


def report(scores: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> list[str]:
    safe = y.sum(axis=1) == 0
    flags = scores >= thresholds
    lines = []
    for column, category in enumerate(train_head.CATEGORIES):
        truth = y[:, column] > 0
        lines.append(
            f"{category:24} threshold={thresholds[column]:.2f} "
            f"recall={np.mean(flags[truth, column]):.3f} (n={int(truth.sum())}) "
            f"safe flagged={np.mean(flags[safe, column]):.3f} (n={int(safe.sum())})"
        )
    lines.append(
        f"{'any category':24} recall={np.mean(flags[~safe].any(axis=1)):.3f} "
        f"safe flagged={np.mean(flags[safe].any(axis=1)):.3f}"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head", type=Path, default=train_head.OUT, help="head to re-threshold")
    parser.add_argument("--out", type=Path, default=train_head.OUT)
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--safe-rate", type=float, default=SAFE_RATE)
    parser.add_argument("--floor", type=float, default=FLOOR)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args()
    head = unfolded(args.head)
    raw = {name: head[name].astype(np.float64) for name in ("weights", "biases")}
    if "hidden_weights" in head:
        raw["hidden_weights"] = head["hidden_weights"].astype(np.float64)
        raw["hidden_biases"] = head["hidden_biases"].astype(np.float64)
    # A fine-tuned head (finetune.py) is scored with its encoder deltas merged, as served.
    deltas = load_head(args.head).deltas
    if deltas and not args.check:
        raise SystemExit(
            f"{args.head} is a fine-tuned head: finetune.py sets its thresholds by this rule and "
            "stores reference scores that depend on them; use --check here"
        )
    rows = development_set()
    encoder = MiniLMEncoder(args.model_path or default_model_path(), deltas=deltas)
    scores = train_head.score_as_served(encoder, raw, [text for _, text in rows])
    y = train_head.label_matrix(rows)
    thresholds = rule_thresholds(scores[y.sum(axis=1) == 0], args.safe_rate, args.floor)
    print(f"{len(rows)} development texts, {int((y.sum(axis=1) == 0).sum())} safe")
    print("\n".join(report(scores, y, thresholds)))
    if args.check:
        with np.load(args.out) as committed:
            difference = float(np.max(np.abs(committed["thresholds"] - thresholds)))
        print(f"largest threshold difference from {args.out}: {difference:.3f}")
        raise SystemExit(0 if difference < 0.015 else 1)
    head["biases"] = (raw["biases"] - np.log(thresholds / (1 - thresholds))).astype(np.float32)
    head["thresholds"] = thresholds.astype(np.float32)
    head["name"] = np.array(HEAD_NAME)
    np.savez_compressed(args.out, **head)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
