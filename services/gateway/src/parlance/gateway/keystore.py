"""The managed API-key store: keys created, listed and revoked through the admin API or the
`parlance-gateway keys` CLI, kept durably in SQL (SQLite by default, PostgreSQL in production,
shared by every gateway replica).

A key is `sk-parlance-` followed by 32 random bytes (base64url). It is shown once, when it is
created; the table keeps only its SHA-256 digest (a fast hash is enough for a 256-bit random
secret: there is nothing to brute-force) and a display hint of its first and last characters.
Lookups are cached in process for `cache_ttl_s` seconds, so a revocation takes effect on every
replica within that time; the cache also keeps answering for known keys while the database is
briefly unreachable.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import DateTime, Integer, String, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateIndex, CreateTable

from parlance.common.schema_lock import serialize_schema_changes
from parlance.gateway.auth import KeyLimits, Principal, digest
from parlance.gateway.files import create_private_sqlite

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-parlance-"


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(40))
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _create_tables(connection: Connection) -> None:
    """Creates what is missing, safe when gateways start together (replicas, or
    GATEWAY_WORKERS > 1): PostgreSQL serializes them on an advisory lock, and on SQLite each
    IF NOT EXISTS statement is atomic. (create_all checks first and then creates, so the
    second of two simultaneous starts failed with "already exists".)"""
    serialize_schema_changes(connection, "gateway.api_keys")
    for table in Base.metadata.sorted_tables:
        connection.execute(CreateTable(table, if_not_exists=True))
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            connection.execute(CreateIndex(index, if_not_exists=True))


@dataclass(frozen=True)
class KeyRecord:
    """A key as the admin API shows it: never the key itself."""

    id: str
    user_id: str
    name: str
    hint: str
    limits: KeyLimits
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def _record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        hint=row.hint,
        limits=KeyLimits(
            rpm=row.rpm_limit,
            tpm=row.tpm_limit,
            max_concurrent=row.max_concurrent,
            max_tokens=row.max_tokens,
        ),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class SqlKeyStore:
    def __init__(self, database_url: str, cache_ttl_s: float = 5.0) -> None:
        create_private_sqlite(database_url)
        self.engine: AsyncEngine = create_async_engine(database_url, pool_pre_ping=True)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def create_schema(self) -> None:
        # One table that only grows columns; created in place rather than through a migration
        # tool, which the history service (the owner of the product's data) uses.
        async with self.engine.begin() as conn:
            await conn.run_sync(_create_tables)

    async def close(self) -> None:
        await self.engine.dispose()

    async def create(
        self, user_id: str, name: str = "", limits: KeyLimits | None = None
    ) -> tuple[str, KeyRecord]:
        """Returns (the key, shown only now; its record)."""
        limits = limits or KeyLimits()
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=f"key_{uuid.uuid4().hex[:16]}",
            user_id=user_id,
            name=name,
            digest=digest(key),
            hint=f"{key[:16]}...{key[-4:]}",
            rpm_limit=limits.rpm,
            tpm_limit=limits.tpm,
            max_concurrent=limits.max_concurrent,
            max_tokens=limits.max_tokens,
            created_at=dt.datetime.now(dt.UTC),
        )
        async with self.sessions.begin() as session:
            session.add(row)
        return key, _record(row)

    async def list(
        self, user_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id)
        if user_id is not None:
            query = query.where(ApiKeyRow.user_id == user_id)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        async with self.sessions() as session:
            return [_record(row) for row in (await session.scalars(query)).all()]

    async def revoke(self, key_id: str) -> bool:
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=dt.datetime.now(dt.UTC))
            )
        self._cache.clear()  # this replica at once; the others within cache_ttl_s
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def authenticate(self, key: str) -> Principal | None:
        if not key.startswith(KEY_PREFIX):
            return None
        key_digest = digest(key)
        now = time.monotonic()
        cached = self._cache.get(key_digest)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        try:
            async with self.sessions() as session:
                row = await session.scalar(
                    select(ApiKeyRow).where(
                        ApiKeyRow.digest == key_digest, ApiKeyRow.revoked_at.is_(None)
                    )
                )
        except Exception:
            if cached is not None:
                log.warning("key store unreachable: using the last known answer for a key")
                return cached[1]
            raise
        principal = (
            Principal(user_id=row.user_id, key_id=row.id, limits=_record(row).limits)
            if row is not None
            else None
        )
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[key_digest] = (now, principal)
        return principal


class CombinedKeyStore:
    """Static keys from the environment (bootstrap, development) and the managed store."""

    def __init__(self, *stores: object) -> None:
        self.stores = stores

    async def authenticate(self, key: str) -> Principal | None:
        for store in self.stores:
            principal = await store.authenticate(key)  # type: ignore[attr-defined]
            if principal is not None:
                return principal
        return None
