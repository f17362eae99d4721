"""Writes exchanges to history, and keeps them in a durable outbox while history is down.

Chat must keep answering when history is unreachable, and nothing may be lost
(docs/ARCHITECTURE.md). So an exchange that cannot be written now is put in the outbox and retried
with back-off until history accepts it. The outbox is a SQLite file on the gateway's disk
(GATEWAY_OUTBOX_PATH), not process memory: a gateway killed with exchanges waiting writes them
when it (or another worker on the same file) comes back. The file's tables are outbox_store.py's;
this module is the drainer and its policies.

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
- Refused writes (outbox_policy.py): an exchange history rejects as invalid (4xx) would be
  rejected forever; it moves to a dead-letter table at once instead of blocking its
  conversation. So does one that keeps failing while history takes other writes
  (_MAX_ATTEMPTS, counted only then: a real outage counts none) or that is older than
  _MAX_AGE_S when a try fails (never before a try: a gateway restarted on an old outbox still
  writes it): no exchange blocks its conversation forever, whatever history answers.
- Dead letters are bounded (_MAX_DEAD, the oldest go first) and hold users' text: deleting a
  conversation deletes its queued and dead exchanges (`forget_conversation`), and an exchange
  that reaches history after its conversation was deleted is dropped, not dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid

from parlance.gateway.clients import HistoryClient
from parlance.gateway.errors import APIError
from parlance.gateway.metrics import HISTORY_OUTBOX_DEAD, HISTORY_OUTBOX_DEPTH
from parlance.gateway.outbox_policy import RECENT_SUCCESS_S, Failure, dead_letter_reason, failure_of
from parlance.gateway.outbox_store import OutboxStats, OutboxStore, QueuedItem, parse_payload
from parlance.history.v1 import history_pb2

log = logging.getLogger(__name__)


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
                failure = failure_of(exc)
                if failure is Failure.GONE:
                    log.info("history: the exchange's conversation was deleted; not stored")
                    return False
                if failure is Failure.DOWN:
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
        request = parse_payload(item.payload)
        if request is None:
            await self._dead(item, "unreadable payload")
            return True
        try:
            await self.client.append_messages(request)
        except APIError as exc:
            failure = failure_of(exc)
            if failure is Failure.GONE:
                await self._drop(item, exc.message)
                return True
            if failure is Failure.REFUSED:
                await self._dead(item, exc.message)
                return True
            self._history_seems_down()
            # History took other writes just now: this failure is the exchange's own.
            history_works = time.monotonic() - self._last_success < RECENT_SUCCESS_S
            reason = dead_letter_reason(
                item,
                exc.message,
                max_age_s=self.max_age_s,
                max_attempts=self.max_attempts,
                history_works=history_works,
            )
            if reason is not None:
                await self._dead(item, reason)
                return True
            if history_works:
                await asyncio.to_thread(self.store.count_attempt, item.id)
            return False
        self._written()
        await asyncio.to_thread(self.store.remove, item.id)
        return True

    async def _drop(self, item: QueuedItem, error: str) -> None:
        # The user deleted the conversation meanwhile: its text must not outlive it, not even
        # as a dead letter.
        log.info("history outbox: dropped an exchange of a deleted conversation: %s", error)
        await asyncio.to_thread(self.store.remove, item.id)

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
