"""The history service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from parlance.common.metrics import FAST_BUCKETS_S

RPC_LATENCY = Histogram(
    "parlance_history_rpc_duration_seconds",
    "Time to answer a history RPC, by method and gRPC status code.",
    ["method", "code"],
    buckets=FAST_BUCKETS_S,
)
DATABASE_ERRORS = Counter(
    "parlance_history_database_errors_total",
    "Database errors (connection, timeout, unexpected constraint), by operation.",
    ["operation", "kind"],
)
MESSAGES_APPENDED = Counter(
    "parlance_history_messages_appended_total",
    "Messages written by AppendMessages (idempotent replays not counted), by role.",
    ["role"],
)
EXPORT_RECORDS = Counter(
    "parlance_history_export_records_total",
    "Training records (SFT and preference) streamed by ExportTrainingData.",
)
COMPARISONS_RECORDED = Counter(
    "parlance_history_comparisons_recorded_total",
    "Picks stored by RecordComparison (a changed or repeated pick of a pair counts again).",
)
