"""Time to first token of a lone request: the gateway path against the generator over gRPC,
in one run, interleaved (issue 20: the gateway within +5 ms of `vllm serve` at c=1 with output
moderation off, +10 ms with it on).

One stack (bench/lib/stack.py: a redis-server of its own, the services as processes) and
gateways on it, each with the settings of bench/gpu_probe.sh's gateway arms (Redis limits on,
set too high to refuse; input moderation on; profanity-check as safety's classifier; cache off):

    grpc      GeneratorService.Generate directly (one channel, the request the gateway builds)
    gw        the gateway, output moderation off (gpu_probe.sh's `gw`)
    gw+mod    the gateway, output moderation on (gpu_probe.sh's `gw+mod`)
    bare      the gateway with input moderation and limits off (what is left: HTTP, SSE, gRPC)

Requests go one at a time, a round is one request per side in a rotating order, so that the
shared machine's drift hits every side alike; `added` is the median over rounds of (side's
TTFT - grpc's TTFT in the same round). The Server-Timing header splits the gateway's time
before its response headers; "headers -> first content" is what follows them.

    .venv/bin/python bench/ttft_c1.py --requests 200 --out bench/results/ttft_c1_scripted.md
    .venv/bin/python bench/ttft_c1.py --engine llamacpp --requests 60 --max-tokens 8

--engine scripted (default): the generator's scripted test engine, unpaced (its answer is
there at once: the gateway's own time is all that differs). --engine llamacpp: the shipped
SmolLM2 GGUF (prefill included in both sides). --gateway-env NAME=VALUE adds a setting to every
gateway (a variant to try); --sides picks the sides; --baseline REF adds sides such as
`gw@base`: the gateway of git commit REF (bench/lib/baseline.py), for a before/after in one run.

Against servers already running (no stack: the GPU host, inside bench/gpu_probe.sh), the same
interleaved comparison; prompts from gpu_probe.py's prompts.json:

    python3 bench/ttft_c1.py --grpc 127.0.0.1:50051 --http gw=http://127.0.0.1:8000 \
        --http gw+mod=http://127.0.0.1:8001 --api-key KEY --model MODEL \
        --prompts RESULTS/prompts.json --requests 40 --max-tokens 32 --out RESULTS/ttft_c1.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from lib import baseline as lib_baseline
from lib.client import ChatClient, ChatResult, chat_body
from lib.procs import load_average
from lib.report import Report, out_argument, table
from lib.stack import KEYS, LIMITS_HIGH, MODEL, BenchStack, free_port, scripted
from lib.stats import percentile

from parlance.generator.v1 import generator_pb2, generator_pb2_grpc

COMMON = {
    **LIMITS_HIGH,
    "GATEWAY_CACHE_ENABLED": "false",
    "GATEWAY_MODERATE_INPUT": "true",
    "GATEWAY_SHUTDOWN_GRACE_S": "5",
}
GATEWAYS = {
    "gw": {"GATEWAY_MODERATE_OUTPUT": "false"},
    "gw+mod": {"GATEWAY_MODERATE_OUTPUT": "true"},
    "bare": {
        "GATEWAY_MODERATE_OUTPUT": "false",
        "GATEWAY_MODERATE_INPUT": "false",
        "GATEWAY_RPM_LIMIT": "0",
        "GATEWAY_TPM_LIMIT": "0",
        "GATEWAY_MAX_CONCURRENT_PER_KEY": "0",
    },
}
VOCAB = "alpha beta gamma delta omega river stone light quiet market window garden".split()
# The scripted engine's answer: words, one token each.
SCRIPT = "The sea is wide and deep and the light on it moves all day long. " * 4


def prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words)) + f" {rng.randrange(10**9)}"


class GrpcSide:
    def __init__(self, address: str, model: str) -> None:
        self.model = model
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = generator_pb2_grpc.GeneratorServiceStub(self.channel)
        self.started = 0.0

    async def ttft(self, text: str, max_tokens: int) -> float | None:
        request = generator_pb2.GenerateRequest(
            request_id=uuid.uuid4().hex,
            model=self.model,
            chat=generator_pb2.ChatInput(
                messages=[generator_pb2.ChatMessage(role="user", content=text)]
            ),
            sampling=generator_pb2.SamplingParams(max_tokens=max_tokens, temperature=1.0),
        )
        started = self.started = time.perf_counter()
        first = None
        async for reply in self.stub.Generate(request, timeout=60.0):
            if first is None and any(c.text for c in reply.choices):
                first = time.perf_counter() - started
        return first

    async def close(self) -> None:
        await self.channel.close()


async def run(args: argparse.Namespace, urls: dict[str, str], generator: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    run_tag = uuid.uuid4().hex[:8]
    prompts: list[str] = args.prompt_list
    grpc_side = GrpcSide(generator, args.model) if "grpc" in args.sides else None
    clients = {
        name: ChatClient(
            url, args.api_key or KEYS[0], timeout_s=60.0, headers={"Cache-Control": "no-cache"}
        )
        for name, url in urls.items()
    }
    ttft: dict[str, list[float | None]] = {name: [] for name in args.sides}
    results: dict[str, list[ChatResult]] = {name: [] for name in clients}
    raw: list[dict[str, Any]] = []
    # A side whose request fails (e.g. a gateway whose safety service is broken) is left out
    # from then on, the error kept for the report; the other sides still get measured.
    failed: dict[str, str] = {}
    try:
        for i in range(args.requests + args.warmup):
            order = list(args.sides)
            order = order[i % len(order) :] + order[: i % len(order)]
            for name in order:
                # A prompt of its own per side (same length): no side finds another's prompt
                # in the engine's prefix cache.
                text = (
                    prompts[len(raw) % len(prompts)] if prompts else prompt(rng, args.prompt_words)
                )
                # Tagged per request: on a running server, earlier runs may have put the same
                # prompt file's prompts into the engine's prefix cache.
                text = f"[{name} {len(raw)} {run_tag}] {text}"
                if name in failed:
                    value, result = None, None
                elif name == "grpc":
                    assert grpc_side is not None
                    value = await grpc_side.ttft(text, args.max_tokens)
                    result = None
                else:
                    body = chat_body(text, args.model, max_tokens=args.max_tokens, temperature=1.0)
                    result = await clients[name].stream(body)
                    if result.error:
                        failed[name] = result.error[:200]
                        print(f"{name}: {result.error}; left out from now on", file=sys.stderr)
                        value, result = None, None
                    else:
                        value = result.ttft_s
                if i >= args.warmup:
                    ttft[name].append(None if value is None else value * 1000)
                    if result is not None:
                        results[name].append(result)
                if name in failed:
                    continue
                started = grpc_side.started if grpc_side and result is None else 0.0
                raw.append(_raw(name, i, value, result, started))
    finally:
        for client in clients.values():
            await client.aclose()
        if grpc_side is not None:
            await grpc_side.close()
        if args.raw is not None:  # also what a run cut short got
            args.raw.write_text(json.dumps(raw))
    return {"ttft": ttft, "results": results, "failed": failed}


def _raw(
    name: str, i: int, value: float | None, result: ChatResult | None, started: float
) -> dict[str, Any]:
    """One request's moments: perf_counter seconds (the clock every local process shares) and
    seconds from its send."""
    item: dict[str, Any] = {"side": name, "round": i, "started": started, "ttft_s": value}
    if result is not None:
        item |= {
            "started": result.started,
            "headers_s": result.headers_s,
            "first_event_s": result.first_event_s,
            "ttft_s": result.ttft_s,
            "total_s": result.total_s,
            "server_timing": result.server_timing(),
        }
    return item


def render(args: argparse.Namespace, data: dict[str, Any], loads: tuple[str, str]) -> Report:
    ttft: dict[str, list[float | None]] = data["ttft"]
    results: dict[str, list[ChatResult]] = data["results"]
    source = f"from {args.prompts}" if args.prompts else f"of {args.prompt_words} words"
    report = Report(
        f"TTFT at c=1: the gateway path vs the generator over gRPC ({args.engine} engine)",
        f"{args.requests} requests a side, one at a time, interleaved (rotating order), "
        f"{args.warmup} warm-up rounds; prompts {source}, max_tokens {args.max_tokens}. "
        f"Load average {loads[0]} at the start, {loads[1]} at the end. "
        f"Gateway settings added: {args.gateway_env or 'none'}.",
    )
    rows = []
    failed: dict[str, str] = data.get("failed", {})
    reference = args.reference
    for name in args.sides:
        values = [v for v in ttft[name] if v is not None]
        if name in failed and not values:
            rows.append([name, "-", "-", f"failed: {failed[name]}"])
            continue
        added = ""
        if reference in ttft and name != reference:
            pairs = [
                a - b
                for a, b in zip(ttft[name], ttft[reference], strict=True)
                if a is not None and b is not None
            ]
            added = f"{percentile(pairs, 50):+.2f}"
        rows.append(
            [
                name,
                f"{percentile(values, 50):.2f}",
                f"{percentile(values, 90):.2f}",
                added,
            ]
        )
    report.section(
        "TTFT (ms)",
        *table(
            ["side", "p50", "p90", f"added vs {reference} (median of per-round differences)"],
            rows,
        ),
    )
    for name, samples in results.items():
        stages: dict[str, list[float]] = {}
        for r in samples:
            for part, ms in r.server_timing().items():
                stages.setdefault(f"server {part}", []).append(ms)
            if r.headers_s is not None and r.ttft_s is not None:
                stages.setdefault("client: send -> headers", []).append(r.headers_s * 1000)
                stages.setdefault("client: headers -> first content", []).append(
                    (r.ttft_s - r.headers_s) * 1000
                )
        stage_rows = [[k, f"{percentile(v, 50):.2f}"] for k, v in stages.items()]
        report.section(f"{name}: stages (p50, ms)", *table(["stage", "p50"], stage_rows))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("scripted", "llamacpp"), default="scripted")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--prompt-words", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--tokens-per-s", type=float, default=0.0, help="the scripted engine's pace (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default="grpc,gw,gw+mod,bare")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SIDE:VAR=VALUE,...",
        help="one more side: SIDE's gateway with these settings",
    )
    parser.add_argument(
        "--baseline", default="", help="git ref: sides NAME@base run that commit's gateway"
    )
    parser.add_argument(
        "--baseline-path", default="", help="instead of --baseline: the @base sides' PYTHONPATH"
    )
    parser.add_argument("--raw", type=Path, help="also write every request's moments (JSON)")
    # Targets already running (no stack of its own), e.g. on the GPU host (bench/gpu_probe.sh).
    parser.add_argument("--grpc", default="", help="a running generator's address: side grpc")
    parser.add_argument(
        "--reference", default="grpc", help="the side the others are compared with, per round"
    )
    parser.add_argument("--http", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--prompts", default="", help="a JSON list of prompts (gpu_probe.py's)")
    out_argument(parser, "bench/results/ttft_c1.md")
    args = parser.parse_args()
    args.sides = args.sides.split(",")
    args.prompt_list = json.loads(Path(args.prompts).read_text()) if args.prompts else []
    if args.http or args.grpc:
        targets(args)
        return
    extra = dict(item.split("=", 1) for item in args.gateway_env)
    # --variant NAME=SIDE:VAR=VALUE,...: side SIDE's gateway with settings changed.
    variants: dict[str, dict[str, str]] = {}
    for item in args.variant:
        name, _, spec = item.partition("=")
        side, _, changes = spec.partition(":")
        variants[name] = GATEWAYS[side] | dict(c.split("=", 1) for c in changes.split(","))
        args.sides.append(name)
    env: dict[str, dict[str, str]] = {"safety": {"SAFETY_CLASSIFIER": "profanity"}}
    if args.engine == "scripted":
        env["generator"] = scripted(SCRIPT, args.tokens_per_s)
    start = load_average()
    base_dir = tempfile.mkdtemp(prefix="parlance-ttft-c1-base-")
    try:
        base = args.baseline_path or None
        if args.baseline:
            base = lib_baseline.export(args.baseline, base_dir, ("gateway", "common"))
            base = os.pathsep.join(filter(None, [base, os.environ.get("PYTHONPATH")]))
        with BenchStack(env=env, prefix="parlance-ttft-c1-") as stack:
            urls = {}
            for name in args.sides:
                settings = GATEWAYS.get(name.removesuffix("@base")) or variants.get(name)
                if settings is None:
                    continue
                settings = {**COMMON, **settings, **extra, "GATEWAY_METRICS_PORT": str(free_port())}
                if name.endswith("@base"):
                    if base is None:
                        raise SystemExit(f"{name} needs --baseline or --baseline-path")
                    settings["PYTHONPATH"] = base
                gateway = stack.extra_gateway(settings)
                urls[name] = f"http://127.0.0.1:{gateway.http_port}"
            generator = f"127.0.0.1:{stack.services['generator'].grpc_port}"
            data = asyncio.run(run(args, urls, generator))
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    render(args, data, (start, load_average())).write(args.out)


def targets(args: argparse.Namespace) -> None:
    """The interleaved comparison against running servers: --grpc and each --http NAME=URL."""
    urls = dict(item.split("=", 1) for item in args.http)
    args.sides = (["grpc"] if args.grpc else []) + list(urls)
    args.engine = "running servers"
    start = load_average()
    data = asyncio.run(run(args, urls, args.grpc))
    render(args, data, (start, load_average())).write(args.out)


if __name__ == "__main__":
    main()
