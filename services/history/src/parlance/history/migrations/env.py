"""Alembic environment for the history schema.

Programmatic runs (`parlance.history.migrate.upgrade_to_head`) hand over a live connection in
`config.attributes["connection"]`; the alembic CLI gets a URL and this module opens an async
engine itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from parlance.common.schema_lock import serialize_schema_changes
from parlance.history.models import Base

config = context.config
target_metadata = Base.metadata


def _run_with(connection: Connection) -> None:
    # Replicas that start together would each run the same migrations; on PostgreSQL the
    # others wait here for the first to commit, then find the schema at head.
    serialize_schema_changes(connection, "history.migrations")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates tables for later revisions.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_with)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url for the history migrations")
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
