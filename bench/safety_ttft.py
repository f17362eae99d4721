"""What each embedded safety classifier adds to the time to first token, input and output
moderation on, in one run.

    .venv/bin/python bench/safety_ttft.py [--requests 30] [--rounds 4] [--concurrency 4]
        [--tokens-per-s 200] [--minilm NAME[:SAFETY_X=V;...]]... [--out FILE]

One stack of processes (bench/lib/stack.py): the scripted test engine streaming a clean
multi-sentence text at a fixed token rate, history, Redis, and safety services on the same
machine: one with SAFETY_CLASSIFIER=profanity, one per --minilm side with minilm (and that
side's extra settings, e.g. `--minilm t1:SAFETY_TORCH_THREADS=1`). Gateways on them:
- none: GATEWAY_MODERATE_INPUT=false and GATEWAY_MODERATE_OUTPUT=false (the baseline);
- profanity: both on, on the profanity service;
- each minilm side: both on, on its minilm service.
Requests are interleaved none, profanity, minilm sides, none, ... (bench/lib/ttft.py) so that
drift of the machine hits every side. Two phases: `--requests` streamed requests per side one
at a time, then `--rounds` rounds of `--concurrency` simultaneous requests per side. TTFT is
the client's: from sending the request to the first chunk with content. "Added" is a side's
TTFT p50 minus the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from lib.client import chat_body
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
from lib.ttft import Side, compare, ttft_ms

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


def parse_side(spec: str) -> tuple[str, dict[str, str]]:
    """--minilm NAME[:KEY=VALUE;KEY=VALUE]: a minilm side with extra safety settings."""
    name, _, settings = spec.partition(":")
    pairs = [item.partition("=") for item in settings.split(";") if item]
    return name, {key: value for key, _, value in pairs}


def start_safety(
    stack: BenchStack, classifier: str, name: str, extra: dict[str, str] | None = None
) -> ServiceProcess:
    """Another safety service (the stack's own one runs profanity)."""
    base = stack.services["safety"]
    port, metrics = free_port(), free_port()
    name = f"safety-{name}"
    stack.services[name] = ServiceProcess(
        name=name,
        command=base.command,
        env={
            **base.env,
            "SAFETY_CLASSIFIER": classifier,
            "SAFETY_PORT": str(port),
            "SAFETY_METRICS_PORT": str(metrics),
            **(extra or {}),
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
        "none: moderation off (input and output); profanity / minilm sides: both on, on a "
        "safety service with that classifier (minilm sides: "
        + "; ".join(spec for spec in args.minilm or ["minilm"])
        + "). Requests interleaved in that order.",
    ).add(
        "",
        "Client-side TTFT in ms (request to the first content chunk); added: p50 minus the "
        "p50 of 'none' in the same phase.",
        "",
        *table(["phase", "moderation", "requests", "p50", "p90", "p99", "added p50"], rows),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per side")
    parser.add_argument("--rounds", type=int, default=4, help="concurrent rounds per side")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens-per-s", type=float, default=200.0)
    parser.add_argument(
        "--minilm",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE;...]",
        help="a minilm side with extra SAFETY_* settings (repeatable; default: one 'minilm')",
    )
    out_argument(parser, "safety_ttft.md")
    args = parser.parse_args()
    minilm_sides = [parse_side(spec) for spec in args.minilm or ["minilm"]]
    off = {"GATEWAY_MODERATE_INPUT": "false", "GATEWAY_MODERATE_OUTPUT": "false"}
    gateway = {**off, "GATEWAY_LOG_LEVEL": QUIET, **LIMITS_OFF}
    env = {
        "generator": {**scripted(TEXT, args.tokens_per_s), "GENERATOR_LOG_LEVEL": QUIET},
        "safety": {"SAFETY_LOG_LEVEL": QUIET, "SAFETY_CLASSIFIER": "profanity"},
        "history": {"HISTORY_LOG_LEVEL": QUIET},
    }
    on = {"GATEWAY_MODERATE_INPUT": "true", "GATEWAY_MODERATE_OUTPUT": "true"}
    with BenchStack(gateway, env, prefix="parlance-safetyttft-") as stack:
        # Each extra gateway needs its own metrics port (the base one's is taken).
        profanity_gateway = stack.extra_gateway({**on, "GATEWAY_METRICS_PORT": str(free_port())})
        urls = {
            "none": stack.gateway_url,
            "profanity": f"http://127.0.0.1:{profanity_gateway.http_port}",
        }
        for name, extra in minilm_sides:
            safety = start_safety(stack, "minilm", name, extra)
            gateway_process = stack.extra_gateway(
                {
                    **on,
                    "GATEWAY_SAFETY_URL": f"127.0.0.1:{safety.grpc_port}",
                    "GATEWAY_METRICS_PORT": str(free_port()),
                }
            )
            urls[name] = f"http://127.0.0.1:{gateway_process.http_port}"
        sides = asyncio.run(
            compare(
                urls,
                ALICE_KEY,
                BODY,
                requests=args.requests,
                rounds=args.rounds,
                concurrency=args.concurrency,
            )
        )
    build_report(sides, args).write(args.out)


if __name__ == "__main__":
    main()
