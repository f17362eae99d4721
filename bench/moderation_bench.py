"""What streaming output moderation costs in time to first token and time per output token.

    .venv/bin/python bench/moderation_bench.py [--requests 40] [--rounds 6] [--concurrency 8]
        [--tokens-per-s 200] [--out bench/results/moderation_cost.md]

One stack of processes (scripts/devstack.py through tests/helpers.py) with the scripted test
engine streaming a clean multi-sentence text at a fixed token rate, and two gateways on the
same generator, safety and history: A with GATEWAY_MODERATE_OUTPUT=false, B with it true.
Everything else is the same on both (input moderation on, cache bypassed, limits off), so the
ratio B/A is the cost of the output hold-back alone.

Two phases, each interleaved A, B, A, B, ... so that drift of the machine hits both sides:
- sequential: `--requests` streamed requests per side, one at a time;
- concurrent: `--rounds` rounds of `--concurrency` simultaneous requests per side.
Times are the client's: TTFT from sending the request to the first chunk with content; TPOT
is (last content chunk - first content chunk) / (completion tokens - 1), i.e. the pace at which
text reaches the client after the first token. With moderation on, text arrives in windows
(a sentence at a time), so per-chunk gaps are bursty while the mean pace is what TPOT shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from parlance.gateway.config import GatewaySettings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from benchlib import machine, start_redis  # noqa: E402
from helpers import (  # noqa: E402
    ALICE_KEY,
    MODEL,
    Stack,
    start_extra_gateway,
    start_stack,
)

TEXT = (
    "Spring arrives slowly in the mountains. The snow melts first on the southern slopes, "
    "and the streams grow loud with water. Birds return to the valleys and build their nests "
    "in the old oak trees. Farmers walk their fields to see what the winter has left behind. "
    "By the end of April the meadows are green again, and the first flowers open in the sun. "
    "It is the best time of the year for a long walk."
)
HEADERS = {"Authorization": f"Bearer {ALICE_KEY}", "Cache-Control": "no-cache"}


@dataclass
class Sample:
    ttft_s: float
    tpot_s: float | None
    total_s: float
    tokens: int


@dataclass
class Side:
    name: str
    url: str
    sequential: list[Sample] = field(default_factory=list)
    concurrent: list[Sample] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, url: str) -> Sample:
    payload = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me about spring in the mountains."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 200,
    }
    started = time.perf_counter()
    first: float | None = None
    last = started
    tokens = 0
    finish = None
    async with client.stream("POST", url, json=payload, headers=HEADERS) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            for choice in event.get("choices") or []:
                if choice["delta"].get("content"):
                    first = first if first is not None else now
                    last = now
                finish = choice.get("finish_reason") or finish
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    if first is None or finish != "stop":
        raise RuntimeError(f"{url}: no content or finish_reason {finish!r}")
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    return Sample(first - started, tpot, time.perf_counter() - started, tokens)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of a few dozen samples is close to their maximum)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def measure(sides: list[Side], requests: int, rounds: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for side in sides:  # warm-up: connections, first-call paths
            for _ in range(3):
                await one_request(client, side.url)
        for _ in range(requests):
            for side in sides:
                side.sequential.append(await one_request(client, side.url))
        for _ in range(rounds):
            for side in sides:
                side.concurrent.extend(
                    await asyncio.gather(
                        *(one_request(client, side.url) for _ in range(concurrency))
                    )
                )


def summary(samples: list[Sample]) -> dict[str, float]:
    ttft = [s.ttft_s * 1000 for s in samples]
    tpot = [s.tpot_s * 1000 for s in samples if s.tpot_s is not None]
    return {
        "n": len(samples),
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": pct(ttft, 99),
        "tpot_p50": statistics.median(tpot),
        "total_p50": statistics.median([s.total_s * 1000 for s in samples]),
        "tokens": statistics.median([s.tokens for s in samples]),
    }


def report(sides: list[Side], args: argparse.Namespace, command: str) -> str:
    off, on = sides
    rows = []
    ratios = []
    for phase in ("sequential", "concurrent"):
        a, b = summary(getattr(off, phase)), summary(getattr(on, phase))
        label = "sequential" if phase == "sequential" else f"{args.concurrency} concurrent"
        for name, s in (("off", a), ("on", b)):
            rows.append(
                f"| {label} | {name} | {s['n']} | {s['ttft_p50']:.1f} | {s['ttft_p99']:.1f} | "
                f"{s['tpot_p50']:.2f} | {s['total_p50']:.0f} |"
            )
        ratios.append(
            f"| {label} | {b['ttft_p50'] / a['ttft_p50']:.2f} | {b['ttft_p99'] / a['ttft_p99']:.2f}"
            f" | {b['tpot_p50'] / a['tpot_p50']:.3f} | {b['total_p50'] / a['total_p50']:.3f} |"
        )
    tokens = int(summary(off.sequential)["tokens"])
    seq_off, seq_on = summary(off.sequential), summary(on.sequential)
    # The first window closes at the first word boundary past GATEWAY_MODERATION_FIRST_WINDOW
    # _CHARS characters: it cannot be released before it has been generated, whatever the
    # classifier costs.
    first_chars = GatewaySettings().moderation_first_window_chars
    first_window = TEXT[: TEXT.index(" ", first_chars // 2) + 1]
    while len(first_window) < first_chars:
        first_window = TEXT[: TEXT.index(" ", len(first_window)) + 1]
    first_window_ms = len(first_window.split()) / args.tokens_per_s * 1000
    return "\n".join(
        [
            "# Streaming output moderation: cost in TTFT and TPOT",
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"- Machine: {machine()}; the stack's four services, two gateways and the client "
            "share these cores.",
            f"- Command: `{command}`",
            f"- Engine: scripted, {args.tokens_per_s:g} tokens/s, a clean text of 6 sentences "
            f"({tokens} tokens); safety: the default light classifier; input moderation on for "
            "both sides; windows: the gateway's defaults (GATEWAY_MODERATION_*: the first "
            "closes at a word boundary, then one sentence each).",
            "- off: a gateway with GATEWAY_MODERATE_OUTPUT=false; on: a second gateway with "
            "it true, on the same services; requests interleaved off, on, off, on.",
            "",
            "Client-side times in ms (TTFT: request to the first content chunk; TPOT: mean gap "
            "per token after the first; total: request to the last byte).",
            "",
            "| phase | output moderation | requests | TTFT p50 | TTFT p99 | TPOT p50 | total p50 |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Ratios, on / off:",
            "",
            "| phase | TTFT p50 | TTFT p99 | TPOT p50 | total p50 |",
            "|---|---|---|---|---|",
            *ratios,
            "",
            f"Sequential TTFT p50 grows by {seq_on['ttft_p50'] - seq_off['ttft_p50']:.0f} ms. "
            f"Of that, the first window ({len(first_window.split())} tokens, "
            f"{first_window.strip()!r}) "
            f"takes {first_window_ms:.0f} ms to generate at this rate before it can be sent to "
            "safety; the rest is its classification and the hand-over. Later windows are "
            "classified while generation goes on, so TPOT does not grow (client TPOT even "
            "shrinks a little: the first token comes later while the last does not). The "
            "total time grows by about one classification of the last window.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="sequential requests per side")
    parser.add_argument("--rounds", type=int, default=6, help="concurrent rounds per side")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens-per-s", type=float, default=200.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "moderation_cost.md"))
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/moderation_bench.py", *sys.argv[1:]])
    redis, redis_url = start_redis()
    with tempfile.TemporaryDirectory(prefix="parlance-modbench-") as tmp:
        stack: Stack = start_stack(
            Path(tmp),
            redis_url,
            gateway_env={
                "GATEWAY_MODERATE_OUTPUT": "false",
                "GATEWAY_RPM_LIMIT": "0",
                "GATEWAY_TPM_LIMIT": "0",
                "GATEWAY_LOG_LEVEL": "WARNING",
            },
            env={
                "generator": {
                    "GENERATOR_ENGINE": "scripted",
                    "GENERATOR_SCRIPTED_TEXT": TEXT,
                    "GENERATOR_SCRIPTED_TOKENS_PER_S": str(args.tokens_per_s),
                    "GENERATOR_SERVED_MODEL_NAME": MODEL,
                    "GENERATOR_LOG_LEVEL": "WARNING",
                },
                "safety": {"SAFETY_LOG_LEVEL": "WARNING"},
                "history": {"HISTORY_LOG_LEVEL": "WARNING"},
            },
        )
        extra = None
        try:
            extra = start_extra_gateway(stack, {"GATEWAY_MODERATE_OUTPUT": "true"})
            sides = [
                Side("off", f"{stack.gateway_url}/v1/chat/completions"),
                Side("on", f"http://127.0.0.1:{extra.http_port}/v1/chat/completions"),
            ]
            asyncio.run(measure(sides, args.requests, args.rounds, args.concurrency))
        finally:
            if extra is not None:
                extra.stop()
            stack.stop()
            redis.terminate()
            redis.wait(5)
    text = report(sides, args, command)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
