"""The `parlance-train` command. Every refusal (bad data, missing base, unreachable gateway) is
one message on stderr and exit status 1; usage errors exit 2 (argparse's convention)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from parlance.trainer.errors import TrainError

PROG = "parlance-train"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _add_reward(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "reward",
        help="train a reward model from preference pairs (TRL's RewardTrainer)",
        description="Train a sequence-classification reward model from preference JSONL (the "
        "admin export's format) and write <out>/<name>@<hash8> with a model card.",
    )
    src = p.add_argument_group("data (one of)").add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, metavar="FILE", help="preference JSONL file")
    src.add_argument(
        "--from-gateway",
        metavar="URL",
        help="pull GET /v1/admin/export?kind=preference from this gateway",
    )
    p.add_argument(
        "--admin-key-env",
        default="GATEWAY_ADMIN_KEY",
        metavar="VAR",
        help="environment variable holding the gateway's admin key (default GATEWAY_ADMIN_KEY)",
    )
    p.add_argument("--since", help="--from-gateway: export window start (Unix seconds or ISO)")
    p.add_argument("--until", help="--from-gateway: export window end (exclusive)")
    p.add_argument("--model", help="--from-gateway: only pairs answered by this model id")
    p.add_argument(
        "--base",
        default="all-MiniLM-L6-v2",
        metavar="PATH_OR_ID",
        help="HF model folder or Hub id; default: the embedded all-MiniLM-L6-v2",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", help="model name before '@' (default reward-<base name>)")
    p.add_argument("--max-steps", type=_positive_int, metavar="N", help="stop after N steps")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    p.add_argument("--batch-size", type=_positive_int, default=16, metavar="PAIRS")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument(
        "--max-length",
        type=_positive_int,
        metavar="TOKENS",
        help="longest sequence (default: the base's window, at most 512)",
    )
    p.add_argument("--eval-fraction", type=float, default=0.1, metavar="F")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-pairs", type=_positive_int, default=50, metavar="N")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Parlance's training jobs.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_reward(commands)
    return p


def _reward(args: argparse.Namespace) -> Path:
    # Imported here: `parlance-train --help` should not pay for torch.
    from parlance.trainer import reward, source

    if args.data is not None:
        if args.since or args.until or args.model:
            raise TrainError("--since, --until and --model filter the gateway's export only")
        loaded = source.read_file(args.data)
    else:
        loaded = source.fetch_export(
            args.from_gateway,
            args.admin_key_env,
            since=args.since,
            until=args.until,
            model=args.model,
        )
    job = reward.RewardJob(
        base=args.base,
        out=args.out,
        name=args.name,
        max_steps=args.max_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        min_pairs=args.min_pairs,
        threads=args.threads,
    )
    return reward.run(job, loaded)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        folder = _reward(args)
    except TrainError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
