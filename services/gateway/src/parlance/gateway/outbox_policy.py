"""What the history outbox (outbox.py) does with a write history did not take: drop it (its
conversation is gone), dead-letter it (history refused it, it kept failing while history took
other writes, or it is too old), or keep it and try again (history is down)."""

from __future__ import annotations

import enum
import time

from parlance.gateway.errors import APIError
from parlance.gateway.outbox_store import QueuedItem

# Statuses that mean "history (or the way to it) is down": keep the exchange and retry. Any
# other 4xx means history read the exchange and refused it.
RETRYABLE = frozenset({429, 500, 503, 504})

# A write that fails while another write succeeded this recently counts as an attempt: history
# works, so the failure is the exchange's own.
RECENT_SUCCESS_S = 30.0


class Failure(enum.Enum):
    GONE = "gone"  # the conversation was deleted: drop the exchange
    REFUSED = "refused"  # history read the exchange and refused it: dead-letter it
    DOWN = "down"  # history (or the way to it) is down: keep it and retry


def failure_of(exc: APIError) -> Failure:
    # History's answer when the conversation is gone: the user deleted it while this exchange
    # was on its way (the chat flow checks ownership before generating, so it existed then). A
    # missing parent message is not this: that exchange is dead-lettered.
    if exc.status == 404 and exc.param == "conversation_id":
        return Failure.GONE
    return Failure.DOWN if exc.status in RETRYABLE else Failure.REFUSED


def dead_letter_reason(
    item: QueuedItem, message: str, *, max_age_s: float, max_attempts: int, history_works: bool
) -> str | None:
    """Why a queued exchange whose write just failed with history down goes to the dead
    letters now; None: it stays queued. Aged out only after a failed try: a gateway restarted
    on an old outbox, or a history back from a long outage, still gets every exchange written.
    Attempts count only while history works (a real outage counts none)."""
    if time.time() - item.created_at > max_age_s:
        return f"not written within {max_age_s:g} s"
    if history_works and item.attempts + 1 >= max_attempts:
        return f"{max_attempts} attempts: {message}"
    return None
