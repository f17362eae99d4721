"""The serving layer between the gRPC servicer and the engine: model resolution, metrics, and
making sure a request that ends early is aborted in the engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import aclosing
from typing import Any

from parlance.common.errors import NotFound, ParlanceError
from parlance.generator import metrics
from parlance.generator.engine.base import (
    ChatMessage,
    Engine,
    GenerationRequest,
    GenerationStep,
    ModelInfo,
)

log = logging.getLogger(__name__)


class GeneratorServing:
    def __init__(self, engine: Engine, served_model_name: str) -> None:
        self.engine = engine
        self.model_name = served_model_name
        self._background: set[asyncio.Task[None]] = set()
        labels = {"engine": engine.name}
        metrics.RUNNING.labels(**labels).set_function(lambda: engine.stats().running)
        metrics.WAITING.labels(**labels).set_function(lambda: engine.stats().waiting)

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    def check_model(self, model: str) -> None:
        """Empty means the default (the only) model."""
        if model and model != self.model_name:
            raise NotFound(
                f"model {model!r} is not served here; this generator serves {self.model_name!r}",
                param="model",
            )

    def list_models(self) -> list[ModelInfo]:
        return [self.engine.model_info()]

    async def count_tokens(
        self, *, messages: Sequence[ChatMessage] | None, prompt: str | None
    ) -> int:
        return await self.engine.count_tokens(messages=messages, prompt=prompt)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count_prompt(self, request: GenerationRequest) -> None:
        try:
            count = await self.engine.count_tokens(messages=request.messages, prompt=request.prompt)
        except Exception:  # a metric is not worth an error: the engine may be stopping
            log.debug("could not count the prompt of a cancelled call", exc_info=True)
            return
        metrics.PROMPT_TOKENS.labels(self.engine.name).inc(count)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationStep]:
        engine = self.engine.name
        arrived = time.monotonic()
        first_token_at: float | None = None
        last_token_at = arrived
        generated = 0
        # Stays "cancelled" when the caller leaves before the end (GeneratorExit).
        outcome = "cancelled"
        usage_seen = False
        try:
            async with aclosing(self.engine.generate(request)) as steps:
                async for step in steps:
                    if step.queued_s is not None:
                        metrics.QUEUE_TIME.labels(engine).observe(step.queued_s)
                    new_tokens = sum(d.token_count for d in step.choices)
                    if new_tokens:
                        last_token_at = time.monotonic()
                        if first_token_at is None:
                            first_token_at = last_token_at
                            metrics.TIME_TO_FIRST_TOKEN.labels(engine).observe(
                                first_token_at - arrived
                            )
                        generated += new_tokens
                    if step.usage is not None:
                        usage_seen = True
                        metrics.PROMPT_TOKENS.labels(engine).inc(step.usage.prompt_tokens)
                    reasons = [d.finish_reason for d in step.choices if d.finish_reason]
                    if reasons and outcome == "cancelled":
                        outcome = reasons[0].value
                    yield step
            if outcome == "cancelled":  # ended without a finish reason: engine-side abort
                outcome = "abort"
        except asyncio.CancelledError:
            await self.engine.abort(request.request_id)
            raise
        except ParlanceError:
            outcome = "rejected"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            # One line per call: sizes and timings, never the text.
            log.info(
                "generate finished",
                extra={
                    "engine": engine,
                    "outcome": outcome,
                    "generated_tokens": generated,
                    "duration_ms": round((time.monotonic() - arrived) * 1000, 1),
                },
            )
            metrics.REQUESTS.labels(engine, outcome).inc()
            if not usage_seen and outcome in ("cancelled", "abort"):
                # The engine's usage never came: count the prompt in a task of its own (this
                # one is being cancelled), so the prompt-token counter misses no call.
                self._spawn(self._count_prompt(request))
            metrics.GENERATION_TOKENS.labels(engine).inc(generated)
            metrics.REQUEST_DURATION.labels(engine).observe(time.monotonic() - arrived)
            if first_token_at is not None and generated > 1:
                metrics.TIME_PER_OUTPUT_TOKEN.labels(engine).observe(
                    (last_token_at - first_token_at) / (generated - 1)
                )
