"""Reward-model training throughput and accuracy on CPU (issue 16): `parlance-train reward`, the
real command in a child process, on simulated users' preference pairs (parlance.trainer.synthetic:
one hidden, learnable trait per run), with all-MiniLM-L6-v2 as the base.

    python bench/reward_train_bench.py                      # -> bench/results/reward_train.md
    python bench/reward_train_bench.py --prompts 60 --steps 5 --out /tmp/r.md   # smoke run

Per trait it reports the pairs, the held-out pairwise accuracy (prompts the training never saw),
the training time and pairs/s as the model card records them (TRL's loop only: not the load of
the base, the tokenization or the held-out scoring), the child's CPU seconds and the machine's
load average (the dev machine is shared: wall-clock pairs/s falls with its load). Then the
trained model's scoring rate in process (TransformersRewardEngine, the generator's engine, no
gRPC): candidates/s for best-of-4-shaped calls, one at a time and 8 concurrent.

The GPU figure (a SmolLM2-135M base with a score head on the H200, `--base
HuggingFaceTB/SmolLM2-135M-Instruct --batch-size 32`) is still to be run: this machine has none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.report import Report, out_argument, table

from parlance.trainer import synthetic

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / ".venv" / "bin" / "parlance-train"


def train(
    trait: synthetic.Trait, prompts: int, steps: int, batch: int, seed: int, work: Path
) -> dict[str, Any]:
    data = work / f"{trait}.jsonl"
    data.write_text(synthetic.jsonl(synthetic.pairs(prompts, trait=trait, seed=seed)))
    out = work / "models"
    command = [
        str(TRAIN if TRAIN.exists() else "parlance-train"),
        "reward", "--data", str(data), "--out", str(out), "--name", f"reward-{trait}",
        "--max-steps", str(steps), "--batch-size", str(batch), "--eval-fraction", "0.2",
        "--seed", str(seed), "--max-length", "128",
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
    card = json.loads((folder / "model_card.json").read_text())
    return {
        "trait": trait,
        "folder": folder,
        "card": card,
        "wall_s": wall,
        "cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
        "load": (load_before, os.getloadavg()[0]),
    }


async def scoring_rate(folder: Path, calls: int, concurrency: int) -> float:
    """Candidates/s of best-of-4-shaped Score calls on the generator's reward engine."""
    from parlance.generator.engine.base import ChatMessage, ScoreRequest
    from parlance.generator.engine.reward import TransformersRewardEngine

    engine = TransformersRewardEngine(
        served_model_name=folder.name, model_path=str(folder), n_threads=1
    )
    await engine.start()
    records = synthetic.pairs(calls, seed=4242, max_per_prompt=1)
    requests = [
        ScoreRequest(
            request_id=str(i),
            messages=(ChatMessage("user", r["prompt"][0]["content"]),),
            candidates=(r["chosen"][0]["content"], r["rejected"][0]["content"]) * 2,
        )
        for i, r in enumerate(records)
    ]
    try:
        await engine.score(requests[0])  # warm-up
        started = time.perf_counter()
        pending = list(requests)
        while pending:
            wave, pending = pending[:concurrency], pending[concurrency:]
            await asyncio.gather(*(engine.score(r) for r in wave))
        elapsed = time.perf_counter() - started
    finally:
        await engine.close()
    return 4 * len(requests) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--traits", default="bullets,short")
    parser.add_argument("--score-calls", type=int, default=64)
    out_argument(parser, "reward_train.md")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="reward-bench-") as scratch:
        for trait in args.traits.split(","):
            print(f"[bench] training on trait {trait!r}...", flush=True)
            runs.append(
                train(trait, args.prompts, args.steps, args.batch_size, args.seed, Path(scratch))
            )
        rates = {
            c: asyncio.run(scoring_rate(runs[0]["folder"], args.score_calls, c)) for c in (1, 8)
        }
    card = runs[0]["card"]
    report = Report(
        "Reward model training on CPU (parlance-train reward, all-MiniLM-L6-v2)",
        f"Versions: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}.",
        f"Data: parlance.trainer.synthetic, {args.prompts} prompts (1-2 comparisons each), "
        f"held-out 20% by prompt; {args.steps} steps of {args.batch_size} pairs, "
        "max length 128 tokens, fp32, torch threads 2.",
    )
    rows = []
    for run in runs:
        c = run["card"]
        tr = c["training"]
        rows.append(
            [
                run["trait"],
                f"{c['split']['train_pairs']} / {c['split']['held_out_pairs']}",
                f"{c['eval']['held_out_pairwise_accuracy']:.3f}",
                tr["steps"],
                tr["pairs_seen"],
                f"{tr['seconds']:.1f}",
                f"{tr['pairs_per_s']:.2f}",
                f"{run['wall_s']:.1f}",
                f"{run['cpu_s']:.1f}",
                f"{run['load'][0]:.1f} / {run['load'][1]:.1f}",
            ]
        )
    report.section(
        "Training",
        *table(
            [
                "trait preferred",
                "train / held-out pairs",
                "held-out pairwise accuracy",
                "steps",
                "pairs trained",
                "training s",
                "pairs/s",
                "command wall s",
                "command CPU s",
                "load avg before / after",
            ],
            rows,
        ),
        "",
        "bullets: the same points as a bulleted list beat them as prose. short: an answer under",
        "40 words beats the same answer padded past 40. pairs/s = pairs trained / training s.",
    )
    report.section(
        "Scoring (the trained bullets model, in process)",
        *table(
            ["Score calls of 4 candidates", "candidates/s"],
            [[f"{c} at a time", f"{r:.1f}"] for c, r in rates.items()],
        ),
    )
    report.section(
        "GPU (to do)",
        "Not run: no GPU here. On the H200: the same command with `--base "
        "HuggingFaceTB/SmolLM2-135M-Instruct` (a score head on SmolLM2, bf16 by the trainer "
        "on CUDA) and a larger `--batch-size`; report pairs/s and held-out accuracy here.",
    )
    report.write(args.out)


if __name__ == "__main__":
    main()
