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
# vLLM's prefix cache, from its scheduler stats (hits / queries is the hit rate, in tokens):
# what conversation affinity in the gateway is for.
PREFIX_CACHE_QUERIES = Counter(
    "parlance_generator_prefix_cache_queries",
    "Prompt tokens looked up in the engine's prefix cache (vLLM).",
    ["engine"],
)
PREFIX_CACHE_HITS = Counter(
    "parlance_generator_prefix_cache_hits",
    "Prompt tokens found in the engine's prefix cache (vLLM).",
    ["engine"],
)
EMBED_REQUESTS = Counter(
    "parlance_generator_embed_requests",
    "Embed calls by model and outcome: ok, rejected (bad input), error.",
    ["model", "outcome"],
)
EMBED_INPUTS = Counter(
    "parlance_generator_embed_inputs", "Inputs embedded (texts or token arrays).", ["model"]
)
EMBED_TOKENS = Counter(
    "parlance_generator_embed_tokens", "Tokens of the inputs embedded.", ["model"]
)
EMBED_DURATION = Histogram(
    "parlance_generator_embed_duration_seconds",
    "Embed calls from arrival to their answer, batching wait included.",
    ["model"],
    buckets=LATENCY_BUCKETS_S,
)
EMBED_QUEUE_TIME = Histogram(
    "parlance_generator_embed_queue_time_seconds",
    "Time an Embed call waited for its micro-batch to start.",
    ["model"],
    buckets=LATENCY_BUCKETS_S,
)
EMBED_BATCH_INPUTS = Histogram(
    "parlance_generator_embed_batch_inputs",
    "Inputs per micro-batch (forward passes are split further at the batch size).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
EMBED_BATCH_CALLS = Histogram(
    "parlance_generator_embed_batch_calls",
    "Embed calls sharing one micro-batch.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
REWARD_REQUESTS = Counter(
    "parlance_generator_score_requests",
    "Score calls by model and outcome: ok, rejected (bad input), error.",
    ["model", "outcome"],
)
REWARD_CANDIDATES = Counter(
    "parlance_generator_score_candidates", "Candidate answers scored.", ["model"]
)
REWARD_TOKENS = Counter(
    "parlance_generator_score_tokens",
    "Tokens of the scored sequences (conversation + candidate, after truncation).",
    ["model"],
)
REWARD_TRUNCATED = Counter(
    "parlance_generator_score_truncated",
    "Scored sequences that lost the start of their conversation to the model's window.",
    ["model"],
)
REWARD_SCORES = Histogram(
    "parlance_generator_reward_score",
    "Scores given to candidates (each model has its own scale).",
    ["model"],
    buckets=(-8, -4, -2, -1, -0.5, 0, 0.5, 1, 2, 4, 8),
)
REWARD_DURATION = Histogram(
    "parlance_generator_score_duration_seconds",
    "Score calls from arrival to their answer, batching wait included.",
    ["model"],
    buckets=LATENCY_BUCKETS_S,
)
REWARD_QUEUE_TIME = Histogram(
    "parlance_generator_score_queue_time_seconds",
    "Time a Score call waited for its micro-batch to start.",
    ["model"],
    buckets=LATENCY_BUCKETS_S,
)
REWARD_BATCH_SEQUENCES = Histogram(
    "parlance_generator_score_batch_sequences",
    "Sequences (candidates) per micro-batch (forward passes are split further at the batch size).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MODEL_LOADS = Counter(
    "parlance_generator_model_loads",
    "LoadModel and UnloadModel calls by action and outcome (ok, rejected, error).",
    ["action", "outcome"],
)
