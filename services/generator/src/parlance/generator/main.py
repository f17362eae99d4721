"""The generator's entry point: settings, engine, gRPC host."""

from __future__ import annotations

import asyncio
import logging

import grpc

from parlance.common import tracing
from parlance.common.grpc_server import GrpcServiceHost
from parlance.common.logging import configure_logging
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.base import Engine
from parlance.generator.servicer import GeneratorServicer
from parlance.generator.serving import GeneratorServing
from parlance.generator.v1 import generator_pb2, generator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


def build_engine(settings: GeneratorSettings) -> Engine:
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


def create_host(
    settings: GeneratorSettings, engine: Engine | None = None
) -> tuple[GrpcServiceHost, GeneratorServing]:
    """The gRPC host around an engine (built from settings unless given, as tests do)."""
    serving = GeneratorServing(engine or build_engine(settings), settings.served_model_name)

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
    on_dead = getattr(serving.engine, "on_dead", None)
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
