"""Helpers for the services' Prometheus metrics (each service declares its own in its
metrics.py, names prefixed parlance_<service>_)."""

from __future__ import annotations

# Buckets that fit LLM latencies: a few ms (cache, classification) up to minutes (long answers).
LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
# Per-token latencies (time per output token).
TOKEN_LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
)
# Short calls: classification, Redis, database.
FAST_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
