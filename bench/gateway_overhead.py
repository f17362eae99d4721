"""Gateway overhead: what the gateway adds over calling the generator directly, same engine.

The stack runs as processes (scripts/devstack.py, as bench/load_test.py starts it) with a
redis-server of the benchmark's own and the generator's scripted test engine
(GENERATOR_ENGINE=scripted): a fixed reply at a high token rate, so that generation costs little
and what surrounds it dominates. The same conversation goes three ways, interleaved in rounds
(A, B1, B2, A, B1, B2, ...) so that noise from the machine's other users hits all alike:

    A   the generator directly: GeneratorService.Generate over gRPC (grpc.aio, one channel,
        the request the gateway would build: same messages, same max_tokens)
    B1  the gateway, POST /v1/chat/completions stream=true, moderation off: auth, RPM/TPM
        limits and concurrency leases in Redis (limits set too high to refuse), SSE
    B2  the gateway as shipped: the same plus input and windowed output moderation (safety)

Both gateways are processes on the same generator, safety and Redis; cache off, store false.
Measured: time to the first content token (TTFT) and to the end of the stream ([DONE]) at 1
and at 100 concurrent requests (closed loop, a fixed number of requests), the gateway's own
Server-Timing header (where its time goes before the generator's first message), CPU time per
request of every process, and the peak requests/s of each path under a closed loop of rising
concurrency with tiny replies (also with GATEWAY_WORKERS=2).

    .venv/bin/python bench/gateway_overhead.py --out bench/results/gateway_overhead.md
    .venv/bin/python bench/gateway_overhead.py --quick        # ~1 minute smoke

The HTTP client is a minimal asyncio HTTP/1.1 client with one keep-alive connection per
worker (chunked SSE parsed by hand), so that it takes as little CPU from the stack as possible
and pays no connection set-up per request, as gRPC's one channel does not either. It still
shares the machine's cores with the services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
from benchlib import machine  # noqa: E402
from helpers import (  # noqa: E402
    ALICE_KEY,
    BOB_KEY,
    MODEL,
    ServiceProcess,
    Stack,
    start_extra_gateway,
    start_redis_server,
    start_stack,
)

from parlance.generator.v1 import generator_pb2, generator_pb2_grpc  # noqa: E402

KEYS = (ALICE_KEY, BOB_KEY)
# 16 words: the scripted engine's tokens are words, so 16 tokens.
SCRIPT = "Once upon a time a quick brown fox jumped over the lazy dog and ran home."
REQUEST_TIMEOUT_S = 30.0
# The longest a closed loop of the req/s phase may take to complete its first wave.
RAMP_MAX_S = 10.0
# High enough that no limit ever refuses, while every check still runs against Redis (the
# shipped default path: GCRA for RPM and TPM, a lease per request).
LIMITS_ENV = {
    "GATEWAY_RPM_LIMIT": "100000000",
    "GATEWAY_TPM_LIMIT": "10000000000",
    "GATEWAY_MAX_CONCURRENT_PER_KEY": "1000000",
    "GATEWAY_MAX_CONCURRENT_REQUESTS": "4096",
    "GATEWAY_CACHE_ENABLED": "false",
    "GATEWAY_GENERATE_TITLES": "false",
    # Nothing is in flight at the end; a short grace keeps the shutdown quick.
    "GATEWAY_SHUTDOWN_GRACE_S": "5",
}
MODERATION_OFF = {"GATEWAY_MODERATE_INPUT": "false", "GATEWAY_MODERATE_OUTPUT": "false"}
CPU_COLUMNS = (
    "client (this benchmark)",
    "generator",
    "gateway B1",
    "gateway B2",
    "safety",
    "redis",
    "history",
)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PATH_LABELS = {
    "A": "A: generator direct (gRPC)",
    "B1": "B1: gateway, moderation off",
    "B2": "B2: gateway, moderation on (default)",
    "B1w2": "B1, GATEWAY_WORKERS=2",
    "B2w2": "B2, GATEWAY_WORKERS=2",
}


# --- samples and statistics -------------------------------------------------------------------


@dataclass
class Sample:
    ttft_s: float | None
    latency_s: float
    ended_at: float
    error: str | None = None
    server_timing: str = ""


@dataclass
class PathStats:
    """Everything measured for one path in one phase (all of its interleaved blocks)."""

    samples: list[Sample] = field(default_factory=list)
    cpu_s: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    def errors(self) -> Counter[str]:
        return Counter(s.error for s in self.samples if s.error)

    def ttft_ms(self) -> list[float]:
        return [s.ttft_s * 1000 for s in self.ok if s.ttft_s is not None]

    def total_ms(self) -> list[float]:
        return [s.latency_s * 1000 for s in self.ok]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_server_timing(header: str) -> dict[str, float]:
    """'auth;dur=0.10, limits;dur=1.20' -> {'auth': 0.1, 'limits': 1.2} (ms)."""
    parts: dict[str, float] = {}
    for item in header.split(","):
        name, _, rest = item.strip().partition(";dur=")
        if name and rest:
            try:
                parts[name] = float(rest)
            except ValueError:
                continue
    return parts


# --- clients ----------------------------------------------------------------------------------


class Client(Protocol):
    async def request(self, prompt: str, max_tokens: int) -> Sample: ...

    async def close(self) -> None: ...


class Target(Protocol):
    name: str

    def client(self, worker: int) -> Client: ...

    async def close(self) -> None: ...


class GrpcClient:
    """Path A: the GenerateRequest the gateway builds (serving._generate_request) for the same
    body: the messages, max_tokens, n=1, a request id in the metadata."""

    def __init__(self, stub: generator_pb2_grpc.GeneratorServiceStub) -> None:
        self.stub = stub

    async def request(self, prompt: str, max_tokens: int) -> Sample:
        request_id = uuid.uuid4().hex
        message = generator_pb2.GenerateRequest(
            request_id=request_id,
            model=MODEL,
            chat=generator_pb2.ChatInput(
                messages=[generator_pb2.ChatMessage(role="user", content=prompt)]
            ),
            sampling=generator_pb2.SamplingParams(max_tokens=max_tokens, n=1),
        )
        started = time.perf_counter()
        ttft: float | None = None
        try:
            call = self.stub.Generate(
                message, timeout=REQUEST_TIMEOUT_S, metadata=(("x-request-id", request_id),)
            )
            async for response in call:
                if ttft is None and any(choice.text for choice in response.choices):
                    ttft = time.perf_counter() - started
        except grpc.aio.AioRpcError as exc:
            ended = time.perf_counter()
            return Sample(ttft, ended - started, ended, f"grpc {exc.code().name}")
        ended = time.perf_counter()
        error = None if ttft is not None else "no content"
        return Sample(ttft, ended - started, ended, error)

    async def close(self) -> None:
        return None


class GrpcTarget:
    """One channel (one HTTP/2 connection) shared by all workers, as the gateway has."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._client = GrpcClient(generator_pb2_grpc.GeneratorServiceStub(self.channel))

    def client(self, worker: int) -> Client:
        return self._client

    async def close(self) -> None:
        await self.channel.close()


class HttpError(Exception):
    pass


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise HttpError("connection closed")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; b"" for the last one (trailers are not used here)."""
    size = int((await reader.readline()).split(b";", 1)[0], 16)
    if size == 0:
        await reader.readline()
        return b""
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    body = b""
    while chunk := await read_chunk(reader):
        body += chunk
    return body


def has_content(line: bytes) -> bool:
    """An SSE chunk with a non-empty delta.content (the role chunk carries none)."""
    index = line.find(b'"content":"')
    return index >= 0 and line[index + 11 : index + 12] != b'"'


@dataclass
class _Progress:
    """What one HTTP request saw, as it went (perf_counter times)."""

    started: float
    first_at: float | None = None
    done_at: float | None = None
    server_timing: str = ""


class HttpClient:
    """One keep-alive HTTP/1.1 connection, one request at a time (a closed-loop worker)."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        )
        self.connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.connection is not None and self.connection[0].at_eof():
            # uvicorn closes a keep-alive connection idle for 5 s (timeout_keep_alive), as it
            # is between blocks of the other paths: open a new one, as any HTTP client would.
            await self.close()
        if self.connection is None:
            self.connection = await asyncio.open_connection("127.0.0.1", self.port)
        return self.connection

    async def close(self) -> None:
        if self.connection is not None:
            self.connection[1].close()
            self.connection = None

    async def request(self, prompt: str, max_tokens: int) -> Sample:
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "stream": True,
            }
        ).encode()
        payload = f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        progress = _Progress(time.perf_counter())
        try:
            # Connection set-up stays out of the latency, as it is for the gRPC channel,
            # connected once: it happens only for a new worker or after an idle close.
            await self._connect()
            progress.started = time.perf_counter()
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                error = await self._exchange(payload, progress)
        except (OSError, EOFError, HttpError, ValueError, IndexError, TimeoutError) as exc:
            # The connection's state is unknown: start a fresh one next time.
            await self.close()
            error = type(exc).__name__
        ended = progress.done_at or time.perf_counter()
        ttft = None if progress.first_at is None else progress.first_at - progress.started
        return Sample(ttft, ended - progress.started, ended, error, progress.server_timing)

    async def _exchange(self, payload: bytes, progress: _Progress) -> str | None:
        reader, writer = await self._connect()
        writer.write(payload)
        await writer.drain()
        status, headers = await read_head(reader)
        progress.server_timing = headers.get("server-timing", "")
        if status != 200:
            text = await read_body(reader, headers)
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return f"http {status}: {text[:120].decode(errors='replace')}"
        error: str | None = "stream ended without [DONE]"
        pending = b""
        while chunk := await read_chunk(reader):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data: [DONE]"):
                    # Latency ends here; the final empty chunk is read only so that the
                    # connection can be reused.
                    progress.done_at = time.perf_counter()
                    error = None if progress.first_at is not None else "no content"
                elif line.startswith(b'data: {"error"'):
                    error = "stream error: " + line[6:126].decode(errors="replace")
                elif progress.first_at is None and has_content(line):
                    progress.first_at = time.perf_counter()
        return error


class HttpTarget:
    """A gateway; each worker keeps its own connection across blocks (opened once, in the
    warm-up), so no request pays TCP and uvicorn set-up."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.clients: dict[int, HttpClient] = {}

    def client(self, worker: int) -> Client:
        if worker not in self.clients:
            self.clients[worker] = HttpClient(self.port, KEYS[worker % len(KEYS)])
        return self.clients[worker]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


# --- CPU accounting ---------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    """Direct children (uvicorn's worker processes when GATEWAY_WORKERS > 1)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all users), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds of our processes (by name) and of the whole machine over a block."""

    pids: dict[str, list[int]]
    start: dict[str, float] = field(default_factory=dict)
    machine_start: float = 0.0

    def snapshot(self) -> dict[str, float]:
        now = {name: sum(process_cpu_s(p) for p in pids) for name, pids in self.pids.items()}
        now["client (this benchmark)"] = process_cpu_s(os.getpid())
        return now

    def begin(self) -> None:
        self.start = self.snapshot()
        self.machine_start = machine_busy_s()

    def end(self) -> tuple[dict[str, float], float]:
        now = self.snapshot()
        return {k: now[k] - self.start.get(k, 0.0) for k in now}, (
            machine_busy_s() - self.machine_start
        )


# --- the closed loop --------------------------------------------------------------------------


@dataclass
class Block:
    samples: list[Sample]
    # The measured window: from the end of the ramp (or the start) to the deadline.
    measured_from: float
    deadline: float


async def closed_loop(
    target: Target,
    concurrency: int,
    max_tokens: int,
    count: int | None,
    duration_s: float,
    ramp: bool = False,
) -> Block:
    """`concurrency` workers, each sending its next request when the last one ended, until
    `count` requests were sent or `duration_s` passed (whichever first). With `ramp`, the
    `duration_s` starts once as many requests completed as there are workers (at most
    RAMP_MAX_S after the start): a closed loop reaches its steady state only after its first
    wave, which takes one latency, long at high concurrency."""
    samples: list[Sample] = []
    sent = 0
    block = Block(samples, time.perf_counter(), 0.0)
    block.deadline = block.measured_from + duration_s + (RAMP_MAX_S if ramp else 0.0)
    ramping = ramp

    async def worker(index: int) -> None:
        nonlocal sent, ramping
        client = target.client(index)
        turn = 0
        while time.perf_counter() < block.deadline and (count is None or sent < count):
            sent += 1
            turn += 1
            prompt = f"worker {index} turn {turn}: tell me a short story."
            samples.append(await client.request(prompt, max_tokens))
            if ramping and len(samples) >= concurrency:
                ramping = False
                block.measured_from = time.perf_counter()
                block.deadline = block.measured_from + duration_s

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    if ramping:  # the first wave never completed: measure the whole run
        block.deadline = min(block.deadline, time.perf_counter())
    return block


# --- phases -----------------------------------------------------------------------------------


@dataclass
class Machinery:
    """The targets and what the CPU meter watches."""

    targets: dict[str, Target]
    pids: dict[str, list[int]]


@dataclass
class LatencyPhase:
    concurrency: int
    stats: dict[str, PathStats]
    machine_busy_s: float = 0.0
    ours_busy_s: float = 0.0
    wall_s: float = 0.0


async def latency_phase(
    machinery: Machinery,
    paths: list[str],
    concurrency: int,
    per_path: int,
    block: int,
    max_tokens: int,
) -> LatencyPhase:
    """`per_path` requests per path at `concurrency`, in blocks of `block`, interleaved."""
    phase = LatencyPhase(concurrency, {name: PathStats() for name in paths})
    # Warm-up: connections open, code paths hot; not counted.
    for name in paths:
        warm = max(concurrency, min(per_path // 10, 50))
        await closed_loop(machinery.targets[name], concurrency, max_tokens, warm, 60.0)
    # The GATEWAY_WORKERS=2 gateways idle in this phase (they serve the req/s phase only).
    meter = CpuMeter({n: p for n, p in machinery.pids.items() if not n.endswith("w2")})
    phase_started = time.perf_counter()
    rounds = -(-per_path // block)
    for round_index in range(rounds):
        size = min(block, per_path - round_index * block)
        for name in paths:
            meter.begin()
            result = await closed_loop(
                machinery.targets[name], concurrency, max_tokens, size, 120.0
            )
            cpu, machine = meter.end()
            stats = phase.stats[name]
            stats.samples.extend(result.samples)
            stats.cpu_s.update(cpu)
            phase.machine_busy_s += machine
            phase.ours_busy_s += sum(cpu.values())
        print(
            f"[overhead] c={concurrency} round {round_index + 1}/{rounds}: "
            + ", ".join(
                f"{n} {percentile(phase.stats[n].total_ms(), 50):.1f} ms p50" for n in paths
            ),
            flush=True,
        )
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
    result = await closed_loop(target, level, max_tokens, None, duration_s, ramp=True)
    window_s = result.deadline - result.measured_from
    counted = [
        s
        for s in result.samples
        if s.error is None and result.measured_from < s.ended_at <= result.deadline
    ]
    cell.rounds.append(len(counted) / window_s if window_s > 0 else float("nan"))
    cell.ttft_p50_ms.append(
        percentile([s.ttft_s * 1000 for s in counted if s.ttft_s is not None], 50)
    )
    cell.errors.update(s.error for s in result.samples if s.error)


async def rate_phase(
    machinery: Machinery,
    paths: list[str],
    levels: list[int],
    duration_s: float,
    rounds: int,
    max_tokens: int,
) -> dict[str, dict[int, RateCell]]:
    """Closed loop at each level for `duration_s` after its ramp; req/s counts the requests
    that completed in that window. Rounds go over every level and path in turn."""
    cells = {name: {level: RateCell() for level in levels} for name in paths}
    for round_index in range(rounds):
        for level in levels:
            for name in paths:
                await measure_rate(
                    machinery.targets[name], level, duration_s, max_tokens, cells[name][level]
                )
            print(
                f"[overhead] rates round {round_index + 1}/{rounds} at {level}: "
                + ", ".join(f"{n} {cells[n][level].rounds[-1]:.0f}/s" for n in paths),
                flush=True,
            )
    return cells


# --- the stack --------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, its identity (a pid
    alone may be reused once the process is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Running:
    """Everything this benchmark started, for the finally: that stops it."""

    redis: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    stack: Stack | None = None
    gateways: dict[str, ServiceProcess] = field(default_factory=dict)
    # uvicorn's worker processes (GATEWAY_WORKERS=2) as (pid, start time).
    workers: list[tuple[int, int | None]] = field(default_factory=list)

    def stop(self) -> None:
        for gateway in self.gateways.values():
            gateway.stop(timeout_s=10)
        if self.stack is not None:
            self.stack.stop()
        for pid, started in self.workers:
            # They exit with their supervisor; this only catches a straggler, and only the
            # very process found at start (same pid and start time).
            if started is not None and start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(5)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM while processes are being started would leave the ones not yet
    recorded in Running behind: take the signal once start-up is over instead."""
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda n, _f: pending.append(n)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if pending:
        raise KeyboardInterrupt


def start_everything(running: Running, args: argparse.Namespace) -> None:
    running.redis, redis_url = start_redis_server()
    running.data_dir = Path(tempfile.mkdtemp(prefix="parlance-overhead-"))
    generator_env = {
        "GENERATOR_ENGINE": "scripted",
        "GENERATOR_SCRIPTED_TEXT": SCRIPT,
        "GENERATOR_SCRIPTED_TOKENS_PER_S": str(args.tokens_per_s),
    }
    # The stack's own gateway is B2: the shipped defaults (moderation on).
    running.stack = start_stack(
        running.data_dir, redis_url, gateway_env=LIMITS_ENV, env={"generator": generator_env}
    )
    running.gateways["B1"] = start_extra_gateway(running.stack, MODERATION_OFF)
    if args.workers2:
        running.gateways["B1w2"] = start_extra_gateway(
            running.stack, {**MODERATION_OFF, "GATEWAY_WORKERS": "2"}
        )
        running.gateways["B2w2"] = start_extra_gateway(running.stack, {"GATEWAY_WORKERS": "2"})
    for name in ("B1w2", "B2w2"):
        if name in running.gateways:
            process = running.gateways[name].process
            assert process is not None
            running.workers += [(pid, start_time(pid)) for pid in children_of(process.pid)]


def machinery_of(running: Running) -> Machinery:
    stack = running.stack
    assert stack is not None
    services = stack.services
    gateways = {"B2": services["gateway"], **running.gateways}
    targets: dict[str, Target] = {}
    generator_port = services["generator"].grpc_port
    assert generator_port is not None
    targets["A"] = GrpcTarget("A", generator_port)
    for name, gateway in gateways.items():
        assert gateway.http_port is not None
        targets[name] = HttpTarget(name, gateway.http_port)
    pids: dict[str, list[int]] = {}
    for name in ("generator", "safety", "history"):
        process = services[name].process
        assert process is not None
        pids[name] = [process.pid]
    for name, gateway in gateways.items():
        assert gateway.process is not None
        pids[f"gateway {name}"] = [gateway.process.pid, *children_of(gateway.process.pid)]
    assert running.redis is not None
    pids["redis"] = [running.redis.pid]
    return Machinery(targets, pids)


# --- the report -------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def latency_table(phase: LatencyPhase) -> list[str]:
    lines = [
        "| path | requests | errors | TTFT p50 | TTFT p99 | total p50 | total p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, stats in phase.stats.items():
        ttft, total = stats.ttft_ms(), stats.total_ms()
        lines.append(
            f"| {PATH_LABELS[name]} | {len(stats.samples)} | {sum(stats.errors().values())} "
            f"| {fmt(percentile(ttft, 50))} | {fmt(percentile(ttft, 99))} "
            f"| {fmt(percentile(total, 50))} | {fmt(percentile(total, 99))} |"
        )
    return lines


def added_table(phase: LatencyPhase) -> list[str]:
    base = phase.stats["A"]
    lines = [
        "| path | TTFT +p50 | TTFT +p99 | total +p50 | total +p99 | TTFT ×p50 | total ×p50 "
        "| total ×p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, stats in phase.stats.items():
        if name == "A":
            continue
        cells = []
        for q in (50, 99):
            cells.append(percentile(stats.ttft_ms(), q) - percentile(base.ttft_ms(), q))
        for q in (50, 99):
            cells.append(percentile(stats.total_ms(), q) - percentile(base.total_ms(), q))
        ratios = [
            percentile(stats.ttft_ms(), 50) / percentile(base.ttft_ms(), 50),
            percentile(stats.total_ms(), 50) / percentile(base.total_ms(), 50),
            percentile(stats.total_ms(), 99) / percentile(base.total_ms(), 99),
        ]
        lines.append(
            f"| {PATH_LABELS[name]} | "
            + " | ".join(f"{c:+.1f}" for c in cells)
            + " | "
            + " | ".join(f"{r:.2f}" for r in ratios)
            + " |"
        )
    return lines


def timing_medians(stats: PathStats) -> dict[str, float]:
    parsed = [parse_server_timing(s.server_timing) for s in stats.ok if s.server_timing]
    names: list[str] = []
    for parts in parsed:
        names += [n for n in parts if n not in names]
    return {n: percentile([p[n] for p in parsed if n in p], 50) for n in names}


def timing_table(phases: list[LatencyPhase]) -> list[str]:
    rows = [(p.concurrency, n, timing_medians(s)) for p in phases for n, s in p.stats.items()]
    rows = [r for r in rows if r[2]]
    names: list[str] = []
    for _, _, medians in rows:
        names += [n for n in medians if n not in names]
    lines = [
        "| concurrency | path | " + " | ".join(names) + " | sum |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for concurrency, name, medians in rows:
        lines.append(
            f"| {concurrency} | {name} | "
            + " | ".join(fmt(medians.get(n, float("nan")), 2) for n in names)
            + f" | {sum(medians.values()):.2f} |"
        )
    return lines


def cpu_table(phase: LatencyPhase) -> list[str]:
    seen = {n for stats in phase.stats.values() for n, v in stats.cpu_s.items() if v > 0}
    names = [n for n in CPU_COLUMNS if n in seen] + sorted(seen - set(CPU_COLUMNS))
    lines = [
        "| path | " + " | ".join(names) + " | all ours |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for name, stats in phase.stats.items():
        per = 1000 / max(1, len(stats.samples))
        lines.append(
            f"| {name} | "
            + " | ".join(f"{stats.cpu_s.get(n, 0.0) * per:.2f}" for n in names)
            + f" | {sum(stats.cpu_s.values()) * per:.2f} |"
        )
    return lines


def rates_table(cells: dict[str, dict[int, RateCell]], levels: list[int]) -> list[str]:
    lines = [
        "| concurrency | " + " | ".join(PATH_LABELS[n] for n in cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    for level in levels:
        row = []
        for name in cells:
            cell = cells[name].get(level)
            if cell is None:
                row.append("-")
                continue
            errors = sum(cell.errors.values())
            spread = "/".join(f"{r:.0f}" for r in cell.rounds)
            row.append(
                f"**{cell.requests_per_s:.0f}** ({spread}; TTFT "
                f"{fmt(cell.ttft_p50_ms[cell.best])} ms)"
                + (f", **{errors} errors**" if errors else "")
            )
        lines.append(f"| {level} | " + " | ".join(row) + " |")
    peaks = []
    for name in cells:
        best = max(cells[name].items(), key=lambda item: item[1].requests_per_s)
        peaks.append(f"**{best[1].requests_per_s:.0f}** at {best[0]}")
    lines.append("| **peak** | " + " | ".join(peaks) + " |")
    return lines


def errors_section(phases: list[LatencyPhase], cells: dict[str, dict[int, RateCell]]) -> list[str]:
    found: list[str] = []
    for phase in phases:
        for name, stats in phase.stats.items():
            for error, count in stats.errors().items():
                found.append(f"- c={phase.concurrency} {name}: {count} × `{error}`")
    for name, by_level in cells.items():
        for level, cell in by_level.items():
            for error, count in cell.errors.items():
                found.append(f"- rates c={level} {name}: {count} × `{error}`")
    return found or ["None: every request of every path ended with its full stream."]


def noise_line(phases: list[LatencyPhase]) -> str:
    parts = []
    for phase in phases:
        others = max(0.0, phase.machine_busy_s - phase.ours_busy_s)
        parts.append(
            f"c={phase.concurrency}: machine busy {phase.machine_busy_s / phase.wall_s:.2f} "
            f"of 2 cores on average, our processes {phase.ours_busy_s / phase.wall_s:.2f}, "
            f"others ≈ {others / phase.wall_s:.2f}"
        )
    return "; ".join(parts)


def interpretation(phases: list[LatencyPhase], cells: dict[str, dict[int, RateCell]]) -> list[str]:
    """The numbers the 'What this shows' paragraph is built from (computed, not typed)."""
    lines = []
    for phase in phases:
        base = phase.stats["A"]
        b1, b2 = phase.stats["B1"], phase.stats["B2"]
        add1 = percentile(b1.total_ms(), 50) - percentile(base.total_ms(), 50)
        add2 = percentile(b2.total_ms(), 50) - percentile(base.total_ms(), 50)
        t1 = percentile(b1.ttft_ms(), 50) - percentile(base.ttft_ms(), 50)
        t2 = percentile(b2.ttft_ms(), 50) - percentile(base.ttft_ms(), 50)
        gw1 = b1.cpu_s.get("gateway B1", 0.0) * 1000 / max(1, len(b1.samples))
        gw2 = b2.cpu_s.get("gateway B2", 0.0) * 1000 / max(1, len(b2.samples))
        safety2 = b2.cpu_s.get("safety", 0.0) * 1000 / max(1, len(b2.samples))
        lines.append(
            f"- At {phase.concurrency} concurrent: the gateway alone (B1) adds {add1:+.1f} ms to "
            f"the median request and {t1:+.1f} ms to the median TTFT; with moderation (B2) "
            f"{add2:+.1f} ms and {t2:+.1f} ms. CPU per request: gateway {gw1:.2f} ms (B1) and "
            f"{gw2:.2f} ms (B2), safety {safety2:.2f} ms (B2)."
        )
    peak = {
        name: max(c.requests_per_s for c in by_level.values()) for name, by_level in cells.items()
    }
    lines.append(
        "- Peak req/s: " + ", ".join(f"{name} {value:.0f}" for name, value in peak.items()) + "."
    )
    return lines


def render(
    args: argparse.Namespace,
    phases: list[LatencyPhase],
    cells: dict[str, dict[int, RateCell]],
    levels: list[int],
    load_before: str,
    load_after: str,
) -> str:
    rate_reply = " ".join(SCRIPT.split()[: args.rate_tokens])
    reply_tokens = len(SCRIPT.split())
    lines = [
        "# Gateway overhead: the gateway vs the generator directly (CPU, scripted engine)",
        "",
        f"- Machine: {machine()}.",
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}. Other people "
        "ran tests on this machine at the same time: the numbers are noisy, and the "
        "interleaving (A, B1, B2 in turn, in blocks) is there so that the noise hits all "
        "paths alike.",
        f"- Command: `.venv/bin/python bench/gateway_overhead.py {' '.join(sys.argv[1:])}`",
        f"- Engine: scripted (GENERATOR_ENGINE=scripted), reply of {reply_tokens} tokens "
        f"(words) at {args.tokens_per_s:g} tokens/s (~{reply_tokens / args.tokens_per_s * 1000:.0f}"
        " ms of pacing per reply), the same for every path.",
        "- Gateways: GATEWAY_WORKERS=1 unless marked; cache off, store false, titles off; "
        "RPM/TPM and the per-key concurrency lease ON but set too high to refuse (every "
        "request still makes its GCRA and lease round trips to Redis). B1: "
        "GATEWAY_MODERATE_INPUT=false, GATEWAY_MODERATE_OUTPUT=false. B2: the shipped defaults "
        "(input moderation, then output held back in windows classified by the safety service, "
        "light classifier). All gateways run at the same time on the one generator, safety, "
        "history and Redis.",
        "- Clients: A: grpc.aio, one channel shared by all workers (as the gateway does). B: a "
        "minimal asyncio HTTP/1.1 client, one keep-alive connection per worker, chunked SSE read "
        "to `data: [DONE]`. TTFT = first non-empty content (A: first GenerateResponse with "
        "text; B: first SSE delta with content); total = end of stream (A) / `[DONE]` (B).",
        f"- The load client runs on the same {len(os.sched_getaffinity(0))} cores as all the "
        "services: at high concurrency it competes with them for CPU (its own CPU per request "
        "is in the CPU table).",
        "",
        "Times in milliseconds.",
    ]
    for phase in phases:
        lines += [
            "",
            f"## {phase.concurrency} concurrent request{'s' if phase.concurrency > 1 else ''} "
            f"(closed loop, {len(phase.stats['A'].samples)} requests per path, "
            f"{args.block_c1 if phase.concurrency == 1 else args.block_c100} per block, "
            "interleaved)",
            "",
            *latency_table(phase),
            "",
            "Added by the gateway (B − A) and ratio B / A:",
            "",
            *added_table(phase),
            "",
            "CPU time per request (ms) by process, over this phase's measured blocks (each "
            "process's /proc utime+stime; idle processes still tick a little):",
            "",
            *cpu_table(phase),
        ]
    lines += [
        "",
        "## Where the gateway's time goes before the first generator message (Server-Timing)",
        "",
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
        "",
        f"## Peak requests/s (closed loop, {args.rates_duration:g} s per cell after its first "
        "wave (as many requests done as workers), "
        f'max_tokens {args.rate_tokens}: reply "{rate_reply}")',
        "",
        f"Completed requests per second at each number of closed-loop workers, {args.rates_rounds}"
        " round(s) over all cells in turn: in bold the best round (others' load only takes "
        "throughput away), in brackets every round and the median TTFT of the best one. The "
        "load client shares the cores with the services (and with the machine's other users), "
        "so these are ceilings of this whole machine, not of the gateway alone.",
        "",
        *rates_table(cells, levels),
        "",
        "## Errors",
        "",
        *errors_section(phases, cells),
        "",
        "## Machine noise during the latency phases",
        "",
        noise_line(phases) + " (from /proc/stat and our processes' CPU time).",
        "",
        "## Numbers for the reading below (computed by the benchmark)",
        "",
        *interpretation(phases, cells),
        "",
    ]
    return "\n".join(lines)


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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.requests_c1, args.requests_c100 = 30, 300
        args.block_c1, args.block_c100 = 10, 100
        args.rates_duration, args.rates_levels, args.rates_rounds = 1.0, "1,32,256", 1
    if (
        args.requests_c1 > 5000
        or args.requests_c100 > 50000
        or args.rates_duration > 60
        or not 1 <= args.rates_rounds <= 5
    ):
        sys.exit("bounded: at most 5000 / 50000 requests per path, 60 s a rate cell, 5 rounds")
    return args


async def measure(
    running: Running, args: argparse.Namespace, levels: list[int]
) -> tuple[list[LatencyPhase], dict[str, dict[int, RateCell]]]:
    machinery = machinery_of(running)
    try:
        paths = ["A", "B1", "B2"]
        reply_tokens = len(SCRIPT.split())
        phases = [
            await latency_phase(machinery, paths, 1, args.requests_c1, args.block_c1, reply_tokens),
            await latency_phase(
                machinery, paths, 100, args.requests_c100, args.block_c100, reply_tokens
            ),
        ]
        rate_paths = paths + [n for n in ("B1w2", "B2w2") if n in machinery.targets]
        cells = await rate_phase(
            machinery, rate_paths, levels, args.rates_duration, args.rates_rounds, args.rate_tokens
        )
        return phases, cells
    finally:
        for target in machinery.targets.values():
            await target.close()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    args = parse_args()
    levels = [int(n) for n in args.rates_levels.split(",") if n]
    if max(levels) > 1024:
        sys.exit("bounded: at most 1024 workers")

    # SIGTERM takes the same way out as Ctrl-C, through the finally: below.
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    running = Running()
    load_before = load_average()
    try:
        with interrupts_deferred():
            start_everything(running, args)
        phases, cells = asyncio.run(measure(running, args, levels))
    except KeyboardInterrupt:
        print("[overhead] interrupted; stopping everything", flush=True)
        raise SystemExit(130) from None
    finally:
        running.stop()
    report = render(args, phases, cells, levels, load_before, load_average())
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
