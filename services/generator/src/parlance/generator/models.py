"""The models one generator process hosts: GENERATOR_MODELS (a JSON list, or the path of a JSON
file holding one), or the single-model settings (the short form).

    GENERATOR_MODELS='[
      {"id": "SmolLM2-135M-Instruct", "engine": "llamacpp", "settings": {"pool_size": 2}},
      {"id": "all-MiniLM-L6-v2", "engine": "transformers", "task": "embed"},
      {"id": "reward-x@1a2b3c4d", "engine": "transformers", "task": "reward",
       "path": "/models/reward-x@1a2b3c4d"}
    ]'

Each entry becomes the service's settings with the entry's own on top, so every engine is
built by the same code whatever the form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from parlance.generator.config import GeneratorSettings

EngineName = Literal["llamacpp", "scripted", "vllm", "transformers"]
TaskName = Literal["chat", "embed", "reward"]

# The tasks each engine can serve (the first is its default). vLLM embeds through its pooling
# runner (engine/vllm_embed.py).
ENGINE_TASKS: dict[str, tuple[str, ...]] = {
    "llamacpp": ("chat",),
    "scripted": ("chat",),
    "vllm": ("chat", "embed"),
    "transformers": ("embed", "reward"),
}

# The id of the default embedding model (the short form with engine "transformers").
DEFAULT_EMBED_MODEL_ID = "all-MiniLM-L6-v2"

# Settings that belong to the process, not to one model.
_PROCESS_SETTINGS = {
    "host",
    "port",
    "metrics_port",
    "port_file",
    "log_level",
    "log_format",
    "shutdown_grace_s",
    "models",
    "event_loop",
    "engine",
    "served_model_name",
    "load_root",
}


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    engine: EngineName
    # Unset: the engine's only task.
    task: TaskName | None = None
    # llamacpp: a GGUF file; vllm: an HF id or folder; transformers: an HF folder. Unset: the
    # engine's default model.
    path: str | None = None
    # Any generator setting (n_ctx, pool_size, dtype, embed_max_batch_size, ...) for this model.
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        tasks = ENGINE_TASKS[self.engine]
        if self.task is None:
            self.task = tasks[0]  # type: ignore[assignment]
        elif self.task not in tasks:
            raise ValueError(
                f"engine {self.engine!r} cannot serve task {self.task!r} (it serves "
                f"{', '.join(tasks)})"
            )
        if self.task == "embed" and self.engine == "vllm" and not self.path:
            raise ValueError(
                f"model {self.id!r}: a vLLM embedding model needs its HF id or folder as path"
            )
        if self.task == "reward" and not self.path:
            raise ValueError(
                f"model {self.id!r}: a reward model needs its folder as path (parlance-train's "
                "output)"
            )
        unknown = sorted(
            k for k in self.settings if k not in GeneratorSettings.model_fields
        ) + sorted(k for k in self.settings if k in _PROCESS_SETTINGS)
        if unknown:
            raise ValueError(
                f"model {self.id!r}: settings {unknown} are not per-model generator settings"
            )
        return self


class ModelsConfigError(ValueError):
    """GENERATOR_MODELS is not a valid list of models (the message says where)."""


def _read_list(raw: str) -> Any:
    text = raw.strip()
    source = "GENERATOR_MODELS"
    if not text.startswith("["):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ModelsConfigError(
                f"GENERATOR_MODELS is neither a JSON list nor a readable file: {exc}"
            ) from None
        source = str(path)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ModelsConfigError(f"{source} is not valid JSON: {exc}") from None


def model_specs(settings: GeneratorSettings) -> list[ModelSpec]:
    """The models to host, in order (the first chat model is the default for calls that name
    none). ModelsConfigError for a list that is malformed, empty, or names an id twice."""
    if not settings.models:
        named = "served_model_name" in settings.model_fields_set
        return [
            ModelSpec(
                # The default id names the default chat model; an embed model has its own.
                id=settings.served_model_name
                if named or settings.engine != "transformers"
                else DEFAULT_EMBED_MODEL_ID,
                engine=settings.engine,
                path=settings.model if settings.engine == "vllm" else settings.model_path,
            )
        ]
    entries = _read_list(settings.models)
    if not isinstance(entries, list) or not entries:
        raise ModelsConfigError("GENERATOR_MODELS must be a non-empty JSON list of models")
    specs = []
    for index, entry in enumerate(entries):
        try:
            specs.append(ModelSpec.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise ModelsConfigError(f"GENERATOR_MODELS[{index}]: {problems}") from None
    ids = [s.id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ModelsConfigError(f"GENERATOR_MODELS names these ids more than once: {duplicates}")
    return specs


def settings_for(spec: ModelSpec, base: GeneratorSettings) -> GeneratorSettings:
    """The settings one model's engine is built from: the service's, then the entry's."""
    values = base.model_dump()
    values.update(spec.settings)
    values.update(engine=spec.engine, served_model_name=spec.id, models=None)
    if spec.path is not None:
        values["model" if spec.engine == "vllm" else "model_path"] = spec.path
    try:
        # model_validate checks the values without reading the environment again.
        return GeneratorSettings.model_validate(values)
    except ValidationError as exc:
        raise ModelsConfigError(f"model {spec.id!r}: {exc}") from None
