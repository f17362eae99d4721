"""TRL's SFTTrainer and DPOTrainer with a PEFT LoRA on a causal LM, bounded and seeded, with
the held-out part evaluated before and after training.

The LoRA covers every linear layer of the decoder (PEFT's "all-linear": the output layer is
left out) and nothing else: no `modules_to_save`, because SmolLM2 ties its input embeddings to
its output layer, and vLLM refuses an adapter that carries an lm_head.

On a CPU, TRL's defaults of bf16 autocast and gradient checkpointing make each step minutes
long (bf16 matmuls are emulated; checkpointing recomputes every layer for a model that fits in
memory many times over): both are off there. On a GPU both stay as TRL sets them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Literal

from parlance.trainer import compat
from parlance.trainer.errors import TrainError

log = logging.getLogger(__name__)

Method = Literal["sft", "dpo"]
# DPO's held-out figures as TRL names them (after the "eval_" prefix).
DPO_EVAL_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen")
SFT_EVAL_KEYS = ("loss", "mean_token_accuracy")


@dataclass(frozen=True, slots=True)
class Settings:
    method: Method
    max_steps: int | None
    epochs: float
    batch_size: int
    learning_rate: float
    max_length: int
    seed: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    beta: float


def lora_config(settings: Settings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _common_args(settings: Settings, scratch: str) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": scratch,
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps if settings.max_steps is not None else -1,
        **compat.warmup(0.1),
        "seed": settings.seed,
        "data_seed": settings.seed,
        "max_length": settings.max_length,
        # None: TRL's default (bf16 where the GPU has it); off on a CPU (see the module doc).
        "bf16": None if cuda else False,
        "gradient_checkpointing": cuda,
        "use_cpu": not cuda,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        # Every step's loss: the manifest's loss curve and the "it learned" check read it.
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataset_num_proc": None,
    }


def _trainer(
    settings: Settings, model: Any, tokenizer: Any, train: Any, held_out: Any, scratch: str
) -> Any:
    """The TRL trainer, counting the records it trains on (the data loader prefetches a batch
    ahead, so they are counted as each step takes them)."""
    common = _common_args(settings, scratch)
    if settings.method == "sft":
        from trl import SFTConfig, SFTTrainer

        class CountingSFT(SFTTrainer):
            rows_seen = 0

            def training_step(self, model: Any, inputs: dict[str, Any], *args: Any) -> Any:
                self.rows_seen += int(inputs["input_ids"].shape[0])
                return super().training_step(model, inputs, *args)

        # Prompt-completion records: the loss is on the completion only (TRL's default there).
        return CountingSFT(
            model=model,
            args=SFTConfig(**common, completion_only_loss=True),
            train_dataset=train,
            eval_dataset=held_out,
            processing_class=tokenizer,
            peft_config=lora_config(settings),
        )
    from trl import DPOConfig, DPOTrainer

    class CountingDPO(DPOTrainer):
        rows_seen = 0

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any) -> Any:
            # Chosen and rejected sequences are one batch: the first half chosen.
            self.rows_seen += int(inputs["input_ids"].shape[0]) // 2
            return super().training_step(model, inputs, *args)

    # No ref_model: with a LoRA the reference is the base itself (the adapter switched off).
    return CountingDPO(
        model=model,
        args=DPOConfig(**common, beta=settings.beta),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
    )


def _held_out(metrics: dict[str, float], method: Method) -> dict[str, float]:
    keys = SFT_EVAL_KEYS if method == "sft" else DPO_EVAL_KEYS
    return {
        key.replace("/", "_"): round(float(metrics[f"eval_{key}"]), 4)
        for key in keys
        if f"eval_{key}" in metrics
    }


def _loss_curve(history: list[dict[str, Any]]) -> list[float]:
    return [round(float(entry["loss"]), 4) for entry in history if "loss" in entry]


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def train(
    settings: Settings,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    held_rows: list[dict[str, Any]],
    save_to: Any,
) -> dict[str, Any]:
    """Trains, saves the PEFT folder into save_to, and returns the figures for the manifest:
    held-out metrics before and after, the training loss curve, time, steps, device."""
    import torch
    from datasets import Dataset

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="parlance-train-") as scratch:
        trainer = _trainer(
            settings,
            model,
            tokenizer,
            Dataset.from_list(train_rows),
            Dataset.from_list(held_rows),
            scratch,
        )
        if len(trainer.train_dataset) == 0:
            raise TrainError(
                f"no training example fits --max-length {settings.max_length} (each prompt "
                "alone is that long); raise --max-length"
            )
        before = _held_out(trainer.evaluate(), settings.method)
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        after = _held_out(trainer.evaluate(), settings.method)
        trainer.model.save_pretrained(save_to, safe_serialization=True)
        curve = _loss_curve(trainer.state.log_history)
    tenth = max(1, len(curve) // 10)
    return {
        "held_out_before": before,
        "held_out_after": after,
        "training": {
            "steps": int(result.global_step),
            "rows_seen": trainer.rows_seen,
            "rows_per_s": round(trainer.rows_seen / seconds, 3) if seconds > 0 else 0.0,
            "seconds": round(seconds, 2),
            "mean_loss": round(float(result.training_loss), 4),
            # Mean of the first and of the last tenth of the steps' losses.
            "loss_first": _mean(curve[:tenth]),
            "loss_last": _mean(curve[-tenth:]),
            "loss_curve": curve if len(curve) <= 200 else curve[:: len(curve) // 200 + 1],
            "device": f"cuda:{torch.cuda.get_device_name(0)}" if cuda else "cpu",
            "bf16": bool(trainer.args.bf16),
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
            "threads": torch.get_num_threads(),
        },
    }
