"""Micro-batching: the texts of concurrent Classify calls go through the model together.

One inference worker thread owns the model and its tokenizer: it is the only thread that ever
calls the classifier's `score()`. That is what makes sharing them safe (Hugging Face fast
tokenizers are not thread-safe, and a torch model runs one forward pass at a time anyway), and
it is what batches: while the worker runs a batch, new calls queue up, and the next batch takes
all of them (up to max_batch_size texts). When the worker is idle, it waits at most max_wait
after the first call for others, so a lone call pays at most that much.

A call is never split across batches: its texts stay together, so that its scores come from
one model call. A call that does not fit the batch being gathered waits for the next one, which
it leads (so it waits one batch at most); a call larger than max_batch_size is a batch of its
own (the backend splits its forward passes further).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from parlance.common.errors import Unavailable
from parlance.safety import metrics

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[str]], list[dict[str, float]]]


@dataclass(eq=False)
class _Pending:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[dict[str, float]]]
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future[list[dict[str, float]]], result: object) -> None:
    # Runs on the event loop; the caller may have been cancelled (client gone) meanwhile.
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def _post(pending: _Pending, result: object) -> None:
    try:
        pending.loop.call_soon_threadsafe(_resolve, pending.future, result)
    except RuntimeError:
        # The caller's event loop is closed: nobody is waiting any more.
        pass


class MicroBatcher:
    def __init__(self, score: ScoreFn, *, max_batch_size: int, max_wait_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Calls too big to join the batch being gathered, in arrival order: they lead the next.
        self._deferred: deque[_Pending] = deque()
        # Set by the worker once it has read the stop signal.
        self._stopping = False
        # Model calls made, for tests and the benchmark (the metrics are process-wide).
        self.batches = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="safety-inference", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Scores what is already queued, then stops the worker."""
        if self._thread is None or self._closed:
            self._closed = True
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        # A call that raced with close() and queued behind the stop signal.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _post(item, Unavailable("the classifier is shutting down"))

    async def score(self, texts: list[str]) -> list[dict[str, float]]:
        """The scores of `texts`, from a model call shared with concurrent callers."""
        if self._closed or self._thread is None:
            raise Unavailable("the classifier is not running")
        loop = asyncio.get_running_loop()
        pending = _Pending(texts, loop, loop.create_future())
        self._queue.put(pending)
        return await pending.future

    def _collect(self) -> list[_Pending]:
        """The next batch: deferred calls first, then queued ones, waiting at most max_wait after
        the first; up to max_batch_size texts. Empty only once stopping with nothing queued."""
        batch: list[_Pending] = []
        size = 0
        deferred, self._deferred = self._deferred, deque()
        while deferred:
            item = deferred.popleft()
            if batch and size + len(item.texts) > self.max_batch_size:
                self._deferred.append(item)
            else:
                batch.append(item)
                size += len(item.texts)
        deadline = None
        while size < self.max_batch_size:
            queued: _Pending | None
            try:
                if not batch and not self._stopping:
                    queued = self._queue.get()
                else:
                    if deadline is None:
                        deadline = time.perf_counter() + self.max_wait_s
                    remaining = deadline - time.perf_counter()
                    if remaining > 0 and not self._stopping:
                        queued = self._queue.get(timeout=remaining)
                    else:
                        queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if queued is None:
                # Stop: what is queued still gets scored, without waiting for more.
                self._stopping = True
                continue
            if batch and size + len(queued.texts) > self.max_batch_size:
                self._deferred.append(queued)
                continue
            batch.append(queued)
            size += len(queued.texts)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch:
                self._run_batch(batch)
            elif self._stopping and not self._deferred:
                return

    def _run_batch(self, batch: list[_Pending]) -> None:
        # Calls cancelled while queued (client gone, deadline passed) are not scored.
        live = [p for p in batch if not p.future.cancelled()]
        if not live:
            return
        started = time.perf_counter()
        texts = [text for p in live for text in p.texts]
        for p in live:
            metrics.QUEUE_WAIT.observe(started - p.enqueued)
        metrics.MICROBATCH_SIZE.observe(len(texts))
        metrics.MICROBATCH_CALLS.observe(len(live))
        self.batches += 1
        try:
            scores = self._score(texts)
            if len(scores) != len(texts):
                raise RuntimeError(
                    f"the classifier returned {len(scores)} scores for {len(texts)} texts"
                )
        except Exception as exc:  # handed to every caller of the batch
            log.exception("classification failed", extra={"texts": len(texts)})
            for p in live:
                _post(p, exc)
            return
        offset = 0
        for p in live:
            part = scores[offset : offset + len(p.texts)]
            offset += len(p.texts)
            _post(p, part)
