"""GeneratorService over gRPC: converts messages and delegates to GeneratorServing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from parlance.common.request_id import new_request_id
from parlance.generator import convert
from parlance.generator.serving import GeneratorServing
from parlance.generator.v1 import generator_pb2 as pb
from parlance.generator.v1 import generator_pb2_grpc

# Well under the message size limits (gRPC's default 4 MiB; the services set 32 MiB).
GRAPH_CHUNK_BYTES = 1 << 20


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, serving: GeneratorServing) -> None:
        self._serving = serving

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        model = self._serving.chat_engine(request.model)[0]
        domain = convert.generation_request_from_proto(
            request, request.request_id or new_request_id()
        )
        try:
            async with aclosing(self._serving.generate(domain, model)) as steps:
                async for step in steps:
                    yield convert.step_to_proto(step, model)
        except asyncio.CancelledError:
            # The client went away (or the deadline passed): free the engine slot now.
            await self._serving.abort(domain.request_id)
            raise

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[convert.model_info_to_proto(m) for m in self._serving.list_models()]
        )

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        model, engine = self._serving.chat_engine(request.model)
        messages, prompt = convert.prompt_input_from_proto(request)
        count = await self._serving.count_tokens(messages=messages, prompt=prompt, model=model)
        return pb.CountTokensResponse(
            token_count=count, max_model_len=engine.model_info().max_model_len
        )

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        domain = convert.embedding_request_from_proto(
            request, request.request_id or new_request_id()
        )
        model, result = await self._serving.embed(request.model, domain)
        return convert.embedding_result_to_proto(result, model)

    async def ExportEncoder(
        self, request: pb.ExportEncoderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportEncoderChunk]:
        model, exported = self._serving.export_encoder(request.model)
        graph = exported.graph
        yield pb.ExportEncoderChunk(
            spec=pb.EncoderSpec(
                model=model,
                tokenizer_json=exported.tokenizer_json,
                prefix=exported.prefix,
                suffix=exported.suffix,
                max_model_len=exported.max_model_len,
                pad_token_id=exported.pad_token_id,
                dimensions=exported.dimensions,
                graph_bytes=len(graph),
                graph_sha256=exported.graph_sha256,
            )
        )
        view = memoryview(graph)
        for start in range(0, len(graph), GRAPH_CHUNK_BYTES):
            yield pb.ExportEncoderChunk(graph=bytes(view[start : start + GRAPH_CHUNK_BYTES]))

    async def Score(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreResponse:
        domain = convert.score_request_from_proto(request, request.request_id or new_request_id())
        model, result = await self._serving.score(request.model, domain)
        return convert.score_result_to_proto(result, model)

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        info = await self._serving.load_model(
            request.id,
            convert.task_from_proto(request.task),
            request.path,
            dict(request.settings),
            parent=request.parent,
        )
        return pb.LoadModelResponse(model=convert.model_info_to_proto(info))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        await self._serving.unload_model(request.id)
        return pb.UnloadModelResponse()
