"""History benchmarks on SQLite and PostgreSQL, through the serving layer (HistoryServing, the
code under the gRPC servicer): message append latency, listing one user's 10k conversations,
and full-text search over 100k messages.

    .venv/bin/python bench/history_bench.py [--backend sqlite|postgres|both]
        [--conversations 10000] [--messages-per-conversation 10] [--appends 200] [--out FILE]

Seeding uses bulk INSERTs (executemany), so the SQLite FTS triggers and the PostgreSQL GIN
index are maintained as in production. PostgreSQL runs in a fresh database, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from lib.report import Report, out_argument, table
from lib.stats import fmt, percentile
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from parlance.history import models
from parlance.history.config import HistorySettings
from parlance.history.database import create_engine, create_sessionmaker
from parlance.history.domain import NewMessage
from parlance.history.main import migrate
from parlance.history.serving import HistoryServing

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
USER = "bench_user"
WORDS = (
    "model answer question python database index search history branch token cache "
    "latency server client request stream message conversation feedback export window "
    "paris rome london berlin madrid lisbon vienna prague dublin oslo helsinki athens"
).split()
# Each appears in about 1 in 1000 messages: a selective query.
RARE = [f"quasar{i}" for i in range(20)]


def _text(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(12, 40))
    if rng.random() < 0.02:
        words.insert(rng.randrange(len(words)), rng.choice(RARE))
    return " ".join(words).capitalize() + "."


async def _seed(serving_url: str, conversations: int, per_conversation: int) -> None:
    engine = create_engine(HistorySettings(database_url=serving_url))
    rng = random.Random(7)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(models.User), [{"id": USER, "created_at": start}])
        batch_conv: list[dict[str, Any]] = []
        batch_msg: list[dict[str, Any]] = []

        async def flush() -> None:
            async with engine.begin() as conn:
                if batch_conv:
                    await conn.execute(insert(models.Conversation), batch_conv)
                if batch_msg:
                    await conn.execute(insert(models.Message), batch_msg)
            batch_conv.clear()
            batch_msg.clear()

        for c in range(conversations):
            conv_id = f"conv_{c:08d}"
            when = start + timedelta(minutes=c)
            parent = None
            for m in range(per_conversation):
                msg_id = f"msg_{c:08d}_{m:03d}"
                batch_msg.append(
                    {
                        "id": msg_id,
                        "conversation_id": conv_id,
                        "parent_id": parent,
                        "user_id": USER,
                        "role": "user" if m % 2 == 0 else "assistant",
                        "content": _text(rng),
                        "model": "" if m % 2 == 0 else "bench-model",
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "finish_reason": "",
                        "moderation_json": "",
                        "ttft_ms": None,
                        "total_ms": None,
                        "created_at": when + timedelta(seconds=m),
                    }
                )
                parent = msg_id
            batch_conv.append(
                {
                    "id": conv_id,
                    "user_id": USER,
                    "title": f"Conversation {c}",
                    "created_at": when,
                    "updated_at": when + timedelta(seconds=per_conversation),
                    "archived": False,
                    "active_leaf_id": parent,
                }
            )
            if len(batch_msg) >= 5000:
                await flush()
        await flush()
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


Timings = dict[str, list[float]]  # operation -> samples (ms)


async def run_backend(
    label: str, url: str, conversations: int, per_conversation: int, appends: int
) -> Timings:
    settings = HistorySettings(database_url=url)
    await migrate(settings)
    t = time.perf_counter()
    await _seed(url, conversations, per_conversation)
    total = conversations * per_conversation
    print(
        f"{label}: seeded {conversations} conversations / {total} messages "
        f"in {time.perf_counter() - t:.1f} s"
    )
    engine = create_engine(settings)
    serving = HistoryServing(create_sessionmaker(engine))
    timings: Timings = {}
    try:
        # Append: one exchange (user + assistant) to an existing conversation, as chat does.
        async def append(i: int) -> None:
            conv = f"conv_{(i * 37) % conversations:08d}"
            await serving.append_messages(
                USER,
                conv,
                [
                    NewMessage(
                        id=f"msg_{uuid.uuid4().hex}",
                        parent_id=None,
                        role="user",
                        content="bench question",
                    ),
                    NewMessage(
                        id=f"msg_{uuid.uuid4().hex}",
                        parent_id=None,
                        role="assistant",
                        content="bench answer",
                        model="bench-model",
                    ),
                ],
                create_if_missing=False,
                title="",
            )

        timings["append one exchange (2 messages)"] = await _timed(appends, append)

        async def first_page(_: int) -> None:
            await serving.list_conversations(USER, 20, "", False)

        timings[f"list first page (20 of {conversations})"] = await _timed(100, first_page)

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


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages-per-conversation", type=int, default=10)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    out_argument(parser, "history_bench.md")
    args = parser.parse_args()
    sizes = (args.conversations, args.messages_per_conversation, args.appends)
    results: dict[str, Timings] = {}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            results["SQLite"] = await run_backend("SQLite", url, *sizes)
    if args.backend in ("postgres", "both"):
        name = f"parlance_history_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(_asyncpg_dsn(args.postgres_url))
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = (
                make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
            )
            results["PostgreSQL"] = await run_backend("PostgreSQL", url, *sizes)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
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
    report.add("", *table(columns, rows)).write(args.out)


if __name__ == "__main__":
    asyncio.run(main())
