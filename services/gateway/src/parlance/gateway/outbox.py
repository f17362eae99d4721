"""Writes exchanges to history, and keeps them in a durable outbox while history is down.

Chat must keep answering when history is unreachable, and nothing may be lost
(docs/ARCHITECTURE.md). So an exchange that cannot be written now is put in the outbox and retried
with back-off until history accepts it. The outbox is a SQLite file on the gateway's disk
(GATEWAY_OUTBOX_PATH), not process memory: a gateway killed with exchanges waiting writes them
when it (or another worker on the same file) comes back.

- Order: within a conversation, exchanges are written oldest first, one at a time (the next
  exchange names the previous one as its parent, so it must not overtake it), and a new one is
  queued behind any of its conversation's that wait. Different conversations do not wait for
  each other: the drainer writes the oldest exchange of up to DRAIN_CONCURRENCY conversations at
  once, and a slow or failed write of one conversation never queues the others' (one serial
  queue behind a single timeout fell behind for good under load: measured by
  bench/load_test.py). One drainer works at a time across the processes that share the file
  (a lease row elects it).
- Idempotence: message ids are made by the gateway, so a retry after an unclear failure (the
  write landed but the answer was lost) cannot duplicate a message.
- Bound: past GATEWAY_OUTBOX_MAX_ITEMS or _MAX_BYTES the outbox is full, and past
  _MAX_ITEMS_PER_USER it is full *for that user* (`full_for`): the chat service refuses new
  requests that would be stored with 503 + Retry-After, before generating anything
  (back-pressure, not loss), and one user's backlog cannot refuse everyone else's.
- Refused writes: an exchange history rejects as invalid (4xx) would be rejected forever; it
  moves to a dead-letter table at once instead of blocking its conversation. So does one that
  keeps failing while history takes other writes (_MAX_ATTEMPTS, counted only then: a real
  outage counts none) or that waited longer than _MAX_AGE_S: no exchange blocks its
  conversation forever, whatever history answers.
- Dead letters are bounded (_MAX_DEAD, the oldest go first) and hold users' text: deleting a
  conversation deletes its queued and dead exchanges (`forget_conversation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from parlance.gateway.clients import HistoryClient
from parlance.gateway.errors import APIError
from parlance.gateway.files import create_private_file
from parlance.gateway.metrics import HISTORY_OUTBOX_DEAD, HISTORY_OUTBOX_DEPTH
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)

# Statuses that mean "history (or the way to it) is down": keep the exchange and retry. Any
# other 4xx means history read the exchange and refused it.
_RETRYABLE = {429, 500, 503, 504}

# A write that fails while another write succeeded this recently counts as an attempt: history
# works, so the failure is the exchange's own.
_RECENT_SUCCESS_S = 30.0

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


def _parse(payload: bytes) -> history_pb2.AppendMessagesRequest | None:
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
                    request = _parse(bytes(payload))
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


class HistoryOutbox:
    """Submits history writes; queues the ones history cannot take now and drains them."""

    # How long a drainer's lease lasts without renewal (a killed drainer hands over after it).
    LEASE_S = 15.0
    # How often a process that is not the drainer looks at the outbox (depth, leadership).
    POLL_S = 1.0
    # Conversations written at once while draining.
    DRAIN_CONCURRENCY = 16
    # After a failed write, how long new exchanges queue without trying history first.
    DIRECT_RETRY_S = 2.0

    def __init__(
        self,
        client: HistoryClient,
        path: str,
        max_items: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        *,
        max_items_per_user: int = 1_000,
        max_attempts: int = 20,
        max_age_s: float = 7 * 24 * 3600.0,
        max_dead: int = 10_000,
    ) -> None:
        self.client = client
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.max_items_per_user = max_items_per_user
        self.max_attempts = max_attempts
        self.max_age_s = max_age_s
        self.store = OutboxStore(path, max_dead)
        # Users whose waiting exchanges reached max_items_per_user (as last seen).
        self._users_over: frozenset[str] = frozenset()
        # When a write to history last succeeded (monotonic; 0: not yet).
        self._last_success = 0.0
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stats = OutboxStats(0, 0)
        self._wake = asyncio.Event()
        # Set while the outbox is seen empty (close() waits on it to flush).
        self._emptied = asyncio.Event()
        # After a write found history down, new exchanges queue without trying it until
        # this time (monotonic) or until a write succeeds. A time, not a flag: a worker that
        # is not the drainer makes no writes that could tell it history is back.
        self._direct_after = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Exchanges waiting (as last seen: refreshed on every change and every POLL_S)."""
        return self._stats.items

    @property
    def full(self) -> bool:
        return self._stats.items >= self.max_items or self._stats.bytes >= self.max_bytes

    def full_for(self, user_id: str) -> bool:
        """Whether a new exchange of this user must be refused: the outbox is full, or the
        user's own backlog reached its quota (so that one user cannot fill it for all)."""
        return self.full or user_id in self._users_over

    async def forget_conversation(self, user_id: str, conversation_id: str) -> None:
        """Deletes the user's queued and dead-lettered exchanges of the conversation (their
        text included): called when the user deletes it, before history deletes its copy, so
        that no queued exchange re-creates it afterwards."""
        deleted = await asyncio.to_thread(self.store.forget_conversation, user_id, conversation_id)
        if deleted:
            await self._refresh()

    def start(self) -> None:
        self._stats = self.store.stats()
        HISTORY_OUTBOX_DEPTH.set(self._stats.items)
        if self._stats.items:
            log.warning("history outbox holds %d exchanges from before", self._stats.items)
        self._task = asyncio.create_task(self._drain_forever(), name="history-outbox")

    async def submit(self, request: history_pb2.AppendMessagesRequest) -> bool:
        """Writes now if possible (and nothing older of its conversation waits); else queues.

        True if history has it now. Returns only once the exchange is in history or durably
        in the outbox, so a client told "done" can rely on it.
        """
        conversation_id = request.conversation_id
        user_id = request.user_id
        # While history is known to be down, queue at once: each direct try would hold the
        # client's answer for up to a deadline. The drainer finds out when it is back.
        if time.monotonic() >= self._direct_after and not await asyncio.to_thread(
            self.store.waiting, conversation_id
        ):
            try:
                await self.client.append_messages(request)
                self._written()
                return True
            except APIError as exc:
                if exc.status in _RETRYABLE:
                    self._history_seems_down()
                else:
                    log.error("history refused an exchange (dead-lettered): %s", exc.message)
                    await asyncio.to_thread(
                        self.store.add_dead,
                        request.SerializeToString(),
                        exc.message,
                        user_id,
                        conversation_id,
                    )
                    HISTORY_OUTBOX_DEAD.inc()
                    return False
        await asyncio.to_thread(
            self.store.add, conversation_id, request.SerializeToString(), user_id
        )
        await self._refresh()
        self._wake.set()
        return False

    async def _refresh(self) -> None:
        self._stats = await asyncio.to_thread(self.store.stats)
        self._users_over = (
            await asyncio.to_thread(self.store.users_over, self.max_items_per_user)
            if self._stats.items >= self.max_items_per_user
            else frozenset()
        )
        HISTORY_OUTBOX_DEPTH.set(self._stats.items)
        if self._stats.items:
            self._emptied.clear()
        else:
            self._emptied.set()

    async def _drain_forever(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._refresh()
                if not self._stats.items or not await asyncio.to_thread(
                    self.store.lead, self._holder, self.LEASE_S
                ):
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.POLL_S)
                    continue
                if await self._write_heads():
                    backoff = 0.5
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The outbox must outlive any single failure (a locked file, a full disk).
                log.exception("history outbox: drain step failed")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _write_heads(self) -> bool:
        """Writes the oldest exchange of the oldest-waiting conversations; False if history
        is (still) down for any of them."""
        heads = await asyncio.to_thread(self.store.heads, self.DRAIN_CONCURRENCY)
        results = await asyncio.gather(*(self._write(item) for item in heads))
        return all(results)

    async def _write(self, item: QueuedItem) -> bool:
        """Writes one queued exchange; False if history is still down."""
        request = _parse(item.payload)
        if request is None:
            await self._dead(item, "unreadable payload")
            return True
        if time.time() - item.created_at > self.max_age_s:
            await self._dead(item, f"not written within {self.max_age_s:g} s")
            return True
        try:
            await self.client.append_messages(request)
        except APIError as exc:
            if exc.status not in _RETRYABLE:
                await self._dead(item, exc.message)
                return True
            self._history_seems_down()
            if time.monotonic() - self._last_success < _RECENT_SUCCESS_S:
                # History took other writes just now: this failure is the exchange's own.
                if item.attempts + 1 >= self.max_attempts:
                    await self._dead(item, f"{self.max_attempts} attempts: {exc.message}")
                    return True
                await asyncio.to_thread(self.store.count_attempt, item.id)
            return False
        self._written()
        await asyncio.to_thread(self.store.remove, item.id)
        return True

    async def _dead(self, item: QueuedItem, error: str) -> None:
        log.error("history outbox: an exchange was dead-lettered: %s", error)
        await asyncio.to_thread(self.store.move_to_dead, item.id, error)
        HISTORY_OUTBOX_DEAD.inc()

    def _written(self) -> None:
        self._direct_after = 0.0
        self._last_success = time.monotonic()

    def _history_seems_down(self) -> None:
        self._direct_after = time.monotonic() + self.DIRECT_RETRY_S

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """Gives history a last chance to take what waits; what is left stays on disk."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._emptied.wait(), flush_timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.to_thread(self.store.resign, self._holder)
        self._stats = await asyncio.to_thread(self.store.stats)
        if self._stats.items:
            log.warning(
                "gateway stopping with %d exchanges in the outbox (kept on disk, written"
                " after the restart)",
                self._stats.items,
            )
        self.store.close()
