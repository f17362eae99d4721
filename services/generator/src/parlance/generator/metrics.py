"""The generator's Prometheus metrics (names follow vLLM's where they overlap)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from parlance.common.metrics import LATENCY_BUCKETS_S, TOKEN_LATENCY_BUCKETS_S

REQUESTS = Counter(
    "parlance_generator_requests",
    "Generate calls by how they ended: stop, length, abort, cancelled, rejected, error.",
    ["engine", "finish_reason"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "parlance_generator_time_to_first_token_seconds",
    "From the call's arrival to its first generated token, queueing included.",
    ["engine"],
    buckets=LATENCY_BUCKETS_S,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "parlance_generator_time_per_output_token_seconds",
    "Mean time between generated tokens of a call, after the first.",
    ["engine"],
    buckets=TOKEN_LATENCY_BUCKETS_S,
)
QUEUE_TIME = Histogram(
    "parlance_generator_queue_time_seconds",
    "Time a call waited for a free engine slot.",
    ["engine"],
    buckets=LATENCY_BUCKETS_S,
)
REQUEST_DURATION = Histogram(
    "parlance_generator_request_duration_seconds",
    "Generate calls from arrival to their last message.",
    ["engine"],
    buckets=LATENCY_BUCKETS_S,
)
RUNNING = Gauge(
    "parlance_generator_requests_running", "Requests the engine is generating now.", ["engine"]
)
WAITING = Gauge(
    "parlance_generator_requests_waiting", "Requests queued for a free engine slot.", ["engine"]
)
PROMPT_TOKENS = Counter(
    "parlance_generator_prompt_tokens", "Prompt tokens of finished calls.", ["engine"]
)
GENERATION_TOKENS = Counter(
    "parlance_generator_generation_tokens", "Tokens generated, across choices.", ["engine"]
)
