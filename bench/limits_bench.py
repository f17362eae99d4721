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
        [--requests 100] [--tokens-per-s 0] [--skip-http] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Awaitable, Callable

from lib.client import ChatClient, chat_body
from lib.loop import closed_loop
from lib.report import Report, out_argument, table
from lib.stack import ALICE_KEY, LIMITS_OFF, MODEL, BenchStack, scripted, start_redis_server
from lib.stats import percentile

from parlance.gateway.leases import ConcurrencyLeases
from parlance.gateway.ratelimit import RateLimiter
from parlance.gateway.redis_state import RedisState

WORDS = "the quick brown fox jumps over the lazy dog again and again"


async def rate(total: int, concurrency: int, op: Callable[[int], Awaitable[object]]) -> float:
    """Operations per second of `op`, `total` calls from `concurrency` callers."""
    block = await closed_loop(lambda _, i: op(i), concurrency, count=total)
    return total / block.window_s


async def bench_limiter(url: str, total: int, concurrency: int) -> list[str]:
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
    await state.close()
    best = {name: max(values) for name, values in runs.items()}
    rows = [
        ["plain INCR round trip", f"{best['incr']:,.0f} ops/s"],
        ["GCRA decision (Lua)", f"{best['gcra']:,.0f} decisions/s"],
        ["lease acquire + release", f"{best['lease']:,.0f} leases/s"],
        ["GCRA / INCR", f"{best['gcra'] / best['incr']:.2f}"],
    ]
    return table(["operation", "best of 3"], rows)


async def timed(client: ChatClient, content: str, stream: bool, expect: str) -> float:
    body = chat_body(content, MODEL, max_tokens=16, temperature=0)
    result = await (client.stream(body) if stream else client.complete(body))
    assert result.ok, result.error
    assert result.headers.get("x-cache") == expect, result.headers
    return result.total_s * 1000


async def bench_cache(url: str, requests: int) -> list[str]:
    rows = []
    async with ChatClient(url, ALICE_KEY) as client:
        for stream in (False, True):
            for i in range(10):  # warm-up
                await timed(client, f"warm {stream} {i} {WORDS}", stream, "miss")
            repeated = f"repeated {stream} {WORDS}"
            await timed(client, repeated, stream, "miss")
            misses, hits = [], []
            for _ in range(requests):  # interleaved
                misses.append(await timed(client, f"{uuid.uuid4().hex} {WORDS}", stream, "miss"))
                hits.append(await timed(client, repeated, stream, "hit"))
            miss_p50, hit_p50 = percentile(misses, 50), percentile(hits, 50)
            rows.append(
                ["streamed" if stream else "non-streamed", requests]
                + [f"{percentile(v, q):.2f}" for v in (misses, hits) for q in (50, 90)]
                + [f"{miss_p50 / hit_p50:.1f}x"]
            )
    columns = ["request", "each", "miss p50", "miss p90", "hit p50", "hit p90", "miss / hit p50"]
    return table(columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--tokens-per-s", type=float, default=0.0)
    parser.add_argument("--skip-http", action="store_true")
    out_argument(parser, "limits_bench.md")
    args = parser.parse_args()
    report = Report(
        "Limits and cache (bench/limits_bench.py)",
        "A redis-server of the benchmark's own; the machine's other users share its cores.",
    )
    process, url = start_redis_server()
    try:
        limiter = asyncio.run(bench_limiter(url, args.decisions, args.concurrency))
    finally:
        process.terminate()
        process.wait(5)
    report.section(
        f"Limiter ({args.decisions} calls, {args.concurrency} concurrent asyncio callers, "
        "best of 3 interleaved runs)",
        *limiter,
    )
    if not args.skip_http:
        pace = f"{args.tokens_per_s:g} tokens/s" if args.tokens_per_s else "unpaced"
        with BenchStack(LIMITS_OFF, {"generator": scripted(tokens_per_s=args.tokens_per_s)}) as s:
            cache = asyncio.run(bench_cache(s.gateway_url, args.requests))
        report.section(
            f"Cache hit vs miss through the gateway (ms, sequential, 16 tokens, scripted engine "
            f"{pace})",
            *cache,
        )
    report.write(args.out)


if __name__ == "__main__":
    main()
