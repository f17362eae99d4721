"""vLLM's AsyncLLM in-process: the GPU engine.

The engine core (scheduler, model, KV cache) runs in a process of its own that vLLM starts; this
process keeps the tokenizer, the detokenizer and the output processor, and talks to the core
over ZMQ. There is no HTTP hop: requests go in as token ids and come back as DELTA outputs (each
carries only the tokens and text new since the last one), which map one to one onto our steps.

Written against vLLM 0.25.1 (the version the `vllm` extra pins); the names used are:
`AsyncEngineArgs`, `AsyncLLM.from_engine_args(..., stat_loggers=...)`, `AsyncLLM.generate`,
`AsyncLLM.abort`, `AsyncLLM.errored`, `AsyncLLM.get_tokenizer`, `vllm.inputs.tokens_input`,
`SamplingParams`, `RequestOutputKind.DELTA`, `EngineDeadError`, and the stat-logger hook; for
LoRA adapters (engine/vllm_lora.py) `AsyncLLM.add_lora`, `remove_lora`, `generate(...,
lora_request=...)` and `LoRARequest`.

vLLM is imported only inside methods, so this module (and its pure mapping functions, which the
CPU test suite checks) imports where vLLM is not installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parlance.common.errors import (
    AlreadyExists,
    ContextLengthExceeded,
    InvalidArgument,
    ParlanceError,
    Unavailable,
)
from parlance.generator import metrics
from parlance.generator.engine.base import (
    AdapterHandle,
    ChatMessage,
    ChoiceDelta,
    Engine,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationStep,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
    TopLogprob,
    Usage,
    check_sampling_common,
)
from parlance.generator.engine.vllm_lora import VllmAdapter, VllmLoras, lora_engine_kwargs

if TYPE_CHECKING:
    from parlance.generator.config import GeneratorSettings

log = logging.getLogger(__name__)

ENGINE_NAME = "vllm"
# How often the watchdog looks for a dead engine core when no request would notice it.
WATCHDOG_INTERVAL_S = 1.0

# vLLM's finish reasons (vllm.v1.engine.FINISH_REASON_STRINGS) onto ours. "repetition" (vLLM
# ended a degenerate loop early) is a normal end for OpenAI clients; "error" is not a finish
# reason but a failed request, handled by the caller.
_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    "repetition": FinishReason.STOP,
}

DeadListener = Callable[[], Awaitable[None]]


# -- pure mappings (unit-tested without vLLM) ----------------------------------------------------


def engine_args_kwargs(
    *,
    model: str,
    served_model_name: str,
    tokenizer: str | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    quantization: str | None = None,
    enforce_eager: bool = False,
    lora: dict[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of vLLM's AsyncEngineArgs; unset values keep vLLM's defaults (those of
    `vllm serve`: see VllmEngine.start). `lora`: vllm_lora.lora_engine_kwargs (empty: LoRA
    off). `extra`: the operator's own AsyncEngineArgs (GENERATOR_VLLM_ENGINE_ARGS), last, so
    they win (max_num_seqs, max_num_batched_tokens, stream_interval, ...)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "served_model_name": served_model_name,
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "tensor_parallel_size": tensor_parallel_size,
        "enforce_eager": enforce_eager,
        # vLLM's own periodic stats logging and request logging stay off; our stat logger is
        # passed explicitly (which still turns on the stats collection it needs).
        "disable_log_stats": True,
        "enable_log_requests": False,
    }
    if tokenizer:
        kwargs["tokenizer"] = tokenizer
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if quantization:
        kwargs["quantization"] = quantization
    kwargs.update(lora or {})
    kwargs.update(extra or {})
    return kwargs


def freeze_gc_heap() -> None:
    """Moves everything alive now (torch, transformers, vLLM and the model's Python objects:
    millions of them) out of the garbage collector's reach, as `vllm serve` does once started
    (vllm.utils.gc_utils.freeze_gc_heap in its lifespan). Otherwise each full collection,
    which streaming's many short-lived objects keep triggering, walks them all on the event
    loop that also runs vLLM's output handler and every stream."""
    gc.collect()
    gc.freeze()


def resolved_config(vllm_config: Any) -> dict[str, Any]:
    """The engine settings vLLM chose where we left them unset, for the start-up log line:
    the ones that differ between usage contexts and decide batch sizes and CUDA graphs."""
    scheduler = getattr(vllm_config, "scheduler_config", None)
    compilation = getattr(vllm_config, "compilation_config", None)
    return {
        "max_num_seqs": getattr(scheduler, "max_num_seqs", None),
        "max_num_batched_tokens": getattr(scheduler, "max_num_batched_tokens", None),
        "async_scheduling": getattr(scheduler, "async_scheduling", None),
        "stream_interval": getattr(scheduler, "stream_interval", None),
        "max_cudagraph_capture_size": getattr(compilation, "max_cudagraph_capture_size", None),
        "cudagraph_mode": str(getattr(compilation, "cudagraph_mode", None)),
    }


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def sampling_kwargs(
    options: SamplingOptions, *, budget: int, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of vLLM's SamplingParams for our options (output_kind excepted).

    `budget` is the context window left after the prompt; `defaults` are the model's own
    sampling defaults (vLLM's `ModelConfig.get_diff_sampling_param()`, from the model's
    generation_config.json), which `vllm serve` also applies to fields a request leaves unset.
    Unset fields without a model default get OpenAI's defaults, which are vLLM's neutral ones.
    """
    check_sampling_common(options)
    defaults = defaults or {}
    temperature = _first(options.temperature, defaults.get("temperature"), 1.0)
    if options.n > 1 and temperature == 0.0:
        # vLLM refuses n > 1 with greedy sampling: the choices would all be the same.
        raise InvalidArgument(
            "n > 1 needs sampling: set temperature above 0 (greedy choices would be identical)",
            param="n",
        )
    # The model may cap generation (max_new_tokens); the context window always does.
    default_max = min(budget, defaults.get("max_tokens") or budget)
    max_tokens = min(options.max_tokens or default_max, budget)
    top_k = _first(options.top_k, defaults.get("top_k"), 0)
    kwargs: dict[str, Any] = {
        "n": options.n,
        "temperature": temperature,
        "top_p": _first(options.top_p, defaults.get("top_p"), 1.0),
        # The contract: top_k <= 0 disables it; vLLM spells that 0 and refuses < -1.
        "top_k": max(int(top_k), 0),
        "min_p": _first(options.min_p, defaults.get("min_p"), 0.0),
        "repetition_penalty": _first(
            options.repetition_penalty, defaults.get("repetition_penalty"), 1.0
        ),
        "presence_penalty": _first(options.presence_penalty, 0.0),
        "frequency_penalty": _first(options.frequency_penalty, 0.0),
        "seed": options.seed,
        "stop": list(options.stop),
        "max_tokens": max_tokens,
        # vLLM returns the sampled token's logprob plus the `logprobs` most likely ones.
        "logprobs": (options.top_logprobs or 0) if options.logprobs else None,
        "ignore_eos": options.ignore_eos,
        "skip_special_tokens": True,
    }
    return kwargs


def finish_reason_from_vllm(reason: str | None) -> FinishReason | None:
    if reason is None:
        return None
    if reason == "error":
        raise ParlanceError("the engine failed this request")
    try:
        return _FINISH_REASONS[reason]
    except KeyError:
        raise ParlanceError(f"unknown finish reason from vLLM: {reason!r}") from None


def _token_bytes(text: str) -> bytes:
    # vLLM gives decoded text per token; a token holding part of a multi-byte character decodes
    # to U+FFFD, as in vLLM's own OpenAI server.
    return text.encode("utf-8", errors="replace")


def logprobs_from_vllm(
    token_ids: Sequence[int], positions: Sequence[Mapping[int, Any]] | None, top_logprobs: int
) -> list[TokenLogprob]:
    """One TokenLogprob per new token from vLLM's per-position {token_id: Logprob} maps
    (Logprob has .logprob, .rank and .decoded_token). Each map holds the sampled token and the
    `top_logprobs` most likely ones (the sampled token once, whether or not among them)."""
    if not positions:
        return []
    result = []
    for token_id, position in zip(token_ids, positions, strict=False):
        sampled = position[token_id]
        text = sampled.decoded_token or ""
        top: tuple[TopLogprob, ...] = ()
        if top_logprobs:
            best = sorted(
                position.values(),
                key=lambda lp: (lp.rank if lp.rank is not None else 1 << 62, -lp.logprob),
            )[:top_logprobs]
            top = tuple(
                TopLogprob(
                    lp.decoded_token or "", float(lp.logprob), _token_bytes(lp.decoded_token or "")
                )
                for lp in best
            )
        result.append(TokenLogprob(text, float(sampled.logprob), _token_bytes(text), top))
    return result


def queued_seconds(metrics: Any) -> float | None:
    """Time the request waited in vLLM's scheduler (engine-core timestamps), if recorded."""
    queued = getattr(metrics, "queued_ts", 0.0) or 0.0
    scheduled = getattr(metrics, "scheduled_ts", 0.0) or 0.0
    if queued > 0.0 and scheduled >= queued:
        return scheduled - queued
    return None


# -- the engine ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _SchedulerGauges:
    running: int = 0
    waiting: int = 0


class _SchedulerStatsLogger:
    """A vLLM per-engine stat logger (duck-typed StatLoggerBase) that keeps the scheduler's
    running and waiting counts for our gauges. vLLM calls record() from its output handler
    after every engine step, on the event loop thread."""

    def __init__(self, vllm_config: Any, engine_index: int = 0, *, gauges: _SchedulerGauges):
        self._gauges = gauges

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._gauges.running = scheduler_stats.num_running_reqs
            self._gauges.waiting = scheduler_stats.num_waiting_reqs
            cache = getattr(scheduler_stats, "prefix_cache_stats", None)
            if cache is not None and cache.queries:
                metrics.PREFIX_CACHE_QUERIES.labels(ENGINE_NAME).inc(cache.queries)
                metrics.PREFIX_CACHE_HITS.labels(ENGINE_NAME).inc(cache.hits)

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass


def step_from_vllm(output: Any, logprobs: bool, n_top: int) -> GenerationStep:
    """One DELTA RequestOutput as a step: each completion's new text and tokens."""
    step = GenerationStep()
    for completion in output.outputs:
        step.choices.append(
            ChoiceDelta(
                index=completion.index,
                text=completion.text,
                token_count=len(completion.token_ids),
                finish_reason=finish_reason_from_vllm(completion.finish_reason),
                logprobs=logprobs_from_vllm(completion.token_ids, completion.logprobs, n_top)
                if logprobs
                else [],
            )
        )
    return step


class VllmEngine(Engine):
    name = ENGINE_NAME

    def __init__(
        self, *, served_model_name: str, engine_kwargs: dict[str, Any], freeze_gc: bool = True
    ) -> None:
        self._served_model_name = served_model_name
        self._engine_kwargs = engine_kwargs
        self._freeze_gc = freeze_gc
        self._llm: Any = None
        self._tokenizer: Any = None
        self._tokenizer_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tokenizer"
        )
        self._max_model_len = 0
        self._defaults: dict[str, Any] = {}
        self._created = 0
        self._gauges = _SchedulerGauges()
        self._inflight: set[str] = set()
        self._dead = False
        self._dead_listeners: list[DeadListener] = []
        self._watchdog: asyncio.Task[None] | None = None
        self._loras = VllmLoras(
            max_rank=engine_kwargs.get("max_lora_rank")
            if engine_kwargs.get("enable_lora")
            else None,
            served_model=str(engine_kwargs.get("model", "")),
        )

    @classmethod
    def from_settings(cls, settings: GeneratorSettings) -> VllmEngine:
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
                lora=lora_engine_kwargs(
                    enable_lora=settings.enable_lora,
                    max_loras=settings.max_loras,
                    max_lora_rank=settings.max_lora_rank,
                    max_cpu_loras=settings.max_cpu_loras,
                ),
                extra=settings.vllm_engine_args,
            ),
            freeze_gc=settings.vllm_freeze_gc,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def on_dead(self, listener: DeadListener) -> None:
        """Registers a coroutine function called once when the engine core dies (the service
        uses it to report NOT_SERVING)."""
        self._dead_listeners.append(listener)

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # The gRPC server's threads already run in this process: forking the engine core from
        # it is unsafe, so the core starts in a fresh interpreter (vLLM's default is fork).
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        log.info("starting vLLM", extra={"engine_args": self._engine_kwargs})
        began = time.monotonic()
        gauges = self._gauges

        def stat_logger(vllm_config: Any, engine_index: int) -> _SchedulerStatsLogger:
            return _SchedulerStatsLogger(vllm_config, engine_index, gauges=gauges)

        # Built on the event loop thread, as vLLM's own server does (its ZMQ asyncio sockets
        # and output handler bind to the running loop). This blocks the loop until the model is
        # loaded and compiled (~1-2 min); health stays NOT_SERVING meanwhile.
        # The usage context is `vllm serve`'s (and vLLM's own gRPC server's): it picks the
        # batch defaults. AsyncLLM's default, ENGINE_CONTEXT, has none of its own and falls
        # back to max_num_seqs 128 and max_num_batched_tokens 2048 where `vllm serve` takes
        # 1024 and 8192 on an H100/H200 (EngineArgs.get_batch_defaults); max_num_seqs also
        # caps the CUDA graph sizes at 2 x 128 = 256 tokens instead of 512, so a lone chat
        # request's ~270-token prefill ran without a CUDA graph. Measured on an H200
        # (bench/results/gpu_probe.md): first token at concurrency 1 in 19.4 ms instead of
        # 32.3 (vllm serve: 23.0); at concurrency 64 both settings matched serve.
        self._llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**self._engine_kwargs),
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=[stat_logger],
        )
        self._tokenizer = self._llm.get_tokenizer()
        model_config = self._llm.model_config
        self._max_model_len = int(model_config.max_model_len)
        self._defaults = dict(model_config.get_diff_sampling_param())
        self._created = int(time.time())
        self._watchdog = asyncio.create_task(self._watch(), name="vllm-watchdog")
        if self._freeze_gc:
            freeze_gc_heap()
        log.info(
            "vLLM ready",
            extra={
                "seconds": round(time.monotonic() - began, 1),
                "max_model_len": self._max_model_len,
                "sampling_defaults": self._defaults,
                **resolved_config(getattr(self._llm, "vllm_config", None)),
            },
        )

    async def close(self) -> None:
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        llm, self._llm = self._llm, None
        if llm is not None:
            if self._inflight and not llm.errored:
                await llm.abort(list(self._inflight))
            llm.shutdown()

    async def _watch(self) -> None:
        """Notices an engine core that died while no request was running."""
        while not self._dead:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if self._llm is not None and self._llm.errored:
                await self._mark_dead()

    async def _mark_dead(self) -> None:
        if self._dead:
            return
        self._dead = True
        log.error("the vLLM engine core died; the generator is NOT_SERVING")
        for listener in self._dead_listeners:
            try:
                await listener()
            except Exception:
                log.exception("dead-engine listener failed")

    # -- queries --------------------------------------------------------------------------------

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id=self._served_model_name,
            created=self._created,
            max_model_len=self._max_model_len,
            engine=ENGINE_NAME,
        )

    def stats(self) -> EngineStats:
        return EngineStats(running=self._gauges.running, waiting=self._gauges.waiting)

    def num_unfinished_requests(self) -> int:
        """Requests vLLM's output processor still tracks (0 once all are finished or aborted)."""
        return (
            0
            if self._llm is None
            else int(self._llm.output_processor.get_num_unfinished_requests())
        )

    async def count_tokens(
        self, *, messages: Sequence[ChatMessage] | None = None, prompt: str | None = None
    ) -> int:
        self._require_started()
        return len(await self._tokenize_off_loop(messages, prompt))

    async def _tokenize_off_loop(
        self, messages: Sequence[ChatMessage] | None, prompt: str | None
    ) -> list[int]:
        """Tokenizes in the engine's one tokenizer thread. Profiling the gateway benchmark at
        concurrency 64 (py-spy, H200) showed chat-template rendering and encoding taking ~20%
        of this event loop, which also runs vLLM's output handler: done inline, every new
        request delayed the token deltas of all running ones. One thread, because a fast
        tokenizer used from several threads at once fails ("Already borrowed")."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_thread, self._tokenize, messages, prompt)

    def _require_started(self) -> Any:
        if self._llm is None:
            raise Unavailable("the model is not loaded")
        if self._dead:
            raise Unavailable("the engine has failed; the generator must be restarted")
        return self._llm

    def _tokenize(self, messages: Sequence[ChatMessage] | None, prompt: str | None) -> list[int]:
        tokenizer = self._tokenizer
        if messages is None:
            # As vLLM's completions API: special tokens (BOS) added.
            return list(tokenizer.encode(prompt or "", add_special_tokens=True))
        conversation = [
            {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
            for m in messages
        ]
        try:
            text = tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # no template, or the template's own raise_exception
            raise InvalidArgument(f"chat template: {exc}", param="messages") from exc
        # As vLLM's chat API: the template already wrote the special tokens it wants.
        return list(tokenizer.encode(text, add_special_tokens=False))

    # -- generation -----------------------------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        if self._llm is not None and request_id in self._inflight and not self._llm.errored:
            await self._llm.abort(request_id)

    def _sampling_params(self, options: SamplingOptions, prompt_ids: list[int]) -> Any:
        """vLLM's SamplingParams for the request; InvalidArgument for what it cannot take."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if not prompt_ids:
            raise InvalidArgument("the prompt is empty", param="messages")
        budget = self._max_model_len - len(prompt_ids)
        if budget < 1:
            raise ContextLengthExceeded(
                f"the prompt has {len(prompt_ids)} tokens, which leaves no room in the "
                f"{self._max_model_len}-token context window",
                param="messages",
            )
        kwargs = sampling_kwargs(options, budget=budget, defaults=self._defaults)
        try:
            return SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)
        except ValueError as exc:  # vLLM's own checks (VLLMValidationError names the field)
            raise InvalidArgument(str(exc), param=getattr(exc, "parameter", None)) from exc

    # -- LoRA adapters ----------------------------------------------------------------------------

    async def load_adapter(self, adapter_id: str, folder: Path) -> AdapterHandle:
        llm = self._require_started()
        try:
            return await self._loras.load(llm, adapter_id, folder)
        except Exception:
            if llm.errored:
                await self._mark_dead()
                raise Unavailable(
                    "the engine has failed; the generator must be restarted"
                ) from None
            raise

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        assert isinstance(adapter, VllmAdapter)
        await self._loras.unload(self._llm, adapter)

    def generate_with_adapter(
        self, request: GenerationRequest, adapter: AdapterHandle
    ) -> AsyncGenerator[GenerationStep, None]:
        assert isinstance(adapter, VllmAdapter)
        return self._generate_with_adapter(request, adapter)

    async def _generate_with_adapter(
        self, request: GenerationRequest, adapter: VllmAdapter
    ) -> AsyncGenerator[GenerationStep, None]:
        lora_request = self._loras.begin(adapter)
        try:
            async with aclosing(self._generate(request, lora_request)) as steps:
                async for step in steps:
                    yield step
        finally:
            # After _generate's own finally: the request has left vLLM (finished or aborted).
            await self._loras.end(self._llm, adapter)

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationStep, None]:
        return self._generate(request, None)

    async def _generate(
        self, request: GenerationRequest, lora_request: Any
    ) -> AsyncGenerator[GenerationStep, None]:
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._require_started()
        options = request.sampling
        prompt_ids = await self._tokenize_off_loop(request.messages, request.prompt)
        params = self._sampling_params(options, prompt_ids)
        request_id = request.request_id
        if request_id in self._inflight:
            raise AlreadyExists("a request with this id is in flight", param="request_id")

        self._inflight.add(request_id)
        n_top = options.top_logprobs or 0
        completion_tokens = 0
        finished = False
        first = True
        try:
            # lora_request only when set: a base request is called exactly as before LoRA.
            lora = {"lora_request": lora_request} if lora_request is not None else {}
            async with aclosing(
                llm.generate(tokens_input(prompt_ids), params, request_id, **lora)
            ) as outputs:
                async for output in outputs:
                    step = step_from_vllm(output, options.logprobs, n_top)
                    completion_tokens += sum(d.token_count for d in step.choices)
                    if first:
                        step.queued_s = queued_seconds(output.metrics)
                        first = False
                    if output.finished:
                        finished = True
                        step.usage = Usage(len(output.prompt_token_ids), completion_tokens)
                    yield step
                    if finished:
                        return
        except EngineDeadError as exc:
            await self._mark_dead()
            raise Unavailable("the engine has failed; the generator must be restarted") from exc
        except ValueError as exc:  # request validation inside vLLM (e.g. prompt length)
            raise InvalidArgument(str(exc), param=getattr(exc, "parameter", None)) from exc
        except ParlanceError:
            raise
        except Exception as exc:
            if llm.errored:
                await self._mark_dead()
                raise Unavailable("the engine has failed; the generator must be restarted") from exc
            raise
        finally:
            self._inflight.discard(request_id)
            # vLLM aborts by itself when its generator is closed or cancelled; this also covers
            # leaving after a choice failed, and costs nothing when it already happened.
            if not finished and not llm.errored:
                await llm.abort(request_id)
