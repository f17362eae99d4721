"""Where a streamed request's gateway CPU goes: per request and per token, and what the Redis
limits cost (issue 20's decomposition).

One stack with the scripted engine (a reply of 80 one-word tokens at 1000 tokens/s) and three
gateways on it: `off` (moderation off, limits on but too high to refuse: every Redis round trip
happens), `off, no limits` (also RPM/TPM 0 and no concurrency lease: no Redis call) and `on`
(the shipped moderation). Each is loaded at `--concurrency` with max_tokens 1, 16 and 64 in
interleaved blocks; the gateway's CPU per request against the tokens gives the cost per token
(the slope) and per request (the intercept), and `off` minus `off, no limits` the limits' cost.

    .venv/bin/python bench/perf_cpu_sweep.py    # ~3 min
"""

from __future__ import annotations

import argparse
import asyncio
import os

from gateway_overhead import GATEWAY_ENV, MODERATION_OFF, HttpTarget, requests
from lib.loop import closed_loop
from lib.procs import ProcessSampler, load_average
from lib.report import Report, out_argument, table
from lib.stack import LIMITS_OFF, BenchStack, free_port, scripted
from lib.stats import fmt, percentile

SCRIPT = " ".join(f"w{i}" for i in range(80)) + "."
GATEWAYS = {
    "off": MODERATION_OFF,
    "off, no limits": {**MODERATION_OFF, **LIMITS_OFF, "GATEWAY_MAX_CONCURRENT_PER_KEY": "0"},
    "on": {},
}
TOKENS = (1, 16, 64)


async def measure(stack: BenchStack, args: argparse.Namespace) -> dict[tuple[str, int], list]:
    targets, pids = {}, {}
    for name, env in GATEWAYS.items():
        gateway = stack.extra_gateway({**env, "GATEWAY_METRICS_PORT": str(free_port())})
        assert gateway.http_port is not None and gateway.process is not None
        targets[name] = HttpTarget(gateway.http_port)
        pids[name] = gateway.process.pid
    pids["safety"] = stack.pids()["safety"]
    sampler = ProcessSampler({**pids, "client": os.getpid()})
    cells = [(name, tokens) for name in GATEWAYS for tokens in TOKENS]
    # (gateway CPU s, safety CPU s, requests, TTFT ms list) per cell
    found: dict[tuple[str, int], list] = {cell: [0.0, 0.0, 0, []] for cell in cells}
    try:
        for name, tokens in cells:  # warm-up
            await closed_loop(requests(targets[name], tokens), args.concurrency, 100, 60.0)
        for _ in range(args.rounds):
            for name, tokens in cells:
                before = sampler.cpu_seconds()
                loop = requests(targets[name], tokens)
                block = await closed_loop(loop, args.concurrency, args.block, 120.0)
                after = sampler.cpu_seconds()
                cell = found[(name, tokens)]
                cell[0] += after[name] - before[name]
                cell[1] += after["safety"] - before["safety"]
                cell[2] += len(block.results)
                cell[3] += [r.ttft_s * 1000 for r in block.results if r.ok and r.ttft_s]
    finally:
        for target in targets.values():
            await target.close()
    return found


def slope(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (per token, intercept) of CPU ms against tokens."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    per_token = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return per_token, mean_y - per_token * mean_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    out_argument(parser, "perf_cpu_sweep.md")
    args = parser.parse_args()
    load_before = load_average()
    env = {"generator": scripted(SCRIPT, 1000.0)}
    with BenchStack(GATEWAY_ENV, env, prefix="parlance-sweep-") as stack:
        found = asyncio.run(measure(stack, args))
    rows, fits = [], []
    for (name, tokens), (gateway_s, safety_s, count, ttft) in found.items():
        gateway_ms, safety_ms = gateway_s * 1000 / count, safety_s * 1000 / count
        ttft_p50 = fmt(percentile(ttft, 50))
        rows.append([name, tokens, count, f"{gateway_ms:.2f}", f"{safety_ms:.2f}", ttft_p50])
    for name in GATEWAYS:
        points = [(t, found[(name, t)][0] * 1000 / found[(name, t)][2]) for t in TOKENS]
        per_token, intercept = slope(points)
        fits.append([name, f"{per_token * 1000:.0f}", f"{intercept:.2f}"])
    Report(
        "Gateway CPU per streamed request: per request, per token, and the Redis limits",
        f"Load average (1/5/15 min) before: {load_before}; after: {load_average()}.",
        f"{args.concurrency} concurrent closed-loop streamed requests, {args.rounds} rounds of "
        f"{args.block} requests per cell, cells interleaved; scripted engine at 1000 tokens/s.",
    ).section(
        "CPU per request (ms) and TTFT p50 (ms)",
        *table(["gateway", "max_tokens", "requests", "gateway CPU", "safety CPU", "TTFT"], rows),
    ).section(
        "Least-squares fit of the gateway's CPU against the tokens",
        *table(["gateway", "µs per token", "ms per request"], fits),
    ).write(args.out)


if __name__ == "__main__":
    main()
