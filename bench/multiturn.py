"""A multi-turn chat workload: conversations of several turns, each turn resending the whole
history (as every OpenAI client does), for comparing the gateway's generator routing
(round robin / least in flight vs conversation affinity) by time to first token:

    python bench/multiturn.py --url http://127.0.0.1:8000 --model M --api-key K \\
        --conversations 256 --turns 5 --concurrency 64 --json out.json

Each conversation opens with a ~400-token context (a shared system prompt and a document of
its own) and asks `--turns` short questions; answers are capped at `--max-tokens` with EOS
ignored, so every run generates the same amount. `--concurrency` conversations run at once
(a conversation's turns are sequential, as a user's are). Reports TTFT p50/p99 of the first
turns and of the later ones (those a prefix cache can serve), and output tokens/s. The
percentile definition is lib/stats.py's; requests go through lib/client.py (one keep-alive
connection per concurrent conversation, streams read by lib/sse.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.client import ChatClient
from lib.stats import PERCENTILE_DEFINITION, percentile

SYSTEM = (
    "You are a careful assistant for a logistics company. Answer in plain language, cite the "
    "document when you can, and say so when the document does not contain the answer. "
) * 3
WORDS = (
    "shipment warehouse invoice carrier pallet route delay customs manifest driver depot "
    "schedule tracking refund damage weight container port rail truck storage"
).split()
QUESTIONS = [
    "Summarize the document in two sentences.",
    "Which dates does it mention?",
    "What should the customer do next?",
    "Is anything in it unusual?",
    "Write a short reply to the customer.",
    "What is the main risk?",
]


def document(rng: random.Random, words: int = 300) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def conversation(
    client: ChatClient,
    lane: int,
    args: argparse.Namespace,
    index: int,
    out: dict[str, list[float]],
) -> None:
    rng = random.Random(index)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Document {index}: {document(rng)}\n\n{QUESTIONS[0]}"},
    ]
    for turn in range(args.turns):
        body = {
            "model": args.model,
            "messages": messages,
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "temperature": 0.7,
            "stream_options": {"include_usage": True},
        }
        result = await client.stream(body, lane=lane)
        if result.error:
            out["errors"].append(1.0)
            return
        if result.ttft_s is not None:
            out["ttft_first" if turn == 0 else "ttft_later"].append(result.ttft_s)
        out["tokens"].append(float(result.completion_tokens))
        messages = [
            *messages,
            {"role": "assistant", "content": "".join(result.content)},
            {"role": "user", "content": QUESTIONS[(turn + 1) % len(QUESTIONS)]},
        ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, list[float]] = {"ttft_first": [], "ttft_later": [], "tokens": [], "errors": []}
    async with ChatClient(args.url, args.api_key or None, timeout_s=300) as client:
        queue = list(range(args.first, args.first + args.conversations))

        async def worker(lane: int) -> None:
            while queue:
                await conversation(client, lane, args, queue.pop(0), out)

        cpu0, began = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(lane) for lane in range(args.concurrency)))
        wall = time.perf_counter() - began
        cpu = time.process_time() - cpu0
    ms = 1000.0
    return {
        "url": args.url,
        "label": args.label,
        "conversations": args.conversations,
        "turns": args.turns,
        "concurrency": args.concurrency,
        "errors": len(out["errors"]),
        "ttft_first_p50_ms": percentile(out["ttft_first"], 50) * ms,
        "ttft_first_p99_ms": percentile(out["ttft_first"], 99) * ms,
        "ttft_later_p50_ms": percentile(out["ttft_later"], 50) * ms,
        "ttft_later_p99_ms": percentile(out["ttft_later"], 99) * ms,
        "output_tok_s": sum(out["tokens"]) / wall,
        "wall_s": wall,
        "client_cpu_s": cpu,
        "percentiles": PERCENTILE_DEFINITION,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--conversations", type=int, default=256)
    parser.add_argument("--first", type=int, default=0, help="index of the first conversation")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--label", default="")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
