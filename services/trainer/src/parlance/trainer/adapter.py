"""`parlance-train sft` and `parlance-train dpo`: a LoRA adapter from the users' feedback.

The published folder `<out>/<name>@<hash8>` (the hash: SHA-256 of every file but the manifest
and README, so a name always means one adapter; an existing folder is never written to):

    peft/            the PEFT adapter (adapter_config.json, adapter_model.safetensors): vLLM's
                     LoRARequest path
    adapter.gguf     the same LoRA for llama.cpp (llama.cpp's own converter, float32)
    manifest.json    base digests, data digest and row counts, held-out figures before and
                     after, the loss curve, time, steps, device, versions, and the greedy
                     parity of the adapter between transformers (PEFT, the weights vLLM
                     loads) and llama.cpp (the GGUF LoRA) on fixed prompts (parity.py)
    README.md        the manifest in words

Everything that can refuse is checked before training (data, name, converter, base, length),
and the folder is written under a hidden staging name and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parlance.trainer import data as prefs
from parlance.trainer import gguf_lora, lm_base, lora_train, output, parity, sft_data
from parlance.trainer.errors import TrainError
from parlance.trainer.reward import versions
from parlance.trainer.source import Loaded

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "parlance-adapter/1"
MANIFEST = "manifest.json"
README = "README.md"
PEFT_DIR = "peft"
GGUF_FILE = "adapter.gguf"
CARD_FILES = frozenset({MANIFEST, README})


@dataclass(frozen=True, slots=True)
class AdapterJob:
    method: lora_train.Method
    base: str
    out: Path
    name: str | None = None
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-4
    max_length: int = 1024
    eval_fraction: float = 0.1
    seed: int = 0
    min_rows: int = 20
    threads: int | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    beta: float = 0.1
    parity_prompts: int = parity.DEFAULT_PROMPTS


@dataclass(frozen=True, slots=True)
class Rows:
    """The parsed records, split, as TRL's conversational datasets."""

    total: int
    prompts: int
    split: prefs.Split[Any]
    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]


def _rows(job: AdapterJob, loaded: Loaded) -> Rows:
    records: list[prefs.Grouped]
    if job.method == "sft":
        records, noun = list(sft_data.parse_examples(loaded.data, loaded.source)), "examples"
    else:
        records, noun = list(prefs.parse_preferences(loaded.data, loaded.source)), "pairs"
    if len(records) < job.min_rows:
        raise TrainError(
            f"{loaded.source} holds {len(records)} {noun}; at least {job.min_rows} are needed "
            f"(--min-{noun}) to train and to hold some out"
        )
    parts = prefs.split(records, job.eval_fraction, job.seed, noun=noun)
    return Rows(
        total=len(records),
        prompts=prefs.Split.prompts(records),
        split=parts,
        train=[_record(r) for r in parts.train],
        held_out=[_record(r) for r in parts.held_out],
    )


def _record(item: Any) -> dict[str, Any]:
    if isinstance(item, sft_data.Example):
        return item.record()
    pair: prefs.Pair = item

    def turns(t: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in t]

    return {
        "prompt": turns(pair.prompt),
        "chosen": turns(pair.chosen),
        "rejected": turns(pair.rejected),
    }


def token_count(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> int:
    """Tokens of a rendered conversation (transformers 5 returns a mapping where 4 returned
    the ids)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return len(out["input_ids"] if isinstance(out, Mapping) else out)


def _lengths(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> dict[str, int]:
    """How many records TRL cuts (prompt and answer longer than max_length: the end of the
    answer goes) and drops (the prompt alone fills max_length), counted the way it renders
    them, so the manifest says what was trained on."""
    cut = dropped = 0
    for row in rows:
        prompt = token_count(tokenizer, row["prompt"], add_generation_prompt=True)
        answers = [row["completion"]] if "completion" in row else [row["chosen"], row["rejected"]]
        longest = max(token_count(tokenizer, row["prompt"] + a) for a in answers)
        dropped += prompt >= max_length
        cut += prompt < max_length < longest
    return {"truncated_rows": cut, "dropped_rows": dropped}


def _check_length(job: AdapterJob, base: lm_base.LMBase) -> None:
    window = int(getattr(base.model.config, "max_position_embeddings", 0) or 0)
    if window and job.max_length > window:
        raise TrainError(f"--max-length {job.max_length}: the base takes at most {window} tokens")


def _settings(job: AdapterJob) -> lora_train.Settings:
    return lora_train.Settings(
        method=job.method,
        max_steps=job.max_steps,
        epochs=job.epochs,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        max_length=job.max_length,
        seed=job.seed,
        lora_r=job.lora_r,
        lora_alpha=job.lora_alpha,
        lora_dropout=job.lora_dropout,
        beta=job.beta,
    )


def _manifest(
    job: AdapterJob,
    name: str,
    loaded: Loaded,
    rows: Rows,
    base: lm_base.LMBase,
    figures: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    parts = rows.split
    return {
        "format": MANIFEST_FORMAT,
        "id": "",
        "name": name,
        "method": job.method,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {"peft": PEFT_DIR, "gguf": GGUF_FILE},
        "base": {
            "source": base.source,
            "hf_digest": base.digest,
            "gguf_file": base.gguf_path.name if base.gguf_path else None,
            "gguf_digest": base.gguf_digest,
        },
        "lora": extra["lora"],
        "gguf": extra["gguf"],
        "data": {
            "kind": "sft" if job.method == "sft" else "preference",
            "source": loaded.source,
            "digest": prefs.digest(loaded.data),
            "window": {"since": loaded.since, "until": loaded.until}
            if loaded.source.startswith("http")
            else None,
            "model_filter": loaded.model,
            "rows": rows.total,
            "prompts": rows.prompts,
        },
        "split": {
            "seed": job.seed,
            "eval_fraction": job.eval_fraction,
            "train_rows": len(parts.train),
            "held_out_rows": len(parts.held_out),
            "train_prompts": prefs.Split.prompts(parts.train),
            "held_out_prompts": prefs.Split.prompts(parts.held_out),
        },
        "eval": {
            "held_out_before": figures["held_out_before"],
            "held_out_after": figures["held_out_after"],
        },
        "training": {
            "trainer": "trl.SFTTrainer" if job.method == "sft" else "trl.DPOTrainer",
            "max_steps": job.max_steps,
            "epochs": job.epochs,
            "batch_size": job.batch_size,
            "learning_rate": job.learning_rate,
            "max_length": job.max_length,
            "beta": job.beta if job.method == "dpo" else None,
            **extra["lengths"],
            **figures["training"],
        },
        "parity": extra["parity"],
        "versions": versions(),
        "adapter_digest": "",
    }


def _lora_fields(peft_dir: Path) -> dict[str, Any]:
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    if config.get("modules_to_save"):
        raise TrainError("the adapter carries modules_to_save; vLLM would refuse it")
    return {
        "r": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "dropout": config.get("lora_dropout"),
        "target_modules": sorted(config.get("target_modules") or []),
        "modules_to_save": None,
    }


def _write(
    staging: Path, job: AdapterJob, name: str, loaded: Loaded, rows: Rows, base: lm_base.LMBase
) -> dict[str, Any]:
    """Trains into staging and writes everything but the id and digest (known at the end)."""
    lengths = _lengths(base.tokenizer, rows.train + rows.held_out, job.max_length)
    log.info(
        "training a %s adapter",
        job.method,
        extra={"train_rows": len(rows.train), "held_out_rows": len(rows.held_out)},
    )
    figures = lora_train.train(
        _settings(job), base.model, base.tokenizer, rows.train, rows.held_out, staging / PEFT_DIR
    )
    gguf_lora.convert(staging / PEFT_DIR, base.folder, staging / GGUF_FILE)
    import torch

    extra = {
        "lora": _lora_fields(staging / PEFT_DIR),
        "gguf": gguf_lora.check(staging / GGUF_FILE),
        "lengths": lengths,
        # After the conversion: it compares the two files just written (and refuses to publish
        # a GGUF LoRA that llama.cpp does not apply).
        "parity": parity.measure(
            count=job.parity_prompts,
            folder=base.folder,
            tokenizer=base.tokenizer,
            peft_dir=staging / PEFT_DIR,
            gguf=base.gguf_path,
            gguf_lora=staging / GGUF_FILE,
            threads=torch.get_num_threads(),
        ),
    }
    return _manifest(job, name, loaded, rows, base, figures, extra)


def run(job: AdapterJob, loaded: Loaded) -> Path:
    """Trains, converts and publishes; the published folder's path. TrainError for anything
    the user can fix (data, base, name, output directory, the converter's refusal)."""
    rows = _rows(job, loaded)
    name = job.name or f"{job.method}-{Path(job.base.rstrip('/')).stem}"
    output.check_name(name)
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    gguf_lora.converter_dir()  # fetched now, not after an hour of training
    base = lm_base.load(job.base)
    _check_length(job, base)
    staging = output.staging_dir(job.out)
    try:
        manifest = _write(staging, job, name, loaded, rows, base)
        digest = output.folder_digest(staging, skip=CARD_FILES)
        manifest["adapter_digest"] = digest
        manifest["id"] = f"{name}@{digest.removeprefix('sha256:')[:8]}"
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / README).write_text(render_readme(manifest))
        return output.publish(staging, job.out, name, card_files=CARD_FILES)
    except BaseException:
        output.discard(staging)  # gone already when the rename succeeded
        raise


def _figures(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v}" for k, v in metrics.items()) or "n/a"


def _parity_line(p: dict[str, Any]) -> str:
    if "skipped" in p:
        return f"skipped: {p['skipped']}"

    def figures(a: dict[str, Any]) -> str:
        return (
            f"{a['exact']}/{a['prompts']} answers identical, first "
            f"{a['mean_common_prefix']} tokens shared on average"
        )

    weights = p["engines"]["llamacpp"]["weights"]
    return (
        f"transformers (PEFT, float32) vs llama.cpp (GGUF LoRA on {weights}), greedy, "
        f"{p['max_new_tokens']} new tokens: adapter {figures(p['adapter'])}; base "
        f"{figures(p['base'])}"
    )


def render_readme(m: dict[str, Any]) -> str:
    base, data, split, tr, ev = m["base"], m["data"], m["split"], m["training"], m["eval"]
    what = (
        "supervised fine-tuning on answers users rated +1 (loss on the rated answer only)"
        if m["method"] == "sft"
        else f"direct preference optimization on answer pairs users preferred (beta {tr['beta']})"
    )
    base_line = f"`{base['source']}` (HF folder {base['hf_digest']}"
    base_line += f"; GGUF {base['gguf_file']} {base['gguf_digest']})" if base["gguf_file"] else ")"
    return f"""# {m["id"]}

A LoRA adapter (r {m["lora"]["r"]}, alpha {m["lora"]["alpha"]}, every linear layer of the
decoder) trained by `parlance-train {m["method"]}`: {what}.
`{PEFT_DIR}/` is the PEFT adapter (vLLM), `{GGUF_FILE}` the same adapter for llama.cpp.

| | |
|---|---|
| base | {base_line} |
| data | `{data["source"]}` ({data["digest"]}) |
| rows | {data["rows"]} from {data["prompts"]} prompts; {split["train_rows"]} train, \
{split["held_out_rows"]} held out (seed {split["seed"]}) |
| held-out before | {_figures(ev["held_out_before"])} |
| held-out after | {_figures(ev["held_out_after"])} |
| training loss | {tr["loss_first"]} (first tenth of the steps) to {tr["loss_last"]} (last tenth) |
| training | {tr["steps"]} steps, batch {tr["batch_size"]}, {tr["rows_seen"]} rows in \
{tr["seconds"]:.1f} s ({tr["rows_per_s"]} rows/s) on {tr["device"]} |
| cut / dropped for length | {tr["truncated_rows"]} / {tr["dropped_rows"]} \
(max {tr["max_length"]} tokens) |
| greedy parity | {_parity_line(m["parity"])} |
| adapter digest | {m["adapter_digest"]} |

Held-out rows answer prompts no training row answers. Greedy parity gives both engines the same
prompt tokens; where the base GGUF is quantized, transformers runs its dequantized weights and
llama.cpp quantized matmuls, so answers may part after a near tie (a measurement, not a gate).
`{MANIFEST}` holds every figure and the parity answers.
"""
