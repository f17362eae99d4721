"""Micro-batching for models that run a batch at a time: the generator's embedding and reward
models, the gateway's local intent encoder (after the safety service's batcher,
services/safety/src/parlance/safety/batcher.py).

One worker thread owns the model and its tokenizer and is the only thread that calls them
(Hugging Face fast tokenizers are not thread-safe; a torch model runs one forward pass at a
time anyway). While it runs a batch, new calls queue up; the next batch takes them all, up to
`max_batch_size` inputs. When idle it waits at most `max_wait_s` after the first call for
others, so a lone call pays at most that much.

A call is never split across batches; a call that does not fit the batch being gathered leads
the next one, and a call larger than `max_batch_size` is a batch of its own (the engine splits
its forward passes further). The batch function answers each call on its own: one call's bad
input fails that call only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from parlance.common.errors import Unavailable

log = logging.getLogger(__name__)

CallT = TypeVar("CallT")
ResultT = TypeVar("ResultT")

# Runs in the worker thread: one result (or the exception for that call) per call, in order.
BatchFn = Callable[[list[CallT]], Sequence[ResultT | Exception]]


@dataclass(eq=False)
class _Pending(Generic[CallT, ResultT]):
    call: CallT
    size: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[ResultT]
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future[ResultT], result: object) -> None:
    # Runs on the event loop; the caller may have been cancelled (client gone) meanwhile.
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def _post(pending: _Pending[CallT, ResultT], result: object) -> None:
    try:
        pending.loop.call_soon_threadsafe(_resolve, pending.future, result)
    except RuntimeError:
        pass  # the caller's event loop is closed: nobody is waiting any more


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What the worker did with one batch (for the engine's metrics)."""

    calls: int
    inputs: int
    queue_waits_s: list[float]


class MicroBatcher(Generic[CallT, ResultT]):
    def __init__(
        self,
        run: BatchFn[CallT, ResultT],
        *,
        max_batch_size: int,
        max_wait_s: float,
        name: str = "inference",
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run_batch_fn = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self._name = name
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Pending[CallT, ResultT] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deferred: deque[_Pending[CallT, ResultT]] = deque()
        self._stopping = False
        self._deadline = 0.0
        # Calls queued and not yet answered, and batches run (tests, the stats gauge).
        self.waiting = 0
        self.running = 0
        self.batches = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Answers what is already queued, then stops the worker."""
        if self._thread is None or self._closed:
            self._closed = True
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        while True:  # calls that raced with close() and queued behind the stop signal
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _post(item, Unavailable("the model is shutting down"))

    async def submit(self, call: CallT, size: int) -> ResultT:
        """The call's result, from a batch shared with concurrent callers."""
        if self._closed or self._thread is None:
            raise Unavailable("the model is not running")
        loop = asyncio.get_running_loop()
        pending: _Pending[CallT, ResultT] = _Pending(call, max(1, size), loop, loop.create_future())
        self.waiting += 1
        self._queue.put(pending)
        try:
            return await pending.future
        finally:
            self.waiting -= 1

    def _next(self, batch: list[_Pending[CallT, ResultT]]) -> _Pending[CallT, ResultT] | None:
        """The next queued call (None: nothing more for this batch); sets `_stopping`."""
        if not batch and not self._stopping:
            return self._queue.get()
        remaining = self._deadline - time.perf_counter()
        if remaining > 0 and not self._stopping:
            return self._queue.get(timeout=remaining)
        return self._queue.get_nowait()

    def _collect(self) -> list[_Pending[CallT, ResultT]]:
        """Deferred calls first, then queued ones, waiting at most max_wait after the first;
        up to max_batch_size inputs. Empty only once stopping with nothing queued."""
        batch: list[_Pending[CallT, ResultT]] = []
        size = 0
        deferred, self._deferred = self._deferred, deque()
        for item in deferred:
            if batch and size + item.size > self.max_batch_size:
                self._deferred.append(item)
            else:
                batch.append(item)
                size += item.size
        self._deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                queued = self._next(batch)
            except queue.Empty:
                break
            if queued is None:
                self._stopping = True  # what is queued is still answered, without waiting
                continue
            if not batch:
                self._deadline = time.perf_counter() + self.max_wait_s
            if batch and size + queued.size > self.max_batch_size:
                self._deferred.append(queued)
                continue
            batch.append(queued)
            size += queued.size
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch:
                self._run_batch(batch)
            elif self._stopping and not self._deferred:
                return

    def _run_batch(self, batch: list[_Pending[CallT, ResultT]]) -> None:
        # Calls cancelled while queued (client gone, deadline passed) are not run.
        live = [p for p in batch if not p.future.cancelled()]
        if not live:
            return
        started = time.perf_counter()
        self.batches += 1
        self.running = len(live)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    len(live), sum(p.size for p in live), [started - p.enqueued for p in live]
                )
            )
        try:
            results = self._run_batch_fn([p.call for p in live])
            if len(results) != len(live):
                raise RuntimeError(f"{len(results)} results for {len(live)} calls")
        except Exception as exc:  # handed to every caller of the batch
            log.exception("batch failed", extra={"calls": len(live)})
            for p in live:
                _post(p, exc)
            return
        finally:
            self.running = 0
        for p, result in zip(live, results, strict=True):
            _post(p, result)
