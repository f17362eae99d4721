"""PostgreSQL bytes per stored exchange: what history's tables and indexes (rows, the
generated tsvector and its GIN index, b-trees) grow by per user message + answer appended
through the serving layer, as chat stores them. Read by scripts/capacity_plan.py
(docs/CAPACITY.md: storage growth).

    .venv/bin/python bench/history_storage_bench.py [--conversations 300] [--turns 5]
        [--user-chars 240] [--answer-chars 1000] [--postgres-url URL] [--out FILE]

Two rounds of the same size in a fresh database (dropped after); the growth of the second
round is the figure (the first pays for empty tables' first pages). Sizes after VACUUM
ANALYZE, from pg_total_relation_size of history's tables (heap, TOAST and indexes).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid

import asyncpg
from lib.report import Report, out_argument, table
from sqlalchemy.engine import make_url

from parlance.history.config import HistorySettings
from parlance.history.database import create_engine, create_sessionmaker
from parlance.history.domain import NewMessage
from parlance.history.main import migrate
from parlance.history.serving import HistoryServing

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TABLES = ("users", "conversations", "messages", "feedback")
WORDS = (
    "the model answers a question about python databases indexes and search while the user "
    "asks for history branches tokens caches latency servers clients requests streams and "
    "messages in a conversation about paris rome london berlin madrid lisbon vienna prague"
).split()


def text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words).capitalize()[:chars]


async def fill(
    serving: HistoryServing, rng: random.Random, args: argparse.Namespace, round_no: int
) -> int:
    """Conversations of `turns` exchanges each, for users of ten conversations; returns the
    text bytes stored."""
    stored = 0
    for c in range(args.conversations):
        user = f"user_{round_no}_{c // 10}"
        conversation = ""
        for _ in range(args.turns):
            question, answer = text(rng, args.user_chars), text(rng, args.answer_chars)
            record, _ = await serving.append_messages(
                user,
                conversation,
                [
                    NewMessage(id="", parent_id=None, role="user", content=question),
                    NewMessage(
                        id="",
                        parent_id=None,
                        role="assistant",
                        content=answer,
                        model="SmolLM2-135M-Instruct",
                        prompt_tokens=680,
                        completion_tokens=250,
                        finish_reason="stop",
                        ttft_ms=120,
                        total_ms=2000,
                    ),
                ],
                create_if_missing=not conversation,
                title="" if conversation else question[:40],
            )
            conversation = record.id
            stored += len(question.encode()) + len(answer.encode())
    return stored


async def size(admin: asyncpg.Connection) -> int:
    await admin.execute("VACUUM ANALYZE")
    total = 0
    for name in TABLES:
        total += await admin.fetchval("SELECT pg_total_relation_size($1::regclass)", name)
    return int(total)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def measure(args: argparse.Namespace, url: str) -> list[tuple[int, int, int]]:
    """(exchanges, text bytes, table bytes grown) per round."""
    settings = HistorySettings(database_url=url)
    await migrate(settings)
    engine = create_engine(settings)
    serving = HistoryServing(create_sessionmaker(engine))
    db = await asyncpg.connect(_dsn(url))
    rng = random.Random(11)
    rounds = []
    try:
        before = await size(db)
        for round_no in (1, 2):
            stored = await fill(serving, rng, args, round_no)
            after = await size(db)
            rounds.append((args.conversations * args.turns, stored, after - before))
            before = after
    finally:
        await db.close()
        await engine.dispose()
    return rounds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--user-chars", type=int, default=240)
    parser.add_argument("--answer-chars", type=int, default=1000)
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    out_argument(parser, "history_storage.md")
    args = parser.parse_args()
    name = f"parlance_storage_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_dsn(args.postgres_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
        rounds = await measure(args, url)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    version = await _server_version(args.postgres_url)
    report = Report(
        "History storage on PostgreSQL: bytes per stored exchange (bench/history_storage_bench.py)",
        f"PostgreSQL {version}; {args.conversations} conversations of {args.turns} exchanges "
        f"per round (users of 10 conversations), user messages of {args.user_chars} and "
        f"answers of {args.answer_chars} characters (ASCII), no moderation verdicts stored.",
    )
    rows = []
    for i, (exchanges, text_bytes, grown) in enumerate(rounds, 1):
        rows.append(
            [
                i,
                exchanges,
                f"{text_bytes / exchanges:.0f}",
                f"{grown / exchanges:.0f}",
                f"{grown / text_bytes:.2f}",
            ]
        )
    _, text_bytes, grown = rounds[-1]
    report.add(
        "",
        *table(
            ["round", "exchanges", "text bytes/exchange", "table bytes/exchange", "bytes/text"],
            rows,
        ),
        "",
        f"Bytes stored per byte of message text (round 2): {grown / text_bytes:.2f}",
    ).write(args.out)


async def _server_version(url: str) -> str:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
