"""Where a lone streamed request's time to first token goes, seen from the client.

    python bench/ttft_probe.py --url http://127.0.0.1:8000 --model MODEL [--api-key KEY]
        [--requests 30] [--prompt-words 250 | --random-tokens 256 --tokenizer DIR]
        [--max-tokens 16]

Sends requests one at a time, as `vllm bench serve --backend openai-chat` does (streamed, with
usage in the stream), and times for each: the response headers, the first SSE event (the
role chunk), and the first event with content. Where the server sends a Server-Timing header
(the Parlance gateway does), its parts are printed beside, so the time before the headers
splits into auth, limits, moderation, the generator's first message, and what is left over
is the HTTP server and the network. Runs against `vllm serve` as well, as the reference.
Only the standard library and httpx.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import statistics
import time
from typing import Any

import httpx


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


def probe(client: httpx.Client, args: argparse.Namespace, i: int) -> dict[str, float]:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": prompt_text(args, i)}],
        "max_tokens": args.max_tokens,
        "temperature": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    times: dict[str, float] = {}
    started = time.perf_counter()
    with client.stream("POST", f"{args.url}/v1/chat/completions", json=body, headers=headers) as r:
        times["headers"] = (time.perf_counter() - started) * 1000
        r.raise_for_status()
        for part, ms in re.findall(r"(\w+);dur=([\d.]+)", r.headers.get("server-timing", "")):
            times[f"server {part}"] = float(ms)
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = (time.perf_counter() - started) * 1000
            times.setdefault("first event", now)
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                times.setdefault("first content", now)
        times["end"] = (time.perf_counter() - started) * 1000
    return times


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
    args = parser.parse_args()
    samples: list[dict[str, float]] = []
    with httpx.Client(timeout=60) as client:
        probe(client, args, -1)  # warm-up: connection, caches
        for i in range(args.requests):
            samples.append(probe(client, args, i))
    names = list(dict.fromkeys(name for sample in samples for name in sample))
    print(f"# {args.label or args.url}: medians of {len(samples)} lone requests (ms from send)")
    for name in names:
        values = sorted(s[name] for s in samples if name in s)
        p90 = values[max(0, int(len(values) * 0.9) - 1)]
        print(f"{name:22s} {statistics.median(values):8.2f}  (p90 {p90:.2f})")


if __name__ == "__main__":
    main()
