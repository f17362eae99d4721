"""The safety service's Prometheus metrics (default registry, served on metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from parlance.common.metrics import FAST_BUCKETS_S

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
MICROBATCH_SIZE = Histogram(
    "parlance_safety_microbatch_size",
    "Texts per model call, gathered from concurrent Classify calls (both directions).",
    buckets=BATCH_SIZE_BUCKETS,
)
MICROBATCH_CALLS = Histogram(
    "parlance_safety_microbatch_calls",
    "Classify calls served by one model call.",
    buckets=BATCH_SIZE_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "parlance_safety_queue_wait_seconds",
    "Time a Classify call waited for the inference worker before its batch started.",
    buckets=FAST_BUCKETS_S,
)
FORWARD_PASSES = Counter(
    "parlance_safety_forward_passes",
    "Forward passes of the model (Detoxify).",
)
FORWARD_BATCH_WINDOWS = Histogram(
    "parlance_safety_forward_batch_windows",
    "Token windows per forward pass (Detoxify).",
    buckets=BATCH_SIZE_BUCKETS,
)
WINDOWS_PER_TEXT = Histogram(
    "parlance_safety_windows_per_text",
    "Token windows a text was split into (Detoxify; > 1 for texts beyond the model's length).",
    buckets=(1, 2, 3, 4, 8, 16, 32, 64),
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
CACHED_UNITS = Counter(
    "parlance_safety_cached_units",
    "Token windows whose embedding came from the cache instead of a forward pass (MiniLM).",
)
