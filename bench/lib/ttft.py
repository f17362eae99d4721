"""The interleaved TTFT comparison of bench/moderation_bench.py and bench/safety_ttft.py: the
same streamed request against several gateways ("sides"), taking turns so that drift of a
shared machine hits every side alike.

Two phases: `requests` streamed requests per side one at a time (side A, B, C, A, B, C, ...),
then `rounds` rounds of `concurrency` simultaneous requests per side. Three warm-up requests per
side first (connections, first-call paths, a model's first pass). A request that errors or does
not finish with "stop" stops the run: a comparison with a side missing answers is not one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from lib.client import ChatClient, ChatResult

WARM_UP = 3


@dataclass
class Side:
    name: str
    client: ChatClient
    sequential: list[ChatResult] = field(default_factory=list)
    concurrent: list[ChatResult] = field(default_factory=list)


async def one_request(side: Side, body: dict[str, Any], lane: int = 0) -> ChatResult:
    result = await side.client.stream(body, lane=lane)
    if result.error or result.ttft_s is None or result.finish_reason != "stop":
        raise RuntimeError(f"{side.name}: {result.error or result.finish_reason!r}")
    return result


async def measure(
    sides: list[Side], body: dict[str, Any], requests: int, rounds: int, concurrency: int
) -> None:
    for side in sides:
        for _ in range(WARM_UP):
            await one_request(side, body)
    for _ in range(requests):
        for side in sides:
            side.sequential.append(await one_request(side, body))
    for _ in range(rounds):
        for side in sides:
            side.concurrent.extend(
                await asyncio.gather(*(one_request(side, body, i) for i in range(concurrency)))
            )


async def compare(
    urls: dict[str, str],
    api_key: str,
    body: dict[str, Any],
    *,
    requests: int,
    rounds: int,
    concurrency: int,
) -> list[Side]:
    """Sides named as `urls` (in its order), measured as above; the cache is bypassed so that
    every request reaches the generator and the moderation."""
    no_cache = {"Cache-Control": "no-cache"}
    sides = [Side(name, ChatClient(url, api_key, headers=no_cache)) for name, url in urls.items()]
    try:
        await measure(sides, body, requests, rounds, concurrency)
    finally:
        for side in sides:
            await side.client.aclose()
    return sides


def ttft_ms(samples: list[ChatResult]) -> list[float]:
    return [s.ttft_s * 1000 for s in samples if s.ttft_s is not None]
