"""Where a lone streamed request's time to first token goes, seen from the client.

    python bench/ttft_probe.py --url http://127.0.0.1:8000 --model MODEL [--api-key KEY]
        [--requests 30] [--prompt-words 250 | --random-tokens 256 --tokenizer DIR]
        [--max-tokens 16] [--out FILE]

Sends requests one at a time, as `vllm bench serve --backend openai-chat` does (streamed, with
usage in the stream), and times for each: the response headers, the first SSE event (the
role chunk), and the first event with content. Where the server sends a Server-Timing header
(the Parlance gateway does), its parts are shown beside, so the time before the headers
splits into auth, limits, moderation, the generator's first message, and what is left over
is the HTTP server and the network. Runs against `vllm serve` as well, as the reference.
Needs httpx and httpx-sse (bench/gpu-requirements.txt on the GPU host); the report goes to
stdout, and to --out when given (vllm_vs_parlance.sh keeps it with the run's raw results).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
from pathlib import Path
from typing import Any

from lib.client import ChatClient, chat_body
from lib.report import Report, table
from lib.stats import percentile


@functools.cache
def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def prompt_text(args: argparse.Namespace, i: int) -> str:
    """Words, or (--random-tokens) random token ids decoded to text, as the random dataset of
    `vllm bench serve` makes its prompts."""
    rng = random.Random(i)
    if args.random_tokens:
        tokenizer = _tokenizer(args.tokenizer or args.model)
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(args.random_tokens)]
        return str(tokenizer.decode(ids))
    words = (
        rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(args.prompt_words)
    )
    return " ".join(words) + f" {i}"


async def probe(client: ChatClient, args: argparse.Namespace, i: int) -> dict[str, float]:
    body = chat_body(
        prompt_text(args, i),
        args.model,
        max_tokens=args.max_tokens,
        temperature=1.0,
        stream_options={"include_usage": True},
    )
    result = await client.stream(body)
    if result.error:
        raise SystemExit(f"request {i}: {result.error}")
    moments = {
        "headers": result.headers_s,
        "first event": result.first_event_s,
        "first content": result.ttft_s,
        "end": result.total_s,
    }
    times = {name: s * 1000 for name, s in moments.items() if s is not None}
    times |= {f"server {part}": ms for part, ms in result.server_timing().items()}
    return times


async def run(args: argparse.Namespace) -> list[dict[str, float]]:
    async with ChatClient(args.url, args.api_key or None) as client:
        await probe(client, args, -1)  # warm-up: connection, caches
        return [await probe(client, args, i) for i in range(args.requests)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--prompt-words", type=int, default=250)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--random-tokens", type=int, default=0, help="random-token prompts")
    parser.add_argument("--tokenizer", default="", help="for --random-tokens (default: --model)")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    samples = asyncio.run(run(args))
    names = list(dict.fromkeys(name for sample in samples for name in sample))
    rows = []
    for name in names:
        values = [s[name] for s in samples if name in s]
        rows.append([name, f"{percentile(values, 50):.2f}", f"{percentile(values, 90):.2f}"])
    report = Report(
        f"TTFT probe: {args.label or args.url}",
        f"{len(samples)} lone streamed requests, max_tokens {args.max_tokens}; ms from the send.",
    )
    report.add("", *table(["moment", "p50 (ms)", "p90 (ms)"], rows)).write(args.out)


if __name__ == "__main__":
    main()
