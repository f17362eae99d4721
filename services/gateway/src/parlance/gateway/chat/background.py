"""Work a request starts but does not wait for, or that must outlive its cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """The tasks of one gateway process that nobody awaits: the event loop keeps only weak
    references to tasks, so they are held here until done; close() waits for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shielded(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` to its end even when the awaiting task is cancelled (a client that
        leaves must not lose the work's effects, nor get them twice)."""
        await asyncio.shield(self.spawn(work))

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
