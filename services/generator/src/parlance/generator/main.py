"""The generator's entry point: settings, engine, gRPC host."""

from __future__ import annotations

import asyncio
import logging

import grpc

from parlance.common import tracing
from parlance.common.grpc_server import GrpcServiceHost
from parlance.common.logging import configure_logging
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.base import EmbeddingEngine, Engine
from parlance.generator.models import model_specs, settings_for
from parlance.generator.servicer import GeneratorServicer
from parlance.generator.serving import AnyEngine, GeneratorServing
from parlance.generator.v1 import generator_pb2, generator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


def build_embedding_engine(settings: GeneratorSettings) -> EmbeddingEngine:
    # Imported lazily: torch and transformers take seconds to import, and a chat-only
    # generator never needs them.
    from parlance.generator.engine.transformers_embed import TransformersEmbeddingEngine

    return TransformersEmbeddingEngine(
        served_model_name=settings.served_model_name,
        model_path=settings.model_path,
        max_model_len=settings.max_model_len,
        max_batch_size=settings.embed_max_batch_size,
        max_wait_s=settings.embed_max_wait_ms / 1000,
        max_inputs=settings.embed_max_inputs,
        n_threads=settings.embed_n_threads,
    )


def build_engine(settings: GeneratorSettings) -> Engine:
    """The chat engine of one model's settings."""
    if settings.engine == "llamacpp":
        from parlance.generator.engine.llamacpp import LlamaCppEngine

        return LlamaCppEngine(
            served_model_name=settings.served_model_name,
            model_path=settings.model_path,
            n_ctx=settings.n_ctx,
            pool_size=settings.pool_size,
            n_threads=settings.n_threads,
            n_batch=settings.n_batch,
        )
    if settings.engine == "scripted":
        from parlance.generator.engine.scripted import ScriptedEngine

        return ScriptedEngine(
            served_model_name=settings.served_model_name,
            text=settings.scripted_text,
            tokens_per_s=settings.scripted_tokens_per_s,
            max_model_len=settings.n_ctx,
        )
    # vLLM is imported lazily: it is an optional extra of the GPU image and slow to import.
    # Hook: parlance.generator.engine.vllm.VllmEngine.from_settings(settings) -> Engine.
    try:
        from parlance.generator.engine.vllm import VllmEngine  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(
            "GENERATOR_ENGINE=vllm needs parlance.generator.engine.vllm and the `vllm` extra "
            "(pip install 'parlance-generator[vllm]')"
        ) from exc
    engine: Engine = VllmEngine.from_settings(settings)
    return engine


def build_models(settings: GeneratorSettings) -> list[tuple[str, AnyEngine]]:
    """Every model of GENERATOR_MODELS (or the one of the short form) with its engine."""
    models: list[tuple[str, AnyEngine]] = []
    for spec in model_specs(settings):
        own = settings_for(spec, settings)
        engine: AnyEngine = (
            build_embedding_engine(own) if spec.task == "embed" else build_engine(own)
        )
        models.append((spec.id, engine))
    return models


def create_host(
    settings: GeneratorSettings,
    engine: Engine | None = None,
    models: list[tuple[str, AnyEngine]] | None = None,
) -> tuple[GrpcServiceHost, GeneratorServing]:
    """The gRPC host around the models of the settings, or around given engines, as tests do
    (`engine`: one chat model named by settings.served_model_name; `models`: several)."""
    if models is None:
        models = (
            [(settings.served_model_name, engine)] if engine is not None else build_models(settings)
        )
    serving = GeneratorServing(models)

    def add_servicers(server: grpc.aio.Server) -> list[str]:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(
            GeneratorServicer(serving), server
        )
        return [SERVICE_NAME]

    host = GrpcServiceHost(
        "generator", settings, add_servicers, startup=serving.start, shutdown=serving.close
    )
    # An engine that can die under the service (vLLM's engine core process) says so, and health
    # turns NOT_SERVING so that the gateway answers 503 and orchestrators restart the service.
    for hosted in serving.models.values():
        on_dead = getattr(hosted, "on_dead", None)
        if on_dead is not None:
            on_dead(lambda: host.set_serving(False))
    return host, serving


async def serve(settings: GeneratorSettings) -> None:
    # The grpc.aio server binds to the running loop, so the host is built inside it.
    host, _ = create_host(settings)
    await host.run_until_signal()


def main() -> None:
    settings = GeneratorSettings()
    configure_logging("generator", settings.log_level, settings.log_format)
    tracing.setup("generator")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
