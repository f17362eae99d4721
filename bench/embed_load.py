"""A closed-loop load of POST /v1/embeddings against any OpenAI-compatible server (Parlance's
gateway or `vllm serve --runner pooling`), for bench/gpu_round.sh's embed phase:

    python bench/embed_load.py --url http://127.0.0.1:8000 --model M --batch 32 \\
        --concurrency 4 --requests 200 --json out.json [--api-key K] [--vectors vectors.json]

Each request embeds `--batch` distinct sentences (lib/texts.py: ~15-20 tokens; never the same
text twice in a run, so no cache answers), through lib/client.py's connections (one per
concurrent worker) in lib/loop.py's closed loop. Reports texts/s, request latency p50/p99
(percentile definition in lib/stats.py) and the client's own CPU seconds (so that a saturated
client shows: one Python client process tops out near 300 small requests/s; `--processes N`
splits the concurrency and the requests over N client processes started together, and merges
their figures). With
--vectors it first embeds a fixed set of 64 sentences and writes their vectors, so that two
servers' outputs can be compared (cosine agreement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from lib.client import ChatClient
from lib.loop import closed_loop
from lib.stats import PERCENTILE_DEFINITION, percentile
from lib.texts import sentence, sentences


async def embed(client: httpx.AsyncClient, model: str, texts: list[str]) -> list[list[float]]:
    response = await client.post("/v1/embeddings", json={"model": model, "input": texts})
    response.raise_for_status()
    return [item["embedding"] for item in response.json()["data"]]


async def run(args: argparse.Namespace) -> dict[str, object]:
    # Deterministic requests must compute: ask the gateway's cache to stand aside.
    headers = {"Cache-Control": "no-cache"}
    async with ChatClient(args.url, args.api_key or None, timeout_s=120, headers=headers) as client:
        vectors = await embed(client.lane(0), args.model, sentences(64))
        # Warm-up: connections and the server's first batches.
        await asyncio.gather(
            *(
                embed(client.lane(w), args.model, [sentence(10_000 + w)])
                for w in range(args.concurrency)
            )
        )
        latencies: list[float] = []

        async def request(worker: int, index: int) -> None:
            texts = sentences(args.batch, args.offset + index * args.batch)
            sent = time.perf_counter()
            try:
                await embed(client.lane(worker), args.model, texts)
            except httpx.HTTPError:
                return
            latencies.append(time.perf_counter() - sent)

        cpu0 = time.process_time()
        block = await closed_loop(request, args.concurrency, count=args.requests)
        cpu = time.process_time() - cpu0
    return {
        "vectors": vectors,
        "url": args.url,
        "model": args.model,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "requests": len(latencies),
        "errors": args.requests - len(latencies),
        "texts_per_s": len(latencies) * args.batch / block.window_s,
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "client_cpu_s": cpu,
        "wall_s": block.window_s,
        "percentiles": PERCENTILE_DEFINITION,
        "latencies": latencies,
    }


def run_processes(args: argparse.Namespace) -> dict[str, object]:
    """`args.processes` copies of this script, each with its share of the concurrency and the
    requests and its own range of sentences, started together; their figures merged."""
    with tempfile.TemporaryDirectory() as folder:
        children = []
        for k in range(args.processes):
            out = Path(folder) / f"{k}.json"
            command = [
                sys.executable, __file__, "--url", args.url, "--model", args.model,
                "--api-key", args.api_key, "--batch", str(args.batch),
                "--concurrency", str(max(1, args.concurrency // args.processes)),
                "--requests", str(args.requests // args.processes),
                "--offset", str(args.offset + (k + 1) * 10_000_000), "--json", str(out),
                "--keep-latencies",
            ]  # fmt: skip
            children.append((subprocess.Popen(command, stdout=subprocess.DEVNULL), out))
        parts = []
        for child, out in children:
            child.wait()
            parts.append(json.loads(out.read_text()))
    latencies = [x for part in parts for x in part["latencies"]]
    wall = max(part["wall_s"] for part in parts)
    return {
        **{k: parts[0][k] for k in ("url", "model", "batch", "percentiles")},
        "concurrency": sum(part["concurrency"] for part in parts),
        "processes": args.processes,
        "requests": len(latencies),
        "errors": sum(part["errors"] for part in parts),
        "texts_per_s": len(latencies) * args.batch / wall,
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "client_cpu_s": sum(part["client_cpu_s"] for part in parts),
        "wall_s": wall,
        "vectors": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--vectors", help="write the vectors of 64 fixed sentences here")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--offset", type=int, default=100_000, help=argparse.SUPPRESS)
    parser.add_argument("--keep-latencies", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = run_processes(args) if args.processes > 1 else asyncio.run(run(args))
    vectors = result.pop("vectors")
    if not args.keep_latencies:
        result.pop("latencies", None)
    if args.vectors and vectors:
        Path(args.vectors).write_text(json.dumps(vectors))
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
