"""The safety service's settings (env prefix SAFETY_); built in main(), never at import."""

from __future__ import annotations

from parlance.common.config import ServiceSettings
from parlance.safety.categories import OPENAI_CATEGORIES
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict


class SafetySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SAFETY_", extra="ignore")

    port: int = 50052
    metrics_port: int = 9102
    # Which backend runs: "profanity" (embedded, ships its model); "detoxify" comes next.
    classifier: str = "profanity"
    # Threshold for every category and direction; None takes the classifier's measured default.
    # A score >= threshold flags; a threshold above 1 switches a category off.
    threshold: float | None = Field(default=None, ge=0.0)
    # Per-category overrides per direction, as JSON maps in the environment:
    # SAFETY_OUTPUT_THRESHOLDS='{"harassment": 0.5}'.
    input_thresholds: dict[str, float] = Field(default_factory=dict)
    output_thresholds: dict[str, float] = Field(default_factory=dict)
    # Request limits; the gateway's own input caps sit well below these.
    max_batch_size: int = Field(default=256, ge=1)
    max_text_chars: int = Field(default=32_768, ge=1)

    @field_validator("input_thresholds", "output_thresholds")
    @classmethod
    def _known_categories(cls, value: dict[str, float]) -> dict[str, float]:
        for category, threshold in value.items():
            if category not in OPENAI_CATEGORIES:
                raise ValueError(f"{category!r} is not an OpenAI moderation category")
            if threshold < 0:
                raise ValueError(f"threshold for {category!r} must be >= 0, got {threshold}")
        return value
