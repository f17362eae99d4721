"""Writes exchanges to history, and keeps them in an outbox while history is down.

Chat must keep answering when history is unreachable (ARCHITECTURE.md), and nothing may be
lost: a write that fails is queued and retried with back-off until history accepts it. Writes
are idempotent (client-generated message ids), so a retry after an unclear failure cannot
duplicate a message. The outbox lives in this process's memory; its depth is a metric.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from parlance.gateway.clients import HistoryClient
from parlance.gateway.errors import APIError
from parlance.gateway.metrics import HISTORY_OUTBOX_DEPTH
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)


class HistoryOutbox:
    def __init__(self, client: HistoryClient, max_items: int = 100_000) -> None:
        self.client = client
        self.max_items = max_items
        self._queue: collections.deque[history_pb2.AppendMessagesRequest] = collections.deque()
        self._wake = asyncio.Event()
        # Set whenever the queue is empty (close() waits on it to flush).
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain_forever(), name="history-outbox")

    async def submit(self, request: history_pb2.AppendMessagesRequest) -> bool:
        """Writes now if possible (and nothing older is waiting); else queues. True if written."""
        if not self._queue:
            try:
                await self.client.append_messages(request)
                return True
            except APIError as exc:
                if exc.status != 503:
                    # A rejected write (bad data) would be rejected forever: log, do not queue.
                    log.error("history refused an exchange: %s", exc.message)
                    return False
        self._enqueue(request)
        return False

    def _enqueue(self, request: history_pb2.AppendMessagesRequest) -> None:
        if len(self._queue) >= self.max_items:
            log.error("history outbox full (%d): dropping the oldest exchange", self.max_items)
            self._queue.popleft()
        self._queue.append(request)
        HISTORY_OUTBOX_DEPTH.set(len(self._queue))
        self._drained.clear()
        self._wake.set()

    async def _drain_forever(self) -> None:
        backoff = 0.5
        while True:
            if not self._queue:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
            request = self._queue[0]
            try:
                await self.client.append_messages(request)
            except APIError as exc:
                if exc.status == 503:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                log.error("history refused a queued exchange: %s", exc.message)
            self._queue.popleft()
            HISTORY_OUTBOX_DEPTH.set(len(self._queue))
            backoff = 0.5

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        if self._task is None:
            return
        if self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), flush_timeout_s)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if self._queue:
            log.error("gateway stopping with %d exchanges not yet in history", len(self._queue))
