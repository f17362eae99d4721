"""Intent routing's cost in time to first token (issue 18): the same streamed chat requests
through four gateways on the same services, interleaved in rounds so that the noise of a
shared machine hits them alike, at concurrency 1 and 32: routing off; routing on as `make up`
serves it (the shipped route file, the intent model with int8 weights, embed_runtime
"onnx-int8", run in the gateway's own process from the graph the generator exports); the same
model in float32; and float32 embedded by the generator for each message
(GATEWAY_INTENT_LOCAL_ENCODER=false: an Embed call per message, the setup before the local
encoder).

The stack runs as processes (bench/lib/stack.py) with a redis-server of its own. The generator
serves a scripted chat model (a fixed 8-word reply, unpaced: the model's own time out of the
way, so that what differs is the gateway's work), all-MiniLM-L6-v2 as /v1/embeddings serves
it, and the intent model (ONNX Runtime). Every gateway moderates input and output as
shipped (profanity classifier), cache off, limits too high to refuse. Classification runs
beside input moderation, so what it adds to the first token is about the part of it that
outlasts moderation, plus CPU it takes from the rest. Two kinds of requests: one message,
nothing stored (concurrency 1 and 32), and messages that continue a stored conversation, one
per worker (concurrency 1), where the newest message is embedded while the conversation is
read and the earlier user turn joins the classification (mostly from the vector cache).

Each request's prompt is a different message of the intent evaluation set (a real mix of
lengths and intents; a message repeated only after the whole set), so the embedding model does
real work.

    .venv/bin/python bench/intent_ttft.py          # writes bench/results/intent_ttft.md
    .venv/bin/python bench/intent_ttft.py --quick --out /tmp/intent_ttft.md
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time
from collections import Counter

from lib.client import ChatClient, ChatResult, chat_body
from lib.loop import closed_loop
from lib.procs import load_average
from lib.report import ROOT, Report, out_argument, table
from lib.stack import ALICE_KEY, LIMITS_HIGH, MODEL, BenchStack
from lib.stats import fmt, percentile

EMBED = "all-MiniLM-L6-v2"
# The gateway's intent model as `make up` serves it (scripts/devstack.py) but in float32: the
# fine-tuned intent deltas merged at load (the same forward pass as the frozen weights), every
# layer pooled, run by ONNX Runtime, no micro-batching wait; `make up` serves it with int8
# weights (INTENT_MODEL_INT8).
INTENT_MODEL = "all-MiniLM-L6-v2-intents-3"
INTENT_SETTINGS = {
    "embed_deltas": "minilm_intents_3.npz",
    "embed_dtype": "float32",
    "embed_pooling": "layers",
    "embed_max_wait_ms": 0,
    "embed_runtime": "onnx",
}
INTENT_MODEL_INT8 = f"{INTENT_MODEL}-int8"
ROUTES = ROOT / "services/gateway/src/parlance/gateway/intents/default_routes.yaml"
MESSAGES = ROOT / "bench/data/intents/messages.tsv"
GENERATOR_MODELS = [
    {
        "id": MODEL,
        "engine": "scripted",
        "settings": {"scripted_tokens_per_s": 0, "scripted_text": "Sure, here is a short answer."},
    },
    {"id": EMBED, "engine": "transformers", "task": "embed"},
    {"id": INTENT_MODEL, "engine": "transformers", "task": "embed", "settings": INTENT_SETTINGS},
    {
        "id": INTENT_MODEL_INT8,
        "engine": "transformers",
        "task": "embed",
        "settings": {**INTENT_SETTINGS, "embed_runtime": "onnx-int8"},
    },
]
GATEWAY_ENV = {
    **LIMITS_HIGH,
    "GATEWAY_CACHE_ENABLED": "false",
    "GATEWAY_MODEL_ALIASES": json.dumps({"default": MODEL}),
    "GATEWAY_INTENT_ROUTES": str(ROUTES),
    "GATEWAY_INTENT_EMBED_MODEL": INTENT_MODEL,
}
NO_CACHE = {"Cache-Control": "no-cache"}
FLOAT32 = "routing on, float32"
ROUTED_BEFORE = "routing on, float32, Embed call per message"
INT8 = "routing on, int8 weights (make up)"


def prompts() -> list[str]:
    with MESSAGES.open(encoding="utf-8", newline="") as handle:
        return [r["text"] for r in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]


async def one_round(
    client: ChatClient,
    texts: list[str],
    offset: int,
    workers: int,
    count: int,
    conversations: list[str] | None = None,
) -> list[ChatResult]:
    """`conversations`: one per worker, each request continuing its worker's (stored)."""

    async def request(worker: int, index: int) -> ChatResult:
        text = texts[(offset + index) % len(texts)]
        body = chat_body(text, "default", max_tokens=8)
        if conversations is not None:
            body["conversation_id"] = conversations[worker]
        return await client.stream(body, headers=NO_CACHE, lane=worker)

    block = await closed_loop(request, workers, count=count)
    return block.results


async def new_conversations(client: ChatClient, workers: int) -> list[str]:
    ids = []
    for worker in range(workers):
        response = await client.lane(worker).post("/v1/conversations", json={"title": "bench"})
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


async def measure(
    urls: dict[str, str],
    texts: list[str],
    workers: int,
    rounds: int,
    per_round: int,
    stored: bool = False,
) -> dict[str, list[ChatResult]]:
    results: dict[str, list[ChatResult]] = {name: [] for name in urls}
    clients = {name: ChatClient(url, ALICE_KEY, timeout_s=120) for name, url in urls.items()}
    try:
        threads = {
            name: await new_conversations(client, workers) if stored else None
            for name, client in clients.items()
        }
        # Warm-up: connections, the embedding model's first calls, the gateways' caches.
        for name, client in clients.items():
            await one_round(client, texts, 0, workers, workers, threads[name])
        offset = 0
        for _ in range(rounds):
            for name, client in clients.items():
                # The same prompts through both gateways in each round.
                results[name] += await one_round(
                    client, texts, offset, workers, per_round, threads[name]
                )
            offset += per_round
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def row(name: str, results: list[ChatResult], base_p50: float | None) -> list[str]:
    ok = [r for r in results if r.ok and r.ttft_s is not None]
    ttft = [1000 * r.ttft_s for r in ok if r.ttft_s is not None]
    stage = [r.server_timing().get("intent", float("nan")) for r in ok]
    stage = [s for s in stage if s == s]
    p50 = percentile(ttft, 50)
    added = "-" if base_p50 is None else fmt(p50 - base_p50, 2)
    failed = Counter((r.error or "no content")[:60] for r in results if r not in ok)
    return [
        name,
        str(len(ok)),
        ", ".join(f"{count} {kind}" for kind, count in failed.most_common()) or "0",
        fmt(p50, 2),
        fmt(percentile(ttft, 90), 2),
        fmt(percentile(ttft, 99), 2),
        added,
        fmt(percentile(stage, 50), 2) if stage else "-",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out_argument(parser, "intent_ttft.md")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    texts = prompts()
    # (workers, rounds, requests per round and gateway, stored conversations)
    plan = [(1, 4, 15, False), (32, 3, 64, False), (1, 4, 15, True)]
    if args.quick:
        plan = [(1, 2, 5, False), (32, 1, 32, False), (1, 2, 5, True)]
    env = {"generator": {"GENERATOR_MODELS": json.dumps(GENERATOR_MODELS)}}
    load_before = load_average()
    started = time.perf_counter()
    with BenchStack(gateway_env=GATEWAY_ENV, env=env) as stack:
        # Its own metrics port (the first gateway holds the configured one).
        off = stack.extra_gateway({"GATEWAY_INTENT_ROUTES": "", "GATEWAY_METRICS_PORT": "-1"})
        # Routing on with the generator embedding each message: what the local encoder saves.
        before = stack.extra_gateway(
            {"GATEWAY_INTENT_LOCAL_ENCODER": "false", "GATEWAY_METRICS_PORT": "-1"}
        )
        # The same model with int8 weights (embed_runtime "onnx-int8"), run locally too.
        int8 = stack.extra_gateway(
            {"GATEWAY_INTENT_EMBED_MODEL": INTENT_MODEL_INT8, "GATEWAY_METRICS_PORT": "-1"}
        )
        urls = {
            FLOAT32: stack.gateway_url,
            "routing off": f"http://127.0.0.1:{off.http_port}",
            ROUTED_BEFORE: f"http://127.0.0.1:{before.http_port}",
            INT8: f"http://127.0.0.1:{int8.http_port}",
        }
        tables = []
        for workers, rounds, per_round, stored in plan:
            results = asyncio.run(measure(urls, texts, workers, rounds, per_round, stored))
            base = [1000 * r.ttft_s for r in results["routing off"] if r.ok and r.ttft_s]
            base_p50 = percentile(base, 50)
            rows = [
                row("routing off", results["routing off"], None),
                row(FLOAT32, results[FLOAT32], base_p50),
                row(ROUTED_BEFORE, results[ROUTED_BEFORE], base_p50),
                row(INT8, results[INT8], base_p50),
            ]
            tables.append((workers, rounds, per_round, stored, rows))
    report = Report(
        "Intent routing: added time to first token",
        f"Stack: the four services as processes, generator {MODEL} scripted (8-word reply, "
        f"unpaced) + {EMBED} (transformers engine, CPU) in one process; gateways with input "
        "and output moderation as shipped, cache off.",
        f"'{FLOAT32}': GATEWAY_INTENT_ROUTES={ROUTES.relative_to(ROOT)}, "
        f"GATEWAY_INTENT_EMBED_MODEL={INTENT_MODEL} (settings {INTENT_SETTINGS}); off: ''; "
        f"'{ROUTED_BEFORE}': the same with GATEWAY_INTENT_LOCAL_ENCODER=false (the generator "
        f"embeds each message: the setup before the local encoder); '{INT8}': "
        f"GATEWAY_INTENT_EMBED_MODEL={INTENT_MODEL_INT8}, the same model served with "
        "embed_runtime 'onnx-int8' as `make up` serves it. Rounds interleave the four gateways "
        "with the same prompts.",
        f"Machine load (1, 5, 15 min): before {load_before}, after {load_average()} "
        f"({time.perf_counter() - started:.0f} s run; several engineers share the machine).",
        "TTFT: from the send to the first chunk with content, as the client (bench/lib/client.py"
        ", httpx, one keep-alive connection per worker) saw it; 'intent stage': the gateway's "
        "Server-Timing 'intent' duration (classification: the embedding call and the match).",
    )
    for workers, rounds, per_round, stored, rows in tables:
        kind = (
            ", stored conversations (each worker continues its own: history read and write, "
            "the earlier turn in the context window)"
            if stored
            else ", one-message requests (nothing stored)"
        )
        report.section(
            f"Concurrency {workers}{kind}",
            f"Closed loop of {workers} workers, {rounds} rounds of {per_round} requests per "
            "gateway after a warm-up. Times in ms.",
            "",
            *table(
                [
                    "gateway",
                    "requests",
                    "errors",
                    "TTFT p50",
                    "p90",
                    "p99",
                    "added p50 (on - off)",
                    "intent stage p50",
                ],
                rows,
            ),
        )
    report.write(args.out)


if __name__ == "__main__":
    main()
