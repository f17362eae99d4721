"""The generator's entry point: settings, engine, gRPC host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from parlance.common import tracing
from parlance.common.grpc_server import GrpcServiceHost
from parlance.common.logging import configure_logging
from parlance.generator.config import GeneratorSettings
from parlance.generator.engine.base import EmbeddingEngine, Engine, RewardEngine
from parlance.generator.models import ModelsConfigError, ModelSpec, model_specs, settings_for
from parlance.generator.servicer import GeneratorServicer
from parlance.generator.serving import AnyEngine, EngineBuilder, GeneratorServing
from parlance.generator.v1 import generator_pb2, generator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


def build_embedding_engine(settings: GeneratorSettings) -> EmbeddingEngine:
    if settings.engine == "vllm":
        if settings.embed_deltas:
            raise ModelsConfigError(
                f"model {settings.served_model_name!r}: embed_deltas is merged by the "
                "transformers engine only"
            )
        # The GPU path: vLLM's pooling runner (imported lazily, like the chat engine).
        from parlance.generator.engine.vllm_embed import VllmEmbeddingEngine

        return VllmEmbeddingEngine.from_settings(settings)
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
        device=settings.torch_device,
        dtype=settings.embed_dtype,
        pooling=settings.embed_pooling,
        deltas=settings.embed_deltas,
        runtime=settings.embed_runtime,
        onnx_cache=settings.embed_onnx_cache or None,
    )


def build_reward_engine(settings: GeneratorSettings) -> RewardEngine:
    from parlance.generator.engine.reward import TransformersRewardEngine

    if not settings.model_path:
        raise ModelsConfigError(f"reward model {settings.served_model_name!r} needs its path")
    return TransformersRewardEngine(
        served_model_name=settings.served_model_name,
        model_path=settings.model_path,
        max_model_len=settings.max_model_len,
        max_batch_size=settings.reward_max_batch_size,
        max_wait_s=settings.reward_max_wait_ms / 1000,
        max_candidates=settings.reward_max_candidates,
        max_chars=settings.reward_max_chars,
        # torch's threads are per process: the embedding engine's setting holds for both.
        n_threads=settings.embed_n_threads,
        device=settings.torch_device,
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
        from parlance.generator.engine.vllm import VllmEngine
    except ImportError as exc:
        raise RuntimeError(
            "GENERATOR_ENGINE=vllm needs parlance.generator.engine.vllm and the `vllm` extra "
            "(pip install 'parlance-generator[vllm]')"
        ) from exc
    engine: Engine = VllmEngine.from_settings(settings)
    return engine


def build_models(settings: GeneratorSettings) -> list[tuple[str, AnyEngine]]:
    """Every model of GENERATOR_MODELS (or the one of the short form) with its engine."""
    return [(spec.id, build_model(spec, settings)) for spec in model_specs(settings)]


def build_model(spec: ModelSpec, settings: GeneratorSettings) -> AnyEngine:
    """The engine (not started) of one model of the list."""
    own = settings_for(spec, settings)
    if spec.task == "embed":
        return build_embedding_engine(own)
    if spec.task == "reward":
        return build_reward_engine(own)
    return build_engine(own)


def runtime_builder(settings: GeneratorSettings) -> EngineBuilder:
    """What LoadModel builds engines with: a GENERATOR_MODELS entry on the service's settings.
    ValueError (ModelsConfigError, pydantic's) for an entry that does not validate."""

    def build(model_id: str, task: str, path: str, values: dict[str, str]) -> AnyEngine:
        spec = ModelSpec.model_validate(
            {
                "id": model_id,
                "engine": "transformers",
                "task": task,
                "path": path,
                "settings": values,
            }
        )
        return build_model(spec, settings)

    return build


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
    serving = GeneratorServing(
        models, build=runtime_builder(settings), load_root=settings.load_root
    )

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


def loop_factory(settings: GeneratorSettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the service runs on (None: asyncio's own). With vLLM this one loop runs
    the gRPC server, every call's stream and vLLM's output handler, as `vllm serve` runs its
    HTTP server and output handler, on uvloop."""
    choice = settings.event_loop
    if choice == "auto":
        try:
            uses_vllm = any(spec.engine == "vllm" for spec in model_specs(settings))
        except ValueError:  # a bad list: create_host reports it, on whichever loop
            uses_vllm = False
        choice = "uvloop" if uses_vllm else "asyncio"
    if choice == "asyncio":
        return None
    import uvloop  # a dependency of vLLM, and of the gateway's uvicorn

    return uvloop.new_event_loop


def main() -> None:
    settings = GeneratorSettings()
    configure_logging("generator", settings.log_level, settings.log_format)
    tracing.setup("generator")
    factory = loop_factory(settings)
    log.info("event loop", extra={"event_loop": "asyncio" if factory is None else "uvloop"})
    # asyncio.Runner: asyncio.run takes a loop_factory only from Python 3.12.
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
