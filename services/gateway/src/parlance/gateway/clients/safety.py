"""The client of the safety service.

Concurrent Classify calls are batched: the calls of one direction made in the same turn of
the event loop go to safety as one call, and each caller gets its own texts' results. Under
load (100 streams, each with a window closing now and then) this turns many small calls into
a few larger ones: each call costs the gateway and safety a gRPC round of their own, while a
text more in a call costs the classifier little (bench/results/perf_cpu.md). A call waits at
most for the loop's current turn to end, so a lone request is not delayed.

A batch takes at most one call per owner (BATCH_OWNER, set by a stream's output moderator for
the classification tasks it starts), so that two windows of one stream are never judged in
one call: each released window stays one verdict of its own, as the fault tests count them.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field

import grpc

from parlance.common.request_id import outgoing_metadata
from parlance.gateway import errors
from parlance.gateway.clients.channel import (
    DEFAULT_KEEPALIVE,
    BaseClient,
    KeepAlive,
    to_api_error,
)
from parlance.safety.v1 import safety_pb2, safety_pb2_grpc

# How many characters a second the slowest shipped classifier reads (the embedded MiniLM head
# on 2 busy cores, windows and sentence units included; ~5,600/s idle for short texts): a
# Classify call's deadline grows by its text at this rate, so that a long chat prompt or a
# 256-input /v1/moderations call gets the time it needs instead of a 503.
CLASSIFIER_CHARS_PER_S = 2_000.0

# Safety scores the calls it gets in order, so a call also waits for the text this gateway sent
# before it and has no answer for yet (48 concurrent chats' prompts and windows are tens of
# seconds of MiniLM work on 2 busy cores): that wait, at the same rate, joins its deadline, up
# to this much. A hung safety service still fails a call within its own deadline plus this.
MAX_QUEUE_WAIT_S = 30.0

# Texts per batched call (safety refuses more than its max_texts_per_call, 256 by default);
# a call with more texts than this goes alone.
MAX_BATCH_TEXTS = 64

# Deadline of ExportClassifier (a ~1 MB message, built on the service's event loop).
EXPORT_TIMEOUT_S = 10.0


class ClassifierNotExportable(Exception):
    """Safety's classifier cannot be copied (its reason as the message)."""


# Who makes a call (None: nobody in particular): calls of one owner go in different batches.
BATCH_OWNER: ContextVar[object | None] = ContextVar("safety_batch_owner", default=None)


def classify_deadline(base_s: float, texts: list[str], ahead_chars: int = 0) -> float:
    """The deadline of one Classify call: the configured one, plus the time its text needs,
    plus the time the `ahead_chars` characters sent before it and not answered yet need (at
    most MAX_QUEUE_WAIT_S)."""
    queue_wait = min(MAX_QUEUE_WAIT_S, ahead_chars / CLASSIFIER_CHARS_PER_S)
    return base_s + sum(len(t) for t in texts) / CLASSIFIER_CHARS_PER_S + queue_wait


@dataclass
class _Batch:
    direction: int
    texts: list[str] = field(default_factory=list)
    # Per call: where its texts start, how many, and where its answer goes.
    parts: list[tuple[int, int, asyncio.Future[safety_pb2.ClassifyResponse]]] = field(
        default_factory=list
    )
    owners: set[int] = field(default_factory=set)


class SafetyClient(BaseClient):
    dependency = "safety"
    idempotent = ("parlance.safety.v1.SafetyService",)
    stub_class = safety_pb2_grpc.SafetyServiceStub
    stub: safety_pb2_grpc.SafetyServiceStub

    def __init__(
        self,
        target: str,
        timeout_s: float,
        retry_after_s: int,
        keepalive: KeepAlive = DEFAULT_KEEPALIVE,
    ) -> None:
        super().__init__(target, timeout_s, retry_after_s, keepalive)
        # The batch still taking calls, per direction; sent at the end of the loop's turn.
        self._open: dict[int, _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        # Characters of the Classify calls sent and not answered yet (classify_deadline).
        self._in_flight_chars = 0

    async def classify(
        self, texts: list[str], direction: safety_pb2.Direction
    ) -> safety_pb2.ClassifyResponse:
        if len(texts) > MAX_BATCH_TEXTS:
            return await self._classify(texts, direction)
        owner = BATCH_OWNER.get()
        key = id(owner) if owner is not None else None
        batch = self._open.get(direction)
        if (
            batch is None
            or len(batch.texts) + len(texts) > MAX_BATCH_TEXTS
            or (key is not None and key in batch.owners)
        ):
            batch = self._open[direction] = _Batch(direction)
            asyncio.get_running_loop().call_soon(self._send, batch)
        answer: asyncio.Future[safety_pb2.ClassifyResponse] = (
            asyncio.get_running_loop().create_future()
        )
        batch.parts.append((len(batch.texts), len(texts), answer))
        batch.texts.extend(texts)
        if key is not None:
            batch.owners.add(key)
        return await answer

    def _send(self, batch: _Batch) -> None:
        if self._open.get(batch.direction) is batch:
            del self._open[batch.direction]
        task = asyncio.create_task(self._answer(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _answer(self, batch: _Batch) -> None:
        if all(answer.done() for _, _, answer in batch.parts):
            return  # every caller went away (a stream stopped): nothing to ask
        call = asyncio.ensure_future(self._classify(batch.texts, batch.direction))  # type: ignore[arg-type]
        # Once every caller has gone (streams stopped), the call is cancelled: safety then
        # skips it if it is still queued there.
        for _, _, answer in batch.parts:
            answer.add_done_callback(lambda _: self._abandon(batch, call))
        try:
            response = await call
        except asyncio.CancelledError:
            for _, _, answer in batch.parts:
                answer.cancel()
            raise
        except errors.APIError as exc:
            live = [part for part in batch.parts if not part[2].done()]
            if len(live) > 1 and 400 <= exc.status < 500:
                # Refused for what one call brought (a text over safety's size limit, more
                # texts than it takes): each call again on its own, so that one client's bad
                # input fails only its own request.
                await asyncio.gather(*(self._answer_alone(batch, part) for part in live))
                return
            self._fail(batch, exc)
            return
        except Exception as exc:
            self._fail(batch, exc)
            return
        for start, count, answer in batch.parts:
            if not answer.done():
                answer.set_result(
                    safety_pb2.ClassifyResponse(
                        results=response.results[start : start + count], model=response.model
                    )
                )

    @staticmethod
    def _abandon(batch: _Batch, call: asyncio.Future[safety_pb2.ClassifyResponse]) -> None:
        if not call.done() and all(answer.cancelled() for _, _, answer in batch.parts):
            call.cancel()

    @staticmethod
    def _fail(batch: _Batch, exc: Exception) -> None:
        for _, _, answer in batch.parts:
            if not answer.done():
                answer.set_exception(exc)

    async def _answer_alone(
        self, batch: _Batch, part: tuple[int, int, asyncio.Future[safety_pb2.ClassifyResponse]]
    ) -> None:
        start, count, answer = part
        try:
            response = await self._classify(
                batch.texts[start : start + count],
                batch.direction,  # type: ignore[arg-type]
            )
        except Exception as exc:
            if not answer.done():
                answer.set_exception(exc)
            return
        if not answer.done():
            answer.set_result(response)

    async def _classify(
        self, texts: list[str], direction: safety_pb2.Direction
    ) -> safety_pb2.ClassifyResponse:
        chars = sum(len(t) for t in texts)
        deadline = classify_deadline(self.timeout_s, texts, self._in_flight_chars)
        self._in_flight_chars += chars
        try:
            return await self._unary(
                self.stub.Classify,
                safety_pb2.ClassifyRequest(texts=texts, direction=direction),
                timeout_s=deadline,
            )
        finally:
            self._in_flight_chars -= chars

    async def info(self) -> safety_pb2.GetClassifierInfoResponse:
        return await self._unary(self.stub.GetClassifierInfo, safety_pb2.GetClassifierInfoRequest())

    async def export_classifier(
        self, check_texts: list[str]
    ) -> safety_pb2.ExportClassifierResponse:
        """ExportClassifier, with safety's scores of `check_texts`; ClassifierNotExportable when
        safety says its classifier cannot be copied (or is a version without the call),
        APIError when it cannot be asked. Outside the batches and the dependency metrics: the
        gateway's own upkeep, not a request's moderation (the metrics count the verdicts that
        requests waited for, and the fault tests count those)."""
        try:
            return await self.stub.ExportClassifier(
                safety_pb2.ExportClassifierRequest(check_texts=check_texts),
                timeout=EXPORT_TIMEOUT_S,
                metadata=outgoing_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                raise ClassifierNotExportable(exc.details() or exc.code().name) from exc
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc
