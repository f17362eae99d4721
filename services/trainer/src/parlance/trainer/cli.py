"""The `parlance-train` command. Every refusal (bad data, missing base, unreachable gateway) is
one message on stderr and exit status 1; usage errors exit 2 (argparse's convention)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from parlance.trainer import parity
from parlance.trainer.errors import TrainError

if TYPE_CHECKING:
    from parlance.trainer.source import Loaded

PROG = "parlance-train"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parity_prompts(text: str) -> int:
    value = int(text)
    if not 0 <= value <= len(parity.PROMPTS):
        raise argparse.ArgumentTypeError(f"must be 0 to {len(parity.PROMPTS)}, not {value}")
    return value


def _add_data(p: argparse.ArgumentParser, what: str, kind: str) -> None:
    src = p.add_argument_group("data (one of)").add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, metavar="FILE", help=f"{what} JSONL file")
    src.add_argument(
        "--from-gateway",
        metavar="URL",
        help=f"pull GET /v1/admin/export?kind={kind} from this gateway",
    )
    p.add_argument(
        "--admin-key-env",
        default="GATEWAY_ADMIN_KEY",
        metavar="VAR",
        help="environment variable holding the gateway's admin key (default GATEWAY_ADMIN_KEY)",
    )
    p.add_argument("--since", help="--from-gateway: export window start (Unix seconds or ISO)")
    p.add_argument("--until", help="--from-gateway: export window end (exclusive)")
    p.add_argument("--model", help="--from-gateway: only records answered by this model id")


def _add_run(p: argparse.ArgumentParser, batch_size: int, learning_rate: float) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", help="name before '@' (default <command>-<base name>)")
    p.add_argument("--max-steps", type=_positive_int, metavar="N", help="stop after N steps")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    p.add_argument("--batch-size", type=_positive_int, default=batch_size, metavar="ROWS")
    p.add_argument("--learning-rate", type=float, default=learning_rate)
    p.add_argument("--eval-fraction", type=float, default=0.1, metavar="F")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch")


def _add_reward(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "reward",
        help="train a reward model from preference pairs (TRL's RewardTrainer)",
        description="Train a sequence-classification reward model from preference JSONL (the "
        "admin export's format) and write <out>/<name>@<hash8> with a model card.",
    )
    _add_data(p, "preference", "preference")
    p.add_argument(
        "--base",
        default="all-MiniLM-L6-v2",
        metavar="PATH_OR_ID",
        help="HF model folder or Hub id; default: the embedded all-MiniLM-L6-v2",
    )
    _add_run(p, batch_size=16, learning_rate=1e-4)
    p.add_argument(
        "--max-length",
        type=_positive_int,
        metavar="TOKENS",
        help="longest sequence (default: the base's window, at most 512)",
    )
    p.add_argument("--min-pairs", type=_positive_int, default=50, metavar="N")


def _add_adapter(commands: argparse._SubParsersAction, method: str) -> None:
    sft = method == "sft"
    p = commands.add_parser(
        method,
        help="train a LoRA adapter on "
        + ("rated answers (TRL's SFTTrainer)" if sft else "preference pairs (TRL's DPOTrainer)"),
        description="Train a LoRA adapter (every linear layer) on "
        + ("SFT conversations" if sft else "preference pairs")
        + " (the admin export's format) and write <out>/<name>@<hash8>: the PEFT folder "
        "(vLLM), a GGUF LoRA (llama.cpp) and a manifest.",
    )
    _add_data(p, "SFT" if sft else "preference", "sft" if sft else "preference")
    p.add_argument(
        "--base",
        default=lm_base_name(),
        metavar="PATH",
        help="HF model folder or .gguf file; default: the embedded SmolLM2-135M-Instruct "
        "(its GGUF, dequantized once into a cached HF folder)",
    )
    _add_run(p, batch_size=8, learning_rate=2e-4 if sft else 1e-4)
    p.add_argument(
        "--max-length",
        type=_positive_int,
        default=1024,
        metavar="TOKENS",
        help="longest prompt + answer; longer ones lose the end (default 1024)",
    )
    p.add_argument(
        "--min-examples" if sft else "--min-pairs",
        dest="min_rows",
        type=_positive_int,
        default=20,
        metavar="N",
    )
    p.add_argument("--lora-r", type=_positive_int, default=16, metavar="R")
    p.add_argument("--lora-alpha", type=_positive_int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    if not sft:
        p.add_argument("--beta", type=float, default=0.1, help="DPO's beta (default 0.1)")
    p.add_argument(
        "--parity-prompts",
        type=_parity_prompts,
        default=parity.DEFAULT_PROMPTS,
        metavar="N",
        help="greedy parity of the adapter between transformers (PEFT) and llama.cpp (GGUF "
        f"LoRA) on N fixed prompts, in the manifest (default {parity.DEFAULT_PROMPTS}, at most "
        f"{len(parity.PROMPTS)}; 0 skips)",
    )


def lm_base_name() -> str:
    from parlance.trainer.lm_base import EMBEDDED_LM

    return EMBEDDED_LM


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Parlance's training jobs.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_reward(commands)
    _add_adapter(commands, "sft")
    _add_adapter(commands, "dpo")
    return p


def _load(args: argparse.Namespace, kind: str) -> Loaded:
    from parlance.trainer import source

    if args.data is not None:
        if args.since or args.until or args.model:
            raise TrainError("--since, --until and --model filter the gateway's export only")
        return source.read_file(args.data)
    return source.fetch_export(
        args.from_gateway,
        args.admin_key_env,
        since=args.since,
        until=args.until,
        model=args.model,
        kind=kind,
    )


def _reward(args: argparse.Namespace) -> Path:
    # Imported here: `parlance-train --help` should not pay for torch.
    from parlance.trainer import reward

    loaded = _load(args, "preference")
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


def _adapter(args: argparse.Namespace) -> Path:
    from parlance.trainer import adapter

    loaded = _load(args, "sft" if args.command == "sft" else "preference")
    job = adapter.AdapterJob(
        method=args.command,
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
        min_rows=args.min_rows,
        threads=args.threads,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        beta=getattr(args, "beta", 0.1),
        parity_prompts=args.parity_prompts,
    )
    return adapter.run(job, loaded)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds like an error: the half-written staging folder is removed on the way.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        folder = _reward(args) if args.command == "reward" else _adapter(args)
    except TrainError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
