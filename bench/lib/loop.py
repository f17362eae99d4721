"""The one closed loop of the benchmarks: `workers` workers, each sending its next request as
soon as its last one returned, for a number of requests or a time, whichever ends first."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Block(Generic[T]):
    """What one closed loop returned, in the order the requests ended."""

    results: list[T] = field(default_factory=list)
    # The measured window (perf_counter): from the start, or the end of the ramp, to the end.
    measured_from: float = 0.0
    deadline: float = math.inf

    @property
    def window_s(self) -> float:
        return self.deadline - self.measured_from


async def closed_loop(
    request: Callable[[int, int], Awaitable[T]],
    workers: int,
    count: int | None = None,
    duration_s: float = math.inf,
    ramp_max_s: float = 0.0,
) -> Block[T]:
    """Calls `request(worker, index)` (index: the request's number in this loop) from
    `workers` workers until `count` requests were sent or `duration_s` passed. With
    `ramp_max_s`, the `duration_s` starts once as many requests returned as there are workers
    (at most `ramp_max_s` after the start): a closed loop reaches its steady state only after
    its first wave, which takes one latency, long at high concurrency."""
    block: Block[T] = Block(measured_from=time.perf_counter())
    block.deadline = block.measured_from + duration_s + ramp_max_s
    ramping = ramp_max_s > 0
    sent = 0

    async def worker(index: int) -> None:
        nonlocal sent, ramping
        while time.perf_counter() < block.deadline and (count is None or sent < count):
            sent += 1
            block.results.append(await request(index, sent - 1))
            if ramping and len(block.results) >= workers:
                ramping = False
                block.measured_from = time.perf_counter()
                block.deadline = block.measured_from + duration_s

    await asyncio.gather(*(worker(i) for i in range(workers)))
    if ramping or math.isinf(block.deadline):  # no ramp end, or no time limit: the whole run
        block.deadline = min(block.deadline, time.perf_counter())
    return block
