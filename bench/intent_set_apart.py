"""An intent evaluation set without the messages equal or close to a training message of the
fine-tuned intent encoder (services/generator/training/intents/finetune.py's overlap rule:
equal ignoring case, word-set Jaccard >= 0.6 or difflib ratio >= 0.78). Prints counts only, so
that a set can be checked without being read.

    .venv/bin/python bench/intent_set_apart.py bench/data/intents_3/messages.tsv .scratch/apart.tsv
    .venv/bin/python bench/intent_set_apart.py --model 2 SET/messages.tsv .scratch/apart.tsv

`--model N`: the training corpus of finetune.py's model N (1, the default: data/ alone; 2:
data/ and data/model_2/, which holds model 1's corpus too).

bench/intent_eval.py reads sets inside the repository: write the output under it (a git-ignored
or scratch folder), then `bench/intent_eval.py --data THAT`.
"""

from __future__ import annotations

import argparse
import csv
import sys
from difflib import SequenceMatcher
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services" / "generator" / "training" / "intents"))

import finetune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=int, choices=sorted(finetune.MODELS), default=1)
    args = parser.parse_args()
    corpus = finetune.read_corpus(finetune.MODELS[args.model].folders)
    training = [(t.casefold(), finetune.words(t)) for _, t in corpus]
    keys = {key for key, _ in training}
    lines = args.source.read_text(encoding="utf-8").splitlines()
    with args.source.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if len(rows) != len(lines) - 1:
        raise SystemExit(f"{args.source}: expected one message per line after the header")
    kept, equal, close = [lines[0]], 0, 0
    for row, line in zip(rows, lines[1:], strict=True):
        key = row["text"].casefold()
        mine = finetune.words(row["text"])
        if key in keys:
            equal += 1
        elif any(
            len(mine & theirs) / max(1, len(mine | theirs)) >= 0.6
            or SequenceMatcher(None, other, key).ratio() >= 0.78
            for other, theirs in training
        ):
            close += 1
        else:
            kept.append(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    print(
        f"{len(rows)} messages: {equal} equal to a training message, {close} close, "
        f"{len(kept) - 1} kept in {args.out}"
    )


if __name__ == "__main__":
    main()
