"""Load test: N concurrent streaming conversations against the whole stack, on loopback.

The stack runs as processes (scripts/devstack.py) with a redis-server of the benchmark's own
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
    .venv/bin/python bench/load_test.py ... --out bench/results/load_cpu.md
    .venv/bin/python bench/load_test.py --step 64,128 --profile bench/results/profiles
    .venv/bin/python bench/load_test.py --soak --concurrency 96 --duration 300

--profile DIR runs `py-spy record` (needs ptrace: root, or CAP_SYS_PTRACE) on every service
during the middle half of each step and summarises the collapsed stacks into top frames by
self and inclusive time. --soak holds one N for --duration seconds and reports memory over
time and TTFT per minute, so that leaks and drift show.

The client is a minimal asyncio HTTP/1.1 client (one connection per request), to take as
little of the machine's CPU from the stack as possible; it still shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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

from benchlib import machine, start_redis  # noqa: E402
from helpers import (  # noqa: E402
    ALICE_KEY,
    BOB_KEY,
    MODEL,
    Stack,
    scrape,
    start_stack,
    total,
)

KEYS = (ALICE_KEY, BOB_KEY)


PROFILE_RATE_HZ = 50
MAX_ARTIFACT_BYTES = 1_000_000  # profile files at least this big are deleted, not committed
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    ttft_s: float | None
    latency_s: float
    tokens: int
    error: str | None = None
    started: float = 0.0  # time.perf_counter() when the request was sent


@dataclass
class Profile:
    """One service's py-spy recording of one step, and what it says."""

    service: str
    seconds: float
    stacks: Counter[str] = field(default_factory=Counter)
    files: list[Path] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunResult:
    concurrency: int
    duration_s: float
    t0: float = 0.0  # time.perf_counter() when the load started
    samples: list[Sample] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    profiles: list[Profile] = field(default_factory=list)
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
        started = time.perf_counter()
        sample = await one_stream(port, key, f"client {index} turn {turn}: hello", store)
        sample.started = started
        samples.append(sample)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process in clock ticks; None once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, steal) ticks of the whole machine: other people's work shows here too."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq, steal


class ProcessSampler(threading.Thread):
    """RSS and cumulative CPU seconds of named processes, every `every_s` seconds.

    A name may gather several pids (the py-spy recorders); a pid that has exited keeps its
    last reading, so that each CPU series only grows.
    """

    def __init__(self, pids: dict[str, int], every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, list[int]] = {name: [pid] for name, pid in pids.items()}
        self.rss_names = set(pids)
        self.every_s = every_s
        self.rss: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self.cpu: dict[str, list[tuple[float, float]]] = {}
        self.last_ticks: dict[int, int] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.t0 = time.perf_counter()

    def add(self, name: str, pid: int) -> None:
        with self.lock:
            self.pids.setdefault(name, []).append(pid)
            self.last_ticks[pid] = 0  # started just now: count all of its CPU

    def sample(self) -> None:
        now = time.perf_counter() - self.t0
        with self.lock:
            for name, pids in self.pids.items():
                for pid in pids:
                    ticks = cpu_ticks(pid)
                    if ticks is not None:
                        self.last_ticks[pid] = ticks
                seconds = sum(self.last_ticks.get(pid, 0) for pid in pids) / CLOCK_TICKS
                self.cpu.setdefault(name, []).append((now, seconds))
                if name in self.rss_names:
                    self.rss[name].append((now, rss_kib(pids[0])))
        busy, steal = machine_ticks()
        self.cpu.setdefault("machine busy", []).append((now, busy / CLOCK_TICKS))
        self.cpu.setdefault("steal", []).append((now, steal / CLOCK_TICKS))

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.every_s)

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()  # a last reading at the very end, so that averages cover the whole run


def cores_used(series: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """Average cores a process used between two times, from its cumulative CPU seconds."""
    inside = [(t, c) for t, c in series if start_s <= t <= end_s]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def py_spy_binary() -> str | None:
    """py-spy of this venv first (requirements-dev.txt pins it), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """One `py-spy record` per service over a window in the middle of a step.

    --nonblocking: py-spy reads the interpreters' memory without stopping them, so that the
    profile does not itself add latency (a few samples may be torn; fine for a summary).
    """

    def __init__(
        self, pids: dict[str, int], out_dir: Path, label: str, sampler: ProcessSampler
    ) -> None:
        self.pids = pids
        self.out_dir = out_dir
        self.label = label
        self.sampler = sampler
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path, Path]] = {}
        self.failed: dict[str, str] = {}
        self.seconds = 0

    def start(self, seconds: int) -> None:
        self.seconds = seconds
        binary = py_spy_binary()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for service, pid in self.pids.items():
            if binary is None:
                self.failed[service] = "py-spy is not installed (pip install py-spy)"
                continue
            raw = self.out_dir / f"{self.label}-{service}.collapsed.txt"
            log = self.out_dir / f"{self.label}-{service}.py-spy.log"
            command = [
                binary, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ),
                "--duration", str(seconds), "--format", "raw", "--output", str(raw),
                "--full-filenames",  # short names drop the package of our editable installs
                "--nonblocking",
            ]  # fmt: skip
            try:
                with log.open("wb") as stderr:
                    # Its error, not a Rust backtrace of where it was raised, goes in the report.
                    env = {**os.environ, "RUST_BACKTRACE": "0"}
                    process = subprocess.Popen(command, stdout=stderr, stderr=stderr, env=env)
            except OSError as exc:
                self.failed[service] = f"{type(exc).__name__}: {exc}"
                continue
            self.sampler.add("py-spy", process.pid)
            self.running[service] = (process, raw, log)

    def finish(self) -> list[Profile]:
        profiles = [Profile(s, self.seconds, error=e) for s, e in self.failed.items()]
        for service, (process, raw, log) in self.running.items():
            profiles.append(self._collect(service, process, raw, log))
        return sorted(profiles, key=lambda p: list(self.pids).index(p.service))

    def _collect(
        self, service: str, process: subprocess.Popen[bytes], raw: Path, log: Path
    ) -> Profile:
        profile = Profile(service, self.seconds)
        try:
            process.wait(self.seconds + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        message = log.read_text(errors="replace").strip() if log.exists() else ""
        log.unlink(missing_ok=True)
        if process.returncode != 0 or not raw.exists():
            errors = [line for line in message.splitlines() if line.startswith("Error")]
            tail = (errors or message.splitlines()[-1:] or ["no output"])[0]
            profile.error = f"py-spy exited {process.returncode}: {tail}"
            return profile
        profile.stacks = parse_collapsed(raw.read_text(errors="replace"))
        speedscope = raw.with_name(raw.name.replace(".collapsed.txt", ".speedscope.json"))
        speedscope.write_text(json.dumps(to_speedscope(profile.stacks, f"{self.label} {service}")))
        for path in (raw, speedscope):
            if path.stat().st_size >= MAX_ARTIFACT_BYTES:
                profile.dropped.append(f"{path.name} ({path.stat().st_size / 1e6:.1f} MB)")
                path.unlink()
            else:
                profile.files.append(path)
        return profile


def parse_collapsed(text: str) -> Counter[str]:
    """Brendan Gregg's collapsed stacks (`root;...;leaf count`) as {stack: samples}."""
    stacks: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    """`function (file:line)` -> `function (short/file.py)`: one row per function, not line."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({short_file(match['file'])})"


def short_file(file: str) -> str:
    """A full path from the package on: `grpc/aio/_call.py`, `parlance/gateway/serving.py`."""
    for marker in ("site-packages/", "/src/", "/lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/lib/python3.":
                file = file.split("/", 1)[-1]  # drop the "11/" of the version
    return Path(file).name if file.startswith("/") else file


def package(frame: str) -> str:
    """Which library a frame belongs to: `grpc`, `asyncio`, `parlance.gateway`, ..."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    parts = short_file(match["file"]).removesuffix(".py").split("/")
    if parts[0] == "parlance" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


# Frames under which nearly every sample sits (event loop, thread and process entry): they
# would fill the top of the inclusive column and say nothing, so it leaves them out.
RUNNER_FILES = ("asyncio/base_events.py", "asyncio/events.py", "asyncio/runners.py", "threading.py")
RUNNER = re.compile(r"^(<module>|main) \(|\((?:" + "|".join(map(re.escape, RUNNER_FILES)) + r")\)$")


def top_frames(stacks: Counter[str], count: int) -> tuple[list[tuple[str, int]], ...]:
    """(by self time, by inclusive time, self time by package), biggest first."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for stack, samples in stacks.items():
        frames = stack.split(";")
        own[frame_name(frames[-1])] += samples
        packages[package(frames[-1])] += samples
        # A recursive function counts once per stack, or inclusive time would pass 100 %.
        for name in {frame_name(f) for f in frames}:
            if not RUNNER.search(name):
                inclusive[name] += samples
    return own.most_common(count), inclusive.most_common(count), packages.most_common(count)


def to_speedscope(stacks: Counter[str], name: str) -> dict[str, object]:
    """The same samples in speedscope's file format (open at https://www.speedscope.app)."""
    index: dict[str, int] = {}
    frames: list[dict[str, object]] = []
    samples: list[list[int]] = []
    weights: list[int] = []
    for stack, count in stacks.items():
        row = []
        for frame in stack.split(";"):
            if frame not in index:
                index[frame] = len(frames)
                match = FRAME.match(frame)
                frames.append(
                    {"name": match["function"], "file": match["file"], "line": int(match["line"])}
                    if match and match["line"]
                    else {"name": frame}
                )
            row.append(index[frame])
        samples.append(row)
        weights.append(count)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": "parlance bench/load_test.py (from py-spy --format raw)",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
    }


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
        # Where it did not drain within the wait: how far it got (a soak can outrun history).
        "outbox depth at the end of the wait": depth,
        "generator requests running": total(generator, "parlance_generator_requests_running"),
        "generator requests waiting": total(generator, "parlance_generator_requests_waiting"),
        "lease entries in Redis": float(leases_in_redis),
    }


SERVICES = ("gateway", "safety", "history", "generator")


def run_once(
    stack: Stack, redis_url: str, redis_pid: int, concurrency: int, args: argparse.Namespace
) -> RunResult:
    port = stack.services["gateway"].http_port
    assert port is not None
    services = {
        name: stack.services[name].process.pid  # type: ignore[union-attr]
        for name in SERVICES
        if stack.services[name].process is not None
    }
    sampler = ProcessSampler(
        {**services, "redis": redis_pid, "load client": os.getpid()}, args.sample_every
    )
    if args.profile:
        # Its CPU series starts at 0 with the step, so that its average covers the whole step.
        sampler.pids["py-spy"] = []
    profiler = None
    timer = None
    if args.profile:
        # The middle half of the step: past the ramp-up, done before the clients stop.
        label = f"{'soak-' if args.soak else ''}N{concurrency}"
        profiler = Profiler(services, args.profile, label, sampler)
        seconds = max(1, int(args.duration * 0.5))
        timer = threading.Timer(args.duration * 0.25, profiler.start, args=(seconds,))
    sampler.start()
    result = RunResult(concurrency, args.duration, t0=sampler.t0)

    async def main() -> None:
        deadline = result.t0 + args.duration
        await asyncio.gather(
            *(
                client_loop(port, i, deadline, args.store, result.samples)
                for i in range(concurrency)
            )
        )

    if timer is not None:
        timer.start()
    asyncio.run(main())
    sampler.stop()
    if timer is not None:
        timer.join()
    result.rss = sampler.rss
    result.cpu = sampler.cpu
    if profiler is not None:
        result.profiles = profiler.finish()
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


def render(results: list[RunResult], args: argparse.Namespace) -> str:
    title = "Soak" if args.soak else "Load test"
    lines = [
        f"# {title}: concurrent streaming conversations (CPU, scripted test engine)",
        "",
        f"- Machine: {machine()}; the load client runs on the same machine and shares its "
        "cores with the four services (and with whatever else runs there: see the CPU table).",
        f"- Command: `.venv/bin/python bench/load_test.py {' '.join(sys.argv[1:])}`",
        f"- Engine: scripted, {args.reply_tokens} tokens a reply at {args.tokens_per_s:g} "
        f"tokens/s per stream (~{args.reply_tokens / args.tokens_per_s:.1f} s of pure "
        f"generation); store={args.store}; input and output moderation on (light classifier); "
        "keys alice and bob alternating; limits off.",
        f"- {args.duration:g} s of closed-loop load "
        + ("held at one N." if args.soak else "per step."),
        "",
        *summary_table(results),
    ]
    if args.soak:
        lines += ["", *minute_table(results[0]), "", *memory_over_time(results[0])]
    else:
        lines += ["", *memory_table(results)]
    lines += ["", *cpu_table(results), "", *after_table(results)]
    if args.step:
        knee = next((r for r in results if summary_row(r)["ttft p99"] > 1.0), None)  # type: ignore[operator]
        lines += [
            "",
            f"p99 TTFT first passes 1 s at N = {knee.concurrency}."
            if knee
            else "p99 TTFT stayed under 1 s at every N tried.",
        ]
    if any(r.profiles for r in results):
        lines += ["", *profile_section(results)]
    return "\n".join(lines) + "\n"


def table_head(*columns: str) -> list[str]:
    """A markdown table's header row and separator row."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def summary_table(results: list[RunResult]) -> list[str]:
    lines = table_head(
        "N",
        "requests",
        "ok",
        "errors",
        "req/s",
        "tokens/s",
        "TTFT p50",
        "TTFT p90",
        "TTFT p99",
        "latency p50",
        "latency p99",
    )
    for result in results:
        row = summary_row(result)
        lines.append(
            f"| {row['N']} | {row['requests']} | {row['ok']} | {row['errors'] or 0} "
            f"| {row['req/s']:.1f} | {row['tokens/s']:.0f} | {row['ttft p50']:.3f} s "
            f"| {row['ttft p90']:.3f} s | {row['ttft p99']:.3f} s | {row['lat p50']:.2f} s "
            f"| {row['lat p99']:.2f} s |"
        )
    return lines


def memory_table(results: list[RunResult]) -> list[str]:
    names = list(results[0].rss) if results else []
    lines = [
        "## Resident memory (MiB) per process: start -> peak -> end of each step",
        "",
        *table_head("N", *names),
    ]
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
    return lines


def memory_over_time(result: RunResult) -> list[str]:
    names = list(result.rss)
    lines = [
        "## Resident memory (MiB) over time",
        "",
        *table_head("t (s)", *names),
    ]
    for i, (t, _) in enumerate(result.rss[names[0]]):
        cells = [f"{result.rss[name][i][1] / 1024:.1f}" for name in names]
        lines.append(f"| {t:.0f} | " + " | ".join(cells) + " |")
    slopes = [f"{mib_per_minute(result.rss[name]):+.2f}" for name in names]
    lines.append("| MiB/min, 2nd half (fit) | " + " | ".join(slopes) + " |")
    return lines


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
    lines = [
        "## Per minute of the run (requests by start time)",
        "",
        *table_head(
            "minute",
            "requests",
            "errors",
            "TTFT p50",
            "TTFT p99",
            "latency p99",
            "CPU cores: " + " / ".join(SERVICES),
            "machine busy",
        ),
    ]
    minutes = max(1, int(-(-result.duration_s // 60)))
    for minute in range(minutes):
        start, end = minute * 60.0, min(result.duration_s, (minute + 1) * 60.0)
        inside = [s for s in result.samples if start <= s.started - result.t0 < end]
        ok = [s for s in inside if s.error is None]
        ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
        cores = " / ".join(f"{cores_used(result.cpu.get(n, []), start, end):.2f}" for n in SERVICES)
        lines.append(
            f"| {minute + 1} | {len(inside)} | {len(inside) - len(ok)} "
            f"| {percentile(ttft, 50):.3f} s | {percentile(ttft, 99):.3f} s "
            f"| {percentile([s.latency_s for s in ok], 99):.2f} s | {cores} "
            f"| {cores_used(result.cpu.get('machine busy', []), start, end):.2f} |"
        )
    return lines


def cpu_table(results: list[RunResult]) -> list[str]:
    """Cores each process used on average: which one runs out of CPU first."""
    ours = [*SERVICES, "redis", "load client", "py-spy"]
    lines = [
        f"## CPU (cores, averaged over the whole step; this machine has {os.cpu_count()})",
        "",
        "`rest` = machine busy minus the processes listed: other people's work on the "
        "machine and kernel time not charged to a process (loopback networking). `steal` = "
        "time the hypervisor gave to other guests.",
        "",
        *table_head("N", *ours, "machine busy", "rest", "steal"),
    ]
    for result in results:
        end = result.duration_s + 1e9  # through the sampler's last reading
        used = {n: cores_used(result.cpu.get(n, []), 0.0, end) for n in ours}
        busy = cores_used(result.cpu.get("machine busy", []), 0.0, end)
        rest = busy - sum(v for v in used.values() if v == v)  # NaN: a name without data
        steal = cores_used(result.cpu.get("steal", []), 0.0, end)
        cells = [f"{used[n]:.2f}" if used[n] == used[n] else "-" for n in ours]
        lines.append(
            f"| {result.concurrency} | "
            + " | ".join(cells)
            + f" | {busy:.2f} | {rest:.2f} | {steal:.2f} |"
        )
    return lines


def after_table(results: list[RunResult]) -> list[str]:
    keys = list(results[0].after) if results else []
    lines = [
        "## After the load (2 s after it stopped)",
        "",
        *table_head("N", *keys),
    ]
    for result in results:
        lines.append(
            f"| {result.concurrency} | " + " | ".join(f"{result.after[k]:g}" for k in keys) + " |"
        )
    return lines


def profile_section(results: list[RunResult], rows: int = 8) -> list[str]:
    lines = [
        "## Profiles (py-spy)",
        "",
        f"`py-spy record --rate {PROFILE_RATE_HZ} --nonblocking --format raw --full-filenames` "
        "on each service during the middle half of each step; idle threads are not sampled, so "
        f"`active` = samples / ({PROFILE_RATE_HZ} Hz x seconds) is roughly the share of one "
        "core the process's Python threads were running (above 100 % with several busy "
        "threads). Time in C extensions (grpc's Cython core, the classifier, SQLite) shows as "
        "self time of the Python function that called it. Frames are grouped by function "
        "(lines merged); the inclusive column leaves out the event loop, thread and entry "
        "frames (`<module>`, `main`, asyncio's base_events/events/runners, threading) that hold "
        "nearly every sample.",
    ]
    for result in results:
        for profile in result.profiles:
            lines += ["", *profile_table(result.concurrency, profile, rows)]
    return lines


def profile_table(concurrency: int, profile: Profile, rows: int) -> list[str]:
    heading = f"### N={concurrency}, {profile.service}"
    if profile.error:
        return [heading, "", f"py-spy failed: {profile.error}"]
    total_samples = sum(profile.stacks.values())
    if not total_samples:
        return [heading, "", "no samples (idle all along, or py-spy could not read it)"]
    active = total_samples / (PROFILE_RATE_HZ * profile.seconds)
    own, inclusive, packages = top_frames(profile.stacks, rows)
    lines = [
        heading,
        "",
        f"{total_samples} samples in {profile.seconds:g} s: active {active:.0%}. Self time by "
        "package: "
        + ", ".join(f"{name} {n / total_samples:.0%}" for name, n in packages[:6])
        + ".",
        "",
        "| top by self time | % | top by inclusive time | % |",
        "|---|---|---|---|",
    ]
    for i in range(max(len(own), len(inclusive))):
        cells = []
        for table in (own, inclusive):
            if i < len(table):
                name, n = table[i]
                cells += [f"`{name}`".replace("|", "\\|"), f"{n / total_samples:.0%}"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    kept = ", ".join(f"`{path.name}`" for path in profile.files)
    if kept:
        lines += ["", f"Files: {kept}."]
    if profile.dropped:
        lines += ["", f"Left out (1 MB or more): {', '.join(profile.dropped)}."]
    return lines


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
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy every service into DIR")
    parser.add_argument(
        "--soak", action="store_true", help="hold --concurrency for --duration s, over time"
    )
    parser.add_argument(
        "--sample-every", type=float, help="s between RSS/CPU readings (1, soak: 5)"
    )
    args = parser.parse_args()
    if args.soak and args.step:
        sys.exit("--soak holds one N (--concurrency); leave out --step")
    if args.sample_every is None:
        args.sample_every = 5.0 if args.soak else 1.0
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
            over = time.monotonic() - started + args.duration > args.max_total_s
            if over and results:
                print(f"[load] time budget reached before N={n}", flush=True)
                break
            result = run_once(stack, redis_url, redis_process.pid, n, args)
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
