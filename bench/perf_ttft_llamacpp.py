"""Time to first token of a lone llama.cpp request with output moderation on, against the same
request with it off (issue 20: within +40 ms).

One stack with the shipped engine (llama.cpp, the SmolLM2 GGUF) and four gateways on it:
`off` (GATEWAY_MODERATE_OUTPUT=false), `on` (the shipped defaults), `on, no lead`
(GATEWAY_MODERATION_LEAD_AFTER_MS very large: the first window as it was before the lead
window, 16 characters at a word boundary) and `on, no pre-check` (GATEWAY_INPUT_PRECHECK=false:
the generator is called only after safety's input verdict). Input moderation is on for all
four, so `off` against `on` is output moderation's difference alone. Requests are sequential
and interleaved (the order turns each round); before each round its prompt is sent once, so
that every measured request finds the prompt in llama.cpp's cache and the TTFT is not
dominated by prompt processing, whose time on a shared machine varies far more than what is
measured.

    .venv/bin/python bench/perf_ttft_llamacpp.py --requests 40    # ~3 min
"""

from __future__ import annotations

import argparse
import asyncio

from lib.client import ChatClient, chat_body
from lib.procs import load_average
from lib.report import Report, out_argument, table
from lib.stack import KEYS, LIMITS_HIGH, MODEL, BenchStack, free_port
from lib.stats import fmt, percentile

PROMPTS = (
    "Tell me about the sea.",
    "What is a good breakfast?",
    "Describe a city at night.",
    "Why do cats purr?",
    "Give me a tip for studying.",
)
GATEWAYS = {
    "off": {"GATEWAY_MODERATE_OUTPUT": "false"},
    "on": {},
    "on, no lead": {"GATEWAY_MODERATION_LEAD_AFTER_MS": "1000000000"},
    "on, no pre-check": {"GATEWAY_INPUT_PRECHECK": "false"},
}
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


async def measure(stack: BenchStack, requests: int, max_tokens: int) -> dict[str, list[float]]:
    clients = {}
    for name, env in GATEWAYS.items():
        gateway = stack.extra_gateway({**env, "GATEWAY_METRICS_PORT": str(free_port())})
        clients[name] = ChatClient(f"http://127.0.0.1:{gateway.http_port}", timeout_s=120)
    ttft: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for index in range(requests + 2):  # the first two rounds warm up
            prompt = f"{index}. {PROMPTS[index % len(PROMPTS)]}"
            warm = chat_body(prompt, MODEL, max_tokens=1, temperature=0)
            await clients["off"].stream(warm, AUTH, lane=0)
            order = list(clients.items())
            for name, client in order if index % 2 else order[::-1]:
                body = chat_body(prompt, MODEL, max_tokens=max_tokens, temperature=0)
                result = await client.stream(body, AUTH, lane=0)
                if index >= 2 and result.ok and result.ttft_s is not None:
                    ttft[name].append(result.ttft_s * 1000)
    finally:
        for client in clients.values():
            await client.aclose()
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="per gateway")
    parser.add_argument("--max-tokens", type=int, default=16)
    out_argument(parser, "perf_ttft_llamacpp.md")
    args = parser.parse_args()
    load_before = load_average()
    gateway_env = {**LIMITS_HIGH, "GATEWAY_CACHE_ENABLED": "false"}
    with BenchStack(gateway_env, {}, prefix="parlance-ttft-llamacpp-") as stack:
        ttft = asyncio.run(measure(stack, args.requests, args.max_tokens))
    base = percentile(ttft["off"], 50)
    rows = [
        [
            name,
            len(values),
            fmt(percentile(values, 50)),
            fmt(percentile(values, 90)),
            f"{percentile(values, 50) - base:+.1f}",
        ]
        for name, values in ttft.items()
    ]
    Report(
        "Time to first token of a lone llama.cpp request: output moderation on vs off",
        f"Load average (1/5/15 min) before: {load_before}; after: {load_average()}.",
        f"max_tokens {args.max_tokens}, temperature 0, each prompt warmed once (prefix cache).",
        "Gateways: off = GATEWAY_MODERATE_OUTPUT=false; on = the shipped defaults; on, no lead "
        "= GATEWAY_MODERATION_LEAD_AFTER_MS=1e9 (the first window alone, as before the lead); "
        "on, no pre-check = GATEWAY_INPUT_PRECHECK=false (the generator called after safety's "
        "input verdict, not beside it). Input moderation on for all; all on one generator and "
        "one safety service.",
    ).section(
        "TTFT (ms, client side: request to the first content chunk)",
        *table(["gateway", "requests", "p50", "p90", "added p50 vs off"], rows),
    ).write(args.out)


if __name__ == "__main__":
    main()
