"""Training data from the users' feedback, in the formats TRL's trainers read. Pure functions.

SFT (SFTTrainer, conversational): {"messages": [...the path from the root to a positively
rated answer, that answer included]}. Preference (DPOTrainer, conversational, explicit prompt):
{"prompt": [...], "chosen": [answer], "rejected": [answer]}, from sibling answers rated +1 and
-1, from an answer the user corrected (the correction chosen, the original rejected), or from
a comparison (the user's pick between two sibling answers; a pair already exported from
ratings is not repeated). With include_implicit, implicit feedback (a re-asked question) adds
KTO-style weak negatives, marked with their source: {"prompt": [...], "completion": [answer],
"label": false, "source": "reask", "score": similarity}. With an intent, only records whose
prompt's last user message has that intent.

Only text that can vouch for itself is exported: a conversation with any flagged message is
left out; targets, chosen and rejected answers are assistant messages the gateway generated
(`generated`) that ended normally ("stop", "length": not filtered, cancelled or stopped); an
SFT record's earlier assistant turns must be generated too (a trainer learns from every
assistant turn); a correction is chosen only when its verdict was stored and is not flagged,
and flagged feedback text voids that feedback's rating.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from parlance.history.domain import (
    ComparisonRecord,
    ExportFilter,
    ExportMessage,
    ImplicitSignal,
)


def is_flagged(moderation_json: str) -> bool:
    """Whether any verdict in the message's moderation JSON says flagged (the object may hold
    one verdict or several, nested by direction or as a list)."""
    if not moderation_json:
        return False
    try:
        verdicts = json.loads(moderation_json)
    except ValueError:
        # Unreadable verdicts cannot vouch for the text: treat as flagged, never export it.
        return True
    stack: list[Any] = [verdicts]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("flagged") is True:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# Finish reasons of complete answers; anything else (content_filter, cancelled, error) was cut.
EXPORTABLE_FINISH_REASONS = frozenset({"stop", "length"})


def _answer_ok(message: ExportMessage) -> bool:
    """Whether the message may be a training target or either side of a pair."""
    return (
        message.role == "assistant"
        and message.generated
        and message.finish_reason in EXPORTABLE_FINISH_REASONS
        and not is_flagged(message.moderation_json)
    )


def _rating(message: ExportMessage) -> int:
    """The owner's rating, void when the feedback's own text was flagged."""
    return 0 if is_flagged(message.feedback_moderation_json) else message.rating


def _correction(message: ExportMessage) -> str:
    """The owner's correction when it may be a chosen answer: classified and not flagged."""
    corrected = message.corrected_content.strip()
    if not corrected or corrected == message.content.strip():
        return ""
    if not message.feedback_moderation_json or is_flagged(message.feedback_moderation_json):
        return ""
    return message.corrected_content


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


class _Conversation:
    def __init__(self, messages: Iterable[ExportMessage]) -> None:
        self.nodes = {m.id: m for m in messages}
        self.children: dict[str | None, list[ExportMessage]] = defaultdict(list)
        for m in sorted(self.nodes.values(), key=lambda m: (m.created_at, m.id)):
            self.children[m.parent_id].append(m)

    def nodes_to(self, message_id: str | None) -> list[ExportMessage]:
        """Root first, down to message_id included ([] for None)."""
        out: list[ExportMessage] = []
        seen: set[str] = set()
        current = message_id
        while current is not None and current in self.nodes and current not in seen:
            seen.add(current)
            node = self.nodes[current]
            out.append(node)
            current = node.parent_id
        out.reverse()
        return out

    def path(self, message_id: str | None) -> list[dict[str, str]]:
        return [_turn(node.role, node.content) for node in self.nodes_to(message_id)]

    def intent_of(self, message_id: str | None) -> str:
        """The intent of the last user message on the path to message_id ("" none)."""
        for node in reversed(self.nodes_to(message_id)):
            if node.role == "user":
                return node.intent
        return ""

    def all_generated(self, message_id: str) -> bool:
        """Whether every assistant turn on the path to message_id was generated."""
        return all(n.generated for n in self.nodes_to(message_id) if n.role == "assistant")


def _in_window(message: ExportMessage, flt: ExportFilter) -> bool:
    if flt.since is not None and message.created_at < flt.since:
        return False
    return flt.until is None or message.created_at < flt.until


def _model_ok(flt: ExportFilter, *messages: ExportMessage) -> bool:
    return not flt.model or any(m.model == flt.model for m in messages)


def _intent_ok(conv: _Conversation, flt: ExportFilter, parent_id: str | None) -> bool:
    return not flt.intent or conv.intent_of(parent_id) == flt.intent


def records(
    messages: Iterable[ExportMessage],
    flt: ExportFilter,
    comparisons: Iterable[ComparisonRecord] = (),
    implicit: Iterable[ImplicitSignal] = (),
) -> list[dict[str, Any]]:
    """The training records of one conversation (all its messages, any branch, with its
    comparisons and, when the filter asks, its implicit feedback)."""
    messages = list(messages)
    if any(is_flagged(m.moderation_json) for m in messages):
        return []
    conv = _Conversation(messages)
    answers = [m for group in conv.children.values() for m in group if _answer_ok(m)]
    answers.sort(key=lambda m: (m.created_at, m.id))
    out: list[dict[str, Any]] = []
    if flt.kind in ("all", "sft"):
        for answer in answers:
            if (
                _rating(answer) == 1
                and conv.all_generated(answer.id)
                and _in_window(answer, flt)
                and _model_ok(flt, answer)
                and _intent_ok(conv, flt, answer.parent_id)
            ):
                out.append({"messages": conv.path(answer.id)})
    if flt.kind in ("all", "preference"):
        out.extend(_pairs(conv, flt, comparisons))
    if flt.include_implicit:
        out.extend(_implicit(conv, flt, implicit))
    return out


def _pairs(
    conv: _Conversation, flt: ExportFilter, comparisons: Iterable[ComparisonRecord]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # (chosen id, rejected id) of the pairs already written: a comparison that repeats a
    # rating pair is one preference, not two.
    written: set[tuple[str, str]] = set()
    for parent_id, group in conv.children.items():
        prompt = conv.path(parent_id)
        rated = [m for m in group if _answer_ok(m)]
        chosen = [m for m in rated if _rating(m) == 1]
        rejected = [m for m in rated if _rating(m) == -1]
        if not prompt or not _intent_ok(conv, flt, parent_id):
            continue
        for good in chosen:
            for bad in rejected:
                if _pair_ok(good, bad, flt):
                    written.add((good.id, bad.id))
                    out.append(_pair(prompt, good.content, bad.content))
        for answer in rated:
            corrected = _correction(answer)
            if corrected and _in_window(answer, flt) and _model_ok(flt, answer):
                out.append(_pair(prompt, corrected, answer.content))
    out.extend(_compared(conv, flt, comparisons, written))
    return out


def _pair_ok(good: ExportMessage, bad: ExportMessage, flt: ExportFilter) -> bool:
    # A pair dates from its newer answer.
    newer = max(good, bad, key=lambda m: (m.created_at, m.id))
    return _in_window(newer, flt) and _model_ok(flt, good, bad)


def _compared(
    conv: _Conversation,
    flt: ExportFilter,
    comparisons: Iterable[ComparisonRecord],
    written: set[tuple[str, str]],
) -> list[dict[str, Any]]:
    """The comparisons' pairs: both answers exportable (a flagged or cut answer is never
    chosen, nor rejected), on the same terms as rated pairs."""
    out: list[dict[str, Any]] = []
    for comparison in comparisons:
        good = conv.nodes.get(comparison.chosen_message_id)
        bad = conv.nodes.get(comparison.rejected_message_id)
        if good is None or bad is None or good.parent_id != bad.parent_id:
            continue
        if not (_answer_ok(good) and _answer_ok(bad)) or (good.id, bad.id) in written:
            continue
        prompt = conv.path(good.parent_id)
        if prompt and _pair_ok(good, bad, flt) and _intent_ok(conv, flt, good.parent_id):
            written.add((good.id, bad.id))
            out.append(_pair(prompt, good.content, bad.content))
    return out


def _implicit(
    conv: _Conversation, flt: ExportFilter, signals: Iterable[ImplicitSignal]
) -> list[dict[str, Any]]:
    """Weak negatives (KTO's unpaired format, label false), marked with their source so that
    a trainer can weigh or drop them."""
    out: list[dict[str, Any]] = []
    for signal in signals:
        answer = conv.nodes.get(signal.message_id)
        if answer is None or not _answer_ok(answer):
            continue
        prompt = conv.path(answer.parent_id)
        if (
            prompt
            and _in_window(answer, flt)
            and _model_ok(flt, answer)
            and _intent_ok(conv, flt, answer.parent_id)
        ):
            out.append(
                {
                    "prompt": prompt,
                    "completion": [_turn("assistant", answer.content)],
                    "label": False,
                    "source": signal.kind,
                    "score": signal.score,
                }
            )
    return out


def _pair(prompt: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": [_turn("assistant", chosen)],
        "rejected": [_turn("assistant", rejected)],
    }
