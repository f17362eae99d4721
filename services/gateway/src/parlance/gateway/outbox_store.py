"""The outbox's SQLite file: exchanges waiting for history, dead letters and the drainer lease.

The drainer (HistoryOutbox, outbox.py) decides what to write and when; this module only keeps
the rows. The file is shared by the gateway's worker processes (GATEWAY_OUTBOX_PATH): exchanges
survive the process being killed, and a lease row elects the one drainer among them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from parlance.gateway.files import create_private_file
from parlance.history.v1 import history_pb2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_conversation ON outbox (conversation_id, id);
CREATE TABLE IF NOT EXISTS outbox_dead (
    id INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_drainer (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
"""

# Columns added after the first release; files from before get them on open.
_ADDED_COLUMNS = {
    "outbox": {
        "user_id": "TEXT NOT NULL DEFAULT ''",
        "attempts": "INTEGER NOT NULL DEFAULT 0",
    },
    "outbox_dead": {
        "user_id": "TEXT NOT NULL DEFAULT ''",
        "conversation_id": "TEXT NOT NULL DEFAULT ''",
    },
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_by_user ON outbox (user_id);
CREATE INDEX IF NOT EXISTS outbox_dead_by_conversation ON outbox_dead (user_id, conversation_id);
"""


@dataclass(frozen=True)
class QueuedItem:
    id: int
    payload: bytes
    created_at: float
    attempts: int


def parse_payload(payload: bytes) -> history_pb2.AppendMessagesRequest | None:
    try:
        return history_pb2.AppendMessagesRequest.FromString(payload)
    except DecodeError:
        return None


@dataclass(frozen=True)
class OutboxStats:
    items: int
    bytes: int


class OutboxStore:
    """The outbox table in a SQLite file, shared by the gateway's worker processes.

    Blocking (sqlite3); OutboxStore's callers run it in a thread. WAL mode with
    synchronous=NORMAL: a committed row survives the process being killed (not a power cut,
    which would need FULL, at a cost on every queued write).
    """

    def __init__(self, path: str, max_dead: int = 10_000) -> None:
        create_private_file(path)
        self.max_dead = max_dead
        # isolation_level=None: autocommit; multi-statement changes use explicit BEGIN.
        self._db = sqlite3.connect(
            path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._upgrade()
            self._db.executescript(_INDEXES)

    def _upgrade(self) -> None:
        """Adds the columns a file from an earlier version lacks, filled from the payloads.
        Several processes may open the same old file at once: BEGIN IMMEDIATE serializes them
        and each looks again inside the transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for name, decl in columns.items():
                    if name not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            for table in ("outbox", "outbox_dead"):
                rows = self._db.execute(
                    f"SELECT id, payload FROM {table} WHERE user_id = ''"
                ).fetchall()
                for item_id, payload in rows:
                    request = parse_payload(bytes(payload))
                    if request is not None:
                        self._db.execute(
                            f"UPDATE {table} SET user_id = ?, conversation_id = ? WHERE id = ?",
                            (request.user_id, request.conversation_id, item_id),
                        )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, conversation_id: str, payload: bytes, user_id: str = "") -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (conversation_id, user_id, payload, created_at)"
                " VALUES (?, ?, ?, ?)",
                (conversation_id, user_id, payload, time.time()),
            )

    def waiting(self, conversation_id: str) -> bool:
        """Whether an exchange of this conversation waits (a new one must queue behind it)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM outbox WHERE conversation_id = ? LIMIT 1", (conversation_id,)
            ).fetchone()
        return row is not None

    def heads(self, limit: int) -> list[QueuedItem]:
        """The oldest exchange of each conversation, oldest first, at most `limit`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload, created_at, attempts FROM outbox WHERE id IN"
                " (SELECT MIN(id) FROM outbox GROUP BY conversation_id) ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [QueuedItem(int(r[0]), bytes(r[1]), float(r[2]), int(r[3])) for r in rows]

    def remove(self, item_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def count_attempt(self, item_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (item_id,))

    def move_to_dead(self, item_id: int, error: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO outbox_dead"
                    " (payload, created_at, failed_at, error, user_id, conversation_id)"
                    " SELECT payload, created_at, ?, ?, user_id, conversation_id"
                    " FROM outbox WHERE id = ?",
                    (time.time(), error, item_id),
                )
                self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
                self._trim_dead()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_dead(
        self, payload: bytes, error: str, user_id: str = "", conversation_id: str = ""
    ) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO outbox_dead"
                    " (payload, created_at, failed_at, error, user_id, conversation_id)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (payload, now, now, error, user_id, conversation_id),
                )
                self._trim_dead()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _trim_dead(self) -> None:
        """Keeps the newest max_dead dead letters (inside the caller's transaction)."""
        self._db.execute(
            "DELETE FROM outbox_dead WHERE id NOT IN"
            " (SELECT id FROM outbox_dead ORDER BY id DESC LIMIT ?)",
            (self.max_dead,),
        )

    def forget_conversation(self, user_id: str, conversation_id: str) -> int:
        """Deletes the conversation's queued and dead exchanges; returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = 0
                for table in ("outbox", "outbox_dead"):
                    deleted += self._db.execute(
                        f"DELETE FROM {table} WHERE user_id = ? AND conversation_id = ?",
                        (user_id, conversation_id),
                    ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return deleted

    def users_over(self, quota: int) -> frozenset[str]:
        """The users with at least `quota` exchanges waiting."""
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id FROM outbox GROUP BY user_id HAVING COUNT(*) >= ?", (quota,)
            ).fetchall()
        return frozenset(str(row[0]) for row in rows)

    def stats(self) -> OutboxStats:
        with self._lock:
            items, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
        return OutboxStats(int(items), int(size))

    def dead_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox_dead").fetchone()[0])

    def lead(self, holder: str, ttl_s: float) -> bool:
        """Takes or renews the drainer lease; True if `holder` is the drainer now."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT holder, until FROM outbox_drainer").fetchone()
                mine = row is None or row[0] == holder or row[1] < now
                if mine:
                    self._db.execute(
                        "INSERT OR REPLACE INTO outbox_drainer (one, holder, until)"
                        " VALUES (1, ?, ?)",
                        (holder, now + ttl_s),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return mine

    def resign(self, holder: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox_drainer WHERE holder = ?", (holder,))
