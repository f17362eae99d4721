"""Gateway overhead: what the gateway adds over calling the generator directly, same engine.

The stack runs as processes (bench/lib/stack.py) with a redis-server of the benchmark's own
and the generator's scripted test engine (GENERATOR_ENGINE=scripted): a fixed reply at a high
token rate, so that generation costs little and what surrounds it dominates. The same
conversation goes three ways, interleaved in rounds (A, B1, B2, A, B1, B2, ...) so that noise
from the machine's other users hits all alike:

    A   the generator directly: GeneratorService.Generate over gRPC (grpc.aio, one channel,
        the request the gateway would build: same messages, same max_tokens)
    B1  the gateway, POST /v1/chat/completions stream=true, moderation off: auth, RPM/TPM
        limits and concurrency leases in Redis (limits set too high to refuse), SSE
    B2  the gateway as shipped: the same plus input and windowed output moderation (safety)

Both gateways are processes on the same generator, safety and Redis; cache off, store false.
Measured: time to the first content token (TTFT) and to the end of the stream at 1 and at 100
concurrent requests (closed loop, a fixed number of requests), the gateway's own Server-Timing
header (where its time goes before the generator's first message), CPU time per request of
every process, and the peak requests/s of each path under a closed loop of rising concurrency
with tiny replies (also with GATEWAY_WORKERS=2).

    .venv/bin/python bench/gateway_overhead.py    # writes bench/results/gateway_overhead.md
    .venv/bin/python bench/gateway_overhead.py --quick --out /tmp/overhead.md    # ~1 min smoke
    .venv/bin/python bench/gateway_overhead.py --baseline 39c309a --c100-only    # before/after

With `--baseline REF`, two more gateways run the gateway's code as it was at git commit REF
(B1@base, B2@base: `git archive` of services/gateway/src and services/common/src put first on
their PYTHONPATH), on the same services, interleaved with the others: a change's effect is a
ratio within one run, which the shared machine's noise does not move much.

The HTTP client is bench/lib's (httpx, one keep-alive connection per worker, opened in the
warm-up, so that no request pays connection set-up, as gRPC's one channel does not either).
It shares the machine's cores with the services; its CPU is in the CPU table (about ten times
what the hand-written client of the runs before bench/lib took: compare peak req/s of B
paths across that change with care).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from lib import baseline as lib_baseline
from lib.client import ChatClient, ChatResult, chat_body
from lib.loop import closed_loop
from lib.procs import MACHINE_BUSY, STEAL, ProcessSampler, children, load_average
from lib.report import Report, out_argument, table
from lib.stack import KEYS, LIMITS_HIGH, MODEL, BenchStack, ServiceProcess, free_port, scripted
from lib.stats import fmt, percentile

from parlance.generator.v1 import generator_pb2, generator_pb2_grpc

# 16 words: the scripted engine's tokens are words, so 16 tokens.
SCRIPT = "Once upon a time a quick brown fox jumped over the lazy dog and ran home."
REQUEST_TIMEOUT_S = 30.0
# The longest a closed loop of the req/s phase may take to complete its first wave.
RAMP_MAX_S = 10.0
GATEWAY_ENV = {
    **LIMITS_HIGH,
    "GATEWAY_CACHE_ENABLED": "false",
    # Nothing is in flight at the end; a short grace keeps the shutdown quick.
    "GATEWAY_SHUTDOWN_GRACE_S": "5",
}
MODERATION_OFF = {"GATEWAY_MODERATE_INPUT": "false", "GATEWAY_MODERATE_OUTPUT": "false"}
CLIENT = "client (this benchmark)"
CPU_COLUMNS = (
    CLIENT,
    "generator",
    "gateway B1",
    "gateway B2",
    "gateway B1@base",
    "gateway B2@base",
    "safety",
    "redis",
    "history",
)
PATH_LABELS = {
    "A": "A: generator direct (gRPC)",
    "B1": "B1: gateway, moderation off",
    "B2": "B2: gateway, moderation on (default)",
    "B1@base": "B1@base: B1 with the --baseline commit's gateway",
    "B2@base": "B2@base: B2 with the --baseline commit's gateway",
    "B1w2": "B1, GATEWAY_WORKERS=2",
    "B2w2": "B2, GATEWAY_WORKERS=2",
}


@dataclass
class PathStats:
    """Everything measured for one path in one phase (all of its interleaved blocks)."""

    samples: list[ChatResult] = field(default_factory=list)
    cpu_s: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> list[ChatResult]:
        return [s for s in self.samples if s.ok]

    def errors(self) -> Counter[str]:
        return Counter(s.error for s in self.samples if s.error)

    def ttft_ms(self) -> list[float]:
        return [s.ttft_s * 1000 for s in self.ok if s.ttft_s is not None]

    def total_ms(self) -> list[float]:
        return [s.total_s * 1000 for s in self.ok]

    def cpu_ms(self, name: str | None = None) -> float:
        """CPU ms per request of one process (None: of all of ours)."""
        seconds = sum(self.cpu_s.values()) if name is None else self.cpu_s.get(name, 0.0)
        return seconds * 1000 / max(1, len(self.samples))

    def added_ms(self, base: PathStats, times: str) -> float:
        """p50 of `times` ("ttft_ms" or "total_ms") here minus the same at `base`."""
        return percentile(getattr(self, times)(), 50) - percentile(getattr(base, times)(), 50)


# --- targets ----------------------------------------------------------------------------------


class Target(Protocol):
    async def request(self, worker: int, prompt: str, max_tokens: int) -> ChatResult: ...

    async def close(self) -> None: ...


class GrpcTarget:
    """Path A: one channel (one HTTP/2 connection) shared by all workers, as the gateway has;
    the GenerateRequest the gateway builds for the same body (messages, max_tokens, n=1, a
    request id in the metadata)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = generator_pb2_grpc.GeneratorServiceStub(self.channel)

    async def request(self, worker: int, prompt: str, max_tokens: int) -> ChatResult:
        request_id = uuid.uuid4().hex
        message = generator_pb2.GenerateRequest(
            request_id=request_id,
            model=MODEL,
            chat=generator_pb2.ChatInput(
                messages=[generator_pb2.ChatMessage(role="user", content=prompt)]
            ),
            sampling=generator_pb2.SamplingParams(max_tokens=max_tokens, n=1),
        )
        result = ChatResult(time.perf_counter())
        try:
            call = self.stub.Generate(
                message, timeout=REQUEST_TIMEOUT_S, metadata=(("x-request-id", request_id),)
            )
            async for response in call:
                if result.ttft_s is None and any(choice.text for choice in response.choices):
                    result.ttft_s = result.since_start()
        except grpc.aio.AioRpcError as exc:
            result.error = f"grpc {exc.code().name}"
        result.total_s = result.since_start()
        if result.error is None and result.ttft_s is None:
            result.error = "no content"
        return result

    async def close(self) -> None:
        await self.channel.close()


class HttpTarget:
    """A gateway; workers alternate the two keys."""

    def __init__(self, port: int) -> None:
        self.client = ChatClient(f"http://127.0.0.1:{port}", timeout_s=REQUEST_TIMEOUT_S)

    async def request(self, worker: int, prompt: str, max_tokens: int) -> ChatResult:
        auth = {"Authorization": f"Bearer {KEYS[worker % len(KEYS)]}"}
        body = chat_body(prompt, MODEL, max_tokens=max_tokens)
        result = await self.client.stream(body, auth, lane=worker)
        if result.error is None and result.ttft_s is None:
            result.error = "no content"
        return result

    async def close(self) -> None:
        await self.client.aclose()


def requests(target: Target, max_tokens: int) -> Callable[[int, int], Awaitable[ChatResult]]:
    def request(worker: int, index: int) -> Awaitable[ChatResult]:
        prompt = f"worker {worker} request {index}: tell me a short story."
        return target.request(worker, prompt, max_tokens)

    return request


# --- phases -----------------------------------------------------------------------------------


@dataclass
class LatencyPhase:
    concurrency: int
    block: int
    stats: dict[str, PathStats]
    machine_busy_s: float = 0.0
    ours_busy_s: float = 0.0
    wall_s: float = 0.0


async def latency_phase(
    targets: dict[str, Target],
    sampler: ProcessSampler,
    concurrency: int,
    per_path: int,
    block: int,
) -> LatencyPhase:
    """`per_path` requests per path at `concurrency`, in blocks of `block`, interleaved."""
    paths = [name for name in PATH_LABELS if name in targets and "w2" not in name]
    phase = LatencyPhase(concurrency, block, {name: PathStats() for name in paths})
    max_tokens = len(SCRIPT.split())
    for name in paths:  # warm-up: connections open, code paths hot; not counted
        warm = max(concurrency, min(per_path // 10, 50))
        await closed_loop(requests(targets[name], max_tokens), concurrency, warm, 60.0)
    phase_started = time.perf_counter()
    rounds = -(-per_path // block)
    for round_index in range(rounds):
        size = min(block, per_path - round_index * block)
        for name in paths:
            before = sampler.cpu_seconds()
            loop = requests(targets[name], max_tokens)
            result = await closed_loop(loop, concurrency, size, 120.0)
            after = sampler.cpu_seconds()
            used = {n: after[n] - before[n] for n in after if n not in (MACHINE_BUSY, STEAL)}
            phase.stats[name].samples.extend(result.results)
            phase.stats[name].cpu_s.update(used)
            phase.machine_busy_s += after[MACHINE_BUSY] - before[MACHINE_BUSY]
            phase.ours_busy_s += sum(used.values())
        medians = (f"{n} {percentile(phase.stats[n].total_ms(), 50):.1f} ms p50" for n in paths)
        print(f"[overhead] c={concurrency} round {round_index + 1}/{rounds}: " + ", ".join(medians))
    phase.wall_s = time.perf_counter() - phase_started
    return phase


@dataclass
class RateCell:
    """One path at one concurrency, over the rounds: the machine's other users only ever
    take throughput away, so the best round is the estimate of the ceiling."""

    rounds: list[float] = field(default_factory=list)
    ttft_p50_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def best(self) -> int:
        return max(range(len(self.rounds)), key=lambda i: self.rounds[i])

    @property
    def requests_per_s(self) -> float:
        return self.rounds[self.best]


async def measure_rate(
    target: Target, level: int, duration_s: float, max_tokens: int, cell: RateCell
) -> None:
    result = await closed_loop(requests(target, max_tokens), level, None, duration_s, RAMP_MAX_S)
    counted = [
        s for s in result.results if s.ok and result.measured_from < s.ended_at <= result.deadline
    ]
    cell.rounds.append(len(counted) / result.window_s if result.window_s > 0 else float("nan"))
    ttft = [s.ttft_s * 1000 for s in counted if s.ttft_s is not None]
    cell.ttft_p50_ms.append(percentile(ttft, 50))
    cell.errors.update(s.error for s in result.results if s.error)


async def rate_phase(
    targets: dict[str, Target], levels: list[int], args: argparse.Namespace
) -> dict[str, dict[int, RateCell]]:
    """Closed loop at each level for `duration_s` after its ramp; req/s counts the requests
    that completed in that window. Rounds go over every level and path in turn."""
    cells = {name: {level: RateCell() for level in levels} for name in targets}
    for round_index in range(args.rates_rounds):
        for level in levels:
            for name, target in targets.items():
                cell = cells[name][level]
                await measure_rate(target, level, args.rates_duration, args.rate_tokens, cell)
            print(
                f"[overhead] rates round {round_index + 1}/{args.rates_rounds} at {level}: "
                + ", ".join(f"{n} {cells[n][level].rounds[-1]:.0f}/s" for n in targets),
                flush=True,
            )
    return cells


# --- the report -------------------------------------------------------------------------------


def latency_table(phase: LatencyPhase) -> list[str]:
    rows = []
    for name, stats in phase.stats.items():
        ttft, total = stats.ttft_ms(), stats.total_ms()
        values = [percentile(v, q) for v in (ttft, total) for q in (50, 99)]
        errors = sum(stats.errors().values())
        rows.append([PATH_LABELS[name], len(stats.samples), errors, *map(fmt, values)])
    columns = ["path", "requests", "errors", "TTFT p50", "TTFT p99", "total p50", "total p99"]
    return table(columns, rows)


def added_table(phase: LatencyPhase) -> list[str]:
    base = phase.stats["A"]
    rows = []
    for name, stats in phase.stats.items():
        if name == "A":
            continue
        ttft, total = (stats.ttft_ms(), base.ttft_ms()), (stats.total_ms(), base.total_ms())
        added = [percentile(b, q) - percentile(a, q) for b, a in (ttft, total) for q in (50, 99)]
        ratios = [(ttft, 50), (total, 50), (total, 99)]
        rows.append(
            [PATH_LABELS[name], *(f"{c:+.1f}" for c in added)]
            + [f"{percentile(b, q) / percentile(a, q):.2f}" for (b, a), q in ratios]
        )
    columns = ["path", "TTFT +p50", "TTFT +p99", "total +p50", "total +p99", "TTFT ×p50"]
    return table([*columns, "total ×p50", "total ×p99"], rows)


def timing_table(phases: list[LatencyPhase]) -> list[str]:
    rows: list[tuple[int, str, dict[str, float]]] = []
    for phase in phases:
        for name, stats in phase.stats.items():
            parsed = [s.server_timing() for s in stats.ok]
            stages = list(dict.fromkeys(n for parts in parsed for n in parts))
            medians = {n: percentile([p[n] for p in parsed if n in p], 50) for n in stages}
            if medians:
                rows.append((phase.concurrency, name, medians))
    names = list(dict.fromkeys(n for _, _, medians in rows for n in medians))
    cells = [
        [c, name, *(fmt(m.get(n, float("nan")), 2) for n in names), f"{sum(m.values()):.2f}"]
        for c, name, m in rows
    ]
    return table(["concurrency", "path", *names, "sum"], cells)


def cpu_table(phase: LatencyPhase) -> list[str]:
    seen = {n for stats in phase.stats.values() for n, v in stats.cpu_s.items() if v > 0}
    names = [n for n in CPU_COLUMNS if n in seen] + sorted(seen - set(CPU_COLUMNS))
    rows = [
        [name, *(f"{stats.cpu_ms(n):.2f}" for n in [*names, None])]
        for name, stats in phase.stats.items()
    ]
    return table(["path", *names, "all ours"], rows)


def rate_text(cell: RateCell) -> str:
    errors = sum(cell.errors.values())
    spread = "/".join(f"{r:.0f}" for r in cell.rounds)
    return (
        f"**{cell.requests_per_s:.0f}** ({spread}; TTFT {fmt(cell.ttft_p50_ms[cell.best])} ms)"
        + (f", **{errors} errors**" if errors else "")
    )


def rates_table(cells: dict[str, dict[int, RateCell]], levels: list[int]) -> list[str]:
    rows: list[list[object]] = [
        [level, *(rate_text(cells[n][level]) for n in cells)] for level in levels
    ]
    peaks = []
    for name in cells:
        level, cell = max(cells[name].items(), key=lambda item: item[1].requests_per_s)
        peaks.append(f"**{cell.requests_per_s:.0f}** at {level}")
    rows.append(["**peak**", *peaks])
    return table(["concurrency", *(PATH_LABELS[n] for n in cells)], rows)


def errors_section(phases: list[LatencyPhase], cells: dict[str, dict[int, RateCell]]) -> list[str]:
    found = [
        f"- c={phase.concurrency} {name}: {count} × `{error}`"
        for phase in phases
        for name, stats in phase.stats.items()
        for error, count in stats.errors().items()
    ]
    found += [
        f"- rates c={level} {name}: {count} × `{error}`"
        for name, by_level in cells.items()
        for level, cell in by_level.items()
        for error, count in cell.errors.items()
    ]
    return found or ["None: every request of every path ended with its full stream."]


def noise_line(phases: list[LatencyPhase]) -> str:
    parts = []
    for phase in phases:
        others = max(0.0, phase.machine_busy_s - phase.ours_busy_s)
        parts.append(
            f"c={phase.concurrency}: machine busy {phase.machine_busy_s / phase.wall_s:.2f} "
            f"of {os.cpu_count()} cores on average, our processes "
            f"{phase.ours_busy_s / phase.wall_s:.2f}, others ≈ {others / phase.wall_s:.2f}"
        )
    return "; ".join(parts)


def baseline_ratios(phase: LatencyPhase) -> str:
    """This code's gateway CPU per request over the baseline's (B2 with safety's CPU), and
    the ratio of the TTFT and total medians."""
    parts = []
    for name, extra in (("B1", ()), ("B2", ("safety",))):
        new, old = phase.stats[name], phase.stats[f"{name}@base"]
        cpu_new = new.cpu_ms(f"gateway {name}") + sum(new.cpu_ms(n) for n in extra)
        cpu_old = old.cpu_ms(f"gateway {name}@base") + sum(old.cpu_ms(n) for n in extra)
        label = f"{name} gateway{' + safety' if extra else ''} CPU"
        ratio = cpu_new / cpu_old
        parts.append(f"{label} {cpu_new:.2f} vs {cpu_old:.2f} ms per request (×{ratio:.2f})")
        for times in ("ttft_ms", "total_ms"):
            ratio = percentile(getattr(new, times)(), 50) / percentile(getattr(old, times)(), 50)
            parts.append(f"{name} {times.removesuffix('_ms').upper()} p50 ×{ratio:.2f}")
    return "; ".join(parts)


def interpretation(phases: list[LatencyPhase], cells: dict[str, dict[int, RateCell]]) -> list[str]:
    """The numbers the 'What this shows' paragraph is built from (computed, not typed)."""
    lines = []
    for phase in phases:
        base, b1, b2 = (phase.stats[n] for n in ("A", "B1", "B2"))
        lines.append(
            f"- At {phase.concurrency} concurrent: the gateway alone (B1) adds "
            f"{b1.added_ms(base, 'total_ms'):+.1f} ms to the median request and "
            f"{b1.added_ms(base, 'ttft_ms'):+.1f} ms to the median TTFT; with moderation (B2) "
            f"{b2.added_ms(base, 'total_ms'):+.1f} ms and {b2.added_ms(base, 'ttft_ms'):+.1f} ms. "
            f"CPU per request: gateway {b1.cpu_ms('gateway B1'):.2f} ms (B1) and "
            f"{b2.cpu_ms('gateway B2'):.2f} ms (B2), safety {b2.cpu_ms('safety'):.2f} ms (B2)."
        )
        if "B1@base" in phase.stats:
            lines.append(f"  - Against the baseline in the same run: {baseline_ratios(phase)}.")
    peak = {name: max(c.requests_per_s for c in by.values()) for name, by in cells.items() if by}
    if peak:
        lines.append("- Peak req/s: " + ", ".join(f"{n} {v:.0f}" for n, v in peak.items()) + ".")
    return lines


def render(
    args: argparse.Namespace,
    phases: list[LatencyPhase],
    cells: dict[str, dict[int, RateCell]],
    levels: list[int],
    load_before: str,
) -> Report:
    reply_tokens = len(SCRIPT.split())
    report = Report(
        "Gateway overhead: the gateway vs the generator directly (CPU, scripted engine)",
        f"Load average (1/5/15 min) before: {load_before}; after: {load_average()}. Other "
        "people may run tests on this machine at the same time: the numbers are noisy, and the "
        "interleaving (A, B1, B2 in turn, in blocks) is there so that the noise hits all "
        "paths alike.",
        f"Engine: scripted (GENERATOR_ENGINE=scripted), reply of {reply_tokens} tokens "
        f"(words) at {args.tokens_per_s:g} tokens/s (~{reply_tokens / args.tokens_per_s * 1000:.0f}"
        " ms of pacing per reply), the same for every path.",
        "Gateways: GATEWAY_WORKERS=1 unless marked; cache off, store false, titles off; "
        "RPM/TPM and the per-key concurrency lease ON but set too high to refuse (every "
        "request still makes its GCRA and lease round trips to Redis). B1: "
        "GATEWAY_MODERATE_INPUT=false, GATEWAY_MODERATE_OUTPUT=false. B2: the shipped defaults "
        "(input moderation, then output held back in windows classified by the safety service, "
        "light classifier). All gateways run at the same time on the one generator, safety, "
        "history and Redis.",
        "Clients: A: grpc.aio, one channel shared by all workers (as the gateway does). B: "
        "bench/lib's httpx client, one keep-alive connection per worker (opened in the "
        "warm-up), SSE read with httpx-sse to `data: [DONE]`. TTFT = first non-empty content "
        "(A: first GenerateResponse with text; B: first SSE delta with content); total = end "
        "of stream.",
        f"The load client runs on the same {len(os.sched_getaffinity(0))} cores as all the "
        "services: at high concurrency it competes with them for CPU (its own CPU per request "
        "is in the CPU table).",
    )
    report.add("", "Times in milliseconds.")
    for phase in phases:
        report.section(
            f"{phase.concurrency} concurrent request{'s' if phase.concurrency > 1 else ''} "
            f"(closed loop, {len(phase.stats['A'].samples)} requests per path, "
            f"{phase.block} per block, interleaved)",
            *latency_table(phase),
            "",
            "Added by the gateway (B − A) and ratio B / A:",
            "",
            *added_table(phase),
            "",
            "CPU time per request (ms) by process, over this phase's measured blocks (each "
            "process's user + system CPU time; idle processes still tick a little):",
            "",
            *cpu_table(phase),
        )
    report.section(
        "Where the gateway's time goes before the first generator message (Server-Timing)",
        "Medians (ms) of each stage of the gateway's `Server-Timing` header (each stage runs "
        "from the end of the one before): auth (from the request's arrival: body read and "
        "parsed into the schema, key lookup, and the RPM decision in Redis), limits "
        "(validation, the TPM decision and the lease in Redis), context, moderation (input "
        "classification by safety), generator (opening the gRPC stream until the generator's "
        "first message, i.e. its first token). The header covers the request up to the "
        "response headers; output moderation, SSE writing and the end-of-request work (lease "
        "release, TPM reconciliation) come after it. At 100 concurrent, every stage also holds "
        "the wait for the gateway's one event loop.",
        "",
        *timing_table(phases),
    )
    rate_reply = " ".join(SCRIPT.split()[: args.rate_tokens])
    report.section(
        "Baseline",
        f"B1@base and B2@base run the gateway of commit `{args.baseline}` (--baseline), "
        "interleaved with the others on the same services."
        if args.baseline
        else "None (no --baseline).",
    )
    if not levels:
        report.section("Errors", *errors_section(phases, cells))
        report.section("Machine noise during the latency phases", noise_line(phases) + ".")
        report.section(
            "Numbers for the reading below (computed by the benchmark)",
            *interpretation(phases, cells),
        )
        return report
    report.section(
        f"Peak requests/s (closed loop, {args.rates_duration:g} s per cell after its first "
        "wave (as many requests done as workers), "
        f'max_tokens {args.rate_tokens}: reply "{rate_reply}")',
        f"Completed requests per second at each number of closed-loop workers, {args.rates_rounds}"
        " round(s) over all cells in turn: in bold the best round (others' load only takes "
        "throughput away), in brackets every round and the median TTFT of the best one. The "
        "load client shares the cores with the services (and with the machine's other users), "
        "so these are ceilings of this whole machine, not of the gateway alone.",
        "",
        *rates_table(cells, levels),
    )
    report.section("Errors", *errors_section(phases, cells))
    report.section(
        "Machine noise during the latency phases",
        noise_line(phases) + " (from the machine's and our processes' CPU time, psutil).",
    )
    report.section(
        "Numbers for the reading below (computed by the benchmark)", *interpretation(phases, cells)
    )
    return report


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests-c1", type=int, default=200, help="per path, sequential")
    parser.add_argument("--requests-c100", type=int, default=2000, help="per path, at 100")
    parser.add_argument("--block-c1", type=int, default=20, help="requests per interleaved block")
    parser.add_argument("--block-c100", type=int, default=400)
    parser.add_argument("--rates-duration", type=float, default=2.5, help="seconds per cell")
    parser.add_argument("--rates-rounds", type=int, default=2, help="the best round counts")
    parser.add_argument("--rates-levels", default="1,8,32,64,128,256")
    parser.add_argument("--rate-tokens", type=int, default=4, help="max_tokens for req/s")
    parser.add_argument("--tokens-per-s", type=float, default=1000.0)
    parser.add_argument(
        "--workers2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure req/s with GATEWAY_WORKERS=2",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run B1 and B2 on the gateway code of git commit REF (B1@base, B2@base)",
    )
    parser.add_argument(
        "--c100-only",
        action="store_true",
        help="only the 100-concurrent latency phase (no c=1, no req/s, no two-worker gateways)",
    )
    out_argument(parser, "gateway_overhead.md")
    args = parser.parse_args()
    if args.quick:
        args.requests_c1, args.requests_c100 = 30, 300
        args.block_c1, args.block_c100 = 10, 100
        args.rates_duration, args.rates_levels, args.rates_rounds = 1.0, "1,32,256", 1
    if args.c100_only:
        args.workers2, args.rates_levels = False, ""
    args.levels = [int(n) for n in args.rates_levels.split(",") if n]
    if (
        args.requests_c1 > 5000
        or args.requests_c100 > 50000
        or args.rates_duration > 60
        or not 1 <= args.rates_rounds <= 5
        or max(args.levels, default=0) > 1024
    ):
        sys.exit("bounded: 5000 / 50000 requests per path, 60 s a cell, 5 rounds, 1024 workers")
    return args


def start_gateways(
    stack: BenchStack, workers2: bool, baseline_path: str | None
) -> dict[str, ServiceProcess]:
    """The gateways by path name; B2 is the stack's own (the shipped defaults)."""
    # Each extra gateway gets a metrics port of its own (the stack's gateway has the default).
    extra = {"B1": MODERATION_OFF}
    if baseline_path is not None:
        extra |= {"B1@base": {**MODERATION_OFF, "PYTHONPATH": baseline_path}}
        extra |= {"B2@base": {"PYTHONPATH": baseline_path}}
    if workers2:
        extra |= {"B1w2": {**MODERATION_OFF, "GATEWAY_WORKERS": "2"}}
        extra |= {"B2w2": {"GATEWAY_WORKERS": "2"}}
    started = {
        name: stack.extra_gateway({**env, "GATEWAY_METRICS_PORT": str(free_port())})
        for name, env in extra.items()
    }
    # In the report's order: B1, B2, the baseline's, then the two-worker ones.
    return {"B1": started.pop("B1"), "B2": stack.services["gateway"], **started}


async def measure(
    stack: BenchStack, gateways: dict[str, ServiceProcess], args: argparse.Namespace
) -> tuple[list[LatencyPhase], dict[str, dict[int, RateCell]]]:
    port = stack.services["generator"].grpc_port
    assert port is not None
    targets: dict[str, Target] = {"A": GrpcTarget(port)}
    for name, gateway in gateways.items():
        assert gateway.http_port is not None
        targets[name] = HttpTarget(gateway.http_port)
    # The GATEWAY_WORKERS=2 gateways idle in the latency phases (they serve req/s only).
    pids = {name: [pid] for name, pid in stack.pids().items() if name != "gateway"}
    for name in (n for n in gateways if "w2" not in n):
        assert gateways[name].process is not None
        supervisor = gateways[name].process.pid  # type: ignore[union-attr]
        pids[f"gateway {name}"] = [supervisor, *children(supervisor)]
    sampler = ProcessSampler({**pids, CLIENT: os.getpid()})
    try:
        phases = []
        if not args.c100_only:
            phases.append(await latency_phase(targets, sampler, 1, args.requests_c1, args.block_c1))
        phases.append(
            await latency_phase(targets, sampler, 100, args.requests_c100, args.block_c100)
        )
        return phases, await rate_phase(targets, args.levels, args)
    finally:
        for target in targets.values():
            await target.close()


def main() -> None:
    args = parse_args()
    load_before = load_average()
    env = {"generator": scripted(SCRIPT, args.tokens_per_s)}
    baseline_dir = tempfile.mkdtemp(prefix="parlance-overhead-base-")
    try:
        baseline = (
            lib_baseline.export(args.baseline, baseline_dir, ("gateway", "common"))
            if args.baseline
            else None
        )
        with BenchStack(GATEWAY_ENV, env, prefix="parlance-overhead-") as stack:
            gateways = start_gateways(stack, args.workers2, baseline)
            phases, cells = asyncio.run(measure(stack, gateways, args))
    finally:
        shutil.rmtree(baseline_dir, ignore_errors=True)
    render(args, phases, cells, args.levels, load_before).write(args.out)


if __name__ == "__main__":
    main()
