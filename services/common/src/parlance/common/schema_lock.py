"""One schema change at a time across processes that share a PostgreSQL database.

Replicas (or `GATEWAY_WORKERS` > 1) start together, and each creates or migrates its tables on
start. PostgreSQL's DDL is transactional but not idempotent under concurrency: two
`CREATE TABLE`s of the same table both pass "does it exist?", and the second fails on a unique
index of the catalog. A transaction-scoped advisory lock makes the others wait for the first
to commit; they then find the schema in place and do nothing.
"""

from __future__ import annotations

import hashlib
from typing import Protocol


class _SyncConnection(Protocol):
    """What this needs of sqlalchemy.engine.Connection (this package does not depend on it)."""

    @property
    def dialect(self) -> object: ...

    def exec_driver_sql(self, statement: str) -> object: ...


def advisory_lock_key(owner: str) -> int:
    """A stable signed 64-bit key per owner ("gateway.api_keys", "history.migrations")."""
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big", signed=True)


def serialize_schema_changes(connection: _SyncConnection, owner: str) -> None:
    """Call first inside the transaction that changes the schema; released at its end. On
    SQLite it does nothing: callers serialize there with SQLite's own locking (history's
    migrations run in a BEGIN IMMEDIATE transaction; the key store's IF NOT EXISTS statements
    are each atomic)."""
    if getattr(connection.dialect, "name", None) != "postgresql":
        return
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({advisory_lock_key(owner)})")
