"""Load test: N concurrent streaming conversations against the whole stack, on loopback.

The stack runs as processes (bench/lib/stack.py) with a redis-server of the benchmark's own
and the generator's scripted test engine (GENERATOR_ENGINE=scripted): it emits a fixed reply
at a set token rate without a model, so the load lands on everything around the model:
gateway (auth, limits, leases, cache lookup, SSE), safety (input and windowed output
moderation), history (store: true) and Redis. Each of N clients runs a closed loop: open a
stream, read it to [DONE], repeat, for --duration seconds. Bounded in count and time.

Reported: requests, errors by kind, TTFT (first content token) and end-to-end latency
percentiles, resident memory and CPU of every process over time (/proc), and afterwards the
gateway's leases and in-flight requests, the history outbox depth, the generator's running
requests and the lease sets left in Redis.

    .venv/bin/python bench/load_test.py --concurrency 16 --duration 60
    .venv/bin/python bench/load_test.py --step 4,8,16,32,64 --duration 20   # find p99 TTFT > 1 s
    .venv/bin/python bench/load_test.py ... --out /tmp/load.md   # else bench/results/load_cpu.md
    .venv/bin/python bench/load_test.py --step 64,128 --profile bench/results/profiles
    .venv/bin/python bench/load_test.py --soak --concurrency 96 --duration 300

--profile DIR runs `py-spy record` (needs ptrace: root, or CAP_SYS_PTRACE) on every service
during the middle half of each step and summarises its speedscope files (lib/pyspy.py) into
top frames by self and inclusive time. --soak holds one N for --duration seconds and reports
memory over time and TTFT per minute, so that leaks and drift show.

The client is bench/lib's (httpx, one keep-alive connection per simulated user); it shares
the machine with the stack, and its CPU is in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from lib import metrics
from lib.client import ChatClient, ChatResult, chat_body
from lib.loop import closed_loop
from lib.procs import MACHINE_BUSY, STEAL, ProcessSampler
from lib.pyspy import Profile, Profiler, profile_section
from lib.report import RESULTS, Report, table
from lib.stack import KEYS, MODEL, SERVICES, BenchStack, scripted
from lib.stats import percentile

RSS_NAMES = (*SERVICES, "redis", "load client")
GATEWAY_ENV = {
    "GATEWAY_RPM_LIMIT": "0",
    "GATEWAY_TPM_LIMIT": "0",
    "GATEWAY_MAX_CONCURRENT_PER_KEY": "1000",
    "GATEWAY_MAX_CONCURRENT_REQUESTS": "1024",
}


@dataclass
class RunResult:
    concurrency: int
    duration_s: float
    sampler: ProcessSampler
    samples: list[ChatResult] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    after: dict[str, float] = field(default_factory=dict)

    @property
    def t0(self) -> float:
        """perf_counter time when the load (and the sampler) started."""
        return self.sampler.t0


async def conversations(url: str, users: int, duration_s: float, store: bool) -> list[ChatResult]:
    """`users` closed-loop users, keys alice and bob alternating, for `duration_s`."""
    async with ChatClient(url) as client:

        def request(user: int, index: int) -> Awaitable[ChatResult]:
            auth = {"Authorization": f"Bearer {KEYS[user % len(KEYS)]}"}
            prompt = f"user {user} request {index}: hello"
            body = chat_body(prompt, MODEL, stream_options={"include_usage": True}, store=store)
            return client.stream(body, auth, lane=user)

        return (await closed_loop(request, users, duration_s=duration_s)).results


def outbox_depth(gateway_url: str) -> float:
    with urllib.request.urlopen(f"{gateway_url}/readyz", timeout=10) as reply:
        return float(json.loads(reply.read()).get("history_outbox_depth", 0))


def state_after(stack: BenchStack) -> dict[str, float]:
    """Leases, slots, outbox and engine queue once the load has stopped (after a short settle)."""
    import redis

    time.sleep(2)
    gateway_port = stack.services["gateway"].metrics_port  # its internal metrics port
    assert gateway_port is not None
    gateway = metrics.sums(gateway_port)
    generator_port = stack.services["generator"].metrics_port
    generator = metrics.sums(generator_port) if generator_port else {}
    depth_at_start = outbox_depth(stack.gateway_url)
    client = redis.Redis.from_url(stack.redis_url)
    lease_keys = [k for k in client.scan_iter(count=1000) if b"lease" in k]
    leases_in_redis = sum(client.zcard(k) for k in lease_keys)
    client.close()
    # The outbox holds exchanges history could not take yet; nothing is lost if it drains.
    drain_started = time.perf_counter()
    depth = depth_at_start
    while depth > 0 and time.perf_counter() - drain_started < 60:
        time.sleep(0.5)
        depth = outbox_depth(stack.gateway_url)
    drained_s = time.perf_counter() - drain_started if depth == 0 else float("inf")
    nan = float("nan")
    return {
        "outbox drained after (s)": round(drained_s, 1),
        "gateway leases held": gateway.get("parlance_gateway_leases_held", nan),
        "gateway requests in flight": gateway.get("parlance_gateway_requests_in_flight", nan),
        "history outbox depth": depth_at_start,
        # Where it did not drain within the wait: how far it got (a soak can outrun history).
        "outbox depth at the end of the wait": depth,
        "generator requests running": generator.get("parlance_generator_requests_running", nan),
        "generator requests waiting": generator.get("parlance_generator_requests_waiting", nan),
        "lease entries in Redis": float(leases_in_redis),
    }


def run_once(stack: BenchStack, concurrency: int, args: argparse.Namespace) -> RunResult:
    services = {name: stack.pid(name) for name in SERVICES}
    pids: dict[str, list[int]] = {name: [pid] for name, pid in stack.pids().items()}
    pids["load client"] = [os.getpid()]
    if args.profile:
        # Its CPU series starts at 0 with the step, so that its average covers the whole step.
        pids["py-spy"] = []
    sampler = ProcessSampler(pids, args.sample_every)
    profiler = timer = None
    if args.profile:
        # The middle half of the step: past the ramp-up, done before the clients stop.
        label = f"{'soak-' if args.soak else ''}N{concurrency}"
        profiler = Profiler(services, args.profile, label, sampler)
        seconds = max(1, int(args.duration * 0.5))
        timer = threading.Timer(args.duration * 0.25, profiler.start, args=(seconds,))
    sampler.start()
    result = RunResult(concurrency, args.duration, sampler)
    if timer is not None:
        timer.start()
    load = conversations(stack.gateway_url, concurrency, args.duration, args.store)
    result.samples = asyncio.run(load)
    sampler.stop()
    if timer is not None:
        timer.join()
    if profiler is not None:
        result.profiles = profiler.finish()
    result.after = state_after(stack)
    return result


def summary_row(result: RunResult) -> dict[str, object]:
    ok = [s for s in result.samples if s.ok]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    latency = [s.total_s for s in ok]
    # Kinds, not messages: "http 429", "StreamError", "ReadTimeout", ...
    errors = Counter((s.error or "").split(":", 1)[0] for s in result.samples if not s.ok)
    return {
        "N": result.concurrency,
        "requests": len(result.samples),
        "ok": len(ok),
        "errors": dict(errors),
        "req/s": len(ok) / result.duration_s,
        "tokens/s": sum(s.completion_tokens for s in ok) / result.duration_s,
        "ttft p50": percentile(ttft, 50),
        "ttft p90": percentile(ttft, 90),
        "ttft p99": percentile(ttft, 99),
        "lat p50": percentile(latency, 50),
        "lat p99": percentile(latency, 99),
    }


def render(results: list[RunResult], args: argparse.Namespace) -> Report:
    title = "Soak" if args.soak else "Load test"
    report = Report(
        f"{title}: concurrent streaming conversations (CPU, scripted test engine)",
        "The load client runs on the same machine and shares its cores with the four services "
        "(and with whatever else runs there: see the CPU table).",
        f"Engine: scripted, {args.reply_tokens} tokens a reply at {args.tokens_per_s:g} "
        f"tokens/s per stream (~{args.reply_tokens / args.tokens_per_s:.1f} s of pure "
        f"generation); store={args.store}; input and output moderation on (light classifier); "
        "keys alice and bob alternating; limits off.",
        f"{args.duration:g} s of closed-loop load "
        + ("held at one N." if args.soak else "per step."),
        "Client: bench/lib's httpx client, one keep-alive connection per simulated user.",
    )
    report.add("", *summary_table(results))
    if args.soak:
        report.add("", *minute_table(results[0]), "", *memory_over_time(results[0]))
    else:
        report.add("", *memory_table(results))
    report.add("", *cpu_table(results), "", *after_table(results))
    if args.step:
        knee = next((r for r in results if summary_row(r)["ttft p99"] > 1.0), None)  # type: ignore[operator]
        report.add(
            "",
            f"p99 TTFT first passes 1 s at N = {knee.concurrency}."
            if knee
            else "p99 TTFT stayed under 1 s at every N tried.",
        )
    if any(r.profiles for r in results):
        report.add("", *profile_section([(r.concurrency, r.profiles) for r in results]))
    return report


def summary_table(results: list[RunResult]) -> list[str]:
    rows = []
    for result in results:
        row = summary_row(result)
        rows.append(
            [row["N"], row["requests"], row["ok"], row["errors"] or 0]
            + [f"{row['req/s']:.1f}", f"{row['tokens/s']:.0f}"]
            + [f"{row[k]:.3f} s" for k in ("ttft p50", "ttft p90", "ttft p99")]
            + [f"{row[k]:.2f} s" for k in ("lat p50", "lat p99")]
        )
    columns = ["N", "requests", "ok", "errors", "req/s", "tokens/s", "TTFT p50", "TTFT p90"]
    return table([*columns, "TTFT p99", "latency p50", "latency p99"], rows)


def memory_table(results: list[RunResult]) -> list[str]:
    names = [n for n in RSS_NAMES if results and n in results[0].sampler.rss]
    rows = []
    for result in results:
        cells: list[object] = [result.concurrency]
        for name in names:
            series = [kib / 1024 for _, kib in result.sampler.rss.get(name, []) if kib]
            cells.append(
                f"{series[0]:.0f} -> {max(series):.0f} -> {series[-1]:.0f}" if series else "-"
            )
        rows.append(cells)
    heading = "## Resident memory (MiB) per process: start -> peak -> end of each step"
    return [heading, "", *table(["N", *names], rows)]


def memory_over_time(result: RunResult) -> list[str]:
    rss = {name: result.sampler.rss[name] for name in RSS_NAMES if name in result.sampler.rss}
    names = list(rss)
    rows: list[list[object]] = [
        [f"{t:.0f}", *(f"{rss[name][i][1] / 1024:.1f}" for name in names)]
        for i, (t, _) in enumerate(rss[names[0]])
    ]
    rows.append(["MiB/min, 2nd half (fit)", *(f"{mib_per_minute(rss[n]):+.2f}" for n in names)])
    return ["## Resident memory (MiB) over time", "", *table(["t (s)", *names], rows)]


def mib_per_minute(series: list[tuple[float, int]]) -> float:
    """Least-squares slope over the second half: past warm-up, what keeps growing is a leak."""
    half = [(t, kib / 1024) for t, kib in series[len(series) // 2 :] if kib]
    if len(half) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in half) / len(half)
    mean_m = sum(m for _, m in half) / len(half)
    spread = sum((t - mean_t) ** 2 for t, _ in half)
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in half) / spread if spread else 0.0


def minute_table(result: RunResult) -> list[str]:
    """TTFT and CPU per minute of the run (by request start), so that drift shows."""
    rows = []
    minutes = max(1, int(-(-result.duration_s // 60)))
    for minute in range(minutes):
        start, end = minute * 60.0, min(result.duration_s, (minute + 1) * 60.0)
        inside = [s for s in result.samples if start <= s.started - result.t0 < end]
        ok = [s for s in inside if s.ok]
        ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
        cores = " / ".join(f"{result.sampler.cores(n, start, end):.2f}" for n in SERVICES)
        times = [percentile(ttft, 50), percentile(ttft, 99)]
        row: list[object] = [minute + 1, len(inside), len(inside) - len(ok)]
        row += [f"{t:.3f} s" for t in times]
        row += [f"{percentile([s.total_s for s in ok], 99):.2f} s", cores]
        rows.append([*row, f"{result.sampler.cores(MACHINE_BUSY, start, end):.2f}"])
    columns = ["minute", "requests", "errors", "TTFT p50", "TTFT p99", "latency p99"]
    columns += ["CPU cores: " + " / ".join(SERVICES), "machine busy"]
    return ["## Per minute of the run (requests by start time)", "", *table(columns, rows)]


def cpu_table(results: list[RunResult]) -> list[str]:
    """Cores each process used on average: which one runs out of CPU first."""
    ours = [*SERVICES, "redis", "load client", "py-spy"]
    rows = []
    for result in results:
        used = {n: result.sampler.cores(n) for n in ours}
        busy = result.sampler.cores(MACHINE_BUSY)
        rest = busy - sum(v for v in used.values() if v == v)  # NaN: a name without data
        cells = [f"{used[n]:.2f}" if used[n] == used[n] else "-" for n in ours]
        steal = result.sampler.cores(STEAL)
        rows.append([result.concurrency, *cells, f"{busy:.2f}", f"{rest:.2f}", f"{steal:.2f}"])
    return [
        f"## CPU (cores, averaged over the whole step; this machine has {os.cpu_count()})",
        "",
        "`rest` = machine busy minus the processes listed: other people's work on the "
        "machine and kernel time not charged to a process (loopback networking). `steal` = "
        "time the hypervisor gave to other guests.",
        "",
        *table(["N", *ours, MACHINE_BUSY, "rest", STEAL], rows),
    ]


def after_table(results: list[RunResult]) -> list[str]:
    keys = list(results[0].after) if results else []
    rows = [[r.concurrency, *(f"{r.after[k]:g}" for k in keys)] for r in results]
    return ["## After the load (2 s after it stopped)", "", *table(["N", *keys], rows)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--step", default="", help="comma-separated N values, e.g. 4,8,16,32")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per step")
    parser.add_argument("--max-total-s", type=float, default=170.0, help="stop stepping after")
    parser.add_argument("--tokens-per-s", type=float, default=20.0)
    parser.add_argument("--reply-tokens", type=int, default=40)
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy every service into DIR")
    parser.add_argument(
        "--soak", action="store_true", help="hold --concurrency for --duration s, over time"
    )
    parser.add_argument(
        "--sample-every", type=float, help="s between RSS/CPU readings (1, soak: 5)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="default: bench/results/load_cpu.md, or "
        "load_soak.md with --soak (a smoke run: elsewhere)",
    )
    args = parser.parse_args()
    args.out = args.out or RESULTS / ("load_soak.md" if args.soak else "load_cpu.md")
    if args.soak and args.step:
        sys.exit("--soak holds one N (--concurrency); leave out --step")
    if args.sample_every is None:
        args.sample_every = 5.0 if args.soak else 1.0
    args.steps = [int(n) for n in args.step.split(",") if n] or [args.concurrency]
    if max(args.steps) > 512 or args.duration > 600:
        sys.exit("bounded: at most 512 clients and 600 s a step")
    return args


def main() -> None:
    args = parse_args()
    script = " ".join(f"tok{i}" for i in range(args.reply_tokens))
    env = {"generator": scripted(script, args.tokens_per_s)}
    results: list[RunResult] = []
    started = time.monotonic()
    with BenchStack(GATEWAY_ENV, env, prefix="parlance-load-") as stack:
        for n in args.steps:
            if results and time.monotonic() - started + args.duration > args.max_total_s:
                print(f"[load] time budget reached before N={n}", flush=True)
                break
            result = run_once(stack, n, args)
            results.append(result)
            row = summary_row(result)
            print(
                f"[load] N={n}: {row['ok']}/{row['requests']} ok, errors {row['errors']}, "
                f"TTFT p50 {row['ttft p50']:.3f}s p99 {row['ttft p99']:.3f}s, "
                f"latency p99 {row['lat p99']:.2f}s, after {result.after}",
                flush=True,
            )
            for profile in result.profiles:
                if profile.error:
                    print(f"[load] py-spy {profile.service}: {profile.error}", flush=True)
            if args.step and row["ttft p99"] > 1.5:  # type: ignore[operator]
                break
    render(results, args).write(args.out)


if __name__ == "__main__":
    main()
