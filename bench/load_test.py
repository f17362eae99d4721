"""Load test: N concurrent streaming conversations against the whole stack, on loopback.

The stack runs as processes (scripts/devstack.py) with a redis-server of the benchmark's own
and the generator's scripted test engine (GENERATOR_ENGINE=scripted): it emits a fixed reply
at a set token rate without a model, so the load lands on everything around the model:
gateway (auth, limits, leases, cache lookup, SSE), safety (input and windowed output
moderation), history (store: true) and Redis. Each of N clients runs a closed loop: open a
stream, read it to [DONE], repeat, for --duration seconds. Bounded in count and time.

Reported: requests, errors by kind, TTFT (first content token) and end-to-end latency
percentiles, resident memory of every process over time (/proc), and afterwards the gateway's
leases and in-flight requests, the history outbox depth, the generator's running requests and
the lease sets left in Redis.

    .venv/bin/python bench/load_test.py --concurrency 16 --duration 60
    .venv/bin/python bench/load_test.py --step 4,8,16,32,64 --duration 20   # find p99 TTFT > 1 s
    .venv/bin/python bench/load_test.py ... --out bench/results/load_cpu.md

The client is a minimal asyncio HTTP/1.1 client (one connection per request), to take as
little of the machine's CPU from the stack as possible; it still shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import (  # noqa: E402
    ALICE_KEY,
    BOB_KEY,
    MODEL,
    Stack,
    scrape,
    start_redis_server,
    start_stack,
    total,
)

KEYS = (ALICE_KEY, BOB_KEY)


@dataclass
class Sample:
    ttft_s: float | None
    latency_s: float
    tokens: int
    error: str | None = None


@dataclass
class RunResult:
    concurrency: int
    duration_s: float
    samples: list[Sample] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def one_stream(port: int, key: str, prompt: str, store: bool) -> Sample:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "store": store,
        }
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        status = status_line.split(b" ", 2)[1].decode() if status_line else "eof"
        if status != "200":
            return Sample(None, time.perf_counter() - started, 0, f"http {status}")
        done = False
        while line := await reader.readline():
            if line.startswith(b"data: [DONE]"):
                done = True
                break
            if ttft is None and line.startswith(b"data: ") and b'"content":"' in line:
                ttft = time.perf_counter() - started
            if b'"completion_tokens":' in line:
                tokens = int(line.split(b'"completion_tokens":', 1)[1].split(b",", 1)[0])
            elif line.startswith(b"data: ") and b'"error"' in line:
                return Sample(ttft, time.perf_counter() - started, tokens, "stream error")
        error = None if done else "stream ended without [DONE]"
        return Sample(ttft, time.perf_counter() - started, tokens, error)
    except OSError as exc:
        return Sample(ttft, time.perf_counter() - started, tokens, type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()


async def client_loop(
    port: int, index: int, deadline: float, store: bool, samples: list[Sample]
) -> None:
    key = KEYS[index % len(KEYS)]
    turn = 0
    while time.perf_counter() < deadline:
        turn += 1
        samples.append(await one_stream(port, key, f"client {index} turn {turn}: hello", store))


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    def __init__(self, pids: dict[str, int], every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.every_s = every_s
        self.series: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self.stopped = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stopped.is_set():
            now = time.perf_counter() - self.t0
            for name, pid in self.pids.items():
                self.series[name].append((now, rss_kib(pid)))
            self.stopped.wait(self.every_s)


def state_after(stack: Stack, redis_url: str) -> dict[str, float]:
    """Leases, slots, outbox and engine queue once the load has stopped (after a short settle)."""
    time.sleep(2)
    with urllib.request.urlopen(f"{stack.gateway_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    gateway = {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }
    generator_port = stack.services["generator"].metrics_port
    generator = scrape(generator_port) if generator_port else {}
    with urllib.request.urlopen(f"{stack.gateway_url}/readyz", timeout=10) as reply:
        ready = json.loads(reply.read())
    import redis

    client = redis.Redis.from_url(redis_url)
    lease_keys = [k for k in client.scan_iter(count=1000) if b"lease" in k]
    leases_in_redis = sum(client.zcard(k) for k in lease_keys)
    client.close()
    # The outbox holds exchanges history could not take yet; nothing is lost if it drains.
    drain_started = time.perf_counter()
    depth = float(ready.get("history_outbox_depth", 0))
    while depth > 0 and time.perf_counter() - drain_started < 60:
        time.sleep(0.5)
        with urllib.request.urlopen(f"{stack.gateway_url}/readyz", timeout=10) as reply:
            depth = float(json.loads(reply.read()).get("history_outbox_depth", 0))
    drained_s = time.perf_counter() - drain_started if depth == 0 else float("inf")
    return {
        "outbox drained after (s)": round(drained_s, 1),
        "gateway leases held": gateway.get("parlance_gateway_leases_held", float("nan")),
        "gateway requests in flight": gateway.get(
            "parlance_gateway_requests_in_flight", float("nan")
        ),
        "history outbox depth": float(ready.get("history_outbox_depth", float("nan"))),
        "generator requests running": total(generator, "parlance_generator_requests_running"),
        "generator requests waiting": total(generator, "parlance_generator_requests_waiting"),
        "lease entries in Redis": float(leases_in_redis),
    }


def run_once(
    stack: Stack, redis_url: str, concurrency: int, duration_s: float, store: bool
) -> RunResult:
    port = stack.services["gateway"].http_port
    assert port is not None
    pids = {
        name: service.process.pid
        for name, service in stack.services.items()
        if service.process is not None
    }
    sampler = MemorySampler(pids)
    sampler.start()
    result = RunResult(concurrency, duration_s)

    async def main() -> None:
        deadline = time.perf_counter() + duration_s
        await asyncio.gather(
            *(client_loop(port, i, deadline, store, result.samples) for i in range(concurrency))
        )

    asyncio.run(main())
    sampler.stopped.set()
    sampler.join()
    result.rss = sampler.series
    result.after = state_after(stack, redis_url)
    return result


def summary_row(result: RunResult) -> dict[str, object]:
    ok = [s for s in result.samples if s.error is None]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    latency = [s.latency_s for s in ok]
    errors = Counter(s.error for s in result.samples if s.error)
    return {
        "N": result.concurrency,
        "requests": len(result.samples),
        "ok": len(ok),
        "errors": dict(errors),
        "req/s": len(ok) / result.duration_s,
        "tokens/s": sum(s.tokens for s in ok) / result.duration_s,
        "ttft p50": percentile(ttft, 50),
        "ttft p90": percentile(ttft, 90),
        "ttft p99": percentile(ttft, 99),
        "lat p50": percentile(latency, 50),
        "lat p99": percentile(latency, 99),
    }


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs (nproc), {cpu}{mem}, Python {platform.python_version()}"


def render(results: list[RunResult], args: argparse.Namespace) -> str:
    lines = [
        "# Load test: concurrent streaming conversations (CPU, scripted test engine)",
        "",
        f"- Machine: {machine()}; load client on the same machine.",
        f"- Command: `.venv/bin/python bench/load_test.py {' '.join(sys.argv[1:])}`",
        f"- Engine: scripted, {args.reply_tokens} tokens a reply at {args.tokens_per_s:g} "
        f"tokens/s per stream (~{args.reply_tokens / args.tokens_per_s:.1f} s of pure "
        f"generation); store={args.store}; input and output moderation on (light classifier); "
        "keys alice and bob alternating; limits off.",
        f"- {args.duration:g} s of closed-loop load per step.",
        "",
        "| N | requests | ok | errors | req/s | tokens/s | TTFT p50 | TTFT p90 | TTFT p99 "
        "| latency p50 | latency p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        row = summary_row(result)
        lines.append(
            f"| {row['N']} | {row['requests']} | {row['ok']} | {row['errors'] or 0} "
            f"| {row['req/s']:.1f} | {row['tokens/s']:.0f} | {row['ttft p50']:.3f} s "
            f"| {row['ttft p90']:.3f} s | {row['ttft p99']:.3f} s | {row['lat p50']:.2f} s "
            f"| {row['lat p99']:.2f} s |"
        )
    lines += ["", "## Resident memory (MiB) per process: start -> peak -> end of each step", ""]
    names = list(results[0].rss) if results else []
    lines.append("| N | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for result in results:
        cells = []
        for name in names:
            series = [kib for _, kib in result.rss.get(name, []) if kib]
            if series:
                cells.append(
                    f"{series[0] / 1024:.0f} -> {max(series) / 1024:.0f} -> {series[-1] / 1024:.0f}"
                )
            else:
                cells.append("-")
        lines.append(f"| {result.concurrency} | " + " | ".join(cells) + " |")
    lines += ["", "## After each step (2 s after the load stopped)", ""]
    keys = list(results[0].after) if results else []
    lines.append("| N | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for result in results:
        lines.append(
            f"| {result.concurrency} | " + " | ".join(f"{result.after[k]:g}" for k in keys) + " |"
        )
    knee = next((r for r in results if summary_row(r)["ttft p99"] > 1.0), None)  # type: ignore[operator]
    lines.append("")
    if args.step:
        lines.append(
            f"p99 TTFT first passes 1 s at N = {knee.concurrency}."
            if knee
            else "p99 TTFT stayed under 1 s at every N tried."
        )
    return "\n".join(lines) + "\n"


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the benchmark's own (nothing shared with other users of Redis)."""
    try:
        return start_redis_server()
    except RuntimeError as exc:
        sys.exit(str(exc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--step", default="", help="comma-separated N values, e.g. 4,8,16,32")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per step")
    parser.add_argument("--max-total-s", type=float, default=170.0, help="stop stepping after")
    parser.add_argument("--tokens-per-s", type=float, default=20.0)
    parser.add_argument("--reply-tokens", type=int, default=40)
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    steps = [int(n) for n in args.step.split(",") if n] or [args.concurrency]
    if max(steps) > 512 or args.duration > 600:
        sys.exit("bounded: at most 512 clients and 600 s a step")

    redis_process, redis_url = start_redis()
    data_dir = Path(tempfile.mkdtemp(prefix="parlance-load-"))
    script = " ".join(f"tok{i}" for i in range(args.reply_tokens))
    stack = start_stack(
        data_dir,
        redis_url,
        gateway_env={
            "GATEWAY_RPM_LIMIT": "0",
            "GATEWAY_TPM_LIMIT": "0",
            "GATEWAY_MAX_CONCURRENT_PER_KEY": "1000",
            "GATEWAY_MAX_CONCURRENT_REQUESTS": "1024",
            "GATEWAY_GENERATE_TITLES": "false",
        },
        env={
            "generator": {
                "GENERATOR_ENGINE": "scripted",
                "GENERATOR_SCRIPTED_TEXT": script,
                "GENERATOR_SCRIPTED_TOKENS_PER_S": str(args.tokens_per_s),
            }
        },
    )
    results: list[RunResult] = []
    started = time.monotonic()
    try:
        for n in steps:
            if time.monotonic() - started + args.duration > args.max_total_s and results:
                print(f"[load] time budget reached before N={n}", flush=True)
                break
            result = run_once(stack, redis_url, n, args.duration, args.store)
            results.append(result)
            row = summary_row(result)
            print(
                f"[load] N={n}: {row['ok']}/{row['requests']} ok, errors {row['errors']}, "
                f"TTFT p50 {row['ttft p50']:.3f}s p99 {row['ttft p99']:.3f}s, "
                f"latency p99 {row['lat p99']:.2f}s, after {result.after}",
                flush=True,
            )
            if args.step and row["ttft p99"] > 1.5:  # type: ignore[operator]
                break
    finally:
        stack.stop()
        redis_process.terminate()
        redis_process.wait(5)
        shutil.rmtree(data_dir, ignore_errors=True)
    report = render(results, args)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
