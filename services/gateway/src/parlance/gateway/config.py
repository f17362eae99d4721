"""Gateway settings (env prefix GATEWAY_; REDIS_URL is accepted too)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parlance.gateway.splits import SplitError, parse_aliases

# The categories input moderation may answer with care (input_care_categories): the care
# prompt speaks to a person who may be at risk of harming themselves, nothing else.
CARE_CATEGORIES = ("self-harm", "self-harm/intent", "self-harm/instructions")
# What the model is told when input moderation answers a message with care (input_care_*).
DEFAULT_CARE_PROMPT = (
    "The user's message may touch on self-harm or suicide. Answer with warmth and without "
    "judgement. If they may be at risk, encourage them to reach out now to someone they trust, "
    "a local crisis line or emergency services. Never give methods or encouragement for "
    "self-harm. If it is an everyday question (health, diet, first aid, medicine), answer it "
    "helpfully and safely."
)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # Worker processes (each with its own event loop) behind the one port.
    workers: int = 1
    log_level: str = "INFO"
    log_format: str = "text"
    # On SIGTERM: stop accepting, let requests in flight (streams too) finish for this long.
    shutdown_grace_s: float = 30.0

    # gRPC targets of the other services. The generator: one target or several, separated by
    # commas (or a JSON list); each one's models join the routing table, and targets serving
    # the same model share its calls (README, "Several models and replicas").
    generator_url: str = "127.0.0.1:50051"
    # How a chat call picks among the replicas serving its model: "least_in_flight" (fewest
    # calls in flight, ties in turn) or "affinity" (the turns of one conversation on one
    # replica, for its prefix cache, unless that replica is over its share of the load by more
    # than generator_affinity_load_factor; routing.py explains the rule).
    generator_routing: Literal["least_in_flight", "affinity"] = "least_in_flight"
    generator_affinity_load_factor: float = Field(default=0.25, ge=0.0, le=10.0)
    # "grpc": each entry of generator_url is one target (gRPC balances the addresses of a
    # dns:/// name on its own); "dns": the gateway resolves each entry every
    # generator_refresh_s and every address is a target of its own (clients/targets.py), so
    # that affinity and least-in-flight see each replica (a Kubernetes headless Service).
    generator_discovery: Literal["grpc", "dns"] = "grpc"
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
    # The admin key (GATEWAY_ADMIN_KEY) for admin routes such as the training-data export;
    # empty switches them off. It is not a user key and gives no access to users' routes.
    admin_key: str = ""

    # Exchanges history cannot take now wait in this SQLite file (shared by the workers; a
    # volume in compose) and are written once it is back. Past either bound, new requests
    # that would be stored get 503 until it drains; nothing queued is dropped.
    outbox_path: str = ".data/gateway-outbox.db"
    outbox_max_items: int = 10_000
    outbox_max_bytes: int = 256 * 1024 * 1024
    # One user's waiting exchanges past this refuse only that user's stored requests (503).
    outbox_max_items_per_user: int = 1_000
    # An exchange is dead-lettered (kept for an operator, never retried) after this many
    # failed writes while history took others, or once it waited this long.
    outbox_max_attempts: int = 20
    outbox_max_age_s: float = 7 * 24 * 3600.0
    # Dead letters kept (the oldest go first); a user's are deleted with the conversation.
    outbox_max_dead: int = 10_000

    # Deadlines (seconds) for gRPC calls; generation has its own, longer one.
    safety_timeout_s: float = 5.0
    history_timeout_s: float = 5.0
    generator_timeout_s: float = 600.0
    # Longest silence between two messages of a generation that has started (the time spent
    # waiting on the generator: a client reading slowly does not count).
    generator_idle_timeout_s: float = 120.0
    # HTTP/2 keepalive pings on every gRPC channel while calls are open: a dependency that
    # stops answering them (frozen, or its host unreachable) fails its calls after
    # interval + timeout.
    grpc_keepalive_s: float = 10.0
    grpc_keepalive_timeout_s: float = 5.0
    # A training-data export streams for as long as it takes, within this deadline.
    history_export_timeout_s: float = 3600.0
    # Seconds a client should wait before retrying after a 503.
    retry_after_s: int = 5

    # Input limits. The body limit of chat and moderation requests; the conversation routes
    # (a title, feedback) and the admin routes (small JSON) have smaller ones.
    max_request_bytes: int = 1_000_000
    max_conversation_request_bytes: int = 512 * 1024
    max_admin_request_bytes: int = 64 * 1024
    # Failed authentications per client address and minute before it gets 429 (0: no limit).
    auth_failures_per_minute: int = 30
    # Requests per minute per key to the /v1/conversations routes (0: unlimited).
    conversations_rpm_limit: int = 600
    max_messages: int = 512
    max_input_chars: int = 200_000
    max_tokens_limit: int = 4096
    # The answer's length when a request sets no max_tokens (0: as OpenAI, up to the key's
    # limit and the window). A request that sets one gets it, within the limit. It does not
    # change how much of a stored conversation is kept (context_completion_reserve does).
    default_max_tokens: int = Field(default=0, ge=0)
    max_n: int = 8
    # best_of (chat/best_of.py): the most candidates one request may ask for (below 2: off),
    # and the reward model that scores them (an id the generators list; empty: the newest
    # model with task reward that a generator serves).
    max_best_of: int = Field(default=4, ge=0)
    reward_model: str = ""
    # Users (comma-separated ids) whose keys may send ignore_eos (vLLM's benchmark extension,
    # which makes every answer max_tokens long): benchmark users; nobody by default.
    ignore_eos_users: str = ""
    # The share (0 to 1) of the requests that offer a comparison (the web page sends
    # "parlance": {"compare": "offer"}) that get two answers side by side (chat/compare.py).
    # API clients that do not offer one never get one.
    compare_share: float = Field(default=0.1, ge=0.0, le=1.0)

    # Defaults of the per-key limits (a managed key may set its own). 0: unlimited.
    # Requests per minute per key.
    rpm_limit: int = 600
    # Tokens per minute per key: prompt + completion, reserved from an estimate before
    # generation (completion estimated as max_tokens, or the value below when unset) and
    # reconciled with the real usage afterwards.
    tpm_limit: int = 200_000
    tpm_completion_estimate: int = 256
    # In-flight requests per key, held as leases in Redis (expire after lease_ttl_s without
    # a heartbeat, e.g. when a gateway crashes).
    max_concurrent_per_key: int = 16
    lease_ttl_s: float = 30.0
    # When Redis is unreachable: "local" (per-process limits), "open" (no limit) or "closed"
    # (503). The cache is simply off.
    ratelimit_on_redis_down: Literal["local", "open", "closed"] = "local"
    leases_on_redis_down: Literal["local", "open", "closed"] = "local"

    # The managed API-key store (SQL, shared by all replicas) and its lookup cache, which
    # bounds how long a revoked key keeps working on other replicas.
    database_url: str = "sqlite+aiosqlite:///.data/gateway.db"
    key_cache_ttl_s: float = 5.0
    # In-flight requests per gateway process (protects the process, not fairness).
    max_concurrent_requests: int = 256

    # The generator targets' model listings are re-read this often (and whenever a target's
    # health turns SERVING).
    generator_refresh_s: float = Field(default=30.0, gt=0)
    # Other names for models, as a JSON object: {"default": "SmolLM2-135M-Instruct"}. Listed
    # by /v1/models before the models. Without an entry for it, "default" still names the
    # first chat model (for chat) or embedding model (for embeddings) the targets list. A
    # traffic split names several models with weights: {"default": {"base": 90, "tuned": 10}}
    # (each user always gets the same one: README, "Registering models and splitting traffic").
    model_aliases: dict[str, str | dict[str, float]] = Field(default_factory=dict)
    # Models registered and aliases set through the admin API are kept in Redis under this
    # prefix, and re-read from it this often (so every gateway replica follows them).
    registry_redis_prefix: str = "parlance:registry"
    registry_sync_s: float = Field(default=5.0, gt=0)
    # The rollback rule of split aliases (0: off): checked this often, over this many days of
    # feedback; an adapter whose thumbs-up rate's upper bound is below its parent's lower
    # bound by more than the margin, both with at least the minimum of rated answers, gets
    # weight 0 and its share goes to its parent.
    rollback_check_s: float = Field(default=0.0, ge=0)
    rollback_window_days: float = Field(default=7.0, gt=0)
    rollback_min_rated: int = Field(default=100, ge=1)
    rollback_margin: float = Field(default=0.0, ge=0, le=1)

    # /v1/embeddings: inputs per request, and characters per input and per request (the
    # token limit per input is the model's, checked by the generator).
    embeddings_max_inputs: int = Field(default=2048, ge=1)
    embeddings_max_input_chars: int = Field(default=50_000, ge=1)
    embeddings_max_total_chars: int = Field(default=1_000_000, ge=1)

    # Exact-match response cache for deterministic requests.
    cache_enabled: bool = True
    cache_ttl_s: int = 3600
    cache_max_bytes: int = 1_000_000

    # Stored conversations are trimmed (oldest messages first) to fit the model's window,
    # leaving max_tokens for the answer, or this many tokens (at most a quarter of the window)
    # when the request sets none.
    context_completion_reserve: int = 512
    # A short title written by the model for conversations created by `store: true`.
    generate_titles: bool = True

    # Moderation: check input before generation and output while it streams (both fail
    # closed when safety is down).
    moderate_input: bool = True
    moderate_output: bool = True
    # The input pre-check (input_precheck.py): a copy of safety's classifier in this process
    # judges a chat's input first, and when it passes, generation starts beside safety's
    # round trip instead of after it (~3 ms less to the first token); safety's own verdict
    # still comes before anything is sent. Only for a classifier safety can export
    # (profanity-check); with the others every input waits for safety, as with this off.
    input_precheck: bool = True
    # Output is held back in windows, each classified (with the window before it, for
    # context) before it is released: the first closes at a word boundary past `first`
    # characters, the others at a sentence end past `min` characters, or at `max` characters.
    moderation_first_window_chars: int = 16
    moderation_window_min_chars: int = 8
    moderation_window_max_chars: int = 160
    # The first complete words go on their own (a lead window) once the first window has
    # waited this long for its text (moderation.py): the first token then waits for about one
    # word and one classification, not for the whole first window. 0 (the default): at once,
    # on any engine; on an H200 the first window took ~5 ms more to fill at 10 ms
    # (bench/results/gpu_duel.md), on llama.cpp tens of ms.
    moderation_lead_after_ms: float = Field(default=0.0, ge=0)
    # Input flagged only in these categories (the self-harm family) is answered with care
    # instead of refused (moderation.judge_input): input_care_prompt goes into the context the
    # model sees (never stored), the answer is never cached, and the rest of the conversation
    # keeps it. Off by default ([]): the embedded classifiers score requests for methods as
    # plain self-harm, so with care on they are generated, and output moderation did not flag
    # method-style answers (bench/results/safety_fresh_11.md). Turn it on only with a served
    # model that reliably refuses self-harm methods: a person at risk then gets a caring
    # answer instead of an error, and an ordinary question that scores as self-harm (diets,
    # doses, first aid) an answer.
    input_care_categories: list[str] = Field(default_factory=list)
    input_care_prompt: str = DEFAULT_CARE_PROMPT
    # Intent routing (README, "Intent routing"): the route file (YAML or JSON; empty: off),
    # checked for changes at most this often and reloaded when it changed (a bad new file
    # is refused with a log line and the previous routes stay), and the embedding model that
    # classifies ("" or "default": the first embedding model the generators list).
    intent_routes: str = ""
    intent_reload_check_s: float = Field(default=2.0, ge=0)
    intent_embed_model: str = ""
    # Run the routing model in the gateway (intents/local_encoder.py) when the generator serves
    # it from an exported ONNX graph: ~3 ms less per message than an Embed call. Threads of
    # its forward pass: 1 leaves the other cores to the engines beside it.
    intent_local_encoder: bool = True
    intent_local_threads: int = Field(default=1, ge=1, le=64)
    # Log message text (debugging only).
    log_content: bool = False

    # /docs and /redoc (Swagger UI and ReDoc load their scripts from a CDN, on the origin where
    # the web page keeps the API key): off by default; /openapi.json is always served.
    api_docs: bool = False
    # Prometheus /metrics on its own port (like the gRPC services' 9101-9103), never on the
    # public one: it shows every key id with its token usage. -1 switches it off.
    metrics_port: int = 9100
    # The secret that makes static keys' ids (in logs and metrics) opaque: HMAC-SHA256 of the
    # key under it. Empty: a random secret kept in key_id_file (0600), shared by the workers
    # on one host; set it (the same on every replica) so that ids agree across hosts.
    key_id_secret: str = ""
    key_id_file: str = ".data/gateway-key-id-secret"

    @field_validator("input_care_categories")
    @classmethod
    def _check_care_categories(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(CARE_CATEGORIES))
        if unknown:
            raise ValueError(
                f"categories {unknown} cannot be answered with care; "
                f"choose from {', '.join(CARE_CATEGORIES)}"
            )
        return value

    @field_validator("model_aliases")
    @classmethod
    def _check_splits(
        cls, value: dict[str, str | dict[str, float]]
    ) -> dict[str, str | dict[str, float]]:
        # A bad split stops the start-up naming the setting, like any other bad value.
        try:
            parse_aliases(value)
        except SplitError as exc:
            raise ValueError(str(exc)) from None
        return value
