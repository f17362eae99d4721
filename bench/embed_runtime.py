"""The embedding engine's forward pass, ONNX Runtime against PyTorch (issue 18): the same model
loaded twice in one process (`embed_runtime` "onnx" and "torch"), called in turns on the same
inputs so that the noise of a shared machine hits both alike; where the CPU computes bfloat16
natively (AVX-512 BF16, AMX), PyTorch in bfloat16 joins them (what `embed_dtype: auto` picks
there). The intent router embeds one
short message per request, so batch 1 of chat-message lengths is the case that matters; batch
32 (the micro-batcher's largest) shows the two where compute dominates.

    .venv/bin/python bench/embed_runtime.py              # -> bench/results/embed_runtime.md
    .venv/bin/python bench/embed_runtime.py --quick --out /tmp/embed_runtime.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.procs import load_average
from lib.report import Report, out_argument, table
from lib.stats import fmt, percentile

# (name, engine settings): the gateway's intent model as `make up` serves it, and /v1/embeddings'.
MODELS = [
    ("all-MiniLM-L6-v2-intents-2", {"pooling": "layers", "deltas": "minilm_intents_2.npz"}),
    ("all-MiniLM-L6-v2", {}),
]
# Chat messages of three lengths (tokens with the special ones, this tokenizer).
MESSAGES = [
    "hi there",
    "how do i reverse a string in python without using slicing",
    "my invoice shows a double charge for last month and the support page did not help, "
    "can you refund it or tell me who to ask?",
]


def build(name: str, settings: dict[str, str], arm: str) -> object:
    from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine

    runtime, dtype = {
        "torch": ("torch", "float32"),
        "onnx": ("onnx", "float32"),
        "torch-bf16": ("torch", "bfloat16"),
    }[arm]
    engine = TransformersEmbeddingEngine(
        served_model_name=name, n_threads=1, runtime=runtime, dtype=dtype, **settings
    )
    engine._load()
    assert engine.runtime == runtime, f"{name}: asked for {runtime}, got {engine.runtime}"
    return engine


def arms() -> list[str]:
    import torch

    from parlance.generator.engine.transformers_embed import native_bfloat16

    return ["torch", "onnx"] + (["torch-bf16"] if native_bfloat16(torch, "cpu") else [])


def timed(engine: object, sequences: list[list[int]]) -> float:
    started = time.perf_counter()
    engine._forward(sequences)  # type: ignore[attr-defined]
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out_argument(parser, "embed_runtime.md")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds = 10 if args.quick else 80
    from parlance.generator.engine.base import EmbeddingRequest

    load_before = load_average()
    rows = []
    compared = arms()
    for name, settings in MODELS:
        engines = {arm: build(name, settings, arm) for arm in compared}
        cases = [(m, 1) for m in MESSAGES] + [(MESSAGES[1], 32)]
        for message, batch in cases:
            request = EmbeddingRequest("bench", tuple([message] * batch), truncate=True)
            sequences = engines["torch"]._encode(request)  # type: ignore[attr-defined]
            times: dict[str, list[float]] = {arm: [] for arm in compared}
            for _ in range(3):  # warm-up
                for engine in engines.values():
                    timed(engine, sequences)
            for i in range(rounds):
                # The order rotates, so that no arm always follows the same one.
                shift = i % len(compared)
                for arm in compared[shift:] + compared[:shift]:
                    times[arm].append(timed(engines[arm], sequences))
            p50 = {arm: percentile(times[arm], 50) for arm in compared}
            row = [name, str(len(sequences[0])), str(batch)]
            row += [fmt(p50[arm], 2) for arm in compared]
            row.append(fmt(p50["onnx"] / p50["torch"], 2))
            if "torch-bf16" in p50:
                row.append(fmt(p50["onnx"] / p50["torch-bf16"], 2))
            rows.append(row)
    report = Report(
        "Embedding forward pass: ONNX Runtime against PyTorch",
        "The generator's TransformersEmbeddingEngine once per arm (one thread): "
        f"{', '.join(compared)} (torch and onnx in float32), `_forward` (padding, the forward "
        f"pass, pooling, unit vectors) timed in turns, {rounds} rounds per case after 3 "
        "warm-ups, the order rotating.",
        f"Machine load (1, 5, 15 min): before {load_before}, after {load_average()}.",
    )
    report.section(
        "Forward pass (ms, p50)",
        *table(
            ["model", "tokens", "batch", *compared, "onnx / torch"]
            + (["onnx / torch-bf16"] if "torch-bf16" in compared else []),
            rows,
        ),
    )
    report.write(args.out)


if __name__ == "__main__":
    main()
