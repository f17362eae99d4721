"""History's write path as the gateway drives it, and what it costs history in CPU: a code
version against a baseline, on the same machine in the same run.

    .venv/bin/python bench/history_append_bench.py --baseline-src /tmp/base \
        [--rounds 4] [--exchanges 600] [--concurrency 8] [--out FILE]

`--baseline-src` is another checkout of this repository (e.g. `git worktree add /tmp/base
<commit>`); its services/{common,history}/src go first on the history server's PYTHONPATH.
Each round starts one history gRPC server per version (SQLite, a database file of its own that
grows over the rounds) and sends it the same workload, alternating which goes first, so that
noise from this shared machine falls on both alike. The workload is what a stored chat
completion sends: half are first exchanges that create their conversation (create_if_missing,
client-chosen ids), half continue one of them, with a GetConversation before each, as the
gateway reads the context of a conversation it continues.

Reported per version: history's CPU time per exchange (utime + stime of the server process,
from /proc, which includes aiosqlite's thread) and exchanges per second. The ratio is what to
read; the absolute numbers depend on the machine and on the load client beside the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from lib.loop import closed_loop
from lib.procs import ProcessSampler
from lib.report import ROOT, Report, out_argument, table
from lib.stack import free_port
from lib.stats import percentile

from parlance.history.v1 import history_pb2 as pb
from parlance.history.v1.history_pb2_grpc import HistoryServiceStub


@dataclass
class Variant:
    name: str
    src: Path
    database: Path


def _start_server(variant: Variant) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTORY_")}
    env.update(
        PYTHONPATH=f"{variant.src}/services/history/src:{variant.src}/services/common/src",
        HISTORY_DATABASE_URL=f"sqlite+aiosqlite:///{variant.database}",
        HISTORY_HOST="127.0.0.1",
        HISTORY_PORT=str(port),
        HISTORY_METRICS_PORT="-1",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "parlance.history.main"], env=env, cwd=variant.src
    )
    return server, port


async def _wait_serving(stub: HistoryServiceStub, server: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise RuntimeError("the history server exited")
        try:
            await stub.ListConversations(pb.ListConversationsRequest(user_id="probe"), timeout=1)
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the history server did not start")


def _message(role: str, content: str, **extra: object) -> pb.Message:
    return pb.Message(id=f"msg_{uuid.uuid4().hex}", role=role, content=content, **extra)  # type: ignore[arg-type]


async def _exchange(stub: HistoryServiceStub, rng: random.Random, own: list[str]) -> None:
    """One stored chat completion, as the gateway writes it."""
    user = f"user_{rng.randrange(50)}"
    answer = _message(
        "assistant",
        "An answer of a few sentences. " * rng.randint(2, 12),
        model="bench-model",
        usage=pb.Usage(prompt_tokens=40, completion_tokens=60),
        finish_reason="stop",
    )
    question = _message("user", "A question of about this length? " * rng.randint(1, 4))
    if own and rng.random() < 0.5:
        user, conversation_id = rng.choice(own).split("/")
        await stub.GetConversation(
            pb.GetConversationRequest(user_id=user, conversation_id=conversation_id)
        )
        request = pb.AppendMessagesRequest(
            user_id=user, conversation_id=conversation_id, messages=[question, answer]
        )
    else:
        conversation_id = f"conv_{uuid.uuid4().hex}"
        request = pb.AppendMessagesRequest(
            user_id=user,
            conversation_id=conversation_id,
            create_if_missing=True,
            title="A provisional title",
            messages=[question, answer],
        )
    await stub.AppendMessages(request)
    if request.create_if_missing:
        own.append(f"{user}/{conversation_id}")  # only once it exists


async def _run_phase(
    variant: Variant, exchanges: int, concurrency: int, seed: int
) -> tuple[float, float]:
    """(CPU ms per exchange, exchanges per second) of one server run."""
    server, port = _start_server(variant)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = HistoryServiceStub(channel)
            await _wait_serving(stub, server)
            rng = random.Random(seed)
            own: list[str] = []
            # Warm-up: imports, statement caches, the connection pool.
            await asyncio.gather(*(_exchange(stub, rng, own) for _ in range(concurrency * 4)))
            sampler = ProcessSampler({"history": server.pid})
            cpu_before = sampler.cpu_seconds()["history"]
            block = await closed_loop(lambda *_: _exchange(stub, rng, own), concurrency, exchanges)
            cpu = sampler.cpu_seconds()["history"] - cpu_before
            return cpu / exchanges * 1000, exchanges / block.window_s
    finally:
        server.terminate()
        server.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--exchanges", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    out_argument(parser, "history_append.md")
    args = parser.parse_args()

    def commit(src: Path) -> str:
        return (
            subprocess.run(
                ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "?"
        )

    with tempfile.TemporaryDirectory(prefix="history-append-") as tmp:
        variants = [
            Variant("baseline", args.baseline_src.resolve(), Path(tmp) / "baseline.db"),
            Variant("this tree", ROOT, Path(tmp) / "current.db"),
        ]
        results: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                cpu_ms, rate = await _run_phase(
                    variant, args.exchanges, args.concurrency, seed=round_
                )
                results[variant.name].append((cpu_ms, rate))
                print(
                    f"round {round_ + 1} {variant.name}: {cpu_ms:.2f} ms CPU/exchange, {rate:.0f}/s"
                )

    base, current = results["baseline"], results["this tree"]
    cpu_ratios = [c[0] / b[0] for b, c in zip(base, current, strict=True)]
    rate_ratios = [c[1] / b[1] for b, c in zip(base, current, strict=True)]
    rows = []
    for i, (b, c) in enumerate(zip(base, current, strict=True)):
        cpu = [f"{v:.2f}" for v in (b[0], c[0], c[0] / b[0])]
        rows.append([i + 1, *cpu, f"{b[1]:.0f}", f"{c[1]:.0f}", f"{c[1] / b[1]:.2f}"])
    report = Report(
        "History write path: CPU per stored exchange, this tree against a baseline",
        f"Baseline {commit(args.baseline_src)}, this tree {commit(ROOT)} (plus uncommitted "
        f"changes, if any); {args.rounds} rounds of {args.exchanges} exchanges at concurrency "
        f"{args.concurrency}, SQLite.",
    )
    columns = ["round", "CPU ms/exchange: baseline", "this tree", "ratio"]
    columns += ["exchanges/s: baseline", "this tree", "ratio"]
    report.add("", *table(columns, rows), "")
    report.add(
        f"Median (p50) ratio: CPU per exchange {percentile(cpu_ratios, 50):.2f}×, "
        f"exchanges per second {percentile(rate_ratios, 50):.2f}×."
    )
    report.write(args.out)


if __name__ == "__main__":
    asyncio.run(main())
