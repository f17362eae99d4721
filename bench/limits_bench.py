"""Limits and cache benchmarks against a real redis-server of the benchmark's own.

1. Limiter decisions per second: RateLimiter.check (the GCRA Lua script, one EVALSHA per
   decision) from many concurrent asyncio callers, against a plain Redis INCR round trip from
   the same callers over the same client, in the same process (the ratio is what the Lua
   decision costs over the cheapest possible Redis call). Leases (acquire + release, two
   round trips) are measured the same way.
2. Cache hit latency against cache miss latency through the gateway: the stack as processes
   with the scripted engine (no model cost at `--tokens-per-s 0`, so a miss costs only the
   pipeline: input moderation, the generator round trip, output moderation, the cache write);
   deterministic requests (temperature 0), unique prompts for misses, one repeated prompt for
   hits, sequential, non-streamed and streamed.

    .venv/bin/python bench/limits_bench.py [--decisions 20000] [--concurrency 64]
        [--requests 100] [--tokens-per-s 0] [--skip-http]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from parlance.gateway.leases import ConcurrencyLeases
from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import start_redis  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"


async def rate(total: int, concurrency: int, op: Callable[[int], Awaitable[object]]) -> float:
    """Operations per second of `op`, `total` calls spread over `concurrency` callers."""
    per_caller = total // concurrency

    async def caller(index: int) -> None:
        for i in range(per_caller):
            await op(index * per_caller + i)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(concurrency)))
    return per_caller * concurrency / (time.perf_counter() - started)


async def bench_limiter(url: str, total: int, concurrency: int) -> None:
    state = RedisState(url)
    limiter = RateLimiter(state)
    leases = ConcurrencyLeases(state, ttl_s=30)
    subjects = [uuid.uuid4().hex[:12] for _ in range(100)]

    async def incr(i: int) -> object:
        return await state.run(lambda r: r.incr(f"bench:incr:{subjects[i % 100]}"))

    async def decide(i: int) -> object:
        # A limit nobody reaches, so every call runs the whole script and writes.
        return await limiter.check("rpm", subjects[i % 100], 10**9)

    async def lease(i: int) -> object:
        held = await leases.acquire(subjects[i % 100], 10**6)
        assert held is not None
        await leases.release(held)
        return None

    await rate(2000, concurrency, incr)  # warm-up: connections, script cache
    await rate(2000, concurrency, decide)
    runs: dict[str, list[float]] = {"incr": [], "gcra": [], "lease": []}
    for _ in range(3):  # interleaved, so drift hits all alike
        runs["incr"].append(await rate(total, concurrency, incr))
        runs["gcra"].append(await rate(total, concurrency, decide))
        runs["lease"].append(await rate(total // 2, concurrency, lease))
    best = {name: max(values) for name, values in runs.items()}
    print(f"\n## Limiter ({total} calls, {concurrency} concurrent asyncio callers, best of 3)")
    print(f"plain INCR round trip       {best['incr']:>9,.0f} ops/s")
    print(f"GCRA decision (Lua)         {best['gcra']:>9,.0f} decisions/s")
    print(f"lease acquire + release     {best['lease']:>9,.0f} leases/s")
    print(f"GCRA / INCR                 {best['gcra'] / best['incr']:>9.2f}")
    await state.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_cache(url: str, requests: int, tokens_per_s: float) -> None:
    from helpers import ALICE_KEY, start_stack

    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(
            Path(tmp),
            url,
            gateway_env={"GATEWAY_RPM_LIMIT": "0", "GATEWAY_TPM_LIMIT": "0"},
            env={
                "generator": {
                    "GENERATOR_ENGINE": "scripted",
                    "GENERATOR_SCRIPTED_TOKENS_PER_S": str(tokens_per_s),
                    "GENERATOR_SERVED_MODEL_NAME": MODEL,
                }
            },
        )
        try:
            endpoint = f"{stack.gateway_url}/v1/chat/completions"
            with httpx.Client(timeout=60, headers=headers) as client:

                def timed(content: str, stream: bool, expect: str) -> float:
                    payload = {
                        "model": MODEL,
                        "messages": [{"role": "user", "content": content}],
                        "max_tokens": 16,
                        "temperature": 0,
                        "stream": stream,
                    }
                    started = time.perf_counter()
                    with client.stream("POST", endpoint, json=payload) as response:
                        response.read()
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text
                    assert response.headers["x-cache"] == expect, response.headers
                    return elapsed * 1000

                words = "the quick brown fox jumps over the lazy dog again and again"
                for stream in (False, True):
                    for i in range(10):  # warm-up
                        timed(f"warm {stream} {i} {words}", stream, "miss")
                    repeated = f"repeated {stream} {words}"
                    timed(repeated, stream, "miss")
                    misses, hits = [], []
                    for _ in range(requests):  # interleaved
                        misses.append(timed(f"{uuid.uuid4().hex} {words}", stream, "miss"))
                        hits.append(timed(repeated, stream, "hit"))
                    kind = "streamed" if stream else "non-streamed"
                    miss_p50, hit_p50 = statistics.median(misses), statistics.median(hits)
                    print(
                        f"\n## Cache, {kind} ({requests} each, 16 tokens, scripted engine at "
                        f"{tokens_per_s or 'unpaced'} tokens/s)"
                    )
                    print(f"miss  p50 {miss_p50:7.2f} ms   p90 {percentile(misses, 0.9):7.2f} ms")
                    print(f"hit   p50 {hit_p50:7.2f} ms   p90 {percentile(hits, 0.9):7.2f} ms")
                    print(f"miss / hit (p50)  {miss_p50 / hit_p50:.1f}x")
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--tokens-per-s", type=float, default=0.0)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    process, url = start_redis()
    try:
        asyncio.run(bench_limiter(url, args.decisions, args.concurrency))
        if not args.skip_http:
            bench_cache(url, args.requests, args.tokens_per_s)
    finally:
        process.terminate()
        process.wait(5)


if __name__ == "__main__":
    main()
