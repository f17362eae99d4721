"""VllmEmbeddingEngine: sentence embeddings on the GPU through vLLM's pooling runner.

The same AsyncLLM as the chat engine, started with `runner="pooling"`: vLLM reads the model's
sentence-transformers configuration (pooling mode, normalization) as `vllm serve --runner
pooling` does, and batches concurrent requests itself (continuous batching), so this engine
needs no micro-batcher of its own. Each input is one vLLM request made from token ids that
embed_inputs.py cut, so limits, truncation and token counts are the same as on the CPU engine.

Written against vLLM 0.25.1; the names used are: `AsyncEngineArgs(runner="pooling")`,
`AsyncLLM.from_engine_args`, `AsyncLLM.get_supported_tasks`, `AsyncLLM.encode`,
`AsyncLLM.get_tokenizer`, `AsyncLLM.model_config`, `PoolingParams(task="embed").verify`,
`vllm.inputs.tokens_input`, `EngineDeadError`. vLLM is imported only inside methods, so this
module imports where vLLM is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from parlance.common.errors import Unavailable
from parlance.common.tokens import special_tokens
from parlance.generator.engine.base import (
    EmbeddingEngine,
    EmbeddingRequest,
    EmbeddingResult,
    EngineStats,
    ModelInfo,
    ModelTask,
)
from parlance.generator.engine.embed_inputs import (
    check_dimensions,
    check_input_count,
    encode_inputs,
)
from parlance.generator.engine.vllm import engine_args_kwargs

if TYPE_CHECKING:
    from parlance.generator.config import GeneratorSettings

log = logging.getLogger(__name__)

ENGINE_NAME = "vllm"


def unit(vector: list[float]) -> list[float]:
    """The vector scaled to length 1 (the contract of every embedding engine); a model whose
    pooler normalizes already comes out unchanged up to rounding."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


class VllmEmbeddingEngine(EmbeddingEngine):
    name = ENGINE_NAME

    def __init__(
        self,
        *,
        served_model_name: str,
        engine_kwargs: dict[str, Any],
        max_model_len: int | None = None,
        max_inputs: int = 2048,
    ) -> None:
        self._served_model_name = served_model_name
        self._engine_kwargs = {**engine_kwargs, "runner": "pooling"}
        self._configured_len = max_model_len
        self._max_inputs = max_inputs
        self._llm: Any = None
        self._tokenizer: Any = None
        self._specials: tuple[list[int], list[int]] = ([], [])
        self._dimensions = 0
        self._max_len = 0
        self._vocab_size = 0
        self._created = 0
        self._running = 0

    @classmethod
    def from_settings(cls, settings: GeneratorSettings) -> VllmEmbeddingEngine:
        return cls(
            served_model_name=settings.served_model_name,
            engine_kwargs=engine_args_kwargs(
                model=settings.model,
                served_model_name=settings.served_model_name,
                tokenizer=settings.tokenizer,
                dtype=settings.dtype,
                max_model_len=settings.max_model_len,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                tensor_parallel_size=settings.tensor_parallel_size,
                quantization=settings.quantization,
                enforce_eager=settings.enforce_eager,
            ),
            max_model_len=settings.max_model_len,
            max_inputs=settings.embed_max_inputs,
        )

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._engine_kwargs))
        tasks = tuple(await self._llm.get_supported_tasks())
        if "embed" not in tasks:
            await self.close()
            raise ValueError(
                f"vLLM's pooling runner does not serve {self._engine_kwargs['model']!r} as an "
                f"embedding model (its tasks: {', '.join(tasks) or 'none'})"
            )
        self._tokenizer = self._llm.get_tokenizer()
        window = int(self._llm.model_config.max_model_len)
        self._max_len = min(self._configured_len or window, window)
        self._vocab_size = len(self._tokenizer)
        # The vector length is whatever the pooler makes (a sentence-transformers Dense layer
        # can change it): one probe says it.
        self._specials = special_tokens(self._tokenizer)
        probe = [*self._specials[0], *self._specials[1]]
        self._dimensions = len(await self._embed_ids(probe, "parlance-probe"))
        self._created = int(time.time())
        log.info(
            "embedding model loaded",
            extra={
                "model": self._served_model_name,
                "engine": ENGINE_NAME,
                "dimensions": self._dimensions,
                "max_model_len": self._max_len,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id=self._served_model_name,
            created=self._created,
            max_model_len=self._max_len,
            engine=ENGINE_NAME,
            task=ModelTask.EMBED,
            dimensions=self._dimensions,
        )

    def stats(self) -> EngineStats:
        # vLLM queues inside its scheduler; what this process knows is the calls in flight.
        return EngineStats(running=self._running, waiting=0)

    # --- embedding ------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if self._llm is None:
            raise Unavailable("the embedding engine is not running")
        check_input_count(len(request.inputs), self._max_inputs)
        check_dimensions(request.dimensions, self._dimensions, self._served_model_name)
        # Tokenizing a large batch takes milliseconds: off the event loop.
        sequences = await asyncio.to_thread(
            encode_inputs,
            self._tokenizer,
            request.inputs,
            specials=self._specials,
            max_len=self._max_len,
            vocab_size=self._vocab_size,
            truncate=request.truncate,
            model=self._served_model_name,
        )
        self._running += 1
        try:
            vectors = await asyncio.gather(
                *(
                    self._embed_ids(ids, f"{request.request_id}-{index}")
                    for index, ids in enumerate(sequences)
                )
            )
        finally:
            self._running -= 1
        return EmbeddingResult(
            vectors=[unit(v) for v in vectors], token_counts=[len(ids) for ids in sequences]
        )

    async def _embed_ids(self, ids: list[int], request_id: str) -> list[float]:
        """One input through the pooling runner; cancelling the caller aborts it in vLLM
        (AsyncLLM.encode aborts on CancelledError)."""
        from vllm.inputs import tokens_input
        from vllm.pooling_params import PoolingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        params = PoolingParams(task="embed")
        params.verify(self._llm.model_config)
        final: Any = None
        try:
            async for output in self._llm.encode(tokens_input(ids), params, request_id):
                final = output
        except EngineDeadError:
            raise Unavailable("the vLLM engine core died; the generator is restarting") from None
        if final is None:
            raise Unavailable("vLLM returned no embedding")
        values: list[float] = final.outputs.data.float().tolist()
        return values
