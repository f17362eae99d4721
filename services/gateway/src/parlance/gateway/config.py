"""Gateway settings (env prefix GATEWAY_; REDIS_URL is accepted too)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_format: str = "text"

    # gRPC targets of the other services.
    generator_url: str = "127.0.0.1:50051"
    safety_url: str = "127.0.0.1:50052"
    history_url: str = "127.0.0.1:50053"
    # Empty string: no Redis (per-process limits, cache off), with a warning.
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("GATEWAY_REDIS_URL", "REDIS_URL"),
    )

    # API keys: comma-separated "user_id:key" pairs. Only their SHA-256 digests are kept in
    # memory; the durable, managed key store replaces this source.
    api_keys: str = ""

    # Deadlines (seconds) for gRPC calls; generation has its own, longer one.
    safety_timeout_s: float = 5.0
    history_timeout_s: float = 5.0
    generator_timeout_s: float = 600.0
    # Seconds a client should wait before retrying after a 503.
    retry_after_s: int = 5

    # Input limits.
    max_request_bytes: int = 1_000_000
    max_messages: int = 512
    max_input_chars: int = 200_000
    max_tokens_limit: int = 4096
    max_n: int = 8

    # Requests per minute per key (0: unlimited).
    rpm_limit: int = 600
    # In-flight requests per gateway process (protects the process, not fairness).
    max_concurrent_requests: int = 256

    # Exact-match response cache for deterministic requests.
    cache_enabled: bool = True
    cache_ttl_s: int = 3600
    cache_max_bytes: int = 1_000_000

    # Moderation: check input before generation (fail closed when safety is down).
    moderate_input: bool = True
    # Log message text (debugging only).
    log_content: bool = False
