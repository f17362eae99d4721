"""The gateway's Prometheus metrics (all prefixed parlance_gateway_)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from parlance.common.metrics import FAST_BUCKETS_S, LATENCY_BUCKETS_S, TOKEN_LATENCY_BUCKETS_S

HTTP_REQUESTS = Counter(
    "parlance_gateway_http_requests_total",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "parlance_gateway_http_request_duration_seconds",
    "Time from request to the last byte of the response, by route.",
    ["route"],
    buckets=LATENCY_BUCKETS_S,
)
# Gauges say how to combine worker processes when GATEWAY_WORKERS > 1 (prometheus-client's
# multiprocess mode; ignored with one process).
IN_FLIGHT = Gauge(
    "parlance_gateway_requests_in_flight",
    "Chat completion requests being served now.",
    multiprocess_mode="livesum",
)
TTFT = Histogram(
    "parlance_gateway_time_to_first_token_seconds",
    "Time from request to the first content token sent to the client.",
    ["model"],
    buckets=LATENCY_BUCKETS_S,
)
TPOT = Histogram(
    "parlance_gateway_time_per_output_token_seconds",
    "Mean time between output tokens after the first, per request.",
    ["model"],
    buckets=TOKEN_LATENCY_BUCKETS_S,
)
TOKENS = Counter(
    "parlance_gateway_tokens_total",
    "Tokens by direction (prompt, completion), model and API key id (never the key).",
    ["direction", "model", "key_id"],
)
CACHE = Counter(
    "parlance_gateway_cache_requests_total", "Response cache lookups by result.", ["result"]
)
RATE_LIMIT = Counter(
    "parlance_gateway_ratelimit_decisions_total",
    "Rate-limit decisions by limit and outcome (allowed, rejected).",
    ["limit", "outcome"],
)
LEASES_HELD = Gauge(
    "parlance_gateway_leases_held",
    "Concurrency leases this gateway holds now.",
    multiprocess_mode="livesum",
)
REDIS_LATENCY = Histogram(
    "parlance_gateway_redis_duration_seconds",
    "Latency of Redis operations (limits, leases, cache).",
    buckets=FAST_BUCKETS_S,
)
REDIS_ERRORS = Counter(
    "parlance_gateway_redis_errors_total", "Redis operations that failed (connection, timeout)."
)
RATE_LIMIT_ADJUSTMENTS_LOST = Counter(
    "parlance_gateway_ratelimit_adjustments_lost_total",
    "Charges or refunds of a reservation held in Redis that Redis did not confirm (down, or "
    "the reply lost: it may have run); never applied in the process instead.",
    ["limit"],
)
MODERATION_FLAGS = Counter(
    "parlance_gateway_moderation_flags_total",
    "Texts flagged by moderation, by direction and category.",
    ["direction", "category"],
)
INPUT_CARE = Counter(
    "parlance_gateway_input_care_total",
    "Requests answered with care (input flagged only in GATEWAY_INPUT_CARE_CATEGORIES), "
    "by flagged category.",
    ["category"],
)
MODERATION_WINDOWS = Counter(
    "parlance_gateway_moderation_windows_total",
    "Windows of generated text held back and sent to output moderation.",
)
MODERATION_HOLDBACK = Histogram(
    "parlance_gateway_moderation_holdback_seconds",
    "Time generated text was held back before release (classification wait included).",
    buckets=FAST_BUCKETS_S,
)
DEPENDENCY_LATENCY = Histogram(
    "parlance_gateway_dependency_duration_seconds",
    "Latency of unary calls to dependencies.",
    ["dependency"],
    buckets=FAST_BUCKETS_S,
)
DEPENDENCY_ERRORS = Counter(
    "parlance_gateway_dependency_errors_total",
    "Failed calls to dependencies by gRPC status code.",
    ["dependency", "code"],
)
REDIS_FALLBACK = Gauge(
    "parlance_gateway_redis_fallback_active",
    "1 while Redis is unreachable and per-process fallbacks are in use.",
    multiprocess_mode="livemax",
)
HISTORY_OUTBOX_DEPTH = Gauge(
    "parlance_gateway_history_outbox_depth",
    "Exchanges waiting to be written to history (the outbox file is shared by the workers).",
    multiprocess_mode="livemax",
)
HISTORY_OUTBOX_DEAD = Counter(
    "parlance_gateway_history_outbox_dead_letters_total",
    "Exchanges history refused as invalid, kept in the outbox's dead-letter table.",
)
CONTEXT_TRIMMED = Counter(
    "parlance_gateway_context_trimmed_messages_total",
    "Stored conversation messages left out of the context to fit the model's window.",
    ["model"],
)
TITLES = Counter(
    "parlance_gateway_titles_total",
    "Background conversation titles by outcome (set, renamed: the user's title kept, flagged, "
    "empty, failed, cancelled).",
    ["outcome"],
)
GENERATOR_CALLS = Counter(
    "parlance_gateway_generator_calls_total",
    "Calls routed to each generator target, by method (generate, count_tokens, embed).",
    ["target", "method"],
)
GENERATOR_TARGET_UP = Gauge(
    "parlance_gateway_generator_target_up",
    "1 while a generator target is SERVING and in the routing table.",
    ["target"],
    multiprocess_mode="livemax",
)
EMBEDDINGS = Counter(
    "parlance_gateway_embeddings_inputs_total",
    "Inputs embedded through /v1/embeddings, by model and whether the cache answered.",
    ["model", "cache"],
)
AUTH_FAILURES = Counter(
    "parlance_gateway_auth_failures_total",
    "API requests refused before their body was read: rejected (401: no or unknown key) or "
    "throttled (429: too many failures from the client's address).",
    ["outcome"],
)
# Intent routing (intents/): the route each classified message took, fallbacks to the default
# route, and what classification costs (the embedding call and the match).
INTENT_REQUESTS = Counter(
    "parlance_gateway_intent_requests_total",
    "Classified user messages by intent and the model its route sends them to ('' = none).",
    ["intent", "model"],
)
INTENT_FALLBACKS = Counter(
    "parlance_gateway_intent_fallbacks_total",
    "Messages that matched no intent above the threshold and took the default route.",
)
INTENT_LATENCY = Histogram(
    "parlance_gateway_intent_classification_seconds",
    "Time to classify one message: embedding the message (and its context) and matching.",
    buckets=FAST_BUCKETS_S,
)
INPUT_PRECHECK = Counter(
    "parlance_gateway_input_precheck_total",
    "Chat inputs judged by the gateway's copy of safety's classifier (input_precheck.py), by "
    "outcome: passed (generation started beside safety's verdict), flagged (it waited for the "
    "verdict), disagreed (safety's verdict differed: the copy is taken again).",
    ["outcome"],
)
INPUT_PRECHECK_LOCAL = Gauge(
    "parlance_gateway_input_precheck_local",
    "1 when the gateway holds a checked copy of safety's classifier for the input pre-check.",
    multiprocess_mode="livemin",
)
INTENT_ENCODER_LOCAL = Gauge(
    "parlance_gateway_intent_encoder_local",
    "1 when the intent router's embedding model runs in the gateway (a checked copy of the "
    "generator's exported graph), 0 when each message is embedded by the generator.",
    # With several workers: 0 if any live worker embeds through the generator.
    multiprocess_mode="livemin",
)
INTENT_RELOADS = Counter(
    "parlance_gateway_intent_route_reloads_total",
    "Route file reloads by outcome (ok, error: the previous routes stay in force).",
    ["outcome"],
)
INTENT_REASKS = Counter(
    "parlance_gateway_intent_reasks_total",
    "Stored user messages compared with the previous user message of their conversation, by "
    "outcome (reask: recorded as implicit feedback on the answer between them; not_reask; "
    "error: the comparison or the write failed).",
    ["outcome"],
)
# Comparisons (chat/compare.py): two answers shown side by side, and the user's picks.
COMPARISONS_SHOWN = Counter(
    "parlance_gateway_comparisons_shown_total",
    "Comparisons whose two answers were both shown to the end, by why the request got one "
    "(asked: the user did; share: GATEWAY_COMPARE_SHARE).",
    ["reason"],
)
COMPARISONS_WITHHELD = Counter(
    "parlance_gateway_comparison_candidates_withheld_total",
    "Comparison answers withheld because output moderation flagged them (the other answer "
    "was shown alone).",
)
COMPARISONS_ANSWERED = Counter(
    "parlance_gateway_comparisons_answered_total",
    "Comparisons the user answered (POST /v1/conversations/{id}/comparisons).",
)
# The model registry (model_registry.py): run-time registrations, splits, rollbacks.
MODEL_REGISTRATIONS = Counter(
    "parlance_gateway_model_registrations_total",
    "Admin model registrations by action (register, remove, reapply: loaded again on a "
    "generator target that lacked it) and outcome (ok, rejected, failed).",
    ["action", "outcome"],
)
MODELS_REGISTERED = Gauge(
    "parlance_gateway_models_registered",
    "Models registered through the admin API (as this process last read them from Redis).",
    multiprocess_mode="livemax",
)
SPLIT_CHOICES = Counter(
    "parlance_gateway_split_choices_total",
    "Requests for a split alias (several models with weights), by alias and the model chosen.",
    ["alias", "model"],
)
SPLIT_ROLLBACKS = Counter(
    "parlance_gateway_split_rollbacks_total",
    "Split aliases whose adapter the rollback rule took out (its weight given to its parent).",
    ["alias", "model"],
)
# Best-of-n (chat/best_of.py): the chosen candidate's reward score and index.
REWARD_SCORE = Histogram(
    "parlance_gateway_reward_score",
    "Reward score of the candidate a best_of request returned, by reward model (the scale is "
    "the model's own: compare scores of one model only).",
    ["reward_model"],
    buckets=(-8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
)
BEST_OF_CHOSEN = Counter(
    "parlance_gateway_best_of_chosen_total",
    "best_of requests by candidates generated (n) and the index of the one returned "
    "(index 'none': every candidate was flagged by output moderation).",
    ["n", "index"],
)
