"""best_of's cost (issue 16): the reward model's scoring through the gateway against the model
called directly, and on a GPU the output tokens/s and latency of k = 1, 2, 4 through Parlance.

    python bench/best_of_bench.py                        # CPU -> bench/results/best_of.md
    python bench/best_of_bench.py --requests 16 --out /tmp/b.md          # smoke run
    python bench/best_of_bench.py --base-url http://HOST:8000 --api-key KEY \\
        --model default --requests 200 --concurrency 16 --max-tokens 256
                                                # GPU mode -> bench/results/best_of_gpu.md

CPU mode (no --base-url). A reward model (--reward-folder, or trained here first by
`parlance-train reward` on parlance.trainer.synthetic's bullets preference for --train-steps
steps: scoring costs the same however long it trained) scores best-of-4-shaped calls (one
user turn, four candidates of the same ~40-word answer):
- direct: the generator's engine class (TransformersRewardEngine) in this process, no gRPC,
  the generator's settings (1 torch thread, batches of 16, 2 ms wait);
- through the gateway: best_of=4 chat requests to a stack started here (gateway, safety,
  history, generator as processes; the chat model is the scripted engine replying the same
  answer at once). Two figures: the Score stage alone (Server-Timing 'reward': the gateway's
  generator client calling the reward model, as the request waits for it), and whole best_of
  requests (candidates/s = 4 x requests / wall time), with output moderation on (as shipped)
  and off.
The ratios against direct are the issue's target (>= 0.8). Each runs at 1 and 8 requests at a
time.

GPU mode (--base-url). Against a running Parlance whose generator serves the chat model (vLLM)
and a reward model (registered: POST /v1/admin/models, see README "Best-of-n"): for k = 1, 2,
4 the same closed loop of non-streamed requests (k = 1 is a plain request), reporting
generated tokens/s (all k candidates, from usage), answers/s, and latency percentiles. With a
key allowed ignore_eos (GATEWAY_IGNORE_EOS_USERS), --ignore-eos makes every candidate
max_tokens long, so that k is the only thing that changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.client import ChatClient, ChatResult, chat_body
from lib.loop import closed_loop
from lib.procs import load_average
from lib.report import RESULTS, Report, out_argument, table
from lib.stack import ALICE_KEY, LIMITS_HIGH, MODEL, BenchStack
from lib.stats import fmt, percentiles

PROMPT = "What are good habits for a small vegetable garden?"
ANSWER = (
    "- Water early in the morning, at the roots.\n- Mulch the beds to keep moisture in.\n"
    "- Rotate crops every season.\n- Check leaves weekly for pests.\n"
    "- Start small: a few easy plants first."
)
REWARD_ID = "reward-bench"
K = 4


def train_reward(work: Path, steps: int) -> Path:
    """A reward model on all-MiniLM-L6-v2 for the `bullets` trait (`parlance-train reward`'s
    job, in this process): scoring costs the same however long it trained."""
    from parlance.trainer import reward, synthetic
    from parlance.trainer.source import Loaded

    records = synthetic.pairs(120, trait="bullets", seed=11)
    job = reward.RewardJob(
        base="all-MiniLM-L6-v2", out=work, name=REWARD_ID, max_steps=steps, batch_size=8,
        eval_fraction=0.2, max_length=128,
    )  # fmt: skip
    return reward.run(job, Loaded(synthetic.jsonl(records).encode(), "synthetic"))


async def direct_rate(folder: Path, calls: int, concurrency: int) -> float:
    """Candidates/s of best-of-4 Score calls on the generator's engine in this process (its
    default of one torch thread), `concurrency` at a time, after one warm-up call."""
    from parlance.generator.engine.base import ChatMessage, ScoreRequest
    from parlance.generator.engine.reward import TransformersRewardEngine

    def request(i: int) -> ScoreRequest:
        turn = (ChatMessage("user", PROMPT),)
        return ScoreRequest(request_id=str(i), messages=turn, candidates=(ANSWER,) * K)

    engine = TransformersRewardEngine(
        served_model_name=REWARD_ID, model_path=str(folder), n_threads=1
    )
    await engine.start()
    try:
        await engine.score(request(-1))
        started = time.perf_counter()
        await closed_loop(lambda _, i: engine.score(request(i)), concurrency, count=calls)
        elapsed = time.perf_counter() - started
    finally:
        await engine.close()
    return K * calls / elapsed


async def gateway_rate(url: str, calls: int, concurrency: int) -> tuple[float, list[ChatResult]]:
    """Candidates/s of the best_of=4 requests that succeeded, and their results."""
    body = chat_body(PROMPT, MODEL, best_of=K, max_tokens=64, temperature=1.0)
    async with ChatClient(url, ALICE_KEY, timeout_s=120) as client:
        await client.complete(body)  # warm-up (connections, the first Score batch)
        started = time.perf_counter()
        block = await closed_loop(
            lambda w, i: client.complete(body, lane=w), concurrency, count=calls
        )
        elapsed = time.perf_counter() - started
    ok = [r for r in block.results if r.ok]
    failed = [r.error for r in block.results if not r.ok]
    if failed:
        print(f"[bench] {len(failed)} requests failed, e.g. {failed[0]}", flush=True)
    return K * len(ok) / elapsed, ok


def cpu_mode(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="best-of-bench-") as scratch:
        folder = args.reward_folder
        if folder is None:
            print(f"[bench] training a reward model ({args.train_steps} steps)...", flush=True)
            folder = train_reward(Path(scratch), args.train_steps)
        loads = [load_average()]
        direct = {c: asyncio.run(direct_rate(folder, args.requests, c)) for c in (1, 8)}
        loads.append(load_average())
        models = [
            {
                "id": MODEL,
                "engine": "scripted",
                "settings": {"scripted_tokens_per_s": 0, "scripted_text": ANSWER},
            },
            {"id": REWARD_ID, "engine": "transformers", "task": "reward", "path": str(folder)},
        ]
        env = {"generator": {"GENERATOR_MODELS": json.dumps(models)}}
        # A loaded machine may take longer than the default 5 s deadline to classify.
        gateway_env = {**LIMITS_HIGH, "GATEWAY_SAFETY_TIMEOUT_S": "30"}
        with BenchStack(gateway_env=gateway_env, env=env) as stack:
            unmoderated = stack.extra_gateway({"GATEWAY_MODERATE_OUTPUT": "false"})
            plain_url = f"http://127.0.0.1:{unmoderated.http_port}"
            through = {
                c: asyncio.run(gateway_rate(stack.gateway_url, args.requests, c)) for c in (1, 8)
            }
            bare = {c: asyncio.run(gateway_rate(plain_url, args.requests, c)) for c in (1, 8)}
        loads.append(load_average())
    report = Report(
        "best_of: scoring through the gateway vs the reward model called directly (CPU)",
        f"Reward model: all-MiniLM-L6-v2 with a score head ({folder.name}), best-of-{K} calls "
        f"of one ~40-word answer; {args.requests} calls per row; load average before direct / "
        f"after direct / after gateway: {' / '.join(loads)}. The stack's safety deadline is "
        "30 s (GATEWAY_SAFETY_TIMEOUT_S; the machine is shared). Failed requests are left out "
        "of the rates.",
    )
    rows = [_cpu_row(c, direct[c], through[c], bare[c]) for c in (1, 8)]
    report.section(
        "Scoring",
        *table(
            [
                "requests at a time",
                "direct candidates/s",
                "Score stage through the gateway, candidates/s (ratio)",
                "best_of requests, candidates/s (ratio)",
                "best_of requests without output moderation, candidates/s (ratio)",
                "reward stage ms p50 / p90",
                "request ms p50 / p90",
            ],
            rows,
        ),
        "",
        "direct: TransformersRewardEngine.score in this process, best-of-4 calls in a closed "
        "loop. Score stage: the Server-Timing 'reward' duration of each best_of request (the "
        "Score RPC from the gateway's generator client to the reward model, as the request "
        "waits for it); one request at a time, its rate is 4 / mean stage time. best_of requests: "
        "POST /v1/chat/completions with best_of=4 (scripted chat model answering at once; "
        "output moderation on as shipped, then off on a second gateway of the same stack), "
        "candidates/s = 4 x requests / wall time: the Score call plus everything around it "
        "(auth, limits, the generation, moderation, HTTP). Ratios are against direct.",
    )
    report.write(args.out)


def _cpu_row(
    concurrency: int,
    direct: float,
    through: tuple[float, list[ChatResult]],
    bare: tuple[float, list[ChatResult]],
) -> list[Any]:
    rate, results = through
    reward_ms = [r.server_timing().get("reward", float("nan")) for r in results]
    # One request at a time, the stage is one Score call: its rate is exact. Above that the
    # requests are not all in the stage at once, so no rate is derived from it.
    stage_rate = K / (sum(reward_ms) / len(reward_ms) / 1000) if concurrency == 1 else math.nan
    stage = percentiles(reward_ms)
    latency = percentiles([r.total_s * 1000 for r in results])
    return [
        concurrency,
        f"{direct:.1f}",
        "-" if math.isnan(stage_rate) else f"{stage_rate:.1f} ({stage_rate / direct:.2f})",
        f"{rate:.1f} ({rate / direct:.2f})",
        f"{bare[0]:.1f} ({bare[0] / direct:.2f})",
        f"{fmt(stage[50])} / {fmt(stage[90])}",
        f"{fmt(latency[50])} / {fmt(latency[90])}",
    ]


async def gpu_row(args: argparse.Namespace, k: int) -> list[Any]:
    extra: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": 1.0}
    if k > 1:
        extra["best_of"] = k
    if args.ignore_eos:
        extra["ignore_eos"] = True
    body = chat_body(PROMPT, args.model, **extra)
    async with ChatClient(args.base_url, args.api_key, timeout_s=600) as client:
        await client.complete(body)
        block = await closed_loop(
            lambda w, i: client.complete(body, lane=w), args.concurrency, count=args.requests
        )
    ok = [r for r in block.results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    latency = percentiles([r.total_s for r in ok])
    return [
        k,
        len(ok),
        len(block.results) - len(ok),
        f"{tokens / block.window_s:.0f}",
        f"{len(ok) / block.window_s:.2f}",
        f"{fmt(latency[50], 2)} / {fmt(latency[90], 2)} / {fmt(latency[99], 2)}",
    ]


def gpu_mode(args: argparse.Namespace) -> None:
    rows = [asyncio.run(gpu_row(args, k)) for k in (1, 2, 4)]
    report = Report(
        "best_of: output tokens/s and latency for k = 1, 2, 4 through Parlance",
        f"Target: {args.base_url}, model {args.model}; {args.requests} non-streamed requests "
        f"per k, {args.concurrency} at a time, max_tokens {args.max_tokens}"
        f"{', ignore_eos' if args.ignore_eos else ''}; load average {load_average()}.",
    )
    report.section(
        "best_of",
        *table(
            [
                "k",
                "ok",
                "errors",
                "generated tokens/s (all k)",
                "answers/s",
                "latency s p50 / p90 / p99",
            ],
            rows,
        ),
        "",
        "k = 1 is a plain request (no best_of). Generated tokens/s counts every candidate's "
        "tokens (usage.completion_tokens); a best_of answer's latency is its k candidates' "
        "generation, then the Score call (a stream's first token comes after both).",
    )
    report.write(args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="a running Parlance (GPU mode); none: CPU mode")
    parser.add_argument("--api-key", default=os.environ.get("PARLANCE_API_KEY", ALICE_KEY))
    parser.add_argument("--model", default="default")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8, help="GPU mode")
    parser.add_argument("--max-tokens", type=int, default=256, help="GPU mode")
    parser.add_argument("--ignore-eos", action="store_true", help="GPU mode")
    parser.add_argument("--reward-folder", type=Path, help="CPU mode: a trained reward model")
    parser.add_argument(
        "--train-steps", type=int, default=12, help="CPU mode without --reward-folder"
    )
    out_argument(parser, "best_of.md")
    args = parser.parse_args()
    if args.base_url:
        if args.out == RESULTS / "best_of.md":
            args.out = RESULTS / "best_of_gpu.md"
        gpu_mode(args)
    else:
        cpu_mode(args)


if __name__ == "__main__":
    main()
