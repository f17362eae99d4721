"""The serving layer between the gRPC servicer and the engines: model resolution by id and
task, metrics, making sure a request that ends early is aborted in the engine, and models
loaded and unloaded at run time (LoadModel/UnloadModel)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import grpc

from parlance.common.errors import AlreadyExists, InvalidArgument, NotFound, ParlanceError
from parlance.generator import metrics
from parlance.generator.adapters import AdapterModel, AdapterRegistry
from parlance.generator.engine.base import (
    ChatMessage,
    EmbeddingEngine,
    EmbeddingRequest,
    EmbeddingResult,
    Engine,
    ExportedEncoder,
    GenerationRequest,
    GenerationStep,
    ModelInfo,
    ModelTask,
    RewardEngine,
    ScoreRequest,
    ScoreResult,
)

log = logging.getLogger(__name__)

AnyEngine = Engine | EmbeddingEngine | RewardEngine
# Builds the engine of a model loaded at run time: (id, task, path, settings) -> engine, not
# started. ValueError for settings that do not validate.
EngineBuilder = Callable[[str, str, str, dict[str, str]], AnyEngine]
# Tasks LoadModel takes: engines that load in seconds and hold no GPU memory pool.
RUNTIME_TASKS = (ModelTask.EMBED, ModelTask.REWARD)


class LoadingDisabled(ParlanceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class GeneratorServing:
    """The models of this process by id, each with its engine. Calls that name no model go to
    the first model of the task they need."""

    def __init__(
        self,
        models: Sequence[tuple[str, AnyEngine]],
        *,
        build: EngineBuilder | None = None,
        load_root: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("a generator serves at least one model")
        self.models: dict[str, AnyEngine] = dict(models)
        self._background: set[asyncio.Task[None]] = set()
        self._build = build
        self._load_root = Path(load_root).resolve() if load_root else None
        # One LoadModel/UnloadModel at a time: an id is checked and taken atomically.
        self._loading = asyncio.Lock()
        self._adapters = AdapterRegistry()
        for engine in self.models.values():
            self._gauge(engine)

    @staticmethod
    def _gauge(engine: AnyEngine) -> None:
        def running() -> int:
            return engine.stats().running

        def waiting() -> int:
            return engine.stats().waiting

        metrics.RUNNING.labels(engine=engine.name).set_function(running)
        metrics.WAITING.labels(engine=engine.name).set_function(waiting)

    @property
    def engine(self) -> Engine:
        """The default chat engine (tests of one-model generators read it)."""
        return self.chat_engine("")[1]

    @property
    def model_name(self) -> str:
        return self.chat_engine("")[0]

    async def start(self) -> None:
        # One at a time: loading two models at once only makes both slower on a small host.
        for engine in list(self.models.values()):
            await engine.start()

    async def close(self) -> None:
        for engine in list(self.models.values()):
            if isinstance(engine, AdapterModel):
                continue  # its parent frees it when it closes
            try:
                await engine.close()
            except Exception:
                log.exception("closing an engine failed", extra={"engine": engine.name})

    def _resolve(self, model: str, task: ModelTask) -> tuple[str, AnyEngine]:
        if not model:
            for name, engine in self.models.items():
                if engine.task is task:
                    return name, engine
            raise InvalidArgument(
                f"this generator serves no {task.value} model (it serves {', '.join(self.models)})",
                param="model",
            )
        found = self.models.get(model)
        if found is None:
            raise NotFound(
                f"model {model!r} is not served here; this generator serves "
                f"{', '.join(repr(m) for m in self.models)}",
                param="model",
            )
        if found.task is not task:
            raise InvalidArgument(
                f"model {model!r} serves the {found.task.value} task; it cannot serve "
                f"{task.value} requests",
                param="model",
            )
        return model, found

    def chat_engine(self, model: str) -> tuple[str, Engine]:
        """(id, engine) of a chat model; empty means the first one. NotFound for an id not
        served here, InvalidArgument for a model of another task."""
        name, engine = self._resolve(model, ModelTask.CHAT)
        assert isinstance(engine, Engine)
        return name, engine

    def embed_engine(self, model: str) -> tuple[str, EmbeddingEngine]:
        name, engine = self._resolve(model, ModelTask.EMBED)
        assert isinstance(engine, EmbeddingEngine)
        return name, engine

    def reward_engine(self, model: str) -> tuple[str, RewardEngine]:
        name, engine = self._resolve(model, ModelTask.REWARD)
        assert isinstance(engine, RewardEngine)
        return name, engine

    def check_model(self, model: str) -> None:
        """A chat model by that id (empty: the default) is served here."""
        self.chat_engine(model)

    def list_models(self) -> list[ModelInfo]:
        return [engine.model_info() for engine in self.models.values()]

    async def count_tokens(
        self, *, messages: Sequence[ChatMessage] | None, prompt: str | None, model: str = ""
    ) -> int:
        return await self.chat_engine(model)[1].count_tokens(messages=messages, prompt=prompt)

    async def embed(self, model: str, request: EmbeddingRequest) -> tuple[str, EmbeddingResult]:
        """(served model id, vectors) for an Embed call."""
        name, engine = self.embed_engine(model)
        arrived = time.monotonic()
        outcome = "error"
        try:
            result = await engine.embed(request)
            outcome = "ok"
        except ParlanceError:
            outcome = "rejected"
            raise
        finally:
            metrics.EMBED_REQUESTS.labels(name, outcome).inc()
            metrics.EMBED_DURATION.labels(name).observe(time.monotonic() - arrived)
        metrics.EMBED_INPUTS.labels(name).inc(len(request.inputs))
        metrics.EMBED_TOKENS.labels(name).inc(sum(result.token_counts))
        return name, result

    def export_encoder(self, model: str) -> tuple[str, ExportedEncoder]:
        """(served model id, its exported graph) for an ExportEncoder call."""
        name, engine = self.embed_engine(model)
        return name, engine.exported()

    async def score(self, model: str, request: ScoreRequest) -> tuple[str, ScoreResult]:
        """(served model id, one score per candidate) for a Score call."""
        name, engine = self.reward_engine(model)
        arrived = time.monotonic()
        outcome = "error"
        try:
            result = await engine.score(request)
            outcome = "ok"
        except ParlanceError:
            outcome = "rejected"
            raise
        finally:
            metrics.REWARD_REQUESTS.labels(name, outcome).inc()
            metrics.REWARD_DURATION.labels(name).observe(time.monotonic() - arrived)
        metrics.REWARD_CANDIDATES.labels(name).inc(len(request.candidates))
        metrics.REWARD_TOKENS.labels(name).inc(sum(result.token_counts))
        metrics.REWARD_TRUNCATED.labels(name).inc(result.truncated)
        for value in result.scores:
            metrics.REWARD_SCORES.labels(name).observe(value)
        return name, result

    def _loadable_path(self, path: str) -> str:
        if self._build is None or self._load_root is None:
            raise LoadingDisabled(
                "this generator does not load models at run time (set GENERATOR_LOAD_ROOT to "
                "the folder trained models are written to)"
            )
        if "\x00" in path:
            raise InvalidArgument("path must not contain a NUL character", param="path")
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
            raise InvalidArgument(
                f"path {path!r} cannot be resolved: {exc}", param="path"
            ) from None
        if not path or not resolved.is_relative_to(self._load_root):
            raise InvalidArgument(
                f"path {path!r} is not inside GENERATOR_LOAD_ROOT ({self._load_root})",
                param="path",
            )
        if not resolved.is_dir():
            raise InvalidArgument(f"path {path!r} is not a folder", param="path")
        return str(resolved)

    async def load_model(
        self,
        model_id: str,
        task: ModelTask,
        path: str,
        settings: dict[str, str],
        parent: str = "",
    ) -> ModelInfo:
        """Builds, starts and serves a model while the process runs (with a parent: a LoRA
        adapter of that chat model); its ModelInfo. Nothing is served after an error."""
        async with self._loading:
            outcome = "rejected"
            try:
                folder = self._loadable_path(path)
                if not model_id:
                    raise InvalidArgument("id must not be empty", param="id")
                if task is ModelTask.CHAT or parent:
                    engine: AnyEngine = await self._load_adapter(
                        model_id, task, folder, settings, parent
                    )
                else:
                    engine = await self._load_engine(model_id, task, folder, settings)
                self.models[model_id] = engine
                if not isinstance(engine, AdapterModel):
                    self._gauge(engine)
                outcome = "ok"
            except ParlanceError:
                raise
            except Exception:
                outcome = "error"
                raise
            finally:
                metrics.MODEL_LOADS.labels("load", outcome).inc()
        log.info(
            "model loaded at run time",
            extra={"model": model_id, "task": task.value, "parent": parent or None},
        )
        return engine.model_info()

    async def _load_engine(
        self, model_id: str, task: ModelTask, folder: str, settings: dict[str, str]
    ) -> AnyEngine:
        if task not in RUNTIME_TASKS:
            raise InvalidArgument(
                f"models of task {task.value!r} cannot be loaded at run time (only "
                f"{', '.join(t.value for t in RUNTIME_TASKS)}, and chat LoRA adapters)",
                param="task",
            )
        if model_id in self.models:
            raise AlreadyExists(f"model {model_id!r} is served already", param="id")
        assert self._build is not None
        try:
            engine = self._build(model_id, task.value, folder, settings)
        except ValueError as exc:
            raise InvalidArgument(str(exc), param="settings") from None
        try:
            await engine.start()
        except (OSError, ValueError) as exc:
            await engine.close()
            raise InvalidArgument(
                f"cannot load {folder} as a {task.value} model: {exc}", param="path"
            ) from None
        return engine

    async def _load_adapter(
        self, model_id: str, task: ModelTask, folder: str, settings: dict[str, str], parent: str
    ) -> AdapterModel:
        if task is not ModelTask.CHAT:
            raise InvalidArgument(
                f"a parent is given only for LoRA adapters, whose task is chat (not {task.value})",
                param="parent",
            )
        if not parent:
            raise InvalidArgument(
                "chat models cannot be loaded at run time except as LoRA adapters: give the "
                "parent (the id of the base chat model the adapter was trained on)",
                param="parent",
            )
        return await self._adapters.load(self.models, model_id, parent, Path(folder), settings)

    async def unload_model(self, model_id: str) -> None:
        """Stops serving a model: new calls get NOT_FOUND, queued ones are answered first."""
        async with self._loading:
            engine = self.models.get(model_id)
            if engine is None:
                metrics.MODEL_LOADS.labels("unload", "rejected").inc()
                raise NotFound(f"model {model_id!r} is not served here", param="id")
            if engine.task not in RUNTIME_TASKS and not isinstance(engine, AdapterModel):
                metrics.MODEL_LOADS.labels("unload", "rejected").inc()
                raise InvalidArgument(
                    f"model {model_id!r} serves the {engine.task.value} task; only embed and "
                    "reward models and LoRA adapters are unloaded at run time",
                    param="id",
                )
            del self.models[model_id]
        await engine.close()
        metrics.MODEL_LOADS.labels("unload", "ok").inc()
        log.info("model unloaded", extra={"model": model_id})

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count_prompt(self, engine: Engine, request: GenerationRequest) -> None:
        try:
            count = await engine.count_tokens(messages=request.messages, prompt=request.prompt)
        except Exception:  # a metric is not worth an error: the engine may be stopping
            log.debug("could not count the prompt of a cancelled call", exc_info=True)
            return
        metrics.PROMPT_TOKENS.labels(engine.name).inc(count)

    async def abort(self, request_id: str) -> None:
        """Aborts the request in whichever chat engine runs it (the others ignore the id)."""
        for engine in list(self.models.values()):
            # An adapter's requests run in its parent, which is aborted here too.
            if isinstance(engine, Engine) and not isinstance(engine, AdapterModel):
                await engine.abort(request_id)

    async def generate(
        self, request: GenerationRequest, model: str = ""
    ) -> AsyncGenerator[GenerationStep, None]:
        chat = self.chat_engine(model)[1]
        call = _CallMetrics(chat.name)
        try:
            async with aclosing(chat.generate(request)) as steps:
                async for step in steps:
                    call.observe(step)
                    yield step
            if call.outcome == "cancelled":  # ended without a finish reason: engine-side abort
                call.outcome = "abort"
        except asyncio.CancelledError:
            await chat.abort(request.request_id)
            raise
        except ParlanceError:
            call.outcome = "rejected"
            raise
        except Exception:
            call.outcome = "error"
            raise
        finally:
            call.finish()
            if not call.usage_seen and call.outcome in ("cancelled", "abort"):
                # The engine's usage never came: count the prompt in a task of its own (this
                # one is being cancelled), so the prompt-token counter misses no call.
                self._spawn(self._count_prompt(chat, request))


class _CallMetrics:
    """The metrics and the log line of one Generate call, fed step by step."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.arrived = time.monotonic()
        self.first_token_at: float | None = None
        self.last_token_at = self.arrived
        self.generated = 0
        # Stays "cancelled" when the caller leaves before the end (GeneratorExit).
        self.outcome = "cancelled"
        self.usage_seen = False

    def observe(self, step: GenerationStep) -> None:
        engine = self.engine
        if step.queued_s is not None:
            metrics.QUEUE_TIME.labels(engine).observe(step.queued_s)
        new_tokens = sum(d.token_count for d in step.choices)
        if new_tokens:
            self.last_token_at = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = self.last_token_at
                metrics.TIME_TO_FIRST_TOKEN.labels(engine).observe(
                    self.first_token_at - self.arrived
                )
            self.generated += new_tokens
        if step.usage is not None:
            self.usage_seen = True
            metrics.PROMPT_TOKENS.labels(engine).inc(step.usage.prompt_tokens)
        reasons = [d.finish_reason for d in step.choices if d.finish_reason]
        if reasons and self.outcome == "cancelled":
            self.outcome = reasons[0].value

    def finish(self) -> None:
        engine = self.engine
        # One line per call: sizes and timings, never the text.
        log.info(
            "generate finished",
            extra={
                "engine": engine,
                "outcome": self.outcome,
                "generated_tokens": self.generated,
                "duration_ms": round((time.monotonic() - self.arrived) * 1000, 1),
                # The engine's own time to first token, to set beside a caller's (the gateway's
                # Server-Timing "generator", a benchmark client's TTFT).
                "ttft_ms": None
                if self.first_token_at is None
                else round((self.first_token_at - self.arrived) * 1000, 1),
            },
        )
        metrics.REQUESTS.labels(engine, self.outcome).inc()
        metrics.GENERATION_TOKENS.labels(engine).inc(self.generated)
        metrics.REQUEST_DURATION.labels(engine).observe(time.monotonic() - self.arrived)
        if self.first_token_at is not None and self.generated > 1:
            metrics.TIME_PER_OUTPUT_TOKEN.labels(engine).observe(
                (self.last_token_at - self.first_token_at) / (self.generated - 1)
            )
