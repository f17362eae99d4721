"""Safety classification throughput: texts/s one by one vs. micro-batched at 32 concurrent callers.

    .venv/bin/python bench/safety_bench.py [--texts 256] [--callers 32] [--base-texts 96]
        [--no-base] [--out FILE]

Each row starts a real safety gRPC server in this process (port 0) and a client that sends
Classify calls of one text each:
- one by one: a single caller, one call after the other;
- 32 callers, no batching: 32 concurrent callers, max_batch_size=1 (the worker takes one call at
  a time: what concurrency alone gives);
- 32 callers, micro-batched: the same callers, max_batch_size=32 (the default).
The ratio is micro-batched / one by one.

Backends: the profanity classifier; Detoxify on the small test checkpoint (a 2-layer, hidden-32
BERT: its forward pass is almost free, so this row measures the service around it); and Detoxify
on a BERT of bert-base-uncased's size with random weights (the released checkpoints are not
reachable here; the compute per forward pass is the real model's, on CPU). Client and server
share the machine's cores. The texts are 12 to 40 words long.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from lib.loop import closed_loop
from lib.report import ROOT, Report, out_argument, table

from parlance.safety.config import SafetySettings
from parlance.safety.main import build_host
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc

# The checkpoint builders live with the tests that use them.
sys.path.insert(0, str(ROOT / "services" / "safety" / "tests"))
from detoxify_checkpoint import (
    WORDS,
    build_base_sized_checkpoint,
    build_small_checkpoint,
)


def make_texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(12, 40))) + "." for _ in range(count)]


async def _throughput(settings: SafetySettings, texts: list[str], callers: int) -> float:
    """Texts per second for `callers` concurrent callers sharing `texts`, one text per call."""
    host = build_host(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    stub = safety_pb2_grpc.SafetyServiceStub(channel)
    try:

        async def classify(text: str) -> None:
            await stub.Classify(
                safety_pb2.ClassifyRequest(texts=[text], direction=safety_pb2.DIRECTION_OUTPUT)
            )

        for text in texts[:8]:  # warm-up: first calls pay for lazy initialisation
            await classify(text)
        block = await closed_loop(lambda _, i: classify(texts[i]), callers, count=len(texts))
        return len(texts) / block.window_s
    finally:
        await channel.close()
        await host.stop()


async def bench(name: str, base: dict[str, Any], texts: list[str], callers: int) -> list[str]:
    def settings(**overrides: Any) -> SafetySettings:
        values = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, **base, **overrides}
        return SafetySettings(**values)

    one = await _throughput(settings(max_batch_size=callers), texts, 1)
    unbatched = await _throughput(settings(max_batch_size=1), texts, callers)
    batched = await _throughput(settings(max_batch_size=callers), texts, callers)
    cells = (one, unbatched, batched)
    return [name, str(len(texts)), *(f"{v:.1f}" for v in cells), f"{batched / one:.2f}x"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--base-texts", type=int, default=96)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--no-base", action="store_true", help="skip the bert-base-sized row")
    out_argument(parser, "safety_bench.md")
    args = parser.parse_args()

    texts = make_texts(args.texts)
    rows = [await bench("profanity", {"classifier": "profanity"}, texts, args.callers)]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = [("detoxify, small test BERT", build_small_checkpoint(Path(tmp) / "small"))]
        if not args.no_base:
            base = build_base_sized_checkpoint(Path(tmp) / "base")
            checkpoints.append(("detoxify, bert-base size (random)", base))
        for name, checkpoint in checkpoints:
            detoxify = {
                "classifier": "detoxify",
                "detoxify_checkpoint": str(checkpoint.checkpoint),
                "detoxify_hf_config_path": str(checkpoint.hf_config_dir),
            }
            count = args.texts if "small" in name else args.base_texts
            rows.append(await bench(name, detoxify, texts[:count], args.callers))
    c = args.callers
    report = Report(
        "Safety classification: one by one vs micro-batched (bench/safety_bench.py)",
        "Texts per second, one text per Classify call; ratio = micro-batched at "
        f"{c} callers / one by one. Client and server share the machine's cores.",
    )
    columns = ["backend", "texts", "1 by 1 t/s", f"{c} unbatched", f"{c} batched", "ratio"]
    report.add("", *table(columns, rows)).write(args.out)


if __name__ == "__main__":
    asyncio.run(main())
