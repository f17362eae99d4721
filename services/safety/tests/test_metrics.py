"""The parlance_safety_ metrics move with the calls, in the registry and on /metrics."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client import REGISTRY

from parlance.safety.v1 import safety_pb2


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def output_metrics() -> dict[str, float]:
    return {
        "texts": sample("parlance_safety_texts_classified_total", direction="output"),
        "flags": sample("parlance_safety_flags_total", category="harassment", direction="output"),
        "batches": sample("parlance_safety_batch_size_count", direction="output"),
        "batch_sum": sample("parlance_safety_batch_size_sum", direction="output"),
        "latency": sample(
            "parlance_safety_classification_latency_seconds_count", direction="output"
        ),
    }


async def test_counters_and_histograms_move(safety) -> None:
    texts = ["What is the capital of France?", "You are an idiot.", "Shut up, you stupid moron."]
    before = output_metrics()
    await safety.stub.Classify(
        safety_pb2.ClassifyRequest(texts=texts, direction=safety_pb2.DIRECTION_OUTPUT)
    )
    after = output_metrics()
    assert after["texts"] - before["texts"] == 3
    assert after["flags"] - before["flags"] == 2
    assert after["batches"] - before["batches"] == 1
    assert after["batch_sum"] - before["batch_sum"] == 3
    assert after["latency"] - before["latency"] == 1


async def test_metrics_endpoint_serves_them(safety_server) -> None:
    async with safety_server(metrics_port=0) as safety:
        await safety.stub.Classify(
            safety_pb2.ClassifyRequest(texts=["hello"], direction=safety_pb2.DIRECTION_INPUT)
        )
        url = f"http://127.0.0.1:{safety.host.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    text = body.decode()
    assert 'parlance_safety_texts_classified_total{direction="input"}' in text
    assert "parlance_safety_classification_latency_seconds_bucket" in text
