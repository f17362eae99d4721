"""The safety service's Prometheus metrics (default registry, served on metrics_port)."""

from __future__ import annotations

from parlance.common.metrics import FAST_BUCKETS_S
from prometheus_client import Counter, Histogram

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

CLASSIFICATION_LATENCY = Histogram(
    "parlance_safety_classification_latency_seconds",
    "Time the classifier took for one Classify batch, queueing for the worker included.",
    ["direction"],
    buckets=FAST_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "parlance_safety_batch_size",
    "Texts per Classify call.",
    ["direction"],
    buckets=BATCH_SIZE_BUCKETS,
)
TEXTS_CLASSIFIED = Counter(
    "parlance_safety_texts_classified",
    "Texts classified.",
    ["direction"],
)
FLAGS = Counter(
    "parlance_safety_flags",
    "Texts flagged, per category that reached its threshold.",
    ["category", "direction"],
)
