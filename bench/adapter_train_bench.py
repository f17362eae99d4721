"""Training benchmarks: LoRA adapters (issue 17: SFT and DPO throughput on CPU, and on a GPU
the proof that DPO on simulated users' feedback teaches the base a trait it rarely shows) and
the reward model (issue 16: throughput and accuracy on CPU). One script for the three, named
after its first (bench/gpu_round.sh runs its `gpu` mode).

The adapter modes train through parlance.trainer.lora_train, the code `parlance-train sft|dpo`
runs (TRL's SFTTrainer / DPOTrainer, a PEFT LoRA r16 on every linear layer), on pairs from
parlance.trainer.synthetic (the preferred answer has the trait; both answers say the same
things). They need only torch, transformers, trl, peft and datasets (the trainer's sources are
put on sys.path here): no gateway stack.

CPU (this machine; -> bench/results/adapter_train.md):
    .venv/bin/python bench/adapter_train_bench.py cpu
  SFT and DPO on the embedded SmolLM2-135M-Instruct (its GGUF dequantized, fp32): rows/s
  (TRL's loop only), seconds per step, the tokens of an example, CPU seconds, load average.

GPU (the H200; the kit of ../shared/gpu/README.md staged with bench/gpu-requirements.txt):
    source /tmp/stage/env.sh
    python3 bench/adapter_train_bench.py gpu --base "$SMOLLM2_HF_DIR" \\
        --out "$OUT/adapter_dpo_gpu.json"
  A few thousand pairs (trait `bullets` by default, or `short`), DPO for --epochs, then greedy
  answers of the base and of the adapter on fresh prompts (topics and wordings the training
  never saw): how often each shows the trait, Wilson 95% intervals, and a two-sided
  two-proportion z-test. Written as JSON (plus the PEFT folder under --keep, if given).

Reward model on CPU (-> bench/results/reward_train.md):
    .venv/bin/python bench/adapter_train_bench.py reward [--prompts 60 --steps 5 --out /tmp/r.md]
  `parlance-train reward`, the real command in a child process, per trait (one hidden,
  learnable trait per run), all-MiniLM-L6-v2 as the base: pairs, held-out pairwise accuracy
  (prompts the training never saw), training time and pairs/s as the model card records them
  (TRL's loop only), the child's CPU seconds and the load average. A trained model's scoring
  rate in process is best_of_bench.py's `direct` column; the GPU figure reward_train_gpu.py's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "services" / "trainer" / "src"))

from parlance.trainer import lora_train, synthetic  # noqa: E402

# Prompts the training never saw: other topics, other wordings.
FRESH_TOPICS = [
    "a pottery class", "a tax return", "a herb garden", "a dinner party", "a home gym",
    "a ski trip", "a sewing project", "a new laptop", "a family reunion", "a garage sale",
    "a cat adoption", "a hiking boot", "a meal plan", "a video call", "a rooftop garden",
    "a volunteer shift", "a beach cleanup", "a cover letter", "a bread machine", "a drum kit",
    "a night class", "a spice rack", "a travel budget", "a kayak", "a reading habit",
]  # fmt: skip
FRESH_ASKS = [
    "What should I do first with {t}?",
    "How would you approach {t}?",
    "I'd like some guidance on {t}.",
    "What is your advice for {t}?",
    "Help me prepare {t}.",
    "Where do beginners go wrong with {t}?",
    "Tell me how to handle {t}.",
    "What steps make {t} go well?",
]


def fresh_prompts(n: int, seed: int) -> list[str]:
    combos = [a.format(t=t) for t in FRESH_TOPICS for a in FRESH_ASKS]
    random.Random(seed).shuffle(combos)
    return combos[:n]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k1 * n2 == k2 * n1 else 0.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def rows(records: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    if method == "dpo":
        return records
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in records]


def split(records: list[dict[str, Any]], held_fraction: float) -> tuple[list, list]:
    """Held out by prompt, like parlance-train's split."""
    prompts = sorted({json.dumps(r["prompt"]) for r in records})
    random.Random(0).shuffle(prompts)
    held = set(prompts[: max(1, int(len(prompts) * held_fraction))])
    train = [r for r in records if json.dumps(r["prompt"]) not in held]
    return train, [r for r in records if json.dumps(r["prompt"]) in held]


def load_base(source: str) -> tuple[Any, Any, str]:
    """The base as parlance-train loads it (the embedded GGUF needs the gguf package)."""
    from parlance.trainer import lm_base

    base = lm_base.load(source)
    return base.model, base.tokenizer, base.digest


def example_tokens(tokenizer: Any, records: list[dict[str, Any]]) -> float:
    from parlance.trainer.adapter import token_count

    lengths = [token_count(tokenizer, r["prompt"] + r["chosen"]) for r in records[:200]]
    return sum(lengths) / len(lengths)


def settings(args: argparse.Namespace, method: str, steps: int | None) -> lora_train.Settings:
    return lora_train.Settings(
        method=method,  # type: ignore[arg-type]
        max_steps=steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        seed=args.seed,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        beta=getattr(args, "beta", 0.1),
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_once(
    args: argparse.Namespace, method: str, records: list[dict[str, Any]], steps: int | None
) -> dict[str, Any]:
    model, tokenizer, digest = load_base(args.base)
    train, held = split(rows(records, method), 0.1)
    with tempfile.TemporaryDirectory(prefix="adapter-bench-") as scratch:
        load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
        figures = lora_train.train(
            settings(args, method, steps), model, tokenizer, train, held, Path(scratch) / "peft"
        )
        figures["cpu_s"] = round(cpu_seconds() - cpu_before, 1)
        figures["load"] = (round(load_before, 1), round(os.getloadavg()[0], 1))
        if args.keep:
            import shutil

            shutil.copytree(Path(scratch) / "peft", Path(args.keep) / f"{method}-peft")
        figures["peft_dir"] = str(Path(scratch) / "peft")
        if method == "dpo" and getattr(args, "fresh", 0):
            figures["trait"] = trait_check(args, Path(scratch) / "peft")
    figures["base_digest"] = digest
    figures["tokens_per_example"] = round(example_tokens(tokenizer, records), 1)
    figures["train_rows"], figures["held_out_rows"] = len(train), len(held)
    return figures


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new: int) -> list[str]:
    import torch

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start : start + 32]
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in chunk
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        width = batch["input_ids"].shape[1]
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers


def degenerate(answer: str) -> bool:
    """A greedy answer stuck in a loop: one non-empty line four or more times."""
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    return bool(lines) and max(lines.count(line) for line in set(lines)) >= 4


def trait_check(args: argparse.Namespace, peft_dir: Path) -> dict[str, Any]:
    """Greedy answers of the base and of the saved adapter on fresh prompts."""
    import torch
    from peft import PeftModel

    prompts = fresh_prompts(args.fresh, seed=args.seed + 1)
    # TRL put the LoRA layers into the model it trained, in place: a fresh copy of the base
    # answers for the base, and the saved adapter on top of it for the adapter.
    base_model, tokenizer, _ = load_base(args.base)
    base_model = base_model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    base_answers = generate(base_model, tokenizer, prompts, args.max_new_tokens)
    adapted = PeftModel.from_pretrained(base_model, str(peft_dir)).eval()
    adapter_answers = generate(adapted, tokenizer, prompts, args.max_new_tokens)
    k_base = sum(synthetic.has_trait(a, args.trait) for a in base_answers)
    k_adapter = sum(synthetic.has_trait(a, args.trait) for a in adapter_answers)
    n = len(prompts)
    return {
        # An over-optimised adapter can show the trait and still be broken (a line repeated
        # down to max_new_tokens); count those apart so the trait rate is not read alone.
        "base_degenerate": sum(degenerate(a) for a in base_answers),
        "adapter_degenerate": sum(degenerate(a) for a in adapter_answers),
        "adapter_with_trait_not_degenerate": sum(
            synthetic.has_trait(a, args.trait) and not degenerate(a) for a in adapter_answers
        ),
        "trait": args.trait,
        "fresh_prompts": n,
        "max_new_tokens": args.max_new_tokens,
        "base_with_trait": k_base,
        "adapter_with_trait": k_adapter,
        "base_rate": round(k_base / n, 4),
        "adapter_rate": round(k_adapter / n, 4),
        "base_wilson95": [round(x, 4) for x in wilson(k_base, n)],
        "adapter_wilson95": [round(x, 4) for x in wilson(k_adapter, n)],
        "two_proportion_p": two_proportion_p(k_base, n, k_adapter, n),
        "examples": [
            {"prompt": p, "base": b, "adapter": a}
            for p, b, a in list(zip(prompts, base_answers, adapter_answers, strict=True))[:5]
        ],
    }


def run_cpu(args: argparse.Namespace) -> None:
    from lib.report import Report, table

    records = synthetic.pairs(args.prompts, trait=args.trait, seed=args.seed)
    results = {m: train_once(args, m, records, args.steps) for m in ("sft", "dpo")}
    for method, figures in results.items():
        figures.pop("peft_dir", None)
        print(method, json.dumps(figures["training"]), flush=True)
    tr = {m: f["training"] for m, f in results.items()}
    report = Report(
        "LoRA adapter training on CPU (parlance-train sft / dpo code path)",
        f"Base: {args.base} (fp32; HF digest {results['sft']['base_digest'][:23]}...), LoRA r16 "
        "alpha 32 on every linear layer; TRL 1.16, bf16 and gradient checkpointing off.",
        f"Data: parlance.trainer.synthetic, {args.prompts} prompts, trait `{args.trait}`; "
        f"{results['dpo']['tokens_per_example']} tokens per prompt + answer on average (chat "
        f"template included); {args.steps} steps of {args.batch_size} rows, max length "
        f"{args.max_length}. SFT rows: the prompt and its preferred answer; DPO rows: pairs.",
        "rows/s = rows trained / TRL's training time (not the base's load, the tokenization or "
        "the held-out evaluation). The machine is shared: the load average is part of the figure.",
    )
    report.section(
        "Throughput",
        *table(
            [
                "method",
                "steps",
                "rows trained",
                "training s",
                "s/step",
                "rows/s",
                "process CPU s",
                "load avg before / after",
                "train loss first / last tenth",
            ],
            [
                [
                    m,
                    t["steps"],
                    t["rows_seen"],
                    f"{t['seconds']:.1f}",
                    f"{t['seconds'] / max(1, t['steps']):.2f}",
                    f"{t['rows_per_s']:.3f}",
                    f"{results[m]['cpu_s']:.0f}",
                    f"{results[m]['load'][0]} / {results[m]['load'][1]}",
                    f"{t['loss_first']} / {t['loss_last']}",
                ]
                for m, t in tr.items()
            ],
        ),
        "",
        f"Per 1,000 examples at this size: SFT ~{1000 / tr['sft']['rows_per_s'] / 60:.0f} min, "
        f"DPO ~{1000 / tr['dpo']['rows_per_s'] / 60:.0f} min of training on this machine, "
        "at this load.",
    )
    report.write(args.out)


def run_gpu(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu mode needs CUDA (use `cpu` here)")
    records = synthetic.pairs(args.prompts, trait=args.trait, seed=args.seed)
    started = time.perf_counter()
    figures = train_once(args, "dpo", records, None)
    figures.pop("peft_dir", None)
    result = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(0),
        "pairs": len(records),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
        "wall_s": round(time.perf_counter() - started, 1),
        **figures,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


# --- the reward model (reward) ----------------------------------------------------------


def train_reward(args: argparse.Namespace, trait: synthetic.Trait, work: Path) -> dict[str, Any]:
    """`parlance-train reward` in a child process on `trait`'s pairs: its card and costs."""
    data = work / f"{trait}.jsonl"
    data.write_text(synthetic.jsonl(synthetic.pairs(args.prompts, trait=trait, seed=args.seed)))
    train = HERE.parent / ".venv" / "bin" / "parlance-train"
    command = [
        str(train if train.exists() else "parlance-train"),
        "reward", "--data", str(data), "--out", str(work / "models"), "--name", f"reward-{trait}",
        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--eval-fraction", "0.2", "--seed", str(args.seed), "--max-length", "128",
    ]  # fmt: skip
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"parlance-train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    folder = Path(done.stdout.strip().splitlines()[-1])
    cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    return {
        "trait": trait,
        "folder": folder,
        "card": json.loads((folder / "model_card.json").read_text()),
        "wall_s": wall,
        "cpu_s": cpu,
        "load": (load_before, os.getloadavg()[0]),
    }


def reward_row(run: dict[str, Any]) -> list[Any]:
    card = run["card"]
    tr = card["training"]
    return [
        run["trait"],
        f"{card['split']['train_pairs']} / {card['split']['held_out_pairs']}",
        f"{card['eval']['held_out_pairwise_accuracy']:.3f}",
        tr["steps"],
        tr["pairs_seen"],
        f"{tr['seconds']:.1f}",
        f"{tr['pairs_per_s']:.2f}",
        f"{run['wall_s']:.1f}",
        f"{run['cpu_s']:.1f}",
        f"{run['load'][0]:.1f} / {run['load'][1]:.1f}",
    ]


def run_reward(args: argparse.Namespace) -> None:
    from lib.report import Report, table

    with tempfile.TemporaryDirectory(prefix="reward-bench-") as scratch:
        runs = []
        for trait in args.traits.split(","):
            print(f"[bench] training on trait {trait!r}...", flush=True)
            runs.append(train_reward(args, trait, Path(scratch)))
    report = Report(
        "Reward model training on CPU (parlance-train reward, all-MiniLM-L6-v2)",
        f"Versions: {', '.join(f'{k} {v}' for k, v in runs[0]['card']['versions'].items())}.",
        f"Data: parlance.trainer.synthetic, {args.prompts} prompts (1-2 comparisons each), "
        f"held-out 20% by prompt; {args.steps} steps of {args.batch_size} pairs, "
        "max length 128 tokens, fp32, torch threads 2.",
    )
    columns = ["trait preferred", "train / held-out pairs", "held-out pairwise accuracy"]
    columns += ["steps", "pairs trained", "training s", "pairs/s", "command wall s"]
    report.section(
        "Training",
        *table([*columns, "command CPU s", "load avg before / after"], map(reward_row, runs)),
        "",
        "bullets: the same points as a bulleted list beat them as prose. short: an answer under",
        "40 words beats the same answer padded past 40. pairs/s = pairs trained / training s.",
    )
    report.write(args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    cpu = modes.add_parser("cpu", help="SFT and DPO throughput here")
    cpu.add_argument("--base", default="SmolLM2-135M-Instruct")
    cpu.add_argument("--prompts", type=int, default=40)
    cpu.add_argument("--steps", type=int, default=6)
    cpu.add_argument("--batch-size", type=int, default=4)
    cpu.add_argument("--learning-rate", type=float, default=2e-4)
    cpu.add_argument("--out", type=Path, default=HERE / "results" / "adapter_train.md")
    gpu = modes.add_parser("gpu", help="DPO on a few thousand pairs, then the trait check")
    gpu.add_argument("--base", required=True, help="HF folder of the base (the kit's)")
    gpu.add_argument("--prompts", type=int, default=2000, help="~1.5 pairs per prompt")
    gpu.add_argument("--epochs", type=float, default=1.0)
    gpu.add_argument("--batch-size", type=int, default=16)
    # 2e-4 drove the DPO loss to ~0 within 25 of 169 steps on the H200 and left some greedy
    # answers looping on "-" lines; 5e-5 is the gentler default.
    gpu.add_argument("--learning-rate", type=float, default=5e-5)
    gpu.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
    gpu.add_argument("--fresh", type=int, default=200, help="fresh prompts for the trait check")
    gpu.add_argument("--max-new-tokens", type=int, default=128)
    gpu.add_argument("--out", type=Path, help="JSON result file")
    for p in (cpu, gpu):
        p.add_argument("--trait", choices=["bullets", "short"], default="bullets")
        p.add_argument("--max-length", type=int, default=256)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--keep", type=Path, help="copy the trained PEFT folder(s) here")
    cpu.set_defaults(epochs=1.0)
    rew = modes.add_parser("reward", help="reward model training and scoring here")
    rew.add_argument("--prompts", type=int, default=300)
    rew.add_argument("--steps", type=int, default=40)
    rew.add_argument("--batch-size", type=int, default=16)
    rew.add_argument("--seed", type=int, default=0)
    rew.add_argument("--traits", default="bullets,short")
    rew.add_argument("--out", type=Path, default=HERE / "results" / "reward_train.md")
    args = parser.parse_args()
    {"cpu": run_cpu, "gpu": run_gpu, "reward": run_reward}[args.mode](args)


if __name__ == "__main__":
    main()
