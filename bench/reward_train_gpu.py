"""The reward model on a GPU (issue 16): `parlance-train reward`'s job (TRL's RewardTrainer, a
sequence-classification head on SmolLM2-135M-Instruct) on simulated users' preference pairs
(parlance.trainer.synthetic: one hidden trait), for bench/gpu_round.sh's `train` phase:

    python3 bench/reward_train_gpu.py --base "$SMOLLM2_HF_DIR" --out /tmp/reward \\
        --json "$OUT/reward_train_gpu.json"

Writes the trained folder (the same content-addressed `<name>@<hash8>` folder the CLI writes,
with its model card) under --out, and a JSON of the card's figures: pairs, held-out pairwise
accuracy (prompts the training never saw), training seconds and pairs/s (TRL's loop only).
Needs only torch, transformers, trl and datasets beside the trainer's sources.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "trainer" / "src"))

from parlance.trainer import reward, synthetic  # noqa: E402
from parlance.trainer.output import CARD_JSON  # noqa: E402
from parlance.trainer.source import Loaded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="HF folder of the base model")
    parser.add_argument("--out", type=Path, required=True, help="folder for the trained model")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--trait", choices=["bullets", "short"], default="bullets")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    records = synthetic.pairs(args.prompts, trait=args.trait, seed=0)
    job = reward.RewardJob(
        base=args.base,
        out=args.out,
        name=f"reward-smollm2-{args.trait}",
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        eval_fraction=0.1,
    )
    began = time.perf_counter()
    folder = reward.run(job, Loaded(synthetic.jsonl(records).encode(), "synthetic"))
    card = json.loads((Path(folder) / CARD_JSON).read_text())
    result = {
        "folder": str(folder),
        "trait": args.trait,
        "wall_s": time.perf_counter() - began,
        "card": card,
    }
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result)[:2000])


if __name__ == "__main__":
    main()
