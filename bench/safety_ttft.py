"""What each embedded safety classifier adds to the time to first token, input and output
moderation on, in one run.

    .venv/bin/python bench/safety_ttft.py [--requests 30] [--rounds 4] [--concurrency 4]
        [--tokens-per-s 200] [--out FILE]

One stack of processes (bench/lib/stack.py): the scripted test engine streaming a clean
multi-sentence text at a fixed token rate, history, Redis, and two safety services on the same
machine: one with SAFETY_CLASSIFIER=profanity (the former default), one with minilm (the new
default). Three gateways on them:
- none: GATEWAY_MODERATE_INPUT=false and GATEWAY_MODERATE_OUTPUT=false (the baseline);
- profanity: both on, on the profanity service;
- minilm: both on, on the minilm service.
Requests are interleaved none, profanity, minilm, none, ... so that drift of the machine hits
every side. Two phases: `--requests` streamed requests per side one at a time, then `--rounds`
rounds of `--concurrency` simultaneous requests per side. TTFT is the client's: from sending
the request to the first chunk with content. "Added" is a side's TTFT p50 minus the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass, field

from lib.client import ChatClient, ChatResult, chat_body
from lib.report import Report, out_argument, table
from lib.stack import (
    ALICE_KEY,
    LIMITS_OFF,
    MODEL,
    BenchStack,
    ServiceProcess,
    free_port,
    scripted,
)
from lib.stats import percentile

TEXT = (
    "The library opens at nine on weekdays and at ten on Saturdays. Members can borrow up to "
    "ten books for three weeks. The reading room on the second floor is quiet and has good "
    "light. There is a small cafe near the entrance that sells tea and sandwiches. Children's "
    "story time is on Wednesday afternoons. Please return books to the box by the door."
)
BODY = chat_body(
    "Tell me about the town library and its opening hours.",
    MODEL,
    stream_options={"include_usage": True},
    max_tokens=200,
)
QUIET = "WARNING"
SIDES = ("none", "profanity", "minilm")


@dataclass
class Side:
    name: str
    client: ChatClient
    sequential: list[ChatResult] = field(default_factory=list)
    concurrent: list[ChatResult] = field(default_factory=list)


async def one_request(side: Side, lane: int = 0) -> ChatResult:
    result = await side.client.stream(BODY, lane=lane)
    if result.error or result.ttft_s is None or result.finish_reason != "stop":
        raise RuntimeError(f"{side.name}: {result.error or result.finish_reason!r}")
    return result


async def measure(sides: list[Side], requests: int, rounds: int, concurrency: int) -> None:
    for side in sides:  # warm-up: connections, first-call paths, the model's first pass
        for _ in range(3):
            await one_request(side)
    for _ in range(requests):
        for side in sides:
            side.sequential.append(await one_request(side))
    for _ in range(rounds):
        for side in sides:
            side.concurrent.extend(
                await asyncio.gather(*(one_request(side, i) for i in range(concurrency)))
            )
    for side in sides:
        await side.client.aclose()


def ttft_ms(samples: list[ChatResult]) -> list[float]:
    return [s.ttft_s * 1000 for s in samples if s.ttft_s is not None]


def start_safety(stack: BenchStack, classifier: str) -> ServiceProcess:
    """A second safety service (the stack's own one runs profanity)."""
    base = stack.services["safety"]
    port, metrics = free_port(), free_port()
    name = f"safety-{classifier}"
    stack.services[name] = ServiceProcess(
        name=name,
        command=base.command,
        env={
            **base.env,
            "SAFETY_CLASSIFIER": classifier,
            "SAFETY_PORT": str(port),
            "SAFETY_METRICS_PORT": str(metrics),
        },
        log_path=base.log_path.with_name(f"{name}.log"),
        grpc_port=port,
        metrics_port=metrics,
    )
    stack.services[name].start()
    assert stack.stack is not None
    stack.stack.wait_ready(name)
    return stack.services[name]


def build_report(sides: list[Side], args: argparse.Namespace) -> Report:
    rows = []
    for phase in ("sequential", "concurrent"):
        label = "sequential" if phase == "sequential" else f"{args.concurrency} concurrent"
        base = percentile(ttft_ms(getattr(sides[0], phase)), 50)
        for side in sides:
            values = ttft_ms(getattr(side, phase))
            p50 = percentile(values, 50)
            rows.append(
                [
                    label,
                    side.name,
                    len(values),
                    f"{p50:.1f}",
                    f"{percentile(values, 90):.1f}",
                    f"{percentile(values, 99):.1f}",
                    "-" if side is sides[0] else f"{p50 - base:+.1f}",
                ]
            )
    load = os.getloadavg()
    return Report(
        "Time to first token with input and output moderation: profanity vs minilm",
        "The stack's services, three gateways, two safety services and the client share the "
        f"machine's cores; load average at the end of the run: {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1 / 5 / 15 min).",
        f"Engine: scripted, {args.tokens_per_s:g} tokens/s, a clean text of 6 sentences; "
        "windows: the gateway's defaults (GATEWAY_MODERATION_*). Safety services: one thread "
        "pool each, SAFETY_MAX_BATCH_SIZE default (32), no batching delay.",
        "none: moderation off (input and output); profanity / minilm: both on, on a safety "
        "service with that classifier. Requests interleaved none, profanity, minilm.",
    ).add(
        "",
        "Client-side TTFT in ms (request to the first content chunk); added: p50 minus the "
        "p50 of 'none' in the same phase.",
        "",
        *table(["phase", "moderation", "requests", "p50", "p90", "p99", "added p50"], rows),
    )


async def run(urls: dict[str, str], args: argparse.Namespace) -> list[Side]:
    no_cache = {"Cache-Control": "no-cache"}
    sides = [Side(name, ChatClient(url, ALICE_KEY, headers=no_cache)) for name, url in urls.items()]
    await measure(sides, args.requests, args.rounds, args.concurrency)
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per side")
    parser.add_argument("--rounds", type=int, default=4, help="concurrent rounds per side")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens-per-s", type=float, default=200.0)
    out_argument(parser, "safety_ttft.md")
    args = parser.parse_args()
    off = {"GATEWAY_MODERATE_INPUT": "false", "GATEWAY_MODERATE_OUTPUT": "false"}
    gateway = {**off, "GATEWAY_LOG_LEVEL": QUIET, **LIMITS_OFF}
    env = {
        "generator": {**scripted(TEXT, args.tokens_per_s), "GENERATOR_LOG_LEVEL": QUIET},
        "safety": {"SAFETY_LOG_LEVEL": QUIET, "SAFETY_CLASSIFIER": "profanity"},
        "history": {"HISTORY_LOG_LEVEL": QUIET},
    }
    on = {"GATEWAY_MODERATE_INPUT": "true", "GATEWAY_MODERATE_OUTPUT": "true"}
    with BenchStack(gateway, env, prefix="parlance-safetyttft-") as stack:
        minilm = start_safety(stack, "minilm")
        # Each extra gateway needs its own metrics port (the base one's is taken).
        profanity_gateway = stack.extra_gateway({**on, "GATEWAY_METRICS_PORT": str(free_port())})
        minilm_gateway = stack.extra_gateway(
            {
                **on,
                "GATEWAY_SAFETY_URL": f"127.0.0.1:{minilm.grpc_port}",
                "GATEWAY_METRICS_PORT": str(free_port()),
            }
        )
        urls = {
            "none": stack.gateway_url,
            "profanity": f"http://127.0.0.1:{profanity_gateway.http_port}",
            "minilm": f"http://127.0.0.1:{minilm_gateway.http_port}",
        }
        sides = asyncio.run(run(urls, args))
    build_report(sides, args).write(args.out)


if __name__ == "__main__":
    main()
