"""Side-by-side comparisons: ChatGPT's "Which response do you prefer?" (issue 16).

Who gets one. A request opts in with the extension object `"parlance": {"compare": ...}`:
"always" (or true) when the user asked for a comparison; "offer" when the client can show one
(the web page sends it with every chat request), and then the gateway compares a share of them
(GATEWAY_COMPARE_SHARE). A client that sends neither (every OpenAI client) never gets one, so
its responses keep OpenAI's exact shape whatever the share.

How. The request is generated with n=2 (one generator call; each candidate is a choice, output
moderated on its own as any choice is). The response's extension object names the message id
each candidate will be stored under (`parlance.comparison.message_ids[i]` for choice i; on a
stream's first chunk, so the page can lay out two panes before any text), and both candidates
are stored as sibling answers of the question, each with its model id. The user's pick is
`POST /v1/conversations/{id}/comparisons` (history stores it, makes the chosen branch active
and exports the pair as a preference).

Moderation. A candidate that output moderation flags is never offered: its choice ends with
finish_reason "content_filter" (the page removes its pane at once and says so), it is not
stored, and the other one is stored alone, as an ordinary answer. A stream the user stops
stores its first candidate only: two half answers are no comparison.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from parlance.gateway import errors
from parlance.gateway.cache import CachedChoice, CompletionRecord
from parlance.gateway.chat.protocol import ChatCompletionRequest, ComparisonInfo
from parlance.gateway.config import GatewaySettings
from parlance.gateway.metrics import COMPARISONS_SHOWN, COMPARISONS_WITHHELD
from parlance.history.v1 import history_pb2

if TYPE_CHECKING:
    from parlance.gateway.chat.prepared import PreparedChat

# Answers in a comparison.
CANDIDATES = 2
PARAM = "parlance.compare"
# How a candidate's answer may end and still be offered for the pick.
_COMPLETE = ("stop", "length")
_FLAGGED = "content_filter"

Mode = Literal["always", "offer", "never"]
Reason = Literal["asked", "share"]


@dataclass
class Comparison:
    """A request that is answered with two candidates."""

    reason: Reason
    # The id each candidate is stored under, by choice index (made here, before generating,
    # so that the stream can name them on its first chunk).
    message_ids: list[str]

    def info(self) -> ComparisonInfo:
        return ComparisonInfo(message_ids=list(self.message_ids), reason=self.reason)


def mode_of(request: ChatCompletionRequest) -> Mode:
    compare = request.parlance.compare if request.parlance is not None else None
    if compare is True:
        return "always"
    if compare is None or compare is False:
        return "never"
    return compare


def _best_of(request: ChatCompletionRequest) -> int:
    # best_of (chat/best_of.py) returns one answer of k: it and a comparison exclude each other.
    value = getattr(request, "best_of", None)
    return value if isinstance(value, int) else 1


def validate(request: ChatCompletionRequest, settings: GatewaySettings) -> None:
    """The 400 of a request that asks for a comparison it cannot have."""
    if mode_of(request) != "always":
        return
    if (request.n or 1) > 1:
        raise errors.invalid_request(
            "parlance.compare cannot be combined with n > 1: a comparison is two answers.", PARAM
        )
    if _best_of(request) > 1:
        raise errors.invalid_request("parlance.compare cannot be combined with best_of.", PARAM)
    if settings.max_n < CANDIDATES:
        raise errors.invalid_request(
            "Comparisons are off on this server (GATEWAY_MAX_N is below 2).", PARAM
        )
    if not (request.conversation_id or request.store):
        raise errors.invalid_request(
            "parlance.compare needs a stored exchange (store: true or a conversation_id): "
            "both answers are stored for the pick.",
            PARAM,
        )
    if request.temperature == 0.0:
        raise errors.invalid_request(
            "parlance.compare needs sampling: with temperature 0 both answers are the same.",
            PARAM,
        )


class Comparer:
    """Decides which prepared requests are answered with a comparison, and sets them up."""

    def __init__(self, settings: GatewaySettings, draw: Callable[[], float] = random.random):
        self.settings = settings
        self.draw = draw

    def apply(self, prepared: PreparedChat) -> None:
        """Turns a prepared request into a comparison when it asked for one, or offered one
        and the share draws it (validate() has refused what cannot be compared)."""
        mode = mode_of(prepared.request)
        if mode == "never":
            return
        if mode == "offer" and not (self._eligible(prepared) and self._drawn()):
            return
        request = prepared.request
        prepared.request = request.model_copy(update={"n": CANDIDATES})
        # Two samples are the point: never a cached answer, and never cached as one.
        prepared.cache_key = None
        prepared.comparison = Comparison(
            reason="asked" if mode == "always" else "share",
            message_ids=[f"msg_{uuid.uuid4().hex}" for _ in range(CANDIDATES)],
        )

    def withdraw_offer(self, prepared: PreparedChat) -> None:
        """A comparison the share drew is withdrawn from a request answered with care (found
        by input moderation, after apply()): a person who may be at risk gets one answer, not a
        choice to make. One the client asked for (`always`) stays."""
        if prepared.care and prepared.comparison and prepared.comparison.reason == "share":
            prepared.request = prepared.request.model_copy(update={"n": None})
            prepared.comparison = None

    def _drawn(self) -> bool:
        share = self.settings.compare_share
        return share > 0 and self.draw() < share

    def _eligible(self, prepared: PreparedChat) -> bool:
        """An offered comparison is made only where it can be picked and differ: a stored
        exchange, one answer asked for, sampling on."""
        request = prepared.request
        return (
            prepared.conversation_id is not None
            and not prepared.care
            and (request.n or 1) == 1
            and _best_of(request) == 1
            and request.temperature != 0.0
            and self.settings.max_n >= CANDIDATES
        )


def stored_answers(
    prepared: PreparedChat, record: CompletionRecord
) -> list[tuple[CachedChoice, str]]:
    """The answers to store, each with its message id: the first choice alone, or in a
    comparison the candidates that may be offered (see the module docstring)."""
    comparison = prepared.comparison
    if comparison is None:
        return [(record.choices[0], f"msg_{uuid.uuid4().hex}")]
    shown = [c for c in record.choices if c.finish_reason != _FLAGGED]
    if len(shown) < CANDIDATES or any(c.finish_reason not in _COMPLETE for c in shown):
        # One left (the other flagged), or a stopped stream: an ordinary answer. Both
        # flagged: the first, stored as any flagged answer is.
        shown = shown[:1] or record.choices[:1]
    return [(choice, comparison.message_ids[choice.index]) for choice in shown]


def branch_siblings(messages: list[history_pb2.Message], first_answer: int) -> None:
    """Puts every answer after the first (messages[first_answer:]) beside it, below the same
    parent, instead of below each other (AppendMessages chains a batch by default)."""
    if first_answer > 0:
        parent: str | None = messages[first_answer - 1].id
    else:  # a regenerate: the answer alone, below the question it names
        first = messages[0]
        parent = first.parent_id if first.HasField("parent_id") else None
    for message in messages[first_answer + 1 :]:
        if parent is not None:
            message.parent_id = parent


def observe(prepared: PreparedChat, record: CompletionRecord) -> None:
    """Counts a finished comparison: shown (both candidates to the end) or withheld ones."""
    comparison = prepared.comparison
    if comparison is None:
        return
    flagged = sum(1 for c in record.choices if c.finish_reason == _FLAGGED)
    if flagged:
        COMPARISONS_WITHHELD.inc(flagged)
    elif all(c.finish_reason in _COMPLETE for c in record.choices):
        COMPARISONS_SHOWN.labels(comparison.reason).inc()
