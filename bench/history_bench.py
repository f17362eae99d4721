"""History benchmarks, three scenarios with one result file each:

    .venv/bin/python bench/history_bench.py serving [--backend sqlite|postgres|both]
        [--conversations 10000] [--messages-per-conversation 10] [--appends 200]
    .venv/bin/python bench/history_bench.py append --baseline REF
        [--rounds 4] [--exchanges 600] [--concurrency 8]
    .venv/bin/python bench/history_bench.py storage [--conversations 300] [--turns 5]
        [--user-chars 240] [--answer-chars 1000]
    (each takes --out FILE; serving and storage take --postgres-url URL)

serving (-> history_bench.md): through the serving layer (HistoryServing, the code under the
gRPC servicer) on SQLite and PostgreSQL: message append latency, listing one user's 10k
conversations, full-text search over 100k messages. Seeding uses bulk INSERTs, so the SQLite
FTS triggers and the PostgreSQL GIN index are maintained as in production.

append (-> history_append.md): history's write path as the gateway drives it and its CPU cost,
this tree against git commit REF (lib/baseline.py: its services/{history,common}/src exported
and put first on the server's PYTHONPATH). Each round starts one
history gRPC server per version (SQLite, a database of its own that grows over the rounds) and
sends it the same workload, alternating which goes first. The workload is what a stored chat
completion sends: half are first exchanges that create their conversation, half continue one
of them, with a GetConversation before each. Reported: history's CPU per exchange (utime +
stime of the server, aiosqlite's thread included) and exchanges/s; the ratio is what to read.

storage (-> history_storage.md): PostgreSQL bytes per stored exchange (rows, the generated
tsvector and its GIN index, b-trees), read by scripts/capacity_plan.py (docs/CAPACITY.md).
Two rounds of the same size; the growth of the second is the figure (the first pays for empty
tables' first pages). Sizes after VACUUM ANALYZE, pg_total_relation_size of history's tables.

PostgreSQL scenarios run in a fresh database, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from lib import baseline
from lib.loop import closed_loop
from lib.procs import ProcessSampler
from lib.report import ROOT, Report, out_argument, table
from lib.stack import free_port
from lib.stats import fmt, percentile
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from parlance.history import models
from parlance.history.config import HistorySettings
from parlance.history.database import create_engine, create_sessionmaker
from parlance.history.domain import NewMessage
from parlance.history.main import migrate
from parlance.history.serving import HistoryServing
from parlance.history.v1 import history_pb2 as pb
from parlance.history.v1.history_pb2_grpc import HistoryServiceStub

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def fresh_database(url: str, prefix: str) -> AsyncIterator[str]:
    """The URL of a new PostgreSQL database on `url`'s server, dropped on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_dsn(url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- serving --------------------------------------------------------------------------------

USER = "bench_user"
WORDS = (
    "model answer question python database index search history branch token cache "
    "latency server client request stream message conversation feedback export window "
    "paris rome london berlin madrid lisbon vienna prague dublin oslo helsinki athens"
).split()
# Each appears in about 1 in 1000 messages: a selective query.
RARE = [f"quasar{i}" for i in range(20)]
Timings = dict[str, list[float]]  # operation -> samples (ms)
SEED_START = datetime(2025, 1, 1, tzinfo=UTC)
Row = dict[str, Any]


def _text(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(12, 40))
    if rng.random() < 0.02:
        words.insert(rng.randrange(len(words)), rng.choice(RARE))
    return " ".join(words).capitalize() + "."


def _seed_rows(c: int, per_conversation: int, rng: random.Random) -> tuple[Row, list[Row]]:
    """One conversation of the seed and its messages, as table rows."""
    conv_id, when, parent = f"conv_{c:08d}", SEED_START + timedelta(minutes=c), None
    messages: list[Row] = []
    for m in range(per_conversation):
        msg_id = f"msg_{c:08d}_{m:03d}"
        messages.append(
            {
                "id": msg_id, "conversation_id": conv_id, "parent_id": parent, "user_id": USER,
                "role": "user" if m % 2 == 0 else "assistant", "content": _text(rng),
                "model": "" if m % 2 == 0 else "bench-model", "prompt_tokens": 0,
                "completion_tokens": 0, "finish_reason": "", "moderation_json": "",
                "ttft_ms": None, "total_ms": None, "created_at": when + timedelta(seconds=m),
            }
        )  # fmt: skip
        parent = msg_id
    conversation = {
        "id": conv_id, "user_id": USER, "title": f"Conversation {c}", "created_at": when,
        "updated_at": when + timedelta(seconds=per_conversation), "archived": False,
        "active_leaf_id": parent,
    }  # fmt: skip
    return conversation, messages


async def _seed(url: str, conversations: int, per_conversation: int) -> None:
    engine = create_engine(HistorySettings(database_url=url))
    rng = random.Random(7)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(models.User), [{"id": USER, "created_at": SEED_START}])
        batch_conv: list[Row] = []
        batch_msg: list[Row] = []
        for c in range(conversations):
            conversation, messages = _seed_rows(c, per_conversation, rng)
            batch_conv.append(conversation)
            batch_msg += messages
            if len(batch_msg) >= 5000 or c == conversations - 1:
                async with engine.begin() as conn:
                    await conn.execute(insert(models.Conversation), batch_conv)
                    if batch_msg:
                        await conn.execute(insert(models.Message), batch_msg)
                batch_conv, batch_msg = [], []
        # Statistics as autovacuum (or a periodic ANALYZE) would leave them: right after a
        # bulk load PostgreSQL believes the user has a handful of rows and picks a nested loop
        # that makes one search take a minute (seen here before this line existed).
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()


async def _timed(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await op(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def _list_walk(serving: HistoryServing, timings: Timings) -> None:
    pages: list[float] = []
    cursor = ""
    walk = time.perf_counter()
    while True:
        t = time.perf_counter()
        page = await serving.list_conversations(USER, 100, cursor, False)
        pages.append((time.perf_counter() - t) * 1000)
        cursor = page.next_cursor
        if not cursor:
            break
    timings["list page via cursor (limit 100)"] = pages
    timings["full walk of the list (one sample)"] = [(time.perf_counter() - walk) * 1000]


async def serving_backend(label: str, url: str, args: argparse.Namespace) -> Timings:
    conversations, per_conversation = args.conversations, args.messages_per_conversation
    settings = HistorySettings(database_url=url)
    await migrate(settings)
    t = time.perf_counter()
    await _seed(url, conversations, per_conversation)
    total = conversations * per_conversation
    print(f"{label}: seeded {conversations} / {total} messages in {time.perf_counter() - t:.1f} s")
    engine = create_engine(settings)
    serving = HistoryServing(create_sessionmaker(engine))
    timings: Timings = {}
    try:
        # Append: one exchange (user + assistant) to an existing conversation, as chat does.
        async def append(i: int) -> None:
            exchange = [
                NewMessage(id=f"msg_{uuid.uuid4().hex}", parent_id=None, role="user",
                           content="bench question"),
                NewMessage(id=f"msg_{uuid.uuid4().hex}", parent_id=None, role="assistant",
                           content="bench answer", model="bench-model"),
            ]  # fmt: skip
            conv = f"conv_{(i * 37) % conversations:08d}"
            await serving.append_messages(USER, conv, exchange, create_if_missing=False, title="")

        timings["append one exchange (2 messages)"] = await _timed(args.appends, append)

        async def first_page(_: int) -> None:
            await serving.list_conversations(USER, 20, "", False)

        timings[f"list first page (20 of {conversations})"] = await _timed(100, first_page)
        await _list_walk(serving, timings)
        queries = {
            "search rare word (~0.1% of messages)": lambda i: RARE[i % len(RARE)],
            "search two common words (AND)": lambda i: f"{WORDS[i % 10]} {WORDS[10 + i % 10]}",
            "search phrase": lambda i: f'"{WORDS[i % 20]} {WORDS[(i + 3) % 20]}"',
        }
        for name, make in queries.items():

            async def search(i: int, make: Callable[[int], str] = make) -> None:
                await serving.search_messages(USER, make(i), 20)

            timings[f"{name}, {total:,} messages"] = await _timed(30, search)
    finally:
        await engine.dispose()
    return timings


async def run_serving(args: argparse.Namespace) -> Report:
    results: dict[str, Timings] = {}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            results["SQLite"] = await serving_backend("SQLite", url, args)
    if args.backend in ("postgres", "both"):
        async with fresh_database(args.postgres_url, "parlance_history_bench") as url:
            results["PostgreSQL"] = await serving_backend("PostgreSQL", url, args)
    report = Report(
        "History through the serving layer, SQLite and PostgreSQL (bench/history_bench.py)",
        f"{args.conversations} conversations of {args.messages_per_conversation} messages for "
        "one user, seeded in bulk (FTS triggers and GIN index maintained), ANALYZE after "
        "seeding; PostgreSQL on the same machine. Times in ms, sequential calls.",
    )
    columns = ["operation"] + [f"{b} {q}" for b in results for q in ("p50", "p95", "n")]
    operations = list(dict.fromkeys(op for timings in results.values() for op in timings))
    rows = []
    for op in operations:
        cells = [op]
        for timings in results.values():
            samples = timings.get(op, [])
            p50, p95 = percentile(samples, 50), percentile(samples, 95)
            cells += [fmt(p50, 2), fmt(p95, 2), str(len(samples))]
        rows.append(cells)
    return report.add("", *table(columns, rows))


# --- append ---------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    pythonpath: str
    database: Path


def _start_server(variant: Variant) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTORY_")}
    env.update(
        PYTHONPATH=variant.pythonpath,
        HISTORY_DATABASE_URL=f"sqlite+aiosqlite:///{variant.database}",
        HISTORY_HOST="127.0.0.1",
        HISTORY_PORT=str(port),
        HISTORY_METRICS_PORT="-1",
    )
    command = [sys.executable, "-m", "parlance.history.main"]
    return subprocess.Popen(command, env=env, cwd=ROOT), port


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


async def _append_phase(
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


async def run_append(args: argparse.Namespace) -> Report:
    with tempfile.TemporaryDirectory(prefix="history-append-") as tmp:
        services = ("history", "common")
        variants = [
            Variant("baseline", baseline.export(args.baseline, tmp, services), Path(tmp) / "b.db"),
            Variant(
                "this tree",
                ":".join(f"{ROOT}/services/{s}/src" for s in services),
                Path(tmp) / "c.db",
            ),
        ]
        results: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
        for round_ in range(args.rounds):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                cpu_ms, rate = await _append_phase(
                    variant, args.exchanges, args.concurrency, seed=round_
                )
                results[variant.name].append((cpu_ms, rate))
                print(f"round {round_ + 1} {variant.name}: {cpu_ms:.2f} ms CPU/exch, {rate:.0f}/s")
    pairs = list(zip(results["baseline"], results["this tree"], strict=True))
    rows = []
    for i, (b, c) in enumerate(pairs):
        cpu = [f"{v:.2f}" for v in (b[0], c[0], c[0] / b[0])]
        rows.append([i + 1, *cpu, f"{b[1]:.0f}", f"{c[1]:.0f}", f"{c[1] / b[1]:.2f}"])
    report = Report(
        "History write path: CPU per stored exchange, this tree against a baseline",
        f"Baseline {baseline.short(args.baseline)}, this tree {baseline.short('HEAD')} (plus "
        f"uncommitted changes, if any); {args.rounds} rounds of {args.exchanges} exchanges at "
        f"concurrency {args.concurrency}, SQLite.",
    )
    columns = ["round", "CPU ms/exchange: baseline", "this tree", "ratio"]
    columns += ["exchanges/s: baseline", "this tree", "ratio"]
    report.add("", *table(columns, rows), "")
    return report.add(
        f"Median (p50) ratio: CPU per exchange "
        f"{percentile([c[0] / b[0] for b, c in pairs], 50):.2f}×, exchanges per second "
        f"{percentile([c[1] / b[1] for b, c in pairs], 50):.2f}×."
    )


# --- storage --------------------------------------------------------------------------------

TABLES = ("users", "conversations", "messages", "feedback")
STORAGE_WORDS = (
    "the model answers a question about python databases indexes and search while the user "
    "asks for history branches tokens caches latency servers clients requests streams and "
    "messages in a conversation about paris rome london berlin madrid lisbon vienna prague"
).split()


def _chars(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(STORAGE_WORDS))
    return " ".join(words).capitalize()[:chars]


async def _fill(
    serving: HistoryServing, rng: random.Random, args: argparse.Namespace, round_no: int
) -> int:
    """Conversations of `turns` exchanges each, for users of ten conversations; returns the
    text bytes stored."""
    stored = 0
    for c in range(args.conversations):
        user = f"user_{round_no}_{c // 10}"
        conversation = ""
        for _ in range(args.turns):
            question, answer = _chars(rng, args.user_chars), _chars(rng, args.answer_chars)
            exchange = [
                NewMessage(id="", parent_id=None, role="user", content=question),
                NewMessage(
                    id="", parent_id=None, role="assistant", content=answer,
                    model="SmolLM2-135M-Instruct", prompt_tokens=680, completion_tokens=250,
                    finish_reason="stop", ttft_ms=120, total_ms=2000,
                ),
            ]  # fmt: skip
            record, _ = await serving.append_messages(
                user,
                conversation,
                exchange,
                create_if_missing=not conversation,
                title="" if conversation else question[:40],
            )
            conversation = record.id
            stored += len(question.encode()) + len(answer.encode())
    return stored


async def _size(db: asyncpg.Connection) -> int:
    await db.execute("VACUUM ANALYZE")
    total = 0
    for name in TABLES:
        total += await db.fetchval("SELECT pg_total_relation_size($1::regclass)", name)
    return int(total)


async def _storage_rounds(args: argparse.Namespace, url: str) -> tuple[str, list[tuple[int, ...]]]:
    """The server's version, and (exchanges, text bytes, table bytes grown) per round."""
    settings = HistorySettings(database_url=url)
    await migrate(settings)
    engine = create_engine(settings)
    serving = HistoryServing(create_sessionmaker(engine))
    db = await asyncpg.connect(_dsn(url))
    rng = random.Random(11)
    rounds = []
    try:
        version = str(await db.fetchval("SHOW server_version"))
        before = await _size(db)
        for round_no in (1, 2):
            stored = await _fill(serving, rng, args, round_no)
            after = await _size(db)
            rounds.append((args.conversations * args.turns, stored, after - before))
            before = after
    finally:
        await db.close()
        await engine.dispose()
    return version, rounds


async def run_storage(args: argparse.Namespace) -> Report:
    async with fresh_database(args.postgres_url, "parlance_storage_bench") as url:
        version, rounds = await _storage_rounds(args, url)
    report = Report(
        "History storage on PostgreSQL: bytes per stored exchange (bench/history_bench.py storage)",
        f"PostgreSQL {version}; {args.conversations} conversations of {args.turns} exchanges "
        f"per round (users of 10 conversations), user messages of {args.user_chars} and "
        f"answers of {args.answer_chars} characters (ASCII), no moderation verdicts stored.",
    )
    rows = [
        [i, n, f"{text / n:.0f}", f"{grown / n:.0f}", f"{grown / text:.2f}"]
        for i, (n, text, grown) in enumerate(rounds, 1)
    ]
    columns = ["round", "exchanges", "text bytes/exchange", "table bytes/exchange", "bytes/text"]
    _, text_bytes, grown = rounds[-1]
    return report.add(
        "",
        *table(columns, rows),
        "",
        f"Bytes stored per byte of message text (round 2): {grown / text_bytes:.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    serving = scenarios.add_parser("serving", help="latency through HistoryServing")
    serving.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    serving.add_argument("--conversations", type=int, default=10_000)
    serving.add_argument("--messages-per-conversation", type=int, default=10)
    serving.add_argument("--appends", type=int, default=200)
    out_argument(serving, "history_bench.md")
    append = scenarios.add_parser("append", help="CPU per stored exchange vs a baseline")
    append.add_argument("--baseline", required=True, metavar="REF", help="a git commit")
    append.add_argument("--rounds", type=int, default=4)
    append.add_argument("--exchanges", type=int, default=600)
    append.add_argument("--concurrency", type=int, default=8)
    out_argument(append, "history_append.md")
    storage = scenarios.add_parser("storage", help="PostgreSQL bytes per stored exchange")
    storage.add_argument("--conversations", type=int, default=300)
    storage.add_argument("--turns", type=int, default=5)
    storage.add_argument("--user-chars", type=int, default=240)
    storage.add_argument("--answer-chars", type=int, default=1000)
    out_argument(storage, "history_storage.md")
    for sub in (serving, storage):
        sub.add_argument("--postgres-url", default=POSTGRES_URL)
    args = parser.parse_args()
    run = {"serving": run_serving, "append": run_append, "storage": run_storage}[args.scenario]
    asyncio.run(run(args)).write(args.out)


if __name__ == "__main__":
    main()
