"""`parlance-train reward`: a reward model from preference pairs with TRL's RewardTrainer.

The pairs are tokenized here (base.encode: the chat template, the start of a long conversation
cut) and handed to TRL already tokenized, so that the held-out accuracy is computed on exactly
the sequences the trainer's rule makes, and nothing is filtered out silently for its length.
"""

from __future__ import annotations

import functools
import inspect
import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from parlance.trainer import base as base_model
from parlance.trainer import compat, output
from parlance.trainer import data as prefs
from parlance.trainer.source import Loaded

log = logging.getLogger(__name__)

CARD_FORMAT = "parlance-reward-model/1"
TRUNCATION_RULE = "keep-first-token-and-tail"


@dataclass(frozen=True, slots=True)
class RewardJob:
    base: str
    out: Path
    name: str | None = None
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_length: int | None = None
    eval_fraction: float = 0.1
    seed: int = 0
    min_pairs: int = 50
    threads: int | None = None


@dataclass(frozen=True, slots=True)
class Encoded:
    chosen: list[list[int]]
    rejected: list[list[int]]
    truncated: int


def _encode(pairs: list[prefs.Pair], tokenizer: Any, max_length: int) -> Encoded:
    chosen, rejected, truncated = [], [], 0
    for pair in pairs:
        good, cut_good = base_model.encode(tokenizer, pair.conversation(pair.chosen), max_length)
        bad, cut_bad = base_model.encode(tokenizer, pair.conversation(pair.rejected), max_length)
        chosen.append(good)
        rejected.append(bad)
        truncated += cut_good or cut_bad
    return Encoded(chosen, rejected, truncated)


def score(model: Any, tokenizer: Any, sequences: list[list[int]], batch_size: int) -> list[float]:
    """One reward per sequence (eval mode, no gradients), batched by length."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(sequences[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, : len(sequences[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, value in zip(chunk, logits[:, 0].float().tolist(), strict=True):
                out[row] = value
    return out


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs whose chosen answer scores strictly higher (a tie counts as wrong)."""
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


def versions() -> dict[str, str]:
    found = {}
    for dist in ("parlance-trainer", "trl", "transformers", "torch", "peft", "accelerate", "gguf"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    found["python"] = platform.python_version()
    return found


def _accept_use_cache(model: Any) -> None:
    """TRL 1.16's RewardTrainer.compute_loss passes use_cache=False to every model; encoders
    (BERT, all-MiniLM-L6-v2) have no cache and refuse the argument. Drop it for them."""
    forward = model.forward
    if "use_cache" in inspect.signature(forward).parameters:
        return

    @functools.wraps(forward)
    def without_cache(*args: Any, use_cache: bool | None = None, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    model.forward = without_cache


def _train(job: RewardJob, base: base_model.Base, train: Encoded) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    cuda = torch.cuda.is_available()
    _accept_use_cache(base.model)
    dataset = Dataset.from_dict({"chosen_ids": train.chosen, "rejected_ids": train.rejected})

    class CountingTrainer(RewardTrainer):
        """Counts the pairs trained on (the loader prefetches a batch ahead: count here)."""

        pairs_seen = 0

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any) -> Any:
            self.pairs_seen += int(inputs["input_ids"].shape[0]) // 2
            return super().training_step(model, inputs, *args)

    with tempfile.TemporaryDirectory(prefix="parlance-train-") as scratch:
        config = RewardConfig(
            output_dir=scratch,
            per_device_train_batch_size=job.batch_size,
            learning_rate=job.learning_rate,
            num_train_epochs=job.epochs,
            max_steps=job.max_steps if job.max_steps is not None else -1,
            **compat.warmup(0.1),
            seed=job.seed,
            data_seed=job.seed,
            # TRL's defaults (bf16, gradient checkpointing) make CPU steps many times slower.
            bf16=cuda and torch.cuda.is_bf16_supported(),
            gradient_checkpointing=False,
            use_cpu=not cuda,
            max_length=None,  # sequences are cut in _encode, never dropped
            save_strategy="no",
            report_to=[],
            logging_steps=10,
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = CountingTrainer(
            model=base.model,
            args=config,
            train_dataset=dataset,
            processing_class=base.tokenizer,
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
    return {
        "steps": int(result.global_step),
        "final_loss": round(float(result.training_loss), 4),
        "seconds": round(seconds, 2),
        "pairs_seen": trainer.pairs_seen,
        "pairs_per_s": round(trainer.pairs_seen / seconds, 2) if seconds > 0 else 0.0,
        "device": "cuda:" + torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(),
    }


def run(job: RewardJob, loaded: Loaded) -> Path:
    """Trains and publishes; the published folder's path. TrainError for anything the user
    can fix (data, base, output directory)."""
    pairs = prefs.parse_preferences(loaded.data, loaded.source)
    prefs.check_enough(pairs, job.min_pairs, loaded.source)
    parts = prefs.split(pairs, job.eval_fraction, job.seed)
    name = job.name or f"reward-{Path(job.base.rstrip('/')).name}"
    output.check_name(name)
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    base = base_model.load(job.base, job.max_length)
    train = _encode(parts.train, base.tokenizer, base.max_length)
    held = _encode(parts.held_out, base.tokenizer, base.max_length)
    log.info(
        "training a reward model",
        extra={"train_pairs": len(parts.train), "held_out_pairs": len(parts.held_out)},
    )
    training = _train(job, base, train)
    chosen = score(base.model, base.tokenizer, held.chosen, job.batch_size * 2)
    rejected = score(base.model, base.tokenizer, held.rejected, job.batch_size * 2)
    accuracy = pairwise_accuracy(chosen, rejected)
    margin = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)

    staging = output.staging_dir(job.out)
    try:
        base.model.save_pretrained(staging, safe_serialization=True)
        base.tokenizer.save_pretrained(staging)
        card = {
            "format": CARD_FORMAT,
            "id": "",
            "name": name,
            "task": "reward",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "base": {"source": base.source, "digest": base.digest},
            "data": {
                "source": loaded.source,
                "digest": prefs.digest(loaded.data),
                "window": {"since": loaded.since, "until": loaded.until}
                if loaded.source.startswith("http")
                else None,
                "model_filter": loaded.model,
                "pairs": len(pairs),
                "prompts": prefs.Split.prompts(pairs),
            },
            "split": {
                "seed": job.seed,
                "eval_fraction": job.eval_fraction,
                "train_pairs": len(parts.train),
                "held_out_pairs": len(parts.held_out),
                "train_prompts": prefs.Split.prompts(parts.train),
                "held_out_prompts": prefs.Split.prompts(parts.held_out),
            },
            "eval": {
                "held_out_pairwise_accuracy": round(accuracy, 4),
                "held_out_mean_margin": round(margin, 4),
            },
            "training": {
                "trainer": "trl.RewardTrainer",
                "max_steps": job.max_steps,
                "epochs": job.epochs,
                "batch_size": job.batch_size,
                "learning_rate": job.learning_rate,
                "max_length": base.max_length,
                "truncated_pairs": train.truncated + held.truncated,
                **training,
            },
            "serving": {
                "max_length": base.max_length,
                "truncation": TRUNCATION_RULE,
                "chat_template": base.chat_template,
            },
            "versions": versions(),
            "model_digest": output.model_digest(staging),
        }
        digest8 = str(card["model_digest"]).removeprefix("sha256:")[:8]
        card["id"] = f"{name}@{digest8}"
        output.write_card(staging, card)
        target = output.publish(staging, job.out, name)
    except BaseException:
        output.discard(staging)  # gone already when the rename succeeded
        raise
    return target
